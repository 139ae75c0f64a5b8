"""What the training back ends share: environment ids for worker processes, environments, the training
record (train.json), return plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cavlab.config.files import read_json
from cavlab.envs import ENV_IDS
from cavlab.errors import UserError, validation_message
from cavlab.runs.rundir import write_json

RECORD = "train.json"


def check_env_id(env_id: str) -> str:
    """The id to give `gymnasium.make` in fresh worker processes (module-prefixed)."""
    if env_id not in ENV_IDS:
        raise UserError(f"unknown environment '{env_id}' (available: {', '.join(ENV_IDS)})")
    return f"cavlab.envs:{env_id}"


def make_env(env_id: str, env_kwargs: dict[str, Any]):
    """One environment, its options validated (bad options raise `UserError`)."""
    return gym.make(check_env_id(env_id), **env_kwargs)


class TrainRecord(BaseModel):
    """train.json: what `cavlab train` trained, with which options, and how far it got. `timesteps` are
    the environment steps in the saved policy; `complete` is false for a run interrupted after a
    checkpoint (it resumes with `--resume`)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    env_id: str
    algo: Literal["ppo", "dqn"]
    backend: Literal["sb3", "rllib"]
    timesteps: int = Field(ge=0)
    target_timesteps: int | None = Field(default=None, ge=1)
    complete: bool = True
    envs: int = Field(ge=1)
    seed: int
    env_kwargs: dict[str, Any]
    episodes: int = Field(ge=0)
    wall_time_s: float = Field(ge=0)
    hp: dict[str, Any] = {}
    """The `--hp` settings given (compared by `--resume`)."""
    hyperparameters: dict[str, Any] = {}
    """The algorithm's settings trained with: the defaults and `hp` (SB3; `load_policy` builds its networks by them)."""
    threads: int | None = Field(default=None, ge=1)
    """The learner's torch threads (SB3)."""
    eval_every: int | None = Field(default=None, ge=1)
    eval_episodes: int | None = Field(default=None, ge=1)
    best_eval_timesteps: int | None = Field(default=None, ge=0)
    """The steps of the policy in best_policy.zip: the best mean return of the evaluations (SB3, `--eval-every`)."""
    best_eval_return: float | None = None


def read_record(folder: Path) -> TrainRecord:
    """The train.json of a training directory, checked (strict JSON, the fields above)."""
    path = Path(folder) / RECORD
    if not path.exists():
        raise UserError(f"{folder}: no {RECORD} (not a training directory written by `cavlab train`)")
    try:
        return TrainRecord.model_validate(read_json(path, RECORD))
    except ValidationError as exc:
        raise UserError(f"{path}: " + validation_message(exc, TrainRecord, invalid_at_root="{msg}")) from None


def write_record(folder: Path, record: TrainRecord) -> None:
    """train.json, atomically."""
    write_json(Path(folder) / RECORD, record.model_dump(mode="json"))


def plot_returns(lines: list[tuple[Any, Any, str, dict[str, Any]]], path: Path, title: str) -> None:
    """Episode returns against environment steps: each line is (steps, returns, format, plot keywords; the
    color blue unless they say)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, the backend stays the user's

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for steps, returns, fmt, style in lines:
        ax.plot(steps, returns, fmt, **{"color": "tab:blue", **style})
    if lines:
        ax.legend()
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
