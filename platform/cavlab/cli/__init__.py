"""The `cavlab` command line: one command per user intent.

Errors a user can fix print one line and exit with code 2; a SUMO failure exits with 1;
Ctrl-C (or SIGTERM) stops SUMO, removes the partial run and exits with 130.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.syntax import Syntax
from rich.table import Table

from cavlab.errors import SimulationError, UserError

app = typer.Typer(
    name="cavlab",
    help="Simulate and control connected automated vehicles on real SUMO traffic.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a scenario field: key.path=value (repeatable)."),
]


def _handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except SimulationError as exc:
            err.print(f"[bold red]SUMO error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]: SUMO stopped, partial results removed")
            raise typer.Exit(130) from None
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@app.command("list")
@_handle_errors
def list_scenarios() -> None:
    """List the shipped scenarios."""
    from cavlab.config.scenario import load_scenario, shipped_scenarios

    table = Table(title="Shipped scenarios")
    table.add_column("name", no_wrap=True)
    for col in ("road", "lanes", "length", "demand", "controller", "description"):
        table.add_column(col, overflow="fold")
    for name in sorted(shipped_scenarios()):
        s = load_scenario(name)
        demand = sum(f.vehicles_per_hour for f in s.demand.flows) * s.demand.scale
        table.add_row(
            name, s.road.kind, str(s.road.lanes), f"{s.road.length_m:g} m", f"{demand:g} veh/h",
            s.control.controller, _first_sentence(s.description),
        )  # fmt: skip
    out.print(table)


def _first_sentence(text: str, limit: int = 80) -> str:
    sentence = " ".join(text.split()).split(". ")[0]
    return sentence if len(sentence) <= limit else sentence[: limit - 1] + "…"


@app.command()
@_handle_errors
def show(
    scenario: Annotated[str, typer.Argument(help="Shipped scenario name or YAML file.")],
    resolved: Annotated[bool, typer.Option("--resolved", help="Show every field, defaults filled in.")] = False,
    overrides: SetOption = None,
) -> None:
    """Print a scenario (as written, or fully resolved)."""
    from cavlab.config.scenario import load_scenario, resolve_scenario_path

    loaded = load_scenario(scenario, overrides or [])
    text = loaded.to_yaml() if resolved or overrides else resolve_scenario_path(scenario).read_text()
    if out.is_terminal:
        out.print(Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    else:  # piped into a file: the YAML exactly, never re-wrapped
        sys.stdout.write(text)


@app.command()
@_handle_errors
def validate(
    scenario: Annotated[str, typer.Argument(help="Shipped scenario name or YAML file.")],
    overrides: SetOption = None,
) -> None:
    """Check a scenario file without running it."""
    from cavlab.config.scenario import load_scenario

    s = load_scenario(scenario, overrides or [])
    out.print(
        f"[green]ok[/]: {s.name} — {s.road.kind}, {s.road.lanes} lanes, {s.road.length_m:g} m, "
        f"{len(s.demand.flows)} flow{'s' if len(s.demand.flows) > 1 else ''}, controller {s.control.controller}",
        highlight=False,
    )


@app.command()
@_handle_errors
def run(
    scenario: Annotated[str, typer.Argument(help="Shipped scenario name or YAML file.")],
    seed: Annotated[int | None, typer.Option(help="simulation.seed")] = None,
    duration: Annotated[float | None, typer.Option(help="simulation.duration_s [s]")] = None,
    backend: Annotated[str | None, typer.Option(help="simulation.backend: libsumo, traci or gui")] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Run directory (default runs/<scenario>/<time>-seed<seed>)")
    ] = None,
    overrides: SetOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table.")] = False,
) -> None:
    """Run a scenario in SUMO and write a run directory."""
    from cavlab.config.scenario import load_scenario
    from cavlab.runs.rundir import SUMO_SUBDIR, default_run_dir, staged_run_dir, write_run
    from cavlab.sim.engine import Engine

    sets = list(overrides or [])
    for key, value in (("seed", seed), ("duration_s", duration), ("backend", backend)):
        if value is not None:
            sets.append(f"simulation.{key}={value}")
    s = load_scenario(scenario, sets)
    final = out_dir or default_run_dir(s)
    with staged_run_dir(final) as staging:
        engine = Engine(s, staging / SUMO_SUBDIR)
        if quiet:
            result = engine.run()
        else:
            with _progress(s.simulation.duration_s) as update:
                result = engine.run(progress=update)
        write_run(staging, s, result)
    if not quiet:
        _summary_table(s.name, result.metrics, result.wall_time_s, result.steps)
    hint = f"  (plots: cavlab plot {final})" if s.outputs.trajectories else ""
    out.print(f"run directory: [bold]{escape(str(final))}[/]{escape(hint)}", highlight=False)


class _progress:
    """A rich progress bar over simulated time, with vehicles and steps/s."""

    def __init__(self, duration_s: float) -> None:
        self.duration_s = duration_s
        self.bar = Progress(
            TextColumn("[bold]simulating"),
            BarColumn(),
            TextColumn("{task.fields[sim]}"),
            TextColumn("{task.fields[vehicles]} vehicles"),
            TextColumn("{task.fields[rate]} steps/s"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )

    def __enter__(self) -> Callable[[Any, int], None]:
        self.bar.__enter__()
        task = self.bar.add_task("run", total=self.duration_s, sim="", vehicles=0, rate="-")
        started = time.perf_counter()

        def update(world: Any, step: int) -> None:
            rate = step / max(time.perf_counter() - started, 1e-9)
            self.bar.update(
                task,
                completed=world.time_s,
                sim=f"{world.time_s:7.1f}/{self.duration_s:g} s",
                vehicles=len(world),
                rate=f"{rate:,.0f}",
            )

        return update

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)


def _summary_table(name: str, metrics: dict, wall_s: float, steps: int) -> None:
    table = Table(title=f"{name}: metrics after warm-up")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("throughput", f"{metrics['throughput_vph']:.0f} veh/h"),
        *(
            (f"  lane {lane}", f"{vph:.0f} veh/h")
            for lane, vph in sorted(metrics["throughput_per_lane_vph"].items(), key=lambda kv: int(kv[0]))
        ),
        ("mean speed", f"{metrics['mean_speed_mps']:.2f} m/s"),
        ("trips completed", str(metrics["trips_completed"])),
        ("mean travel time", f"{metrics['mean_travel_time_s']:.1f} s"),
        ("mean delay vs free flow", f"{metrics['mean_delay_s']:.1f} s"),
        ("lane changes", f"{metrics['lane_changes']} ({metrics['lane_changes_cav']} by CAVs)"),
        ("collisions", str(metrics["collisions"])),
        ("hard-braking events", str(metrics["hard_braking_events"])),
        ("control energy per trip ∫½u²dt", f"{metrics['control_energy_per_trip_m2ps3']:.2f} m²/s³"),
        ("wall time", f"{wall_s:.1f} s ({steps / max(wall_s, 1e-9):,.0f} steps/s)"),
    ]
    if "perception_slot_accuracy" in metrics:
        rows[-1:-1] = [
            ("perception: slots right", f"{metrics['perception_slot_accuracy']:.3f}"),
            ("perceived-state error", f"{metrics['perception_plan_position_error_m']:.2f} m, "
                                      f"{metrics['perception_plan_speed_error_mps']:.2f} m/s"),
            ("perception delay", f"{metrics['perception_delay_s']:.2f} s"),
            ("perception energy", f"{metrics['perception_energy_j_per_cav_hour']:.3g} J per CAV-hour"),
            ("least gap of controlled CAVs", f"{metrics['min_gap_controlled_m']:.1f} m"),
        ]  # fmt: skip
    for row in rows:
        table.add_row(*row)
    out.print(table)


@app.command()
@_handle_errors
def plot(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `cavlab run`.")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Where to write the PNGs (default RUN_DIR)")] = None,
) -> None:
    """Draw a time-space diagram and a speed heatmap of a run."""
    from cavlab.runs.plot import plot_run

    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    for path in plot_run(run_dir, out_dir):
        out.print(f"wrote {path}", highlight=False)


ModelArgument = Annotated[Path, typer.Argument(help="A model directory from `cavlab perception train`")]
WorkersOption = Annotated[int | None, typer.Option(help="Parallel processes (default: CPU count)")]
DurationOption = Annotated[float, typer.Option(help="Simulated time per run [s]")]
WarmupOption = Annotated[float, typer.Option(help="Warm-up per run [s]")]
RayOption = Annotated[
    str | None, typer.Option(help="Run on Ray: 'local' for a local instance, or a cluster address (host:port, auto)")
]


@app.command()
@_handle_errors
def study(
    demands: Annotated[list[float] | None, typer.Option("--demand", help="Fast-lane demand [veh/h] (repeat)")] = None,
    shares: Annotated[list[float] | None, typer.Option("--cav-share", help="CAV share (repeat)")] = None,
    variants: Annotated[list[str] | None, typer.Option("--variant", help="Controller variant (repeat)")] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per point")] = 10,
    duration: DurationOption = 600.0,
    warmup: WarmupOption = 120.0,
    workers: WorkersOption = None,
    ray: RayOption = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Study directory (rerun into it to resume)")] = Path(
        "runs/lane-change-study"
    ),
) -> None:
    """Cooperative vs selfish vs SUMO lane changing on highway-lane-change, over demand × CAV share × seeds
    (the sweep `lane-change-study` with these options; resumable)."""
    import json

    from cavlab.experiments.study import VARIANTS, aggregate, markdown_table, plot_study, study_sweep

    variants = variants or list(VARIANTS)
    for v in variants:
        if v not in VARIANTS:
            raise UserError(f"unknown variant '{v}' (allowed: {', '.join(VARIANTS)})")
    demands, shares = demands or [800.0, 1200.0, 1600.0, 2000.0], shares or [0.3, 1.0]
    if any(q <= 0 or q > 4000 for q in demands):
        raise UserError("--demand must be in (0, 4000] veh/h")
    if any(not 0 <= s <= 1 for s in shares):
        raise UserError("--cav-share must be in [0, 1]")
    if seeds < 1 or not 0 <= warmup < duration:
        raise UserError("need --seeds ≥ 1 and 0 ≤ --warmup < --duration")
    spec = study_sweep(variants, demands, shares, seeds, duration, warmup)
    rows, _ = _run_sweep(spec, out_dir, workers, ray, "study")
    summary = aggregate(rows)
    (out_dir / "study.json").write_text(json.dumps(summary, indent=2, allow_nan=True) + "\n")
    (out_dir / "study.md").write_text(markdown_table(summary))
    plot_study(summary, out_dir)
    out.print(markdown_table(summary), highlight=False)
    out.print(f"study directory: [bold]{escape(str(out_dir))}[/]", highlight=False)


def _run_sweep(spec: Any, out_dir: Path, workers: int | None, ray: str | None, title: str) -> tuple[list[dict], int]:
    """Run (or resume) a sweep into `out_dir` with a progress bar; its rows and how many were there before."""
    import json

    from cavlab.experiments.sweep import default_workers, execute, execute_ray, load_rows, plan

    runs = plan(spec)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: is a file, not a directory; choose another --out")
    recorded = out_dir / "sweep.json"
    if recorded.exists() and json.loads(recorded.read_text()) != spec.model_dump(mode="json"):
        raise UserError(f"{out_dir}: holds another sweep (its sweep.json differs); choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    recorded.write_text(json.dumps(spec.model_dump(mode="json"), indent=2) + "\n")
    done_before = sum((out_dir / "runs" / f"{r.run_id}.parquet").exists() for r in runs)
    bar = Progress(TextColumn(f"[bold]{title}"), BarColumn(), TextColumn("{task.completed}/{task.total} runs"),
                   TimeElapsedColumn(), console=err, transient=True)  # fmt: skip
    try:
        with bar:
            task = bar.add_task("runs", total=len(runs), completed=done_before)
            advance = lambda _: bar.advance(task)  # noqa: E731
            if ray is None:
                execute(runs, out_dir, workers or default_workers(), progress=advance)
            else:
                address = None if ray == "local" else ray
                execute_ray(runs, out_dir, address, workers or default_workers(), progress=advance)
    except KeyboardInterrupt:
        kept = len(list((out_dir / "runs").glob("*.parquet")))
        err.print(f"[yellow]interrupted[/]: {kept} of {len(runs)} runs kept in {escape(str(out_dir))}; rerun to resume")
        raise typer.Exit(130) from None
    ids = {run.run_id for run in runs}
    return [r for r in load_rows(out_dir) if r["run_id"] in ids], done_before


EnvOption = Annotated[
    list[str] | None,
    typer.Option("--env", "-e", help="An environment option: key.path=value, e.g. reward.collision=20 (repeatable)."),
]


def _env_kwargs(options: list[str] | None) -> dict[str, Any]:
    """Environment keyword arguments from key.path=value options (values parsed as YAML)."""
    from cavlab.config.scenario import apply_override

    kwargs: dict[str, Any] = {}
    for option in options or []:
        apply_override(kwargs, option)
    return kwargs


@app.command()
@_handle_errors
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
    import json

    from cavlab.runs.rundir import staged_run_dir

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
        bar = Progress(TextColumn(f"[bold]{escape(label)}"), BarColumn(),
                       TextColumn("{task.completed}/{task.total} steps"), TimeElapsedColumn(), console=err,
                       transient=True)  # fmt: skip
        with bar:
            task = bar.add_task("train", total=timesteps)

            def progress(n: int) -> None:
                bar.update(task, completed=min(n, timesteps))

            if backend == "rllib":
                from cavlab.rl.rllib import train_rllib

                address = None if ray in (None, "local") else ray
                result = train_rllib(env_id, timesteps, envs, seed, kwargs, staging, progress, address)
                files = "checkpoint/, learning_curve.png, learning_curve.csv"
            else:
                from cavlab.rl.sb3 import train as run_training

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


@app.command()
@_handle_errors
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
    import json

    from cavlab.rl.sb3 import BASELINES, plot_evaluation
    from cavlab.rl.sb3 import evaluate as run_evaluation
    from cavlab.runs.rundir import staged_run_dir

    if episodes < 1:
        raise UserError("need --episodes ≥ 1")
    kwargs = _env_kwargs(env)
    trained = ("policy.zip", "checkpoint")
    policies: dict[str, str | Path] = {f"trained:{p.parent.name}" if p.name in trained else p.stem: p
                                       for p in policy or []}  # fmt: skip
    policies.update({name: name for name in BASELINES})
    with staged_run_dir(out_dir) as staging:
        bar = Progress(TextColumn("[bold]evaluate"), BarColumn(), TextColumn("{task.completed}/{task.total} episodes"),
                       TimeElapsedColumn(), console=err, transient=True)  # fmt: skip
        with bar:
            task = bar.add_task("episodes", total=episodes * len(policies))
            results = run_evaluation(env_id, policies, episodes, seed, kwargs, progress=lambda: bar.advance(task))
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


@app.command()
@_handle_errors
def sweep(
    sweep_file: Annotated[
        str,
        typer.Argument(
            help="A sweep file (YAML: scenario, set, grid, random, seeds, measures, metrics) "
            "or a shipped sweep's name (lane-change-study, perception-study)"
        ),
    ],
    workers: WorkersOption = None,
    ray: RayOption = None,
    overrides: SetOption = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Sweep directory (rerun into it to resume)")] = Path(
        "runs/sweep"
    ),
) -> None:
    """Run a scenario over a grid or random samples of its fields and seeds; resumable, one process per run."""

    from cavlab.experiments.sweep import load_sweep, write_summary

    spec = load_sweep(sweep_file)
    if overrides:
        spec = spec.model_copy(update={"set": [*spec.set, *overrides]})
    rows, done_before = _run_sweep(spec, out_dir, workers, ray, "sweep")
    out.print(write_summary(spec, rows, out_dir), highlight=False)
    out.print(f"{len(rows)} runs ({done_before} from before) → [bold]{escape(str(out_dir))}[/]", highlight=False)


perception_app = typer.Typer(help="Simulated sensors, perception datasets and models.", no_args_is_help=True)
app.add_typer(perception_app, name="perception")


@perception_app.command("dataset")
@_handle_errors
def perception_dataset(
    scenario: Annotated[str, typer.Option(help="Shipped scenario name or YAML file")] = "highway",
    weather: Annotated[list[str] | None, typer.Option(help="clear, rain, fog or snow (repeat)")] = None,
    light: Annotated[list[str] | None, typer.Option(help="day, dusk or night (repeat)")] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per context")] = 2,
    duration: DurationOption = 180.0,
    warmup: Annotated[float, typer.Option(help="Warm-up per run, not sampled [s]")] = 60.0,
    every: Annotated[float, typer.Option(help="Sampling period [s]")] = 1.0,
    sensors: Annotated[Path | None, typer.Option(help="A sensor table replacing the shipped sensors.yaml")] = None,
    overrides: SetOption = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Dataset directory")] = Path("runs/perception-data"),
) -> None:
    """Simulate every CAV's camera, lidar and radar frames with their true neighbours, per context and seed."""
    import yaml

    from cavlab.perception.dataset import generate, plan_dataset
    from cavlab.perception.sensors import check_table
    from cavlab.runs.rundir import staged_run_dir

    table = None
    if sensors is not None:
        try:
            table = yaml.safe_load(sensors.read_text())
        except OSError as exc:
            raise UserError(f"{sensors}: cannot read the sensor table ({exc.strerror or exc})") from None
        except yaml.YAMLError:
            raise UserError(f"{sensors}: the sensor table is not valid YAML") from None
        if not isinstance(table, dict):
            raise UserError(f"{sensors}: the sensor table must be a mapping (camera, lidar, radar, weather, light)")
        check_table(table)
    weathers, lights = weather or ["clear", "rain", "fog", "snow"], light or ["day", "night"]
    plan = plan_dataset(scenario, overrides or [], weathers, lights, seeds, duration, warmup, every)
    runs = len(plan.contexts) * len(plan.seeds)
    with staged_run_dir(out_dir) as staging:
        bar = Progress(TextColumn("[bold]dataset"), BarColumn(), TextColumn("{task.completed}/{task.total} runs"),
                       TextColumn("{task.description}"), TimeElapsedColumn(), console=err, transient=True)  # fmt: skip
        with bar:
            task = bar.add_task("", total=runs)
            manifest = generate(
                plan, staging, table, progress=lambda name: bar.update(task, advance=1, description=name)
            )
    out.print(
        f"{manifest['samples']} samples ({len(plan.contexts)} contexts × {len(plan.seeds)} seeds) → "
        f"[bold]{escape(str(out_dir))}[/]",
        highlight=False,
    )


@perception_app.command("train")
@_handle_errors
def perception_train(
    data: Annotated[Path, typer.Argument(help="A dataset directory from `cavlab perception dataset`")],
    epochs: Annotated[int, typer.Option(help="Training epochs of the branches")] = 6,
    seed: Annotated[int, typer.Option(help="Seed of the training run")] = 0,
    gamma: Annotated[float, typer.Option(help="EcoFusion's loss margin γ")] = 0.05,
    energy_weight: Annotated[float, typer.Option(help="EcoFusion's energy weight λ in [0, 1]")] = 0.5,
    out_dir: Annotated[Path, typer.Option("--out", help="Model directory")] = Path("runs/perception-model"),
) -> None:
    """Train the gated fusion model (stems, seven branches, knowledge and deep gates); evaluate on the last seed."""
    from cavlab.perception.fusion import Selection
    from cavlab.perception.training import results_markdown, train_fusion
    from cavlab.runs.rundir import staged_run_dir

    if epochs < 1 or gamma < 0 or not 0 <= energy_weight <= 1:
        raise UserError("need --epochs ≥ 1, --gamma ≥ 0 and 0 ≤ --energy-weight ≤ 1")
    with staged_run_dir(out_dir) as staging:
        with err.status("training") as status:
            results = train_fusion(data, staging, epochs, seed, Selection(gamma, energy_weight),
                                   progress=lambda msg: status.update(f"training: {msg}"))  # fmt: skip
        table = results_markdown(results)
        (staging / "results.md").write_text(table)
    out.print(table, highlight=False)
    out.print(f"model directory: [bold]{escape(str(out_dir))}[/]", highlight=False)


@perception_app.command("study")
@_handle_errors
def perception_study(
    model: ModelArgument,
    seeds: Annotated[int, typer.Option(help="Seeds per point")] = 3,
    duration: DurationOption = 300.0,
    warmup: WarmupOption = 60.0,
    workers: WorkersOption = None,
    ray: RayOption = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Study directory (rerun into it to resume)")] = Path(
        "runs/perception-study"
    ),
) -> None:
    """Cooperative lane change on perception vs on the ground truth: clear, rain, fog and night; gated vs all
    branches; two edge targets (the sweep `perception-study`). Throughput, safety, perception energy."""
    from cavlab.experiments.sweep import load_sweep, write_summary

    if seeds < 1 or not 0 <= warmup < duration:
        raise UserError("need --seeds ≥ 1 and 0 ≤ --warmup < --duration")
    spec = load_sweep("perception-study")
    sets = [*spec.set, f"simulation.duration_s={duration}", f"simulation.warmup_s={warmup}",
            f"perception.model={model.resolve()}"]  # fmt: skip
    spec = spec.model_copy(update={"set": sets, "seeds": seeds})
    rows, _ = _run_sweep(spec, out_dir, workers, ray, "perception study")
    out.print(write_summary(spec, rows, out_dir), highlight=False)
    out.print(f"study directory: [bold]{escape(str(out_dir))}[/]", highlight=False)


@perception_app.command("eval")
@_handle_errors
def perception_eval(
    model: ModelArgument,
    data: Annotated[Path, typer.Argument(help="A dataset directory (every frame is evaluated)")],
    out_dir: Annotated[Path, typer.Option("--out", help="Evaluation directory")] = Path("runs/perception-eval"),
) -> None:
    """Evaluate a trained model on a dataset, per context: every branch, all branches, and the gates."""
    from cavlab.perception.training import evaluate, load_checkpoint, results_markdown, write_results
    from cavlab.runs.rundir import staged_run_dir

    load_checkpoint(model)  # a clear error before anything is written
    with staged_run_dir(out_dir) as staging:
        results = evaluate(model, data)
        write_results(results, staging)
        table = results_markdown(results)
        (staging / "results.md").write_text(table)
    out.print(table, highlight=False)
    out.print(f"evaluation directory: [bold]{escape(str(out_dir))}[/]", highlight=False)


@app.command("export")
@_handle_errors
def export(
    model: ModelArgument,
    target: Annotated[str, typer.Option(help="Target profile (hw/targets): x86-cpu, jetson-agx-orin, ...")],
    out_dir: Annotated[Path, typer.Option("--out", help="Export directory")] = Path("runs/export"),
) -> None:
    """Export every component of a perception model to ONNX for a target, checked and compared with torch."""
    import json

    from cavlab.hw.export import export_model
    from cavlab.hw.targets import get_target
    from cavlab.perception.training import load_checkpoint
    from cavlab.runs.rundir import staged_run_dir

    spec = get_target(target)
    load_checkpoint(model)  # a clear error before anything is written
    if spec.runtime == "hls4ml":
        from cavlab.hw.backends.hls4ml import export_fpga

        with staged_run_dir(out_dir) as staging, err.status("converting with hls4ml and compiling the C simulations"):
            report = export_fpga(model, staging)
            (staging / "export.json").write_text(json.dumps({"target": target, "components": report}, indent=2) + "\n")
        table = Table(title=f"export for {target} (QONNX, hls4ml C simulation)")
        for col in ("component", "runs on", "precision", "max |C sim − torch|"):
            table.add_column(col, overflow="fold")
        for name, r in report.items():
            error = f"{r['csim_max_abs_error']:.1e}" if r["runs_on"] == "fpga" else r["reason"]
            table.add_row(name, r["runs_on"], r.get("precision", ""), error)
        out.print(table)
        out.print(f"export directory: [bold]{escape(str(out_dir))}[/]", highlight=False)
        return
    with staged_run_dir(out_dir) as staging:
        report = export_model(model, spec, staging)
        (staging / "export.json").write_text(json.dumps({"target": target, "components": report}, indent=2) + "\n")
    table = Table(title=f"export for {target} (opset {spec.opset})")
    for col in ("component", "operators", "max |ORT − torch| (batch 1 / 7 / 513)", "rollout (8 steps)"):
        table.add_column(col, overflow="fold")
    for name, r in report.items():
        errors = " / ".join(f"{e:.1e}" for e in r["max_abs_error"].values())
        rollout = "" if r["rollout_max_abs_error"] is None else f"{r['rollout_max_abs_error']:.1e}"
        table.add_row(name, ", ".join(r["operators"]), errors, rollout)
    out.print(table)
    out.print(f"export directory: [bold]{escape(str(out_dir))}[/]", highlight=False)


@app.command("profile")
@_handle_errors
def profile(
    model: ModelArgument,
    target: Annotated[str, typer.Option(help="Target profile (hw/targets): x86-cpu, jetson-agx-orin, ...")],
    measure: Annotated[bool, typer.Option(help="Measure ONNX Runtime latency (CPU targets: this machine)")] = True,
    batch: Annotated[
        int, typer.Option(help="Frames per batch (the CAVs of one step): weights are read once per batch")
    ] = 32,
    out_dir: Annotated[Path, typer.Option("--out", help="Profile directory")] = Path("runs/profile"),
) -> None:
    """Parameters, state, MACs/SOPs, traffic, latency and energy per component and per gated configuration."""
    import json

    from cavlab.hw.profile import profile_markdown, profile_model
    from cavlab.hw.targets import get_target
    from cavlab.perception.training import load_checkpoint
    from cavlab.runs.rundir import staged_run_dir

    spec = get_target(target)
    if batch < 1:
        raise UserError("need --batch ≥ 1")
    load_checkpoint(model)
    with staged_run_dir(out_dir) as staging, err.status(f"profiling for {target}"):
        report = profile_model(model, spec, measure=measure and spec.kind == "cpu", batch=batch)
        (staging / "profile.json").write_text(json.dumps(report, indent=2) + "\n")
        text = profile_markdown(report)
        (staging / "profile.md").write_text(text)
    out.print(text, highlight=False)
    out.print(f"profile directory: [bold]{escape(str(out_dir))}[/]", highlight=False)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
