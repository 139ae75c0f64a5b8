"""Training policies on cavlab's environments with Stable-Baselines3 (extra `rl`).

`train` runs PPO or DQN on one environment id with one SUMO per process (SB3's
`SubprocVecEnv` when several envs), logs to TensorBoard and Monitor files, and leaves the
policy, train.json and a learning curve. It checkpoints on the way (policy.zip and train.json,
every `checkpoint_every` steps), and goes on from a checkpoint (`resume`).

policy.zip is cavlab's own: a zip of `policy.pth` (the policy's weights) and
`policy.optimizer.pth` (the optimiser's state), both `torch.save`d state dicts of tensors.
`read_policy` loads them with `torch.load(weights_only=True)` and refuses anything else; no
pickle is ever loaded, so a policy file cannot run code. The networks are rebuilt from the
environment's spaces and the algorithm in train.json (`load_policy`). A Stable-Baselines3
save (`model.save`: a zip whose `data` holds pickled objects) is refused.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import time
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from cavlab.config.files import check_regular_file
from cavlab.errors import UserError
from cavlab.rl.common import TrainRecord, check_env_id, make_env, plot_returns, read_record, write_record

ALGORITHMS = ("ppo", "dqn")
POLICY = "policy.zip"
WEIGHTS, OPTIMIZER = "policy.pth", "policy.optimizer.pth"
MAX_POLICY_BYTES = 256 * 1024 * 1024
CHECKPOINT_EVERY = 2000  # environment steps


def sb3():
    """The stable_baselines3 module, or a clear error if the `rl` extra is missing."""
    try:
        import stable_baselines3
    except ImportError:
        raise UserError('training needs Stable-Baselines3: pip install -e ".[rl]"') from None
    return stable_baselines3


# ----------------------------------------------------------------------------- policy files


def save_policy(policy: Any, path: Path) -> None:
    """A policy's weights and optimiser state as cavlab's policy.zip, atomically (written aside, then renamed)."""
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, state in ((WEIGHTS, policy.state_dict()), (OPTIMIZER, policy.optimizer.state_dict())):
                buffer = io.BytesIO()
                torch.save(state, buffer)
                zf.writestr(name, buffer.getvalue())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_policy(path: Path) -> dict[str, Any]:
    """The states in a policy.zip written by `cavlab train` (entry name → state), each loaded weights-only.
    Anything else is a `UserError`: not a zip, other entries (a Stable-Baselines3 save among them), an
    entry over the size limit, or an entry that holds more than tensors."""
    import torch

    check_regular_file(path, "policy", MAX_POLICY_BYTES)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = [info.filename for info in infos]
            if "data" in names:
                raise UserError(
                    f"{path}: a Stable-Baselines3 save (its 'data' holds pickled objects, which cavlab never "
                    f"loads); give a {POLICY} written by `cavlab train`"
                )
            others = sorted(set(names) - {WEIGHTS, OPTIMIZER})
            if others or WEIGHTS not in names or len(names) != len(set(names)):
                raise UserError(
                    f"{path}: not a {POLICY} written by `cavlab train` (it holds {', '.join(names) or 'nothing'}; "
                    f"allowed: {WEIGHTS}, {OPTIMIZER})"
                )
            if sum(info.file_size for info in infos) > MAX_POLICY_BYTES:
                raise UserError(f"{path}: unpacks to over {MAX_POLICY_BYTES // 2**20} MiB; at most that is allowed")
            states = {}
            for info in infos:
                data = zf.read(info)
                try:
                    with warnings.catch_warnings():  # e.g. torch's note on an old pickle protocol
                        warnings.simplefilter("ignore")
                        states[info.filename] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
                except Exception:  # the weights-only unpickler's refusal among them, whose advice is not ours
                    raise UserError(
                        f"{path}: {info.filename} is not a torch file of tensors only (cavlab loads weights, never "
                        f"pickled objects)"
                    ) from None
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError):
        raise UserError(f"{path}: not a {POLICY} written by `cavlab train` (not a readable zip archive)") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    return states


def _load_weights(module: Any, state: Any, path: Path) -> None:
    """`state` into `module` if it holds exactly the module's tensors, shapes included, all finite."""
    import torch

    expected = module.state_dict()
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: {WEIGHTS} is not a state dict of tensors")
    missing, unknown = [k for k in expected if k not in state], [k for k in state if k not in expected]
    if missing or unknown:
        what = f"lacks '{missing[0]}'" if missing else f"has '{unknown[0]}'"
        raise UserError(f"{path}: not weights of this policy ({WEIGHTS} {what}); was it trained with --algo as here?")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise UserError(
                f"{path}: trained for other observations or actions ({key} is {tuple(state[key].shape)}, this "
                f"environment needs {tuple(tensor.shape)}): use the same --env options as for training"
            )
        if state[key].is_floating_point() and not bool(torch.isfinite(state[key]).all()):
            raise UserError(f"{path}: {key} holds NaN or infinite weights")
    module.load_state_dict(state)


def _policy_class(algo: str) -> Any:
    lib = sb3()
    return (lib.PPO if algo == "ppo" else lib.DQN).policy_aliases["MlpPolicy"]


def load_policy(path: Path, env) -> Callable[[np.ndarray], Any]:
    """The greedy action of a policy.zip that `cavlab train` wrote (its algorithm from train.json beside it),
    the networks rebuilt for `env`'s spaces; the same actions as the trained model's `predict`."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such policy (a {POLICY} or a checkpoint/ written by `cavlab train`)")
    states = read_policy(path)
    record = read_record(path.parent)
    if record.backend != "sb3":
        raise UserError(f"{path}: train.json beside it is of an RLlib run; give its checkpoint/ folder")
    policy = _policy_class(record.algo)(env.observation_space, env.action_space, lr_schedule=lambda _: 0.0)
    _load_weights(policy, states[WEIGHTS], path)
    policy.set_training_mode(False)
    return lambda obs: policy.predict(obs, deterministic=True)[0]


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainResult:
    timesteps: int
    episodes: int
    wall_time_s: float


def _training_env(env_id: str, in_worker: bool, **env_kwargs: Any) -> gym.Env:
    """One training environment. In a SubprocVecEnv worker it ignores Ctrl-C: the main process stops
    training and then closes the workers in order."""
    if in_worker:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return gym.make(env_id, **env_kwargs)


def _next_monitor_rank(monitor: Path) -> int:
    """The first Monitor file number not used yet (a resumed run adds files beside the earlier ones)."""
    ranks = [int(p.name.split(".")[0]) for p in monitor.glob("*.monitor.csv") if p.name.split(".")[0].isdigit()]
    return max(ranks, default=-1) + 1


def train(
    env_id: str,
    algo: str,
    timesteps: int,
    n_envs: int,
    seed: int,
    env_kwargs: dict[str, Any],
    folder: Path,
    progress: Callable[[int], None] | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
    resume: TrainRecord | None = None,
) -> TrainResult:
    """Train `algo` until `timesteps` env steps; writes policy.zip, train.json, learning_curve.png, monitor/ and
    tensorboard/ into `folder`, policy.zip and train.json (`complete` false) also every `checkpoint_every` steps.
    With `resume` (the record of `folder`'s checkpoint) it goes on from the checkpoint's weights, optimiser state
    and step count; a DQN refills its replay buffer first. Ctrl-C stops it with the last checkpoint in `folder`."""
    lib = sb3()
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    if algo not in ALGORITHMS:
        raise UserError(f"unknown algorithm '{algo}' (allowed: {', '.join(ALGORITHMS)})")
    if timesteps < 1 or n_envs < 1:
        raise UserError("need --timesteps ≥ 1 and --envs ≥ 1")
    if checkpoint_every < 1:
        raise UserError("need --checkpoint-every ≥ 1")
    done = resume.timesteps if resume is not None else 0
    if done >= timesteps:
        raise UserError(f"{folder}: already trained for {done} steps; give --timesteps over {done} to train on")
    probe = make_env(env_id, env_kwargs)  # validates the options here, not in a worker
    discrete = hasattr(probe.action_space, "n")
    probe.close()
    if algo == "dqn" and not discrete:
        raise UserError("DQN needs discrete actions: use --algo ppo or action.type=discrete_meta")
    if algo == "dqn" and n_envs > 1:
        raise UserError("DQN here trains on one environment: use --envs 1")
    states = read_policy(folder / POLICY) if resume is not None else None
    monitor = folder / "monitor"
    run_seed = (seed + done) % 2**32  # a resumed run meets other traffic than the first steps did
    venv = make_vec_env(
        partial(_training_env, check_env_id(env_id), n_envs > 1), n_envs=n_envs, seed=run_seed,
        start_index=_next_monitor_rank(monitor), monitor_dir=str(monitor), env_kwargs=env_kwargs,
        # libsumo runs one simulation per process: several envs need several processes
        vec_env_cls=SubprocVecEnv if n_envs > 1 else DummyVecEnv,
    )  # fmt: skip
    try:
        common = {"verbose": 0, "seed": run_seed, "tensorboard_log": str(folder / "tensorboard"), "device": "auto"}
        if algo == "ppo":
            model = lib.PPO("MlpPolicy", venv, n_steps=max(64, 512 // n_envs), batch_size=64, n_epochs=10,
                            learning_rate=5e-4, gamma=0.9, **common)  # fmt: skip
        else:
            model = lib.DQN("MlpPolicy", venv, learning_rate=5e-4, buffer_size=15_000, learning_starts=200 + done,
                            batch_size=32, gamma=0.9, train_freq=1, target_update_interval=50,
                            exploration_fraction=0.5, **common)  # fmt: skip
        if states is not None:
            _load_weights(model.policy, states[WEIGHTS], folder / POLICY)
            if OPTIMIZER in states:
                model.policy.optimizer.load_state_dict(states[OPTIMIZER])
            model.num_timesteps = done
        earlier_s = resume.wall_time_s if resume is not None else 0.0
        record = TrainRecord(env_id=env_id, algo=algo, backend="sb3", timesteps=done, target_timesteps=timesteps,
                             complete=False, envs=n_envs, seed=seed, env_kwargs=env_kwargs, episodes=0,
                             wall_time_s=earlier_s)  # fmt: skip
        started = time.perf_counter()

        def save(complete: bool, wall_s: float) -> None:
            save_policy(model.policy, folder / POLICY)  # the weights first: train.json never names steps not saved
            update = {"timesteps": model.num_timesteps, "complete": complete, "episodes": len(learning_curve(monitor)),
                      "wall_time_s": round(wall_s, 1)}  # fmt: skip
            write_record(folder, record.model_copy(update=update))

        class Checkpoints(BaseCallback):
            """Progress at every step; a checkpoint when a rollout starts (the weights just updated) and
            `checkpoint_every` steps have passed since the last one."""

            saved = done

            def _on_rollout_start(self) -> None:
                if self.num_timesteps - self.saved >= checkpoint_every:
                    save(False, earlier_s + time.perf_counter() - started)
                    self.saved = self.num_timesteps

            def _on_step(self) -> bool:
                if progress is not None:
                    progress(self.num_timesteps)
                return True

        model.learn(total_timesteps=timesteps - done, callback=Checkpoints(), tb_log_name=algo,
                    reset_num_timesteps=resume is None)  # fmt: skip
    except BaseException as exc:
        with contextlib.suppress(Exception):  # a worker that died must not hide why training stopped
            venv.close()
        if isinstance(exc, KeyboardInterrupt):
            plot_learning_curve(learning_curve(monitor), folder / "learning_curve.png", f"{algo.upper()} on {env_id}")
        raise
    wall_s = earlier_s + time.perf_counter() - started
    venv.close()
    save(True, wall_s)
    episodes = learning_curve(monitor)
    plot_learning_curve(episodes, folder / "learning_curve.png", f"{algo.upper()} on {env_id}")
    return TrainResult(model.num_timesteps, len(episodes), wall_s)


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
