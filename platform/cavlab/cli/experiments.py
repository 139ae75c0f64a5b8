"""Experiment commands: study and sweep, and the resumable sweep runner they (and `perception study`) share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from cavlab.cli.common import (
    DurationOption,
    ProgressBar,
    RayOption,
    SetOption,
    WarmupOption,
    WorkersOption,
    check_workers,
    err,
    out,
    warn,
)
from cavlab.errors import UserError
from cavlab.experiments.study import (
    SCALES,
    SCENARIOS,
    SHARES,
    VARIANTS,
    bottleneck_sweep,
    markdown_report,
    offered_demand,
    plot_study,
    summarize_study,
)
from cavlab.experiments.sweep import (
    default_workers,
    execute,
    execute_ray,
    load_rows,
    load_sweep,
    plan,
    prepare_folder,
    write_summary,
)
from cavlab.runs.rundir import os_error_text, write_json, write_text


def study(
    scenarios: Annotated[
        list[str] | None, typer.Option("--scenario", "--scenarios", help="Scenario (repeat; default: all three)")
    ] = None,
    scales: Annotated[
        list[float] | None, typer.Option("--scale", "--scales", help="Demand level, × every flow (repeat)")
    ] = None,
    shares: Annotated[list[float] | None, typer.Option("--cav-share", "--shares", help="CAV share (repeat)")] = None,
    variants: Annotated[
        list[str] | None, typer.Option("--variant", "--variants", help="Controller variant (repeat)")
    ] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per point")] = 10,
    duration: DurationOption = 480.0,
    warmup: WarmupOption = 120.0,
    workers: WorkersOption = None,
    ray: RayOption = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Study directory (rerun into it to resume)")] = Path(
        "runs/bottleneck-study"
    ),
) -> None:
    """Cooperative vs selfish vs SUMO lane changing where lane changes limit traffic: highway-lane-change,
    lane-drop and on-ramp-merge over demand level × CAV share × variant × seeds (the sweep `bottleneck-study`
    with these options; resumable). The straight-road study: `cavlab sweep lane-change-study`."""
    variants = variants or list(VARIANTS)
    for v in variants:
        if v not in VARIANTS:
            raise UserError(f"unknown variant '{v}' (allowed: {', '.join(VARIANTS)})")
    scenarios, scales, shares = scenarios or list(SCENARIOS), scales or list(SCALES), shares or list(SHARES)
    for name, values in (("--scenario", scenarios), ("--scale", scales), ("--cav-share", shares),
                         ("--variant", variants)):  # fmt: skip
        if len(set(values)) < len(values):
            raise UserError(f"{name}: a value is given twice")
    if any(not 0 < s <= 10 for s in scales):
        raise UserError("--scale must be in (0, 10]")
    if any(not 0 <= s <= 1 for s in shares):
        raise UserError("--cav-share must be in [0, 1]")
    if seeds < 1 or not 0 <= warmup < duration:
        raise UserError("need --seeds ≥ 1 and 0 ≤ --warmup < --duration")
    spec = bottleneck_sweep(scenarios, sorted(scales), sorted(shares), variants, seeds, duration, warmup)
    rows, _ = run_sweep(spec, out_dir, workers, ray, "study")
    summary = summarize_study(rows, offered_demand(spec))
    report = markdown_report(summary)
    with writing(out_dir):
        write_json(out_dir / "study.json", summary)
        write_text(out_dir / "study.md", report)
        plot_study(summary, out_dir)
    out.print(report, highlight=False, markup=False, soft_wrap=True)
    if not summary["capacity"]:
        out.print("no sumo-default runs: no capacity (add --variant sumo-default)", highlight=False)
    for name, c in summary["capacity"].items():
        level = "below the lowest level" if c["capacity_scale"] is None else f"demand level {c['capacity_scale']:g}"
        where = "" if c["capacity_vph"] is None else f" ({c['capacity_vph']:.0f} veh/h offered)"
        more = "" if c["reached"] else ", not reached: every level within 5 %"
        out.print(f"capacity of {escape(name)} (sumo-default): {level}{where}{more}", highlight=False)
    out.print(f"study directory: [bold]{escape(str(out_dir))}[/]", highlight=False)


def sweep(
    sweep_file: Annotated[
        str,
        typer.Argument(
            help="A sweep file (YAML: scenario, set, grid, random, seeds, measures, metrics) "
            "or a shipped sweep's name (bottleneck-study, lane-change-study, perception-study)"
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
    spec = load_sweep(sweep_file)
    if overrides:
        spec = spec.model_copy(update={"set": [*spec.set, *overrides]})
    rows, done_before = run_sweep(spec, out_dir, workers, ray, "sweep")
    with writing(out_dir):
        table = write_summary(spec, rows, out_dir)
    out.print(table, highlight=False, markup=False, soft_wrap=True)
    out.print(f"{len(rows)} runs ({done_before} from before) → [bold]{escape(str(out_dir))}[/]", highlight=False)


def run_sweep(spec: Any, out_dir: Path, workers: int | None, ray: str | None, title: str) -> tuple[list[dict], int]:
    """Run (or resume) a sweep into `out_dir` with a progress bar; its rows and how many were there before."""
    check_workers(workers)
    runs = plan(spec)
    with writing(out_dir):
        for line in prepare_folder(spec, runs, out_dir):
            warn(line)
    done_before = sum((out_dir / "runs" / f"{r.run_id}.parquet").exists() for r in runs)
    try:
        with writing(out_dir), ProgressBar(title, len(runs), "runs", completed=done_before) as bar:

            def advance(_run: Any) -> None:
                bar.advance()

            if ray is None:
                execute(runs, out_dir, workers or default_workers(), progress=advance)
            else:
                address = None if ray == "local" else ray
                execute_ray(runs, out_dir, address, workers or default_workers(), progress=advance)
    except KeyboardInterrupt:
        kept = len(list((out_dir / "runs").glob("*.parquet")))
        err.print(f"[yellow]interrupted[/]: {kept} of {len(runs)} runs kept in {escape(str(out_dir))}; rerun to resume")
        raise typer.Exit(130) from None
    return load_rows(out_dir, [run.run_id for run in runs]), done_before


@contextmanager
def writing(out_dir: Path) -> Iterator[None]:
    """An OSError in the block (a full disk, no permission) as one line naming the file and the reason."""
    try:
        yield
    except OSError as exc:
        raise UserError(f"{out_dir}: cannot write the sweep directory ({os_error_text(exc)})") from None
