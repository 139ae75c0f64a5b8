"""Training policies on cavlab's environments with Stable-Baselines3 (extra `rl`).

`train` runs PPO or DQN on one environment id with one SUMO per process (SB3's
`SubprocVecEnv` when several envs), logs to TensorBoard and Monitor files, and leaves the
policy, train.json and a learning curve. It checkpoints on the way (policy.zip and train.json,
every `checkpoint_every` steps), goes on from a checkpoint (`resume`), evaluates the policy on
fixed seeds every `eval_every` steps (evaluation.csv, best_policy.zip), takes SB3's settings from
`hp` (checked against `PPOSettings` / `DQNSettings`) and sets the compute threads (`threads`).

policy.zip is cavlab's own: a zip of `policy.pth` (the policy's weights) and
`policy.optimizer.pth` (the optimiser's state), both `torch.save`d state dicts of tensors.
`read_policy` loads them with `torch.load(weights_only=True)` and refuses anything else; no
pickle is ever loaded, so a policy file cannot run code. The networks are rebuilt from the
environment's spaces and the algorithm in train.json (`load_policy`). A Stable-Baselines3
save (`model.save`: a zip whose `data` holds pickled objects) is refused.
"""

from __future__ import annotations

import contextlib
import csv
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
from pydantic import Field, PositiveInt, ValidationError

from cavlab.config.files import check_regular_file
from cavlab.config.scenario import InputModel
from cavlab.errors import UserError, validation_message
from cavlab.rl.common import TrainRecord, check_env_id, make_env, plot_returns, read_record, write_record

ALGORITHMS = ("ppo", "dqn")
POLICY, BEST_POLICY = "policy.zip", "best_policy.zip"
WEIGHTS, OPTIMIZER = "policy.pth", "policy.optimizer.pth"
MAX_POLICY_BYTES = 256 * 1024 * 1024
CHECKPOINT_EVERY = 2000  # environment steps
EVALUATION = "evaluation.csv"
EVAL_SEED = 2**31  # the evaluation episodes' seeds: EVAL_SEED, EVAL_SEED + 1, … (`cavlab evaluate` starts at 1000)
EVAL_EPISODES = 10
LEARNER_THREADS = 1  # torch threads of the learner; see `compute_threads`
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


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


def _policy_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    """MlpPolicy's keyword arguments from the training's settings: the hidden layers (`net_arch`) if set."""
    return {"net_arch": settings["net_arch"]} if settings.get("net_arch") is not None else {}


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
    policy = _policy_class(record.algo)(env.observation_space, env.action_space, lr_schedule=lambda _: 0.0,
                                        **_policy_kwargs(record.hyperparameters))  # fmt: skip
    _load_weights(policy, states[WEIGHTS], path)
    policy.set_training_mode(False)
    return lambda obs: policy.predict(obs, deterministic=True)[0]


# ----------------------------------------------------------------------------- settings and threads


class PPOSettings(InputModel):
    """PPO's settings (SB3's `PPO` arguments of these names, `net_arch` its MlpPolicy's hidden layers for the
    policy and the value network each); `n_steps` is per env, by default 512 across the envs (at least 64)."""

    n_steps: PositiveInt | None = None
    batch_size: int = Field(64, ge=2)
    n_epochs: PositiveInt = 10
    learning_rate: float = Field(5e-4, gt=0)
    gamma: float = Field(0.9, ge=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    clip_range: float = Field(0.2, gt=0)
    ent_coef: float = Field(0.0, ge=0)
    vf_coef: float = Field(0.5, ge=0)
    max_grad_norm: float = Field(0.5, gt=0)
    target_kl: float | None = Field(None, gt=0)
    net_arch: list[PositiveInt] | None = None


class DQNSettings(InputModel):
    """DQN's settings (SB3's `DQN` arguments of these names, `net_arch` its Q-network's hidden layers)."""

    learning_rate: float = Field(5e-4, gt=0)
    buffer_size: PositiveInt = 15_000
    learning_starts: int = Field(200, ge=0)
    batch_size: PositiveInt = 32
    tau: float = Field(1.0, gt=0, le=1)
    gamma: float = Field(0.9, ge=0, le=1)
    train_freq: PositiveInt = 1
    gradient_steps: PositiveInt = 1
    target_update_interval: PositiveInt = 50
    exploration_fraction: float = Field(0.5, ge=0, le=1)
    exploration_initial_eps: float = Field(1.0, ge=0, le=1)
    exploration_final_eps: float = Field(0.05, ge=0, le=1)
    max_grad_norm: float = Field(10.0, gt=0)
    net_arch: list[PositiveInt] | None = None


SETTINGS: dict[str, type[InputModel]] = {"ppo": PPOSettings, "dqn": DQNSettings}


def settings(algo: str, hp: dict[str, Any], n_envs: int) -> dict[str, Any]:
    """The algorithm's settings: the defaults with `hp` (`--hp key=value`) over them, checked; a `UserError`
    names the first bad key and what is allowed."""
    if algo not in ALGORITHMS:
        raise UserError(f"unknown algorithm '{algo}' (allowed: {', '.join(ALGORITHMS)})")
    model = SETTINGS[algo]
    try:
        values = model.model_validate(hp).model_dump()
    except ValidationError as exc:
        unknown = f"--hp {{field}}: not a setting of {algo.upper()} (allowed: {{allowed}})"
        raise UserError(
            validation_message(exc, model, unknown=unknown, invalid="--hp {field}: {msg}", show_input=True)
        ) from None
    if algo == "ppo" and values["n_steps"] is None:
        values["n_steps"] = max(64, 512 // n_envs)
    return values


@contextlib.contextmanager
def compute_threads(learner: int):
    """torch's compute threads in this process set to `learner` and the OpenMP/BLAS thread pools of the worker
    processes started in the block to one thread (their environment variables); both restored after. The
    learner's networks are small (2 × 64 units, minibatches of 64): a thread pool's synchronisation costs more
    than it saves, and its spinning threads take the cores the environment workers need."""
    import torch

    before, saved = torch.get_num_threads(), {k: os.environ.get(k) for k in THREAD_VARIABLES}
    os.environ.update(dict.fromkeys(THREAD_VARIABLES, "1"))
    torch.set_num_threads(learner)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainResult:
    timesteps: int
    episodes: int
    wall_time_s: float


def _training_env(env_id: str, in_worker: bool, **env_kwargs: Any) -> gym.Env:
    """One training environment. In a SubprocVecEnv worker it ignores Ctrl-C (the main process stops
    training and then closes the workers in order) and computes on one thread."""
    if in_worker:
        import torch

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        torch.set_num_threads(1)  # the worker's environment variables say so too, unless its forkserver is older
    return gym.make(env_id, **env_kwargs)


class Evaluation:
    """`episodes` greedy episodes of the policy in training, seeded EVAL_SEED, EVAL_SEED + 1, … at every
    evaluation, in a worker process of their own (libsumo runs one simulation per process, and the
    training's environment may be in this one). Each evaluation adds its episodes to evaluation.csv
    (timesteps, seed, return, length, outcome); best_policy.zip holds the policy of the best mean return."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], episodes: int, folder: Path,
                 record: TrainRecord | None) -> None:  # fmt: skip
        from stable_baselines3.common.vec_env import SubprocVecEnv

        self.episodes, self.folder = episodes, folder
        done = record.timesteps if record is not None else 0
        self.rows = [row for row in read_evaluations(folder) if row["timesteps"] <= done]
        self.best = (record.best_eval_timesteps, record.best_eval_return) if record is not None else (None, None)
        self.last = max((row["timesteps"] for row in self.rows), default=None)
        self.venv = SubprocVecEnv([partial(_training_env, check_env_id(env_id), True, **env_kwargs)])

    def __call__(self, model: Any) -> None:
        rows = []
        for k in range(self.episodes):
            self.venv.seed(EVAL_SEED + k)  # for the next reset
            obs, total, length = self.venv.reset(), 0.0, 0
            while True:
                action, _ = model.predict(obs, deterministic=True)
                obs, reward, done, infos = self.venv.step(action)
                total, length = total + float(reward[0]), length + 1
                if done[0]:
                    break
            outcome = infos[0].get("outcome") or ("time" if infos[0].get("TimeLimit.truncated") else "")
            rows.append({"timesteps": model.num_timesteps, "seed": EVAL_SEED + k, "return": total, "length": length,
                         "outcome": outcome})  # fmt: skip
        mean = float(np.mean([row["return"] for row in rows]))
        if self.best[1] is None or mean > self.best[1]:
            save_policy(model.policy, self.folder / BEST_POLICY)
            self.best = (model.num_timesteps, mean)
        self.rows += rows
        self.last = model.num_timesteps
        _write_evaluations(self.folder, self.rows)

    def close(self) -> None:
        self.venv.close()


def read_evaluations(folder: Path) -> list[dict[str, Any]]:
    """The rows of a training's evaluation.csv (none without one)."""
    path = Path(folder) / EVALUATION
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{"timesteps": int(r["timesteps"]), "seed": int(r["seed"]), "return": float(r["return"]),
                 "length": int(r["length"]), "outcome": r["outcome"]} for r in csv.DictReader(f)]  # fmt: skip


def _write_evaluations(folder: Path, rows: list[dict[str, Any]]) -> None:
    """evaluation.csv, atomically (written aside, then renamed)."""
    path = folder / EVALUATION
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, ["timesteps", "seed", "return", "length", "outcome"])
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def evaluation_curve(rows: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(timesteps, mean return) of every evaluation, in order."""
    by_step: dict[int, list[float]] = {}
    for row in rows:
        by_step.setdefault(row["timesteps"], []).append(row["return"])
    return [(step, float(np.mean(returns))) for step, returns in sorted(by_step.items())]


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
    hp: dict[str, Any] | None = None,
    threads: int = LEARNER_THREADS,
    eval_every: int | None = None,
    eval_episodes: int = EVAL_EPISODES,
) -> TrainResult:
    """Train `algo` until `timesteps` env steps; writes policy.zip, train.json, learning_curve.png, monitor/ and
    tensorboard/ into `folder`, policy.zip and train.json (`complete` false) also every `checkpoint_every` steps.
    `hp`: settings over the defaults (`settings`); `threads`: the learner's torch threads (`compute_threads`).
    With `eval_every`, `eval_episodes` seeded episodes every that many steps and at the end (`Evaluation`).
    With `resume` (the record of `folder`'s checkpoint) it goes on from the checkpoint's weights, optimiser state
    and step count; a DQN refills its replay buffer first. Ctrl-C stops it with the last checkpoint in `folder`."""
    sb3()
    hp = dict(hp or {})
    values = settings(algo, hp, n_envs)
    if timesteps < 1 or n_envs < 1:
        raise UserError("need --timesteps ≥ 1 and --envs ≥ 1")
    if checkpoint_every < 1:
        raise UserError("need --checkpoint-every ≥ 1")
    if threads < 1:
        raise UserError(f"--threads must be at least 1 (got {threads})")
    if eval_every is not None and (eval_every < 1 or eval_episodes < 1):
        raise UserError("need --eval-every ≥ 1 and --eval-episodes ≥ 1")
    done = resume.timesteps if resume is not None else 0
    if done >= timesteps:
        raise UserError(f"{folder}: already trained for {done} steps; give --timesteps over {done} to train on")
    run_seed = (seed + done) % 2**32  # a resumed run meets other traffic than the first steps did
    if eval_every is not None and any(EVAL_SEED <= run_seed + i < EVAL_SEED + eval_episodes for i in range(n_envs)):
        raise UserError(f"--seed {seed}: the training environments' seeds ({run_seed} on) would meet the "
                        f"evaluation's ({EVAL_SEED} on); give another --seed")  # fmt: skip
    probe = make_env(env_id, env_kwargs)  # validates the options here, not in a worker
    discrete = hasattr(probe.action_space, "n")
    probe.close()
    if algo == "dqn" and not discrete:
        raise UserError("DQN needs discrete actions: use --algo ppo or action.type=discrete_meta")
    if algo == "dqn" and n_envs > 1:
        raise UserError("DQN here trains on one environment: use --envs 1")
    states = read_policy(folder / POLICY) if resume is not None else None
    record = TrainRecord(env_id=env_id, algo=algo, backend="sb3", timesteps=done, target_timesteps=timesteps,
                         complete=False, envs=n_envs, seed=seed, env_kwargs=env_kwargs, episodes=0,
                         wall_time_s=resume.wall_time_s if resume is not None else 0.0, hp=hp,
                         hyperparameters=values, threads=threads, eval_every=eval_every,
                         eval_episodes=eval_episodes if eval_every is not None else None)  # fmt: skip
    with compute_threads(threads):
        return _train(record, run_seed, states, folder, progress, checkpoint_every, resume)


def _train(
    record: TrainRecord, run_seed: int, states: dict[str, Any] | None, folder: Path,
    progress: Callable[[int], None] | None, checkpoint_every: int, resume: TrainRecord | None,
) -> TrainResult:  # fmt: skip
    """`train` once its inputs are checked: the SB3 model, its callbacks and the files."""
    lib = sb3()
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    env_id, algo, n_envs, done = record.env_id, record.algo, record.envs, record.timesteps
    monitor = folder / "monitor"
    title = f"{algo.upper()} on {env_id}"
    venv = make_vec_env(
        partial(_training_env, check_env_id(env_id), n_envs > 1), n_envs=n_envs, seed=run_seed,
        start_index=_next_monitor_rank(monitor), monitor_dir=str(monitor), env_kwargs=record.env_kwargs,
        # libsumo runs one simulation per process: several envs need several processes
        vec_env_cls=SubprocVecEnv if n_envs > 1 else DummyVecEnv,
    )  # fmt: skip
    evaluation = None
    try:
        if record.eval_every is not None:
            evaluation = Evaluation(env_id, record.env_kwargs, record.eval_episodes, folder, resume)
        values = dict(record.hyperparameters)
        common = {"verbose": 0, "seed": run_seed, "tensorboard_log": str(folder / "tensorboard"), "device": "auto",
                  "policy_kwargs": _policy_kwargs(values)}  # fmt: skip
        values.pop("net_arch")
        if algo == "ppo":
            model = lib.PPO("MlpPolicy", venv, **values, **common)
        else:
            values["learning_starts"] += done  # the replay buffer is not saved: refill it first
            model = lib.DQN("MlpPolicy", venv, **values, **common)
        if states is not None:
            _load_weights(model.policy, states[WEIGHTS], folder / POLICY)
            if OPTIMIZER in states:
                model.policy.optimizer.load_state_dict(states[OPTIMIZER])
            model.num_timesteps = done
        earlier_s = record.wall_time_s
        started = time.perf_counter()

        def save(complete: bool, wall_s: float) -> None:
            save_policy(model.policy, folder / POLICY)  # the weights first: train.json never names steps not saved
            update = {"timesteps": model.num_timesteps, "complete": complete, "episodes": len(learning_curve(monitor)),
                      "wall_time_s": round(wall_s, 1)}  # fmt: skip
            if evaluation is not None:
                update["best_eval_timesteps"], update["best_eval_return"] = evaluation.best
            write_record(folder, record.model_copy(update=update))

        def evaluate_now() -> None:
            if evaluation is not None and evaluation.last != model.num_timesteps:
                evaluation(model)

        class Checkpoints(BaseCallback):
            """Progress at every step; when a rollout starts (the weights just updated), an evaluation once
            `eval_every` steps have passed since the last one, then a checkpoint once `checkpoint_every` have."""

            saved = done

            def _on_rollout_start(self) -> None:
                if evaluation is not None and self.num_timesteps - (evaluation.last or 0) >= record.eval_every:
                    evaluate_now()
                if self.num_timesteps - self.saved >= checkpoint_every:
                    save(False, earlier_s + time.perf_counter() - started)
                    self.saved = self.num_timesteps

            def _on_step(self) -> bool:
                if progress is not None:
                    progress(self.num_timesteps)
                return True

        model.learn(total_timesteps=record.target_timesteps - done, callback=Checkpoints(), tb_log_name=algo,
                    reset_num_timesteps=resume is None)  # fmt: skip
        evaluate_now()
    except BaseException as exc:
        for workers in (venv, evaluation):
            with contextlib.suppress(Exception):  # a worker that died must not hide why training stopped
                if workers is not None:
                    workers.close()
        if isinstance(exc, KeyboardInterrupt):
            plot_learning_curve(learning_curve(monitor), folder / "learning_curve.png", title,
                                evaluation_curve(read_evaluations(folder)))  # fmt: skip
        raise
    wall_s = earlier_s + time.perf_counter() - started
    venv.close()
    if evaluation is not None:
        evaluation.close()
    save(True, wall_s)
    episodes = learning_curve(monitor)
    plot_learning_curve(episodes, folder / "learning_curve.png", title, evaluation_curve(read_evaluations(folder)))
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


def plot_learning_curve(episodes: list[tuple[float, int]], path: Path, title: str,
                        evaluations: list[tuple[int, float]] = ()) -> None:  # fmt: skip
    """Episode return against env steps, with a moving average over 20 episodes, and the mean return of each
    evaluation during training (`evaluation_curve`)."""
    lines = []
    if episodes:
        returns = np.array([r for r, _ in episodes])
        steps = np.cumsum([n for _, n in episodes])
        k = min(20, len(returns))
        smooth = np.convolve(returns, np.ones(k) / k, mode="valid")
        lines = [(steps, returns, ".", {"alpha": 0.3, "label": "episode"}),
                 (steps[k - 1 :], smooth, "-", {"label": f"mean of {k}"})]  # fmt: skip
    if evaluations:
        at, means = zip(*evaluations, strict=True)
        lines.append((at, means, "o-", {"color": "tab:orange", "label": "evaluation (seeded, greedy)"}))
    plot_returns(lines, path, title)
