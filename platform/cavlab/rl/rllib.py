"""Training with RLlib (PPO, new API stack) on a local Ray instance or a Ray cluster (extra `distributed`).

libsumo runs one simulation per process, so every environment lives in its own remote
EnvRunner actor (`num_envs_per_env_runner=1`, `num_env_runners` ≥ 1); the driver holds the
learner and no environment (`env_runners=0`: the driver samples, one environment). Observations
are flattened (`RllibEnv`), as SB3's MlpPolicy does.

Multi-agent (`multi_agent=True`): every CAV of a task's traffic is an agent (`TrafficParallelEnv`
through `RllibMultiAgentEnv`, whose spaces cover every possible agent, so CAVs can enter
mid-episode), all driven by one shared PPO policy (module `shared_policy`, in the checkpoint
where a single-agent run has `default_policy`).

A local Ray instance listens on the loopback only (`cavlab.runs.ray_local.init_ray`).

RLlib's own loaders (`RLModule.from_checkpoint`, `Algorithm.from_checkpoint`) unpickle the
checkpoint's `class_and_ctor_args.pkl` and state files, so a checkpoint can run code through them.
`load_policy` uses neither: it rebuilds the module from cavlab's own settings and the
environment's spaces and reads only the weights (`module_state.pkl`) with an unpickler that
accepts a dict of numpy arrays and refuses every other class or function.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import math
import os
import pickle
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from cavlab.config.files import read_bytes, read_text
from cavlab.envs.multi_agent import TrafficParallelEnv
from cavlab.errors import UserError
from cavlab.rl.common import TrainRecord, check_env_id, make_env, plot_returns, read_record, write_record
from cavlab.runs.ray_local import init_ray

CHECKPOINT = "checkpoint"
CURVE = "learning_curve.csv"
MODULE_ID = "default_policy"
SHARED_MODULE_ID = "shared_policy"  # multi-agent: RLlib runs a multi-agent setup only for another id than MODULE_ID
RLMODULES = Path("learner_group", "learner", "rl_module")
RLMODULE_SUBDIR = RLMODULES / MODULE_ID
MODULE_STATE = "module_state.pkl"
CURVE_HEADER = ["env_steps", "episode_return_mean"]
MAX_STATE_BYTES = 256 * 1024 * 1024
# what a pickled dict of numpy arrays needs (numpy 1 and 2 names), and nothing else
_ARRAY_GLOBALS = frozenset({
    ("collections", "OrderedDict"), ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
})  # fmt: skip


class RllibEnv(gym.wrappers.FlattenObservation):
    """A cavlab environment for RLlib, built from `env_config = {"env_id": ..., "env_kwargs": {...}}`,
    with flattened observations. A class (not a registered name), so a checkpoint restores in a
    fresh process without `register_env`."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(gym.make(check_env_id(config["env_id"]), **dict(config.get("env_kwargs") or {})))


def make_parallel_env(env_id: str, env_kwargs: dict[str, Any]) -> TrafficParallelEnv:
    """Every CAV of `env_id`'s traffic an agent, observations flat; options checked (bad ones raise `UserError`),
    no SUMO started."""
    check_env_id(env_id)
    for key, why in (("task", "ENV_ID is the task"), ("flatten_observations", "RLlib always gets flat observations")):
        if key in env_kwargs:
            raise UserError(f"environment option '{key}' is not for --multi-agent training: {why}")
    return TrafficParallelEnv(task=env_id, flatten_observations=True, **env_kwargs)


def __getattr__(name: str) -> Any:
    """`RllibMultiAgentEnv`, made on first use: it subclasses RLlib's `MultiAgentEnv`, so Ray is imported then."""
    if name == "RllibMultiAgentEnv":
        return _multi_agent_env_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _multi_agent_env_class() -> type:
    _rllib()
    from ray.rllib.env.multi_agent_env import MultiAgentEnv

    class RllibMultiAgentEnv(MultiAgentEnv):
        """`make_parallel_env` for RLlib, from `env_config = {"env_id": ..., "env_kwargs": {...}}`: the spaces of
        every possible agent are there from the start (RLlib's `ParallelPettingZooEnv` knows only the agents of
        the first reset, and fails on a CAV that enters later); the episode is over for all (`__all__`) once no
        agent is left: truncated at `episode_s`, else terminated."""

        def __init__(self, config: dict[str, Any]) -> None:
            super().__init__()
            self.env = make_parallel_env(config["env_id"], dict(config.get("env_kwargs") or {}))
            self.possible_agents = list(self.env.possible_agents)
            self.agents = []
            self.observation_spaces = dict(self.env.observation_spaces)
            self.action_spaces = dict(self.env.action_spaces)
            self.observation_space = gym.spaces.Dict(self.observation_spaces)
            self.action_space = gym.spaces.Dict(self.action_spaces)

        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
            observations, infos = self.env.reset(seed=seed, options=options)
            self.agents = list(self.env.agents)
            return observations, infos

        def step(self, action_dict: dict[str, Any]):
            observations, rewards, terminated, truncated, infos = self.env.step(action_dict)
            self.agents = list(self.env.agents)
            over, cut = not self.agents, any(truncated.values())
            terminated["__all__"], truncated["__all__"] = over and not cut, over and cut
            return observations, rewards, terminated, truncated, infos

        def close(self) -> None:
            self.env.close()

    RllibMultiAgentEnv.__qualname__ = "RllibMultiAgentEnv"  # pickled by reference, through __getattr__
    return RllibMultiAgentEnv


def _shared_policy(agent_id: str, episode: Any, **kwargs: Any) -> str:
    """Every agent to the one policy."""
    return SHARED_MODULE_ID


@dataclass(frozen=True)
class RllibResult:
    timesteps: int
    episodes: int
    wall_time_s: float  # the training iterations (sampling and updates) and the checkpoints, earlier runs included
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
    checkpoint_every: int | None = None,
    resume: TrainRecord | None = None,
    multi_agent: bool = False,
    train_batch_size: int = 512,
) -> RllibResult:
    """Train PPO until `timesteps` env steps are sampled, on `env_runners` remote env runners (one
    SUMO each; 0: in this process), `train_batch_size` env steps per update; with `multi_agent`, every
    CAV of `env_id`'s traffic is an agent and one policy drives them all. Writes checkpoint/, train.json,
    learning_curve.csv and learning_curve.png into `out_dir`; checkpoint/, train.json (`complete` false) and
    learning_curve.csv also after the iteration that passes every `checkpoint_every` steps. With `resume`
    (the record of `out_dir`'s checkpoint) it goes on from the checkpoint's weights and step count (not its
    optimiser state). Ctrl-C stops it with the last checkpoint in `out_dir`. Ray runs locally (address None)
    or joins the cluster at `address`; it is shut down on every exit path."""

    ray = _rllib()
    from ray.rllib.algorithms.ppo import PPOConfig

    if timesteps < 1 or env_runners < 0:
        raise UserError("need --timesteps ≥ 1 and --envs ≥ 0")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise UserError("need --checkpoint-every ≥ 1")
    if resume is not None and bool(getattr(resume, "multi_agent", False)) != multi_agent:
        kind, flag = ("a single-agent", "without") if multi_agent else ("a multi-agent", "with")
        raise UserError(f"--resume: {out_dir} holds {kind} run; resume it {flag} --multi-agent")
    done = resume.timesteps if resume is not None else 0
    if done >= timesteps:
        raise UserError(f"{out_dir}: already trained for {done} steps; give --timesteps over {done} to train on")
    # validates the options here, not in a runner (starts no SUMO)
    (make_parallel_env if multi_agent else make_env)(env_id, env_kwargs).close()
    module_id = SHARED_MODULE_ID if multi_agent else MODULE_ID
    state = read_module_state(out_dir / CHECKPOINT / RLMODULES / module_id / MODULE_STATE) if resume else None
    curve = read_curve(out_dir / CURVE) if resume else []
    kept = list(curve)
    env_class = _multi_agent_env_class() if multi_agent else RllibEnv
    config = (
        PPOConfig()
        .environment(env_class, env_config={"env_id": env_id, "env_kwargs": env_kwargs})
        .env_runners(num_env_runners=env_runners, num_envs_per_env_runner=1)  # one libsumo per process
        .framework("torch")
        # the SB3 backend's PPO: 512 steps per update, minibatch 64, 10 epochs, lr 5e-4, γ 0.9, and SB3's
        # defaults where RLlib's differ (GAE λ, clip, value-loss weight, gradient clip, no KL term);
        # MlpPolicy's networks (policy and value apart, 2 × 64 tanh each)
        .training(
            train_batch_size_per_learner=train_batch_size,
            minibatch_size=min(64, train_batch_size),
            num_epochs=10,
            lr=5e-4,
            gamma=0.9,
            lambda_=0.95,
            clip_param=0.2,
            vf_loss_coeff=0.5,
            grad_clip=0.5,
            use_kl_loss=False,
        )
        .rl_module(model_config=_model_config())
        .debugging(seed=(seed + done) % 2**32)  # a resumed run meets other traffic than the first steps did
    )
    if multi_agent:
        config = config.multi_agent(policies={SHARED_MODULE_ID}, policy_mapping_fn=_shared_policy)
    earlier_s = resume.wall_time_s if resume is not None else 0.0
    record = TrainRecord(env_id=env_id, algo="ppo", backend="rllib", timesteps=done, target_timesteps=timesteps,
                         complete=False, envs=max(env_runners, 1), seed=seed, env_kwargs=env_kwargs,
                         episodes=resume.episodes if resume is not None else 0, wall_time_s=earlier_s,
                         ray=address or "local", **({"multi_agent": True} if multi_agent else {}))  # fmt: skip
    title = f"PPO (RLlib{', multi-agent' if multi_agent else ''}) on {env_id}"
    algo = None
    with _quiet_rllib():
        try:
            launched = time.perf_counter()
            init_ray(address, env_runners + 1)
            algo = config.build_algo()
            started = time.perf_counter()
            if state is not None:
                _check_weights(out_dir / CHECKPOINT, state, algo.learner_group.get_weights()[module_id])
                algo.learner_group.set_weights({module_id: {k: v.astype(np.float32) for k, v in state.items()}})
                algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group,
                                                   inference_only=True, timeout_seconds=None)  # fmt: skip
            record = record.model_copy(update={"startup_s": round(started - launched, 1)})
            steps, saved = done, done
            while steps < timesteps:
                runners = algo.train()["env_runners"]
                steps = done + int(runners.get("num_env_steps_sampled_lifetime", 0))  # RLlib counts from 0
                episodes = record.episodes + int(runners.get("num_episodes_lifetime", 0))
                mean = runners.get("episode_return_mean")
                if mean is not None and np.isfinite(mean):
                    curve.append((steps, float(mean)))
                if progress is not None:
                    progress(steps)
                update = {"timesteps": steps, "episodes": episodes,
                          "wall_time_s": round(earlier_s + time.perf_counter() - started, 1)}  # fmt: skip
                if steps >= timesteps:
                    update["complete"] = True
                elif checkpoint_every is None or steps - saved < checkpoint_every:
                    continue
                _save_checkpoint(algo, out_dir, record.model_copy(update=update), curve)
                saved, kept = steps, list(curve)
            wall = earlier_s + time.perf_counter() - started
        except KeyboardInterrupt:
            plot_curve(kept, Path(out_dir, "learning_curve.png"), title)  # the curve of the checkpoint kept
            raise
        finally:
            if algo is not None:
                algo.stop()
            ray.shutdown()
    plot_curve(curve, Path(out_dir, "learning_curve.png"), title)
    return RllibResult(steps, episodes, wall, started - launched, curve)


def _save_checkpoint(algo: Any, out_dir: Path, record: TrainRecord, curve: list[tuple[int, float]]) -> None:
    """checkpoint/ (written aside, then swapped in), learning_curve.csv and then train.json, with Ctrl-C
    held until all three are written: train.json never names steps that checkpoint/ does not hold."""
    final, new, old = (Path(out_dir, name) for name in (CHECKPOINT, f".{CHECKPOINT}.new", f".{CHECKPOINT}.old"))
    with _interrupts_held():
        shutil.rmtree(new, ignore_errors=True)
        algo.save_to_path(str(new.resolve()))
        if final.exists():
            os.rename(final, old)
        os.rename(new, final)
        shutil.rmtree(old, ignore_errors=True)
        write_curve(curve, Path(out_dir, CURVE))
        write_record(out_dir, record)


@contextmanager
def _interrupts_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM held back in the block and raised as KeyboardInterrupt after it (main thread only:
    elsewhere Python delivers no signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, _: caught.append(signum)) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt


@contextmanager
def _quiet_rllib() -> Iterator[None]:
    """RLlib's warnings off: "You are running PPO on the new API stack!" at every build, and Ray's deprecation
    warning for the module config RLlib itself still builds."""
    logs = [logging.getLogger(name) for name in ("ray.rllib", "ray._common.deprecation")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(logs, levels, strict=True):
            log.setLevel(level)


def _model_config() -> Any:
    """SB3's MlpPolicy networks: policy and value apart, 2 × 64 tanh each."""
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    return DefaultModelConfig(fcnet_hiddens=[64, 64], fcnet_activation="tanh", vf_share_layers=False)


def write_curve(curve: list[tuple[int, float]], path: Path) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CURVE_HEADER)
        writer.writerows(curve)


def read_curve(path: Path) -> list[tuple[int, float]]:
    """The (env steps, mean return) rows of a learning_curve.csv that `write_curve` wrote, checked."""
    rows = list(csv.reader(read_text(path, "learning curve").splitlines()))
    try:
        if rows[0] != CURVE_HEADER or any(len(row) != 2 for row in rows[1:]):
            raise ValueError
        curve = [(int(steps), float(mean)) for steps, mean in rows[1:]]
        if not all(steps >= 0 and math.isfinite(mean) for steps, mean in curve):
            raise ValueError
    except (IndexError, ValueError):
        raise UserError(
            f"{path}: not a learning curve written by `cavlab train` ({', '.join(CURVE_HEADER)} rows)"
        ) from None
    return curve


def plot_curve(curve: list[tuple[int, float]], path: Path, title: str) -> None:
    """RLlib's running mean episode return (last 100 episodes) against env steps."""

    lines = []
    if curve:
        steps, returns = zip(*curve, strict=True)
        lines = [(steps, returns, "o-", {"markersize": 3, "label": "mean of the last ≤ 100 episodes"})]
    plot_returns(lines, path, title)


def load_policy(checkpoint: Path, env: gym.Env | None = None) -> Callable[[np.ndarray], Any]:
    """The greedy policy of a checkpoint written by `train_rllib` (needs no Ray instance): maps an
    observation of `env` (flattened here; default: the training environment of train.json beside the
    checkpoint; of a multi-agent run, one agent's) to an action of its action space. Only the weights are
    read, without running code."""
    import torch

    _rllib()
    from ray.rllib.algorithms.ppo.ppo_catalog import PPOCatalog
    from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule

    checkpoint = Path(checkpoint)
    if not (checkpoint / RLMODULES).is_dir():
        raise UserError(f"{checkpoint}: not an RLlib checkpoint written by `cavlab train --backend rllib`")
    record = read_record(checkpoint.parent)
    if record.backend != "rllib":
        raise UserError(f"{checkpoint}: train.json beside it is of a Stable-Baselines3 run; give its policy.zip")
    multi_agent = bool(getattr(record, "multi_agent", False))
    state = read_module_state(checkpoint / RLMODULES / (SHARED_MODULE_ID if multi_agent else MODULE_ID) / MODULE_STATE)
    if env is not None:
        observation_space, space = env.observation_space, env.action_space
    elif multi_agent:
        agents = make_parallel_env(record.env_id, record.env_kwargs)  # for its spaces: starts no SUMO
        observation_space, space = agents.observation_space("cav_0"), agents.action_space("cav_0")
        agents.close()
    else:
        env = make_env(record.env_id, record.env_kwargs)  # for its spaces: starts no SUMO
        env.close()
        observation_space, space = env.observation_space, env.action_space
    with _quiet_rllib():
        module = DefaultPPOTorchRLModule(
            observation_space=gym.spaces.flatten_space(observation_space), action_space=space,
            inference_only=False, learner_only=False, model_config=asdict(_model_config()), catalog_class=PPOCatalog,
        )  # fmt: skip
    _check_weights(checkpoint, state, module.state_dict())
    module.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()})
    module.eval()
    dist_cls = module.get_inference_action_dist_cls()

    def act(obs: np.ndarray) -> Any:
        batch = {"obs": torch.as_tensor(np.asarray(obs, dtype=np.float32).reshape(1, -1))}
        with torch.no_grad():
            logits = module.forward_inference(batch)["action_dist_inputs"]
        action = dist_cls.from_logits(logits).to_deterministic().sample()[0].numpy()
        if isinstance(space, gym.spaces.Discrete):
            return int(action)
        return np.clip(action, space.low, space.high).astype(space.dtype)

    return act


def _check_weights(checkpoint: Path, state: dict[str, np.ndarray], expected: dict[str, Any]) -> None:
    """A `UserError` unless `state` holds exactly the arrays of `expected` (a module's weights), shapes included."""
    if set(state) != set(expected):
        key = sorted(set(state) ^ set(expected))[0]
        raise UserError(f"{checkpoint}: not weights of cavlab's PPO module ('{key}' differs); retrain with this cavlab")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise UserError(
                f"{checkpoint}: trained for other observations or actions ({key} is {state[key].shape}, this "
                f"environment needs {tuple(tensor.shape)}): use the same --env options as for training"
            )


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles containers of numpy arrays: any other class or function is refused before it is imported."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name}")
        return super().find_class(module, name)


def read_module_state(path: Path) -> dict[str, np.ndarray]:
    """An RLModule's weights (RLlib's module_state.pkl: names → float arrays), unpickled with `_ArrayUnpickler`;
    anything else is a `UserError`."""
    data = read_bytes(path, "RLlib module state", MAX_STATE_BYTES)
    try:
        state = _ArrayUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"{path}: holds objects other than arrays ({exc}); cavlab loads RLlib weights only as plain arrays"
        ) from None
    except Exception:
        raise UserError(f"{path}: not an RLlib module state (a pickled dict of weight arrays)") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, np.ndarray) and v.dtype.kind == "f" for k, v in state.items()
    ):
        raise UserError(f"{path}: not an RLlib module state (a dict of float weight arrays)")
    bad = next((k for k, v in state.items() if not np.isfinite(v).all()), None)
    if bad is not None:
        raise UserError(f"{path}: {bad} holds NaN or infinite weights")
    return state
