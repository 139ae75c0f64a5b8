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
    data: Annotated[
        Path | None,
        typer.Option(
            help="A perception dataset (ONNX targets): INT8 calibrated on its training seeds, checked on its test seed"
        ),
    ] = None,
    calibration_frames: Annotated[int, typer.Option(help="INT8 calibration frames drawn per context (≥ 1)")] = 64,
    calibration_seed: Annotated[int, typer.Option(help="Seed of the draw of the calibration frames")] = 0,
    out_dir: Annotated[Path, typer.Option("--out", help="Export directory")] = Path("runs/export"),
) -> None:
    """Export every component of a perception model to ONNX for a target, checked and compared with torch;
    with --data, INT8 graphs calibrated on real frames and their task accuracy."""
    from cavlab.hw.export import export_model, int8_frames  # imports torch and onnx: kept out of the start-up time
    from cavlab.perception.training import load_checkpoint

    spec = get_target(target)
    if calibration_frames < 1:
        raise UserError(f"--calibration-frames is {calibration_frames}; at least 1 frame per context is needed")
    _, _, ckpt = load_checkpoint(model)  # a clear error before anything is written
    if spec.runtime == "hls4ml":
        from cavlab.hw.backends.hls4ml import export_fpga

        # the testbenches (tb_data) from real frames of the dataset's test seed, read before anything is written
        frames = int8_frames(data, ckpt["shapes"], calibration_frames, calibration_seed) if data is not None else None
        with staged_run_dir(out_dir) as staging, err.status("converting with hls4ml and compiling the C simulations"):
            report = export_fpga(model, staging, frames=None if frames is None else frames.test,
                                 final_dir=out_dir.resolve())  # fmt: skip
            (staging / "export.json").write_text(json.dumps({"target": target, "components": report}, indent=2) + "\n")
        table = Table(title=f"export for {target} (QONNX, hls4ml C simulation; resources estimated analytically)")
        for col in ("component", "runs on", "precision", "max |C sim − torch|", "DSP / BRAM18 / µs / fits"):
            table.add_column(col, overflow="fold")
        for name, r in report.items():
            error = f"{r['csim_max_abs_error']:.1e}" if r["runs_on"] == "fpga" else r["reason"]
            est = r.get("resources")
            fit = "" if not est else "{dsp} / {bram_18k} / {us:.1f} / ".format(
                **est["total"], us=est["total"]["latency_s"] * 1e6) + ("yes" if est["fits"] else "no")  # fmt: skip
            table.add_row(name, r["runs_on"], r.get("precision", ""), error, fit)
        out.print(table)
        out.print(f"export directory: [bold]{escape(str(out_dir))}[/]", highlight=False)
        return
    int8 = "int8" in spec.precisions
    frames = None
    if data is not None and int8:  # read and checked before anything is written
        frames = int8_frames(data, ckpt["shapes"], calibration_frames, calibration_seed)
    with staged_run_dir(out_dir) as staging, err.status(f"exporting for {target}"):
        report = export_model(model, spec, staging, frames)
        (staging / "export.json").write_text(json.dumps({"target": target, **report}, indent=2) + "\n")
    table = Table(title=f"export for {target} (opset {spec.opset})")
    for col in ("component", "operators", "max |ORT − torch| (batch 1 / 7 / 513)", "rollout (8 steps)",
                "INT8 RMS error / spread"):  # fmt: skip
        table.add_column(col, overflow="fold")
    for name, r in report["components"].items():
        errors = " / ".join(f"{e:.1e}" for e in r["max_abs_error"].values())
        rollout = "" if r["rollout_max_abs_error"] is None else f"{r['rollout_max_abs_error']:.1e}"
        ratio = None if r["int8"] is None else r["int8"]["error_vs_spread"]
        spread = "" if ratio is None else f"{ratio:.3f}"
        table.add_row(name, ", ".join(r["operators"]), errors, rollout, spread)
    out.print(table)
    if report["int8"] is not None:
        test = report["int8"]["frames"]["test_frames"]
        accuracy = Table(title=f"slot accuracy on the {test} frames of the test seed (INT8 on ONNX Runtime's CPU)")
        for col in ("configuration", "FP32", "INT8", "INT8 − FP32 [points]"):
            accuracy.add_column(col)
        for name, r in report["int8"]["accuracy"]["all"].items():
            accuracy.add_row(name, f"{r['fp32']:.4f}", f"{r['int8']:.4f}", f"{100 * (r['int8'] - r['fp32']):+.2f}")
        out.print(accuracy)
    elif int8:
        out.print(f"no INT8 graphs: {target} runs INT8; give --data (a perception dataset) to calibrate them on real "
                  "frames", highlight=False)  # fmt: skip
    out.print(f"export directory: [bold]{escape(str(out_dir))}[/]", highlight=False)


def profile(
    model: ModelArgument,
    target: TargetOption,
    measure: Annotated[bool, typer.Option(help="Measure ONNX Runtime latency (CPU targets: this machine)")] = True,
    batch: Annotated[
        int, typer.Option(help="Frames per batch (the CAVs of one step): weights are read once per batch")
    ] = 32,
    precision: Annotated[
        str | None, typer.Option(help="Energy table: fp32, fp16, int8, ... (default: the target's own)")
    ] = None,
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
        report = profile_model(model, spec, measure=measure and spec.kind == "cpu", batch=batch, precision=precision)
        (staging / "profile.json").write_text(json.dumps(report, indent=2) + "\n")
        text = profile_markdown(report)
        (staging / "profile.md").write_text(text)
    out.print(text, highlight=False)
    out.print(f"profile directory: [bold]{escape(str(out_dir))}[/]", highlight=False)
