"""Run directories, written atomically.

A run is staged in a hidden sibling folder and renamed into place only when every file is
written, summary.json last: a failed or interrupted run leaves nothing that looks complete.

    RUN_DIR/
      scenario.yaml          the resolved scenario (every default filled in)
      summary.json           metrics, seed, versions, wall time
      trajectories.parquet   t_s, vehicle_id, vehicle_type, lane, x_m, speed_mps, accel_mps2
      lane_changes.csv       one row per lane change
      collisions.csv         one row per collision (warm-up included; summary counts those after it)
      <table>.csv            tables the controller reports (e.g. maneuvers.csv)
      sumo.log               SUMO's messages
      sumo/                  the SUMO inputs (network, routes, detectors, run.sumocfg) and SUMO's outputs: the
                             detector output, and tripinfo.xml, lanechanges.xml, ssm.xml when `outputs.sumo`
                             lists them (summarised in summary.json under metrics.sumo)

The engine's work folder is `sumo/` of the staged directory (`cavlab run`: `Engine(s, staging / SUMO_SUBDIR)`),
and every SUMO file is named relative to its run.sumocfg, so SUMO writes its outputs there; only sumo.log
moves to the top.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pyarrow.parquet as pq

from cavlab.config.scenario import Scenario
from cavlab.errors import UserError
from cavlab.sim.engine import RunResult
from cavlab.sim.metrics import LaneChange
from cavlab.world import Collision

SUMO_SUBDIR = "sumo"


def default_run_dir(scenario: Scenario) -> Path:
    """runs/<scenario>/<UTC time>-seed<seed> under the working directory."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / scenario.name / f"{stamp}-seed{scenario.simulation.seed}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


@contextmanager
def staged_run_dir(final: Path) -> Iterator[Path]:
    """Yield a scratch folder that becomes `final` only if the block finishes."""
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise UserError(f"{final}: is a file, not a directory; choose another --out")
    if final.exists() and any(final.iterdir()):
        raise UserError(f"{final}: output directory already exists and is not empty; choose another --out")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
        staging.chmod(0o777 & ~_umask())
    except OSError as exc:
        raise UserError(f"{final}: cannot write the output directory ({exc.strerror or exc})") from None
    try:
        yield staging
        if final.exists():
            final.rmdir()
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def package_versions() -> dict[str, str]:
    """Versions of what shaped the results."""
    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("cavlab", "eclipse-sumo", "libsumo", "numpy", "pydantic", "casadi", "torch"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def write_run(folder: Path, scenario: Scenario, result: RunResult) -> None:
    """Write every result file into `folder`, summary.json last."""
    (folder / "scenario.yaml").write_text(scenario.to_yaml())
    if result.trajectories is not None:
        pq.write_table(result.trajectories, folder / "trajectories.parquet")
    _write_csv(folder / "lane_changes.csv", LaneChange, [asdict(c) for c in result.lane_changes])
    _write_csv(folder / "collisions.csv", Collision, [asdict(c) for c in result.collisions])
    for name, table in result.controller_report.tables.items():
        _write_rows(folder / f"{name}.csv", table.columns, table.rows)
    log = result.inputs.log
    if log.exists():
        shutil.move(log, folder / "sumo.log")
    summary = {
        "scenario": scenario.name,
        "seed": scenario.simulation.seed,
        "backend": scenario.simulation.backend,
        "controller": scenario.control.controller,
        "duration_s": scenario.simulation.duration_s,
        "warmup_s": scenario.simulation.warmup_s,
        "steps": result.steps,
        "vehicle_steps": result.vehicle_steps,
        "wall_time_s": round(result.wall_time_s, 3),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "metrics": result.metrics,
        "controller_metrics": result.controller_report.metrics,
    }
    tmp = folder / "summary.json.tmp"
    tmp.write_text(json.dumps(_finite(summary), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, folder / "summary.json")


def _finite(value):
    """NaN (a metric with no data, e.g. no completed trip) becomes JSON null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _write_csv(path: Path, record: type, rows: list[dict]) -> None:
    _write_rows(path, list(record.__dataclass_fields__), rows)


def _write_rows(path: Path, fields: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
