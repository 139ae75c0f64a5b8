"""Evaluation: trained policies and the baselines over the same seeded episodes, with paired differences."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cavlab.envs.actions import META_ACTIONS
from cavlab.envs.config import merge
from cavlab.errors import UserError
from cavlab.rl import rllib, sb3
from cavlab.rl.baselines import Baseline, OpenLoop, Planner, RandomPolicy, RuleBased, run_episode, search_open_loop
from cavlab.rl.common import make_env
from cavlab.runs.stats import mean_ci

BASELINES = ("random", "constant", "open_loop", "rule", "planner")
"""random; constant: each action for the whole episode (one row each); open_loop: the best short sequence,
searched on other seeds; rule: the rule-based driver; planner: the cooperative planner (planner actions)."""
DEFAULT_BASELINES = ("random", "rule")
FAILURES = ("collision", "lane_end")


class _Trained(Baseline):
    def __init__(self, act: Callable[[np.ndarray], Any]) -> None:
        self._act = act

    def act(self, obs):
        return self._act(obs)


def evaluate(
    env_id: str, policies: dict[str, str | Path], episodes: int, seed: int, env_kwargs: dict[str, Any],
    progress: Callable[[], None] | None = None, baselines: tuple[str, ...] = DEFAULT_BASELINES,
    reference: str | None = None, search_episodes: int = 5, search_length: int = 3,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Each policy (a saved SB3 policy or an RLlib checkpoint) and each of `baselines` over the same
    `episodes` episodes, seeded seed, seed + 1, …; the open-loop search runs on the `search_episodes`
    seeds after them (seed + episodes, …), disjoint from the evaluation's. Per policy: the returns,
    mean and 95 % CI, failures (collisions, lane ends), completions, mean speed, each reward term's
    mean sum per episode (unweighted), and the paired
    difference to `reference` (a policy name; default: the rule-based driver if evaluated, else the
    first policy) with its 95 % CI."""
    for name in baselines:
        if name not in BASELINES:
            raise UserError(f"unknown baseline '{name}' (allowed: {', '.join(BASELINES)})")
    allowed = [*policies, *(b for b in baselines if b != "constant"),
               *(f"constant:{a}" for a in META_ACTIONS.values() if "constant" in baselines)]  # fmt: skip
    if reference is not None and reference not in allowed:
        raise UserError(f"reference '{reference}' is not an evaluated policy (evaluated: {', '.join(allowed)})")
    seeds = list(range(seed, seed + episodes))
    search_seeds = list(range(seed + episodes, seed + episodes + search_episodes))
    results: dict[str, dict[str, Any]] = {}
    env = make_env(env_id, env_kwargs)
    try:
        kind = env.unwrapped.config.action.type
        if kind != "discrete_meta" and any(b in ("constant", "open_loop", "rule") for b in baselines):
            raise UserError(f"the rule-based driver uses discrete meta actions (as do the constant and open-loop "
                            f"baselines): drop action.type={kind}, or choose --baseline random, planner")  # fmt: skip
        searched: dict[str, float] = {}
        actors: dict[str, Baseline] = {name: _Trained(_load(path, env)) for name, path in policies.items()}
        for name in baselines:
            if name == "random":
                actors["random"] = RandomPolicy(env)
            elif name == "constant":
                actors.update({f"constant:{META_ACTIONS[a]}": OpenLoop([a]) for a in range(env.action_space.n)})
            elif name == "open_loop":
                best, scores = search_open_loop(env, search_seeds, search_length, progress)
                actors[f"open_loop:{OpenLoop(best).name}"] = OpenLoop(best)
                searched = {f"open_loop:{OpenLoop(best).name}": scores[best]}
                if reference == "open_loop":
                    reference = f"open_loop:{OpenLoop(best).name}"
            elif name == "rule":
                actors["rule"] = RuleBased(env)
        for name, actor in actors.items():
            results[name] = _run(env, actor, seeds, progress)
            if name in searched:  # its mean return on the search seeds
                results[name]["search_mean_return"] = searched[name]
    finally:
        env.close()
    if "planner" in baselines:
        planner_env = make_env(env_id, merge(env_kwargs, {"action": {"type": "planner"}}))
        try:
            results["planner"] = _run(planner_env, Planner(planner_env), seeds, progress)
        finally:
            planner_env.close()
    _paired(results, reference if reference is not None else ("rule" if "rule" in results else next(iter(results))))
    return results


def episodes_to_run(policies: int, baselines: tuple[str, ...], episodes: int, search_episodes: int,
                    search_length: int, actions: int = 5) -> int:  # fmt: skip
    """How many episodes `evaluate` runs (for a progress bar); the open-loop search counts one per sequence."""
    from cavlab.rl.baselines import open_loop_sequences

    rows = policies + sum({"constant": actions}.get(b, 1) for b in baselines)
    return rows * episodes + (len(open_loop_sequences(search_length, actions)) if "open_loop" in baselines else 0)


def _run(env, actor: Baseline, seeds: list[int], progress: Callable[[], None] | None) -> dict[str, Any]:
    runs = []
    for s in seeds:
        runs.append(run_episode(env, actor, s))
        if progress is not None:
            progress()
    returns = [r["return"] for r in runs]
    mean, ci = mean_ci(returns)
    names = sorted({k for r in runs for k in r["terms"]})
    return {"returns": returns, "mean_return": mean, "ci95": ci,
            "failures": sum(r["outcome"] in FAILURES for r in runs), "completions": sum(r["completed"] for r in runs),
            "mean_speed_mps": float(np.nanmean([r["mean_speed_mps"] for r in runs])),
            "mean_terms": {k: float(np.mean([r["terms"].get(k, 0.0) for r in runs])) for k in names}}  # fmt: skip


def _paired(results: dict[str, dict[str, Any]], reference: str) -> None:
    """Add each policy's paired difference of returns to `reference` (same seeds), mean and 95 % CI."""
    ref = np.asarray(results[reference]["returns"])
    for r in results.values():
        diff, ci = mean_ci(list(np.asarray(r["returns"]) - ref))
        r.update(reference=reference, diff_to_reference=diff, diff_ci95=ci)


def _load(policy: str | Path, env) -> Callable[[np.ndarray], Any]:
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
