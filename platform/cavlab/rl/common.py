"""What the training back ends share: environment ids for worker processes, environments, return plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym

from cavlab.envs import ENV_IDS
from cavlab.errors import UserError


def check_env_id(env_id: str) -> str:
    """The id to give `gymnasium.make` in fresh worker processes (module-prefixed)."""
    if env_id not in ENV_IDS:
        raise UserError(f"unknown environment '{env_id}' (available: {', '.join(ENV_IDS)})")
    return f"cavlab.envs:{env_id}"


def make_env(env_id: str, env_kwargs: dict[str, Any]):
    """One environment, its options validated (bad options raise `UserError`)."""
    return gym.make(check_env_id(env_id), **env_kwargs)


def plot_returns(lines: list[tuple[Any, Any, str, dict[str, Any]]], path: Path, title: str) -> None:
    """Episode returns against environment steps: each line is (steps, returns, format, plot keywords)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, the backend stays the user's

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
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
