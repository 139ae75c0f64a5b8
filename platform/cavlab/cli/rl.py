"""Reinforcement-learning commands: train and evaluate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cavlab.cli.common import ProgressBar, out
from cavlab.config.scenario import apply_override
from cavlab.errors import UserError
from cavlab.rl.evaluation import BASELINES, plot_evaluation
from cavlab.rl.evaluation import evaluate as run_evaluation
from cavlab.rl.rllib import train_rllib
from cavlab.rl.sb3 import train as run_training
from cavlab.runs.rundir import staged_run_dir

EnvOption = Annotated[
    list[str] | None,
    typer.Option("--env", "-e", help="An environment option: key.path=value, e.g. reward.collision=20 (repeatable)."),
]


def _env_kwargs(options: list[str] | None) -> dict[str, Any]:
    """Environment keyword arguments from key.path=value options (values parsed as YAML)."""
    kwargs: dict[str, Any] = {}
    for option in options or []:
        apply_override(kwargs, option)
    return kwargs


def train(
    env_id: Annotated[str, typer.Argument(help="Environment id, e.g. cavlab/LaneChange-v0")],
    algo: Annotated[str, typer.Option(help="ppo or dqn (rllib: ppo only)")] = "ppo",
    timesteps: Annotated[int, typer.Option(help="Environment steps to train for")] = 20_000,
    envs: Annotated[
        int, typer.Option("--envs", help="Parallel environments, one process each (rllib: env runners)")
    ] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the training run")] = 0,
    env: EnvOption = None,
    backend: Annotated[str, typer.Option(help="sb3 (Stable-Baselines3) or rllib (Ray RLlib, PPO)")] = "sb3",
    ray: Annotated[
        str | None,
        typer.Option(help="rllib: 'local' for a local Ray instance (default), or a cluster address (host:port, auto)"),
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Training directory")] = Path("runs/train"),
) -> None:
    """Train a policy with Stable-Baselines3 (policy.zip, TensorBoard logs) or RLlib (checkpoint/); both write
    a learning curve and train.json."""
    backends = ("sb3", "rllib")
    if backend not in backends:
        raise UserError(f"unknown backend '{backend}' (allowed: {', '.join(backends)})")
    if backend == "rllib" and algo != "ppo":
        raise UserError(f"--backend rllib trains PPO only, not '{algo}': use --algo ppo, or --backend sb3 for DQN")
    if backend == "sb3" and ray is not None:
        raise UserError("--ray needs --backend rllib")
    kwargs = _env_kwargs(env)
    label = algo.upper() + (" (RLlib)" if backend == "rllib" else "")
    with staged_run_dir(out_dir) as staging:
        with ProgressBar(label, timesteps, "steps") as bar:

            def progress(n: int) -> None:
                bar.update(min(n, timesteps))

            if backend == "rllib":
                address = None if ray in (None, "local") else ray
                result = train_rllib(env_id, timesteps, envs, seed, kwargs, staging, progress, address)
                files = "checkpoint/, learning_curve.png, learning_curve.csv"
            else:
                result = run_training(env_id, algo, timesteps, envs, seed, kwargs, staging, progress=progress)
                files = "policy.zip, learning_curve.png, tensorboard/"
        meta = {"env_id": env_id, "algo": algo, "backend": backend, "timesteps": result.timesteps, "envs": envs,
                "seed": seed, "env_kwargs": kwargs, "episodes": result.episodes,
                "wall_time_s": round(result.wall_time_s, 1)}  # fmt: skip
        if backend == "rllib":
            meta |= {"ray": ray or "local", "startup_s": round(result.startup_s, 1)}
        (staging / "train.json").write_text(json.dumps(meta, indent=2) + "\n")
    out.print(
        f"trained {escape(label)} on {escape(env_id)}: {result.timesteps} steps, {result.episodes} episodes, "
        f"{result.wall_time_s:.0f} s → [bold]{escape(str(out_dir))}[/] ({files})",
        highlight=False,
    )


def evaluate(
    env_id: Annotated[str, typer.Argument(help="Environment id, e.g. cavlab/LaneChange-v0")],
    policy: Annotated[
        list[Path] | None,
        typer.Option(help="A policy.zip or an RLlib checkpoint/ from `cavlab train` (repeatable)"),
    ] = None,
    episodes: Annotated[int, typer.Option(help="Episodes per policy")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the first episode (then +1 per episode)")] = 1000,
    env: EnvOption = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Evaluation directory")] = Path("runs/evaluate"),
) -> None:
    """Compare trained policies with a random policy and the rule-based driver on the same episodes."""
    if episodes < 1:
        raise UserError("need --episodes ≥ 1")
    kwargs = _env_kwargs(env)
    trained = ("policy.zip", "checkpoint")
    policies: dict[str, str | Path] = {f"trained:{p.parent.name}" if p.name in trained else p.stem: p
                                       for p in policy or []}  # fmt: skip
    policies.update({name: name for name in BASELINES})
    with staged_run_dir(out_dir) as staging:
        with ProgressBar("evaluate", episodes * len(policies), "episodes") as bar:
            results = run_evaluation(env_id, policies, episodes, seed, kwargs, progress=bar.advance)
        meta = {"env_id": env_id, "episodes": episodes, "seeds": [seed, seed + episodes - 1], "env_kwargs": kwargs,
                "policies": {k: str(v) for k, v in policies.items()}, "results": results}  # fmt: skip
        (staging / "evaluation.json").write_text(json.dumps(meta, indent=2) + "\n")
        plot_evaluation(results, staging / "returns.png", f"{env_id}, {episodes} episodes")
    table = Table(title=f"{env_id}: {episodes} episodes (seeds {seed}–{seed + episodes - 1})")
    for col in ("policy", "mean return ± 95 % CI", "collisions / lane ends", "mean speed [m/s]"):
        table.add_column(col)
    for name, r in results.items():
        table.add_row(name, f"{r['mean_return']:.2f} ± {r['ci95']:.2f}", str(r["failures"]),
                      f"{r['mean_speed_mps']:.1f}")  # fmt: skip
    out.print(table)
    out.print(f"evaluation directory: [bold]{escape(str(out_dir))}[/]", highlight=False)
