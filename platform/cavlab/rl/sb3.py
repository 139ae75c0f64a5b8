"""Training and evaluation of policies on cavlab's environments (Stable-Baselines3, extra `rl`).

`train` runs PPO or DQN on one environment id with one SUMO per process (SB3's
`SubprocVecEnv` when several envs), logs to TensorBoard and Monitor files, and leaves the
policy and a learning curve. `evaluate` runs a trained policy, a random policy and the
rule-based driver over the same seeded episodes.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cavlab.errors import UserError
from cavlab.runs.stats import mean_ci

ALGORITHMS = ("ppo", "dqn")
BASELINES = ("random", "rule")


def sb3():
    """The stable_baselines3 module, or a clear error if the `rl` extra is missing."""
    try:
        import stable_baselines3
    except ImportError:
        raise UserError('training needs Stable-Baselines3: pip install -e ".[rl]"') from None
    return stable_baselines3


def check_env_id(env_id: str) -> str:
    """The id to give `gymnasium.make` in fresh worker processes (module-prefixed)."""
    from cavlab.envs import ENV_IDS

    if env_id not in ENV_IDS:
        raise UserError(f"unknown environment '{env_id}' (available: {', '.join(ENV_IDS)})")
    return f"cavlab.envs:{env_id}"


def make_env(env_id: str, env_kwargs: dict[str, Any]):
    """One environment, its options validated (bad options raise `UserError`)."""
    import gymnasium as gym

    return gym.make(check_env_id(env_id), **env_kwargs)


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainResult:
    timesteps: int
    episodes: int
    wall_time_s: float


def train(
    env_id: str,
    algo: str,
    timesteps: int,
    n_envs: int,
    seed: int,
    env_kwargs: dict[str, Any],
    folder: Path,
    progress: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train `algo` for `timesteps` env steps; writes policy.zip, monitor/, tensorboard/ into `folder`."""
    lib = sb3()
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    if algo not in ALGORITHMS:
        raise UserError(f"unknown algorithm '{algo}' (allowed: {', '.join(ALGORITHMS)})")
    if timesteps < 1 or n_envs < 1:
        raise UserError("need --timesteps ≥ 1 and --envs ≥ 1")
    probe = make_env(env_id, env_kwargs)  # validates the options here, not in a worker
    discrete = hasattr(probe.action_space, "n")
    probe.close()
    if algo == "dqn" and not discrete:
        raise UserError("DQN needs discrete actions: use --algo ppo or action.type=discrete_meta")
    if algo == "dqn" and n_envs > 1:
        raise UserError("DQN here trains on one environment: use --envs 1")
    monitor = folder / "monitor"
    venv = make_vec_env(
        check_env_id(env_id), n_envs=n_envs, seed=seed, monitor_dir=str(monitor), env_kwargs=env_kwargs,
        # libsumo runs one simulation per process: several envs need several processes
        vec_env_cls=SubprocVecEnv if n_envs > 1 else DummyVecEnv,
    )  # fmt: skip
    common = {"verbose": 0, "seed": seed, "tensorboard_log": str(folder / "tensorboard"), "device": "auto"}
    if algo == "ppo":
        model = lib.PPO("MlpPolicy", venv, n_steps=max(64, 512 // n_envs), batch_size=64, n_epochs=10,
                        learning_rate=5e-4, gamma=0.9, **common)  # fmt: skip
    else:
        model = lib.DQN("MlpPolicy", venv, learning_rate=5e-4, buffer_size=15_000, learning_starts=200,
                        batch_size=32, gamma=0.9, train_freq=1, target_update_interval=50,
                        exploration_fraction=0.5, **common)  # fmt: skip

    class Progress(BaseCallback):
        def _on_step(self) -> bool:
            if progress is not None:
                progress(self.num_timesteps)
            return True

    started = time.perf_counter()
    try:
        model.learn(total_timesteps=timesteps, callback=Progress(), tb_log_name=algo)
    finally:
        venv.close()
    wall = time.perf_counter() - started
    model.save(folder / "policy.zip")
    episodes = learning_curve(monitor)
    plot_learning_curve(episodes, folder / "learning_curve.png", f"{algo.upper()} on {env_id}")
    return TrainResult(model.num_timesteps, len(episodes), wall)


def learning_curve(monitor: Path) -> list[tuple[float, float]]:
    """(return, length) of every finished training episode, in time order, from SB3's Monitor files."""
    episodes = []
    for path in sorted(monitor.glob("*.monitor.csv")):
        with path.open() as fh:
            fh.readline()  # the JSON header
            episodes += [(float(row["t"]), float(row["r"]), int(row["l"])) for row in csv.DictReader(fh)]
    episodes.sort()
    return [(r, length) for _, r, length in episodes]


def plot_learning_curve(episodes: list[tuple[float, int]], path: Path, title: str) -> None:
    """Episode return against env steps, with a moving average over 20 episodes."""
    lines = []
    if episodes:
        returns = np.array([r for r, _ in episodes])
        steps = np.cumsum([n for _, n in episodes])
        k = min(20, len(returns))
        smooth = np.convolve(returns, np.ones(k) / k, mode="valid")
        lines = [(steps, returns, ".", {"alpha": 0.3, "label": "episode"}),
                 (steps[k - 1 :], smooth, "-", {"label": f"mean of {k}"})]  # fmt: skip
    plot_returns(lines, path, title)


def plot_returns(lines: list[tuple[Any, Any, str, dict[str, Any]]], path: Path, title: str) -> None:
    """Episode returns against environment steps: each line is (steps, returns, format, plot keywords)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for steps, returns, fmt, style in lines:
        ax.plot(steps, returns, fmt, color="tab:blue", **style)
    if lines:
        ax.legend()
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- evaluation


def rule_based_action(env) -> int:
    """A gap-acceptance driver on the ego's true surroundings (discrete meta actions): change
    to the target lane (else the left one) when the leader is slower and both gaps there exceed
    the safe distance 0.9·v + 3 m plus the closing over 3 s; brake when closer than that to the
    leader; otherwise aim for the fastest target speed."""
    from cavlab.envs.actions import FASTER, IDLE, LANE_LEFT, LANE_RIGHT, SLOWER

    base = env.unwrapped
    traffic, ego = base.traffic, base.ego
    world, row = traffic.world, ego.row
    x, v, lane = world.x_m[row], world.speed_mps[row], int(world.lane[row])

    def gaps(in_lane: int) -> tuple[float, float, float, float]:
        """(gap ahead, leader speed, gap behind, follower speed) in a lane."""
        rows = np.flatnonzero((world.lane == in_lane) & (np.arange(len(world)) != row))
        ahead, behind = rows[world.x_m[rows] > x], rows[world.x_m[rows] <= x]
        front = (np.inf, v)
        if len(ahead):
            r = ahead[np.argmin(world.x_m[ahead])]
            front = (world.x_m[r] - world.length_m[r] - x, world.speed_mps[r])
        rear = (np.inf, v)
        if len(behind):
            r = behind[np.argmax(world.x_m[behind])]
            rear = (x - world.length_m[row] - world.x_m[r], world.speed_mps[r])
        return (*front, *rear)

    def safe(gap: float, follower_v: float, leader_v: float) -> bool:
        return gap >= 0.9 * follower_v + 3.0 + max(0.0, follower_v - leader_v) * 3.0

    gap, v_lead, _, _ = gaps(lane)
    if world.time_s >= ego.lane_change_until_s and v_lead < v - 0.5:
        target = base.config.target_lane if base.config.target_lane is not None else lane + 1
        step = int(np.sign(target - lane)) or 1
        if traffic._lane_exists(row, lane + step):
            g_front, v_front, g_rear, v_rear = gaps(lane + step)
            if safe(g_front, v, v_front) and safe(g_rear, v_rear, v):
                return LANE_LEFT if step > 0 else LANE_RIGHT
    if not safe(gap, v, v_lead):
        return SLOWER
    return FASTER if gap > 2 * (0.9 * v + 3.0) else IDLE


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
        from cavlab.rl.rllib import load_policy

        return load_policy(path)
    lib = sb3()
    if not path.is_file():
        raise UserError(f"{path}: no such policy (a policy.zip or a checkpoint/ written by `cavlab train`)")
    try:
        meta = json.loads((path.parent / "train.json").read_text())
        algo = meta["algo"]
    except (OSError, ValueError, KeyError):
        raise UserError(f"{path}: no train.json beside it naming the algorithm") from None
    try:
        model = (lib.PPO if algo == "ppo" else lib.DQN).load(path, device="cpu")
    except Exception as exc:
        raise UserError(f"{path}: not a {algo.upper()} policy ({exc.__class__.__name__}: {exc})") from None
    if model.observation_space.shape != env.observation_space.shape:
        raise UserError(
            f"{path}: trained on observations of shape {model.observation_space.shape}, this environment gives "
            f"{env.observation_space.shape}: use the same --env options as for training"
        )
    return lambda obs: model.predict(obs, deterministic=True)[0]


def plot_evaluation(results: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Mean episode return per policy with its 95 % confidence interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    means = [results[n]["mean_return"] for n in names]
    cis = [0.0 if np.isnan(results[n]["ci95"]) else results[n]["ci95"] for n in names]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(names, means, yerr=cis, capsize=6, color=["tab:blue", "tab:gray", "tab:orange", "tab:green"][: len(names)])
    ax.set_ylabel("mean episode return")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
