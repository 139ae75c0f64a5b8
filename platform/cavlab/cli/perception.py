"""The `cavlab perception` commands: dataset, train, study and eval."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cavlab.cli.common import (
    DurationOption,
    ModelArgument,
    ProgressBar,
    RayOption,
    SetOption,
    WarmupOption,
    WorkersOption,
    err,
    out,
)
from cavlab.cli.experiments import run_sweep
from cavlab.errors import UserError
from cavlab.experiments.datasets import generate, plan_dataset
from cavlab.experiments.sweep import load_sweep, write_summary
from cavlab.perception.sensors import SENSOR_VERSION, read_sensor_table
from cavlab.runs.rundir import staged_run_dir


def perception_dataset(
    scenario: Annotated[
        list[str] | None, typer.Option(help="Shipped scenario name or YAML file (repeat: a mixed dataset)")
    ] = None,
    weather: Annotated[list[str] | None, typer.Option(help="clear, rain, fog or snow (repeat)")] = None,
    light: Annotated[list[str] | None, typer.Option(help="day, dusk or night (repeat)")] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per context")] = 2,
    first_seed: Annotated[int, typer.Option(help="The first seed (held-out data: one a training set lacks)")] = 0,
    duration: DurationOption = 180.0,
    warmup: Annotated[float, typer.Option(help="Warm-up per run, not sampled [s]")] = 60.0,
    every: Annotated[float, typer.Option(help="Sampling period [s]")] = 1.0,
    sensors: Annotated[Path | None, typer.Option(help="A sensor table replacing the shipped sensors.yaml")] = None,
    sensor_version: Annotated[
        int, typer.Option(help="How the sensors draw their noise: 2 (all observers at once), 1 (datasets before 2)")
    ] = SENSOR_VERSION,
    overrides: SetOption = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Dataset directory")] = Path("runs/perception-data"),
) -> None:
    """Simulate every CAV's camera, lidar and radar frames with their true neighbours, per context and seed."""
    table = None if sensors is None else read_sensor_table(sensors)
    weathers, lights = weather or ["clear", "rain", "fog", "snow"], light or ["day", "night"]
    plan = plan_dataset(scenario or ["highway"], overrides or [], weathers, lights, seeds, duration, warmup, every,
                        sensor_version, first_seed)  # fmt: skip
    runs = len(plan.scenarios) * len(plan.contexts) * len(plan.seeds)
    bar = ProgressBar("dataset", runs, "runs", columns=("{task.description}",))
    with staged_run_dir(out_dir) as staging, bar:
        manifest = generate(plan, staging, table, progress=lambda name: bar.advance(description=name))
    out.print(
        f"{manifest['samples']} samples ({len(plan.scenarios)} scenarios × {len(plan.contexts)} contexts × "
        f"{len(plan.seeds)} seeds) → "
        f"[bold]{escape(str(out_dir))}[/]",
        highlight=False,
    )


def perception_train(
    data: Annotated[Path, typer.Argument(help="A dataset directory from `cavlab perception dataset`")],
    epochs: Annotated[int, typer.Option(help="Training epochs of the branches")] = 6,
    seed: Annotated[int, typer.Option(help="Seed of the training run")] = 0,
    gamma: Annotated[float, typer.Option(help="EcoFusion's loss margin γ")] = 0.05,
    energy_weight: Annotated[float, typer.Option(help="EcoFusion's energy weight λ in [0, 1]")] = 0.5,
    hidden: Annotated[int, typer.Option(help="Width of the branch heads' hidden layers (1 to 4096)")] = 512,
    spiking: Annotated[bool, typer.Option(help="Also train the spiking branch")] = True,
    out_dir: Annotated[Path, typer.Option("--out", help="Model directory")] = Path("runs/perception-model"),
) -> None:
    """Train the gated fusion model (stems, seven branches, knowledge and deep gates); evaluate on the last seed."""
    from cavlab.perception.fusion import Selection  # imports torch: kept out of the CLI's start-up time
    from cavlab.perception.training import results_markdown, train_fusion

    if epochs < 1 or gamma < 0 or not 0 <= energy_weight <= 1 or not 1 <= hidden <= 4096:
        raise UserError("need --epochs ≥ 1, --gamma ≥ 0, 0 ≤ --energy-weight ≤ 1 and 1 ≤ --hidden ≤ 4096")
    with staged_run_dir(out_dir) as staging:
        with err.status("training") as status:
            results = train_fusion(data, staging, epochs, seed, Selection(gamma, energy_weight),
                                   progress=lambda msg: status.update(f"training: {msg}"), hidden=hidden,
                                   spiking=spiking)  # fmt: skip
        table = results_markdown(results)
        (staging / "results.md").write_text(table)
    out.print(table, highlight=False)
    out.print(f"model directory: [bold]{escape(str(out_dir))}[/]", highlight=False)


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
    from cavlab.perception.training import load_checkpoint

    if seeds < 1 or not 0 <= warmup < duration:
        raise UserError("need --seeds ≥ 1 and 0 ≤ --warmup < --duration")
    load_checkpoint(model)  # a clear error before any run starts
    spec = load_sweep("perception-study")
    sets = [*spec.set, f"simulation.duration_s={duration}", f"simulation.warmup_s={warmup}",
            f"perception.model={model.resolve()}"]  # fmt: skip
    spec = spec.model_copy(update={"set": sets, "seeds": seeds})
    rows, _ = run_sweep(spec, out_dir, workers, ray, "perception study")
    out.print(write_summary(spec, rows, out_dir), highlight=False)
    out.print(f"study directory: [bold]{escape(str(out_dir))}[/]", highlight=False)


def perception_eval(
    model: ModelArgument,
    data: Annotated[Path, typer.Argument(help="A dataset directory (every frame is evaluated)")],
    out_dir: Annotated[Path, typer.Option("--out", help="Evaluation directory")] = Path("runs/perception-eval"),
) -> None:
    """Evaluate a trained model on a dataset, per context: every branch, all branches, and the gates."""
    from cavlab.perception.training import evaluate, load_checkpoint, results_markdown, write_results

    load_checkpoint(model)  # a clear error before anything is written
    with staged_run_dir(out_dir) as staging:
        results = evaluate(model, data)
        write_results(results, staging)
        table = results_markdown(results)
        (staging / "results.md").write_text(table)
    out.print(table, highlight=False)
    out.print(f"evaluation directory: [bold]{escape(str(out_dir))}[/]", highlight=False)
