"""Training with RLlib (PPO, new API stack) on a local Ray instance or a Ray cluster (extra `distributed`).

libsumo runs one simulation per process, so every environment lives in its own remote
EnvRunner actor (`num_envs_per_env_runner=1`, `num_env_runners` ≥ 1); the driver holds the
learner and no environment. Observations are flattened (`RllibEnv`), as SB3's MlpPolicy does.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from cavlab.errors import UserError
from cavlab.rl.common import check_env_id, make_env, plot_returns

RLMODULE_SUBDIR = Path("learner_group", "learner", "rl_module", "default_policy")


class RllibEnv(gym.wrappers.FlattenObservation):
    """A cavlab environment for RLlib, built from `env_config = {"env_id": ..., "env_kwargs": {...}}`,
    with flattened observations. A class (not a registered name), so a checkpoint restores in a
    fresh process without `register_env`."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(gym.make(check_env_id(config["env_id"]), **dict(config.get("env_kwargs") or {})))


@dataclass(frozen=True)
class RllibResult:
    timesteps: int
    episodes: int
    wall_time_s: float  # the training iterations (sampling and updates) and the checkpoint
    startup_s: float  # Ray start and the env runners' construction
    curve: list[tuple[int, float]]  # (env steps, mean episode return) after each iteration with episodes


def _rllib() -> Any:
    """Ray, with RLlib importable, or a clear error naming the extra to install."""
    try:
        import ray
        import ray.rllib.algorithms.ppo  # needs dm-tree, scipy, pandas
    except ImportError as exc:
        raise UserError(f"training with RLlib needs Ray's RLlib ({exc}): pip install 'cavlab[distributed]'") from None
    return ray


def train_rllib(
    env_id: str,
    timesteps: int,
    env_runners: int,
    seed: int,
    env_kwargs: dict[str, Any],
    out_dir: Path,
    progress: Callable[[int], None] | None = None,
    address: str | None = None,
) -> RllibResult:
    """Train PPO until `timesteps` env steps are sampled, on `env_runners` remote env runners (one
    SUMO each); writes checkpoint/, learning_curve.csv and learning_curve.png into `out_dir`. Ray
    runs locally (address None) or joins the cluster at `address`; it is shut down on every exit path."""

    ray = _rllib()
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    if timesteps < 1 or env_runners < 1:
        raise UserError("need --timesteps ≥ 1 and --envs ≥ 1")
    make_env(env_id, env_kwargs).close()  # validates the options here, not in a runner (starts no SUMO)
    mlp = DefaultModelConfig(fcnet_hiddens=[64, 64], fcnet_activation="tanh", vf_share_layers=False)
    config = (
        PPOConfig()
        .environment(RllibEnv, env_config={"env_id": env_id, "env_kwargs": env_kwargs})
        .env_runners(num_env_runners=env_runners, num_envs_per_env_runner=1)  # one libsumo per process
        .framework("torch")
        # the SB3 backend's PPO: 512 steps per update, minibatch 64, 10 epochs, lr 5e-4, γ 0.9, and SB3's
        # defaults where RLlib's differ (GAE λ, clip, value-loss weight, gradient clip, no KL term);
        # MlpPolicy's networks (policy and value apart, 2 × 64 tanh each)
        .training(
            train_batch_size_per_learner=512,
            minibatch_size=64,
            num_epochs=10,
            lr=5e-4,
            gamma=0.9,
            lambda_=0.95,
            clip_param=0.2,
            vf_loss_coeff=0.5,
            grad_clip=0.5,
            use_kl_loss=False,
        )
        .rl_module(model_config=mlp)
        .debugging(seed=seed)
    )
    rllib_log = logging.getLogger("ray.rllib")
    level = rllib_log.level
    rllib_log.setLevel(logging.ERROR)  # e.g. "You are running PPO on the new API stack!" at every build
    algo = None
    try:
        launched = time.perf_counter()
        _init_ray(ray, address, env_runners + 1)
        algo = config.build_algo()
        started = time.perf_counter()
        steps, episodes, curve = 0, 0, []
        while steps < timesteps:
            runners = algo.train()["env_runners"]
            steps = int(runners.get("num_env_steps_sampled_lifetime", 0))
            episodes = int(runners.get("num_episodes_lifetime", 0))
            mean = runners.get("episode_return_mean")
            if mean is not None and np.isfinite(mean):
                curve.append((steps, float(mean)))
            if progress is not None:
                progress(steps)
        algo.save_to_path(str(Path(out_dir, "checkpoint").resolve()))
        wall = time.perf_counter() - started
    finally:
        if algo is not None:
            algo.stop()
        ray.shutdown()
        rllib_log.setLevel(level)
    write_curve(curve, Path(out_dir, "learning_curve.csv"))
    plot_curve(curve, Path(out_dir, "learning_curve.png"), f"PPO (RLlib) on {env_id}")
    return RllibResult(steps, episodes, wall, started - launched, curve)


def _init_ray(ray: Any, address: str | None, num_cpus: int) -> None:
    """A local Ray instance of `num_cpus` CPUs (address None), or the cluster at `address`."""
    if address is None:
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        return
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    except ConnectionError as exc:
        raise UserError(f"--ray {address}: cannot connect to a Ray cluster there ({exc})") from None


def write_curve(curve: list[tuple[int, float]], path: Path) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["env_steps", "episode_return_mean"])
        writer.writerows(curve)


def plot_curve(curve: list[tuple[int, float]], path: Path, title: str) -> None:
    """RLlib's running mean episode return (last 100 episodes) against env steps."""

    lines = []
    if curve:
        steps, returns = zip(*curve, strict=True)
        lines = [(steps, returns, "o-", {"markersize": 3, "label": "mean of the last ≤ 100 episodes"})]
    plot_returns(lines, path, title)


def load_policy(checkpoint: Path) -> Callable[[np.ndarray], Any]:
    """The greedy policy of a checkpoint written by `train_rllib` (needs no Ray instance): maps an
    environment's observation (flattened here) to an action of its action space."""
    import torch

    _rllib()
    from ray.rllib.core.rl_module.rl_module import RLModule

    path = Path(checkpoint) / RLMODULE_SUBDIR
    if not path.is_dir():
        raise UserError(f"{checkpoint}: not an RLlib checkpoint written by `cavlab train --backend rllib`")
    module = RLModule.from_checkpoint(str(path.resolve()))
    dist_cls = module.get_inference_action_dist_cls()
    space = module.action_space

    def act(obs: np.ndarray) -> Any:
        batch = {"obs": torch.as_tensor(np.asarray(obs, dtype=np.float32).reshape(1, -1))}
        with torch.no_grad():
            logits = module.forward_inference(batch)["action_dist_inputs"]
        action = dist_cls.from_logits(logits).to_deterministic().sample()[0].numpy()
        if isinstance(space, gym.spaces.Discrete):
            return int(action)
        return np.clip(action, space.low, space.high).astype(space.dtype)

    return act
