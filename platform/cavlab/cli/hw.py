"""Hardware commands: export a perception model for a target, and profile it there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cavlab.cli.common import ModelArgument, err, out
from cavlab.errors import UserError
from cavlab.hw.targets import get_target
from cavlab.runs.rundir import staged_run_dir

TargetOption = Annotated[str, typer.Option(help="Target profile (hw/targets): x86-cpu, jetson-agx-orin, ...")]


def export(
    model: ModelArgument,
    target: TargetOption,
    out_dir: Annotated[Path, typer.Option("--out", help="Export directory")] = Path("runs/export"),
) -> None:
    """Export every component of a perception model to ONNX for a target, checked and compared with torch."""
    from cavlab.hw.export import export_model  # imports torch and onnx: kept out of the CLI's start-up time
    from cavlab.perception.training import load_checkpoint

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


def profile(
    model: ModelArgument,
    target: TargetOption,
    measure: Annotated[bool, typer.Option(help="Measure ONNX Runtime latency (CPU targets: this machine)")] = True,
    batch: Annotated[
        int, typer.Option(help="Frames per batch (the CAVs of one step): weights are read once per batch")
    ] = 32,
    out_dir: Annotated[Path, typer.Option("--out", help="Profile directory")] = Path("runs/profile"),
) -> None:
    """Parameters, state, MACs/SOPs, traffic, latency and energy per component and per gated configuration."""
    from cavlab.hw.profile import profile_markdown, profile_model
    from cavlab.perception.training import load_checkpoint

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
