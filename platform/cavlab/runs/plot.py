"""Plots of a run directory: a time-space diagram per lane and a speed heatmap."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.figure import Figure

from cavlab.config.files import check_regular_file, read_json
from cavlab.errors import UserError
from cavlab.runs.rundir import os_error_text, parquet_error_text

ACCEPTS = "cavlab plot takes a run directory written by `cavlab run` (summary.json, trajectories.parquet)"
TRAJECTORY_MAX_BYTES = 4 * 1024**3


def _load(run_dir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """A run directory's summary and trajectories; a `UserError` saying what `run_dir` is if it is not one."""
    if not run_dir.exists():
        raise UserError(f"{run_dir}: no such run directory; {ACCEPTS}")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: is a file, not a run directory; {ACCEPTS}")
    if (run_dir / "sweep.json").exists():
        raise UserError(
            f"{run_dir}: is a sweep directory (its plots, one PNG per metric, are drawn by `cavlab sweep`); {ACCEPTS}"
        )
    summary_file = run_dir / "summary.json"
    if not summary_file.exists():
        raise UserError(f"{run_dir}: not a finished run directory (no summary.json); {ACCEPTS}")
    try:
        summary = read_json(summary_file, "run summary")
    except UserError as exc:
        raise UserError(f"{exc}; {ACCEPTS}") from None
    missing = [k for k in ("scenario", "seed", "controller") if not isinstance(summary, dict) or k not in summary]
    if missing:
        raise UserError(f"{summary_file}: not the summary of a run (no '{missing[0]}'); {ACCEPTS}")
    traj_file = run_dir / "trajectories.parquet"
    if not traj_file.exists():
        raise UserError(f"{run_dir}: no trajectories.parquet (the run had outputs.trajectories: false)")
    check_regular_file(traj_file, "trajectories", TRAJECTORY_MAX_BYTES)
    try:
        table = pq.read_table(traj_file, columns=["t_s", "lane", "x_m", "speed_mps"])
    except (OSError, ValueError) as exc:
        raise UserError(f"{traj_file}: cannot read the trajectories ({parquet_error_text(exc)})") from None
    for name in table.column_names:
        if not (pa.types.is_integer(table[name].type) or pa.types.is_floating(table[name].type)):
            raise UserError(f"{traj_file}: column {name} holds {table[name].type}, not numbers; {ACCEPTS}")
    if table.num_rows == 0:
        raise UserError(f"{run_dir}: the run has no vehicle data to plot (no vehicle entered the network)")
    return summary, {name: table[name].to_numpy() for name in table.column_names}


def plot_run(run_dir: Path, out_dir: Path | None = None, max_points: int = 400_000) -> list[Path]:
    """Write time_space.png and speed_heatmap.png; returns their paths."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir
    summary, data = _load(run_dir)
    title = f"{summary['scenario']} · seed {summary['seed']} · {summary['controller']}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        return [_time_space(data, title, out_dir, max_points), _heatmap(data, title, out_dir)]
    except OSError as exc:
        raise UserError(f"{out_dir}: cannot write plots there ({os_error_text(exc)})") from None


def save_png(fig: Figure, path: Path, dpi: int = 120) -> Path:
    """`fig` as the PNG `path`, atomically: a failed write leaves no half a picture."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _time_space(data: dict[str, np.ndarray], title: str, out_dir: Path, max_points: int) -> Path:
    lanes = sorted(set(data["lane"].tolist()), reverse=True)
    fig = Figure(figsize=(11, 2.6 * len(lanes)))  # no pyplot: no global state, the backend stays the user's
    axes = fig.subplots(len(lanes), 1, sharex=True, squeeze=False)
    vmax = float(np.percentile(data["speed_mps"], 99.5)) if len(data["speed_mps"]) else 1.0
    for ax, lane in zip(axes[:, 0], lanes, strict=True):
        rows = np.flatnonzero(data["lane"] == lane)
        if len(rows) > max_points:  # thin evenly so the picture stays readable and quick
            rows = rows[:: len(rows) // max_points + 1]
        points = ax.scatter(
            data["t_s"][rows], data["x_m"][rows], c=data["speed_mps"][rows],
            s=0.3, cmap="RdYlGn", vmin=0, vmax=vmax, linewidths=0, rasterized=True,
        )  # fmt: skip
        name = "ramp / acceleration lane" if lane < 0 else f"lane {lane}"
        ax.set_ylabel(f"{name}\nx [m]")
    axes[-1, 0].set_xlabel("time [s]")
    fig.colorbar(points, ax=axes[:, 0], label="speed [m/s]")
    fig.suptitle(f"Time-space diagram — {title}")
    return save_png(fig, out_dir / "time_space.png")


def _heatmap(
    data: dict[str, np.ndarray], title: str, out_dir: Path, cell_s: float = 10.0, cell_m: float = 50.0
) -> Path:
    t, x, v = data["t_s"], data["x_m"], data["speed_mps"]
    fig = Figure(figsize=(11, 4.5))
    ax = fig.subplots()
    if len(t):
        t_edges = np.arange(0, t.max() + cell_s, cell_s)
        x_edges = np.arange(min(0.0, x.min()), x.max() + cell_m, cell_m)
        total, _, _ = np.histogram2d(t, x, bins=[t_edges, x_edges], weights=v)
        count, _, _ = np.histogram2d(t, x, bins=[t_edges, x_edges])
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, total / count, np.nan)
        vmax = float(np.percentile(v, 99.5))
        mesh = ax.pcolormesh(t_edges, x_edges, mean.T, cmap="RdYlGn", shading="flat", vmin=0, vmax=vmax)
        fig.colorbar(mesh, ax=ax, label="mean speed [m/s]")
    ax.set_xlabel("time [s]")
    ax.set_ylabel("x [m]")
    ax.set_title(f"Speed heatmap ({cell_s:g} s × {cell_m:g} m cells, all lanes) — {title}")
    fig.tight_layout()
    return save_png(fig, out_dir / "speed_heatmap.png")
