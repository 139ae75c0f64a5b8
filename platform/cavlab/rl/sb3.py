"""Training policies on cavlab's environments with Stable-Baselines3 (extra `rl`).

`train` runs PPO or DQN on one environment id with one SUMO per process (SB3's
`SubprocVecEnv` when several envs), logs to TensorBoard and Monitor files, and leaves the
policy and a learning curve; `load_policy` reads the policy back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cavlab.errors import UserError
from cavlab.rl.common import check_env_id, make_env, plot_returns

ALGORITHMS = ("ppo", "dqn")


def sb3():
    """The stable_baselines3 module, or a clear error if the `rl` extra is missing."""
    try:
        import stable_baselines3
    except ImportError:
        raise UserError('training needs Stable-Baselines3: pip install -e ".[rl]"') from None
    return stable_baselines3




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


def learning_curve(monitor: Path) -> list[tuple[float, int]]:
    """(return, length) of every finished training episode, in time order, from SB3's Monitor files
    (`load_results`: every *monitor.csv of the folder, each file's times shifted by its start time);
    none when the folder holds no Monitor file."""
    from stable_baselines3.common.monitor import LoadMonitorResultsError, load_results

    try:
        frame = load_results(str(monitor))
    except LoadMonitorResultsError:
        return []
    frame = frame.sort_values(["t", "r", "l"], kind="stable")  # ties in time: a fixed order, whatever the files' order
    return [(float(r), int(length)) for r, length in zip(frame["r"], frame["l"], strict=True)]


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


def load_policy(path: Path, env) -> Callable[[np.ndarray], Any]:
    """The greedy action of a policy.zip that `cavlab train` wrote (its algorithm from train.json beside it),
    checked against `env`'s observations."""
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
