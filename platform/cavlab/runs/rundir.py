"""Run directories, written atomically.

A run is staged in a hidden sibling folder and renamed into place only when every file is
written, summary.json last: a failed or interrupted run leaves nothing that looks complete. While it
is written, a lock beside it (`.<name>.lock`, `claimed`) makes a second writer of the same directory
fail at once, before it simulates. JSON is written strict (`write_json`: NaN and ±inf as null).

    RUN_DIR/
      scenario.yaml          the resolved scenario (every default filled in)
      summary.json           metrics, seed, versions, wall time
      trajectories.parquet   t_s, vehicle_id, vehicle_type, lane, x_m, speed_mps, accel_mps2, edge
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
import fcntl
import json
import math
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
from typing import Any

import pyarrow as pa
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
    """Yield a scratch folder that becomes `final` only if the block finishes.

    `final` is claimed first (`claimed`): a second writer of the same directory fails at once. An
    OSError in the block (a full disk, no permission) is a `UserError` naming the file and the reason;
    nothing is kept."""
    final = Path(final)
    _check_free(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{final}: cannot write the output directory ({exc.strerror or exc})") from None
    with claimed(final):
        _check_free(final)  # a writer that held the claim before us may have finished it
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
            staging.chmod(0o777 & ~_umask())
        except OSError as exc:
            raise UserError(f"{final}: cannot write the output directory ({exc.strerror or exc})") from None
        try:
            yield staging
            if final.exists():
                final.rmdir()
            os.rename(staging, final)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            reason = os_error_text(exc).replace(str(staging), str(final))
            raise UserError(f"{final}: cannot write the output directory ({reason}); nothing was kept") from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _check_free(final: Path) -> None:
    """Refuse a `final` that is a file or a directory with something in it."""
    try:
        if final.exists() and not final.is_dir():
            raise UserError(f"{final}: is a file, not a directory; choose another --out")
        if final.exists() and any(final.iterdir()):
            raise UserError(f"{final}: output directory already exists and is not empty; choose another --out")
    except OSError as exc:
        raise UserError(f"{final}: cannot read the output directory ({exc.strerror or exc})") from None


@contextmanager
def claimed(folder: Path) -> Iterator[None]:
    """Hold the claim on writing `folder`: an exclusive lock (flock) on `.<name>.lock` beside it, removed on exit.

    A second claim of the same folder fails at once with a `UserError` naming the holder's pid. The OS
    releases the lock of a process that dies, so the lock file a killed process leaves behind is stale
    and the next claim takes it over."""
    lock = folder.parent / f".{folder.name}.lock"
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"{folder}: cannot write the output directory ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise UserError(
                f"{folder}: another cavlab process{pid} is writing this directory; "
                "wait for it to finish or choose another --out"
            ) from None
        except OSError as exc:  # a file system without locks
            os.close(fd)
            raise UserError(f"{folder}: cannot lock the output directory ({os_error_text(exc)})") from None
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed the file as we opened it: claim the one there now
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def os_error_text(exc: OSError) -> str:
    """An OSError in one line: the OS's reason and the file."""
    reason = exc.strerror or " ".join(str(exc).split())
    return f"{reason}: {exc.filename}" if exc.filename else reason


def parquet_error_text(exc: Exception) -> str:
    """pyarrow's error reading a file in one line: the cause, without the contexts it went through before it."""
    return " ".join(str(exc).split()).rsplit(": ", 1)[-1]


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
        write_parquet(result.trajectories, folder / "trajectories.parquet")
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
    write_json(folder / "summary.json", summary)


def write_json(path: Path, value: Any) -> None:
    """`value` as strict JSON (`finite`: NaN and ±inf become null), atomically."""
    write_text(path, json.dumps(finite(value), indent=2, allow_nan=False) + "\n")


def write_parquet(table: pa.Table, path: Path) -> None:
    """`table` as the Parquet file `path`, atomically; a failed write is an OSError naming the file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename:
            raise
        raise OSError(exc.errno, parquet_error_text(exc), str(path)) from None  # pyarrow's error names no file
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """`text` into `path` atomically: written aside, then renamed over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def finite(value: Any) -> Any:
    """`value` with every NaN and ±inf (a metric with no data, e.g. no completed trip) as None, for strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def _write_csv(path: Path, record: type, rows: list[dict]) -> None:
    _write_rows(path, list(record.__dataclass_fields__), rows)


def _write_rows(path: Path, fields: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
