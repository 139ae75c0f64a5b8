"""Evaluation: trained policies, a random policy and the rule-based driver over the same seeded episodes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cavlab.errors import UserError
from cavlab.rl import rllib, sb3
from cavlab.rl.baselines import rule_based_action
from cavlab.rl.common import make_env
from cavlab.runs.stats import mean_ci

BASELINES = ("random", "rule")


def evaluate(
    env_id: str, policies: dict[str, str | Path], episodes: int, seed: int, env_kwargs: dict[str, Any],
    progress: Callable[[], None] | None = None,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Each policy ('random', 'rule', a saved SB3 policy or an RLlib checkpoint) over the same `episodes` episodes,
    seeded seed, seed + 1, …; per policy: the returns, mean and 95 % CI, collisions, mean speed."""
    env = make_env(env_id, env_kwargs)
    results: dict[str, dict[str, Any]] = {}
    try:
        actors = {name: _policy(policy, env) for name, policy in policies.items()}  # every error before any episode
        for name, act in actors.items():
            returns, collisions, speeds = [], 0, []
            for k in range(episodes):
                obs, info = env.reset(seed=seed + k)
                env.action_space.seed(seed + k)
                total, done = 0.0, False
                while not done:
                    obs, reward, terminated, truncated, info = env.step(act(obs))
                    total += reward
                    speeds.append(info.get("speed_mps", np.nan))
                    done = terminated or truncated
                returns.append(total)
                collisions += info.get("outcome") in ("collision", "lane_end")
                if progress is not None:
                    progress()
            mean, ci = mean_ci(returns)
            results[name] = {"returns": returns, "mean_return": mean, "ci95": ci,
                             "failures": collisions, "mean_speed_mps": float(np.nanmean(speeds))}  # fmt: skip
    finally:
        env.close()
    return results


def _policy(policy: str | Path, env) -> Callable[[np.ndarray], Any]:
    if policy == "random":
        return lambda obs: env.action_space.sample()
    if policy == "rule":
        if not hasattr(env.action_space, "n"):
            raise UserError("the rule-based driver uses discrete meta actions: drop action.type=continuous")
        return lambda obs: rule_based_action(env)
    path = Path(policy)
    if path.is_dir():  # an RLlib checkpoint
        return rllib.load_policy(path, env)
    return sb3.load_policy(path, env)


def plot_evaluation(results: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Mean episode return per policy with its 95 % confidence interval."""
    from matplotlib.figure import Figure  # no pyplot: no global state, the backend stays the user's

    names = list(results)
    means = [results[n]["mean_return"] for n in names]
    cis = [0.0 if np.isnan(results[n]["ci95"]) else results[n]["ci95"] for n in names]
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    ax.bar(names, means, yerr=cis, capsize=6, color=["tab:blue", "tab:gray", "tab:orange", "tab:green"][: len(names)])
    ax.set_ylabel("mean episode return")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
