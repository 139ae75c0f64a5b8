"""Reinforcement-learning commands: train and evaluate."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cavlab.cli.common import MAX_WORKERS, ProgressBar, err, out
from cavlab.config.files import load_yaml
from cavlab.config.scenario import apply_override
from cavlab.errors import UserError
from cavlab.rl.common import RECORD, TrainRecord, read_record
from cavlab.rl.evaluation import BASELINES, DEFAULT_BASELINES, episodes_to_run, plot_evaluation
from cavlab.rl.evaluation import evaluate as run_evaluation
from cavlab.rl.rllib import RllibResult, train_rllib
from cavlab.rl.sb3 import CHECKPOINT_EVERY, EVAL_EPISODES, LEARNER_THREADS, TrainResult
from cavlab.rl.sb3 import train as run_training
from cavlab.runs.rundir import claimed, staged_run_dir, write_json

DEFAULT_TIMESTEPS = 20_000
MAX_SEED = 2**32 - 1  # numpy's seeds, which Stable-Baselines3 sets

EnvOption = Annotated[
    list[str] | None,
    typer.Option("--env", "-e", help="An environment option: key.path=value, e.g. reward.collision=20 (repeatable)."),
]


def _check_range(option: str, value: int, low: int, high: int) -> None:
    """A `UserError` unless `low` ≤ `value` ≤ `high`."""
    if not low <= value <= high:
        raise UserError(f"{option} must be between {low} and {high} (got {value})")


def _env_kwargs(options: list[str] | None) -> dict[str, Any]:
    """Environment keyword arguments from key.path=value options (values parsed as YAML)."""
    kwargs: dict[str, Any] = {}
    for option in options or []:
        apply_override(kwargs, option)
    return kwargs


def _hp(options: list[str] | None) -> dict[str, Any]:
    """Algorithm settings from key=value options (values parsed as YAML); the keys are checked by the trainer."""
    hp: dict[str, Any] = {}
    for option in options or []:
        key, sep, text = option.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UserError(f"--hp '{option[:60]}' must look like key=value (e.g. learning_rate=3e-4)")
        if key in hp:
            raise UserError(f"--hp {key} is given twice; give each setting once")
        hp[key] = load_yaml(text, f"--hp {key}")
    return hp


def train(
    env_id: Annotated[str, typer.Argument(help="Environment id, e.g. cavlab/LaneChange-v0")],
    algo: Annotated[str, typer.Option(help="ppo or dqn (rllib: ppo only)")] = "ppo",
    timesteps: Annotated[
        int | None,
        typer.Option(help=f"Environment steps to train for (default {DEFAULT_TIMESTEPS}; --resume: the run's own)"),
    ] = None,
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
    checkpoint_every: Annotated[
        int,
        typer.Option(
            help="Save the policy (sb3: policy.zip, rllib: checkpoint/) and train.json every this many "
            "environment steps"
        ),
    ] = CHECKPOINT_EVERY,
    resume: Annotated[
        bool, typer.Option("--resume", help="Go on from the last checkpoint in --out (same options)")
    ] = False,
    hp: Annotated[
        list[str] | None,
        typer.Option("--hp", help="sb3: an algorithm setting, key=value (YAML), e.g. learning_rate=3e-4 (repeatable)"),
    ] = None,
    threads: Annotated[
        int, typer.Option(help="sb3: torch threads of the learner (each environment worker computes on one)")
    ] = LEARNER_THREADS,
    eval_every: Annotated[
        int | None,
        typer.Option(
            help="sb3: evaluate the policy every this many environment steps (evaluation.csv, best_policy.zip)"
        ),
    ] = None,
    eval_episodes: Annotated[int, typer.Option(help="sb3: episodes per evaluation")] = EVAL_EPISODES,
    multi_agent: Annotated[
        bool,
        typer.Option("--multi-agent", help="rllib: every CAV of ENV_ID's traffic an agent, one shared policy"),
    ] = False,
) -> None:
    """Train a policy with Stable-Baselines3 (policy.zip, TensorBoard logs) or RLlib (checkpoint/); both write
    a learning curve and train.json. Ctrl-C keeps the last checkpoint; --resume goes on from it."""
    backends = ("sb3", "rllib")
    if backend not in backends:
        raise UserError(f"unknown backend '{backend}' (allowed: {', '.join(backends)})")
    if backend == "rllib" and algo != "ppo":
        raise UserError(f"--backend rllib trains PPO only, not '{algo}': use --algo ppo, or --backend sb3 for DQN")
    if backend == "sb3" and ray is not None:
        raise UserError("--ray needs --backend rllib")
    if backend == "sb3" and multi_agent:
        raise UserError("--multi-agent trains with RLlib: add --backend rllib")
    _check_range("--seed", seed, 0, MAX_SEED)
    if envs > MAX_WORKERS:
        raise UserError(f"--envs must be at most {MAX_WORKERS} (got {envs})")
    kwargs = _env_kwargs(env)
    settings = _hp(hp)
    if backend == "rllib" and (settings or eval_every is not None or threads != LEARNER_THREADS):
        raise UserError("--hp, --threads and --eval-every need --backend sb3 (RLlib's settings are fixed)")
    if eval_every is not None:
        _check_range("--eval-every", eval_every, 1, MAX_SEED)
        _check_range("--eval-episodes", eval_episodes, 1, 1000)
    sb3_options = {"hp": settings, "threads": threads, "eval_every": eval_every, "eval_episodes": eval_episodes}
    label = algo.upper() + (" (RLlib)" if backend == "rllib" else "") + (", multi-agent" if multi_agent else "")
    if resume:
        record = _resumable(out_dir, env_id, algo, backend, seed, kwargs, sb3_options)
        target = timesteps if timesteps is not None else record.target_timesteps or DEFAULT_TIMESTEPS
        with claimed(out_dir):
            if backend == "rllib":
                result = _train_rllib(env_id, target, envs, seed, kwargs, out_dir, ray, checkpoint_every, record,
                                      multi_agent)  # fmt: skip
            else:
                result = _train_sb3(env_id, algo, target, envs, seed, kwargs, out_dir, checkpoint_every, record,
                                    sb3_options)  # fmt: skip
        folder_note = f" (resumed at {record.timesteps} steps)"
    else:
        target = timesteps if timesteps is not None else DEFAULT_TIMESTEPS
        _refuse_interrupted(out_dir)
        with staged_run_dir(out_dir) as staging:
            if backend == "rllib":
                result = _train_rllib(env_id, target, envs, seed, kwargs, staging, ray, checkpoint_every, None,
                                      multi_agent)  # fmt: skip
            else:
                result = _train_sb3(env_id, algo, target, envs, seed, kwargs, staging, checkpoint_every, None,
                                    sb3_options)  # fmt: skip
        folder_note = ""
    if result is None:  # interrupted, the last checkpoint kept
        kept = read_record(out_dir)
        command = ["cavlab", "train", env_id, "--algo", algo, *(["--backend", backend] if backend != "sb3" else []),
                   *(["--ray", ray] if ray is not None else []), "--timesteps", str(target), "--envs", str(envs),
                   "--seed", str(seed), *[f"--env={option}" for option in env or []], "--out", str(out_dir),
                   *(["--checkpoint-every", str(checkpoint_every)] if checkpoint_every != CHECKPOINT_EVERY else []),
                   *[f"--hp={option}" for option in hp or []],
                   *(["--threads", str(threads)] if threads != LEARNER_THREADS else []),
                   *(["--eval-every", str(eval_every), "--eval-episodes", str(eval_episodes)] if eval_every else []),
                   *(["--multi-agent"] if multi_agent else []), "--resume"]  # fmt: skip
        err.print(
            f"[yellow]interrupted[/]: the checkpoint at {kept.timesteps} of {target} steps is kept in "
            f"{escape(str(out_dir))}; resume with: {escape(shlex.join(command))}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(130)
    files = "checkpoint/, learning_curve.png, learning_curve.csv" if backend == "rllib" else (
        "policy.zip, learning_curve.png, tensorboard/")  # fmt: skip
    if eval_every is not None:
        files += ", evaluation.csv, best_policy.zip"
    out.print(
        f"trained {escape(label)} on {escape(env_id)}: {result.timesteps} steps, {result.episodes} episodes, "
        f"{result.wall_time_s:.0f} s{folder_note} → [bold]{escape(str(out_dir))}[/] ({files})",
        highlight=False,
    )


def _train_sb3(
    env_id: str, algo: str, timesteps: int, envs: int, seed: int, kwargs: dict[str, Any], folder: Path,
    checkpoint_every: int, resume: TrainRecord | None, options: dict[str, Any],
) -> TrainResult | None:  # fmt: skip
    """SB3 training into `folder` with a progress bar; None if Ctrl-C stopped it after a checkpoint. `options`:
    `hp`, `threads`, `eval_every`, `eval_episodes` of `cavlab.rl.sb3.train`."""
    with _kept_on_interrupt(folder), ProgressBar(algo.upper(), timesteps, "steps",
                                                 completed=resume.timesteps if resume else 0) as bar:  # fmt: skip

        def progress(n: int) -> None:
            bar.update(min(n, timesteps))

        return run_training(env_id, algo, timesteps, envs, seed, kwargs, folder, progress=progress,
                            checkpoint_every=checkpoint_every, resume=resume, **options)  # fmt: skip
    return None


def _train_rllib(
    env_id: str, timesteps: int, envs: int, seed: int, kwargs: dict[str, Any], folder: Path, ray: str | None,
    checkpoint_every: int, resume: TrainRecord | None, multi_agent: bool,
) -> RllibResult | None:  # fmt: skip
    """RLlib training into `folder` with a progress bar; None if Ctrl-C stopped it after a checkpoint."""
    with _kept_on_interrupt(folder), ProgressBar("PPO (RLlib)", timesteps, "steps",
                                                 completed=resume.timesteps if resume else 0) as bar:  # fmt: skip

        def progress(n: int) -> None:
            bar.update(min(n, timesteps))

        address = None if ray in (None, "local") else ray
        return train_rllib(env_id, timesteps, envs, seed, kwargs, folder, progress, address,
                           checkpoint_every=checkpoint_every, resume=resume, multi_agent=multi_agent)  # fmt: skip
    return None


@contextmanager
def _kept_on_interrupt(folder: Path) -> Iterator[None]:
    """Ctrl-C in the block ends it quietly once `folder` holds a checkpoint (its train.json); before, it goes on."""
    try:
        yield
    except KeyboardInterrupt:
        if not (folder / RECORD).is_file():
            raise  # before the first checkpoint: nothing to keep


def _resumable(
    out_dir: Path, env_id: str, algo: str, backend: str, seed: int, kwargs: dict[str, Any], options: dict[str, Any]
) -> TrainRecord:
    """The record of the training in `out_dir`, if these options (`options`: those of `_train_sb3`) are the ones
    it was trained with."""
    if not out_dir.is_dir():
        raise UserError(f"--resume: {out_dir} is not a training directory; nothing to resume")
    record = read_record(out_dir)
    if record.backend != backend:
        name = {"sb3": "a Stable-Baselines3", "rllib": "an RLlib"}[record.backend]
        raise UserError(f"--resume: {out_dir} holds {name} run; --resume needs --backend {record.backend} for it")
    for option, given, trained in (("ENV_ID", env_id, record.env_id), ("--algo", algo, record.algo),
                                   ("--seed", seed, record.seed), ("--env", kwargs, record.env_kwargs),
                                   ("--hp", options["hp"], record.hp),
                                   ("--eval-every", options["eval_every"], record.eval_every),
                                   ("--eval-episodes", options["eval_episodes"] if options["eval_every"] else None,
                                    record.eval_episodes)):  # fmt: skip
        if given != trained:
            raise UserError(
                f"--resume: {out_dir} was trained with {option} {trained}, not {given}; give the options it was "
                f"trained with"
            )
    return record


def _refuse_interrupted(out_dir: Path) -> None:
    """Point a rerun into an interrupted training's directory at --resume."""
    if not (out_dir / RECORD).is_file():
        return
    try:
        record = read_record(out_dir)
    except UserError:
        return  # not ours: staged_run_dir refuses the directory
    if not record.complete:
        raise UserError(
            f"{out_dir}: holds an interrupted training ({record.timesteps} of {record.target_timesteps} steps); "
            f"add --resume to go on with it, or choose another --out"
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
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            help=f"A baseline: {', '.join(BASELINES)}, or all (repeatable; default: {', '.join(DEFAULT_BASELINES)})"
        ),
    ] = None,
    reference: Annotated[
        str | None, typer.Option(help="The policy the paired differences are taken to (default: rule)")
    ] = None,
    search_episodes: Annotated[
        int, typer.Option(help="open_loop: episodes per sequence in the search (the seeds after the evaluation's)")
    ] = 5,
    search_length: Annotated[int, typer.Option(help="open_loop: the longest sequence searched (1–3)")] = 3,
) -> None:
    """Compare trained policies with a random policy and the rule-based driver, and with the other baselines
    (constant actions, the best open-loop sequence, the cooperative planner), on the same episodes, with paired
    differences."""
    if episodes < 1:
        raise UserError("need --episodes ≥ 1")
    _check_range("--search-episodes", search_episodes, 1, 100)
    _check_range("--search-length", search_length, 1, 3)
    _check_range("--seed", seed, 0, MAX_SEED - episodes - search_episodes + 1)
    names = tuple(baseline or DEFAULT_BASELINES)
    for name in names:
        if name not in (*BASELINES, "all"):
            raise UserError(f"unknown baseline '{name}' (allowed: {', '.join(BASELINES)}, all)")
    baselines = BASELINES if "all" in names else tuple(dict.fromkeys(names))
    kwargs = _env_kwargs(env)
    trained = ("policy.zip", "checkpoint")
    policies: dict[str, str | Path] = {f"trained:{p.parent.name}" if p.name in trained else p.stem: p
                                       for p in policy or []}  # fmt: skip
    total = episodes_to_run(len(policies), baselines, episodes, search_episodes, search_length)
    with staged_run_dir(out_dir) as staging:
        with ProgressBar("evaluate", total, "episodes") as bar:
            results = run_evaluation(env_id, policies, episodes, seed, kwargs, progress=bar.advance,
                                     baselines=baselines, reference=reference, search_episodes=search_episodes,
                                     search_length=search_length)  # fmt: skip
        meta = {"env_id": env_id, "episodes": episodes, "seeds": [seed, seed + episodes - 1], "env_kwargs": kwargs,
                "policies": {k: str(v) for k, v in policies.items()}, "baselines": list(baselines),
                "search_seeds": [seed + episodes, seed + episodes + search_episodes - 1] if "open_loop" in baselines
                else None, "results": results}  # fmt: skip
        write_json(staging / "evaluation.json", meta)
        plot_evaluation(results, staging / "returns.png", f"{env_id}, {episodes} episodes")
    ref = next(iter(results.values()))["reference"]
    table = Table(title=f"{env_id}: {episodes} episodes (seeds {seed}–{seed + episodes - 1})")
    for col in ("policy", "mean return ± 95 % CI", f"paired Δ to {ref} ± 95 % CI", "collisions / lane ends",
                "completions", "mean speed [m/s]"):  # fmt: skip
        table.add_column(col)
    for name, r in results.items():
        table.add_row(name, f"{r['mean_return']:.2f} ± {r['ci95']:.2f}", f"{r['diff_to_reference']:+.2f} ± "
                      f"{r['diff_ci95']:.2f}", str(r["failures"]), str(r["completions"]),
                      f"{r['mean_speed_mps']:.1f}")  # fmt: skip
    out.print(table)
    out.print(f"evaluation directory: [bold]{escape(str(out_dir))}[/]", highlight=False)
