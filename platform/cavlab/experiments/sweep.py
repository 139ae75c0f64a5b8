"""Sweeps: many runs of one scenario, or of several, over a grid (or random samples) of their fields and seeds.

    scenario: highway-lane-change           # or a grid axis `scenario: [...]` (below)
    set: [simulation.duration_s=300]        # fixed overrides of every run
    grid:                                   # every combination
      demand.cav_share: [0.3, 1.0]
      control.controller: [sumo, cooperative]
      variant:                              # a named axis: each label stands for its overrides
        lc2013: [control.controller=sumo]
        lc2013-no-coop: [control.controller=sumo, demand.vehicle_types.cav.lane_change.cooperative=0]
    random: {samples: 4, seed: 0, fields: {demand.scale: {uniform: [0.8, 1.2]}}}   # optional
    seeds: 3                                # or a list of seeds
    measures: [lane_changes]                # optional measures from the trajectories (registered in MEASURES)
    metrics: [throughput_vph, mean_delay_s] # what the summary aggregates (default: all)

Several scenarios: the grid axis `scenario` (a list of scenario names or files, in place of the
top-level `scenario`) runs every other point in each of them; each run loads its own scenario and
its row, the summary and the plots carry the scenario like any other axis. A named axis's label
may then give its overrides per scenario, a mapping scenario → overrides (it must name every
scenario of the sweep), for overrides that depend on the scenario (its vehicle types, say):

    grid:
      scenario: [lane-drop, on-ramp-merge]
      variant:
        sumo: [control.controller=sumo]
        no-cooperation:
          lane-drop: [control.controller=sumo, demand.vehicle_types.car.lane_change.cooperative=0]
          on-ramp-merge: [control.controller=sumo, demand.vehicle_types.car.lane_change.cooperative=0]

Each run (a point of the grid × a random sample × a seed) is identified by a hash of what it
runs (its scenario, overrides, labels and measures: a sweep without the scenario axis keeps the
ids it had before the axis existed), executes in a fresh process (one SUMO per process, nothing
leaks between runs), and its results are written as soon as it ends to `<out>/runs/<id>.parquet`
(atomically). A rerun of the same sweep into the same folder skips the runs already there, so an
interrupted sweep loses only the runs that were in flight; a row file that cannot be read (a corrupt or
truncated file) is reported, removed and its run done again. The folder (`prepare_folder`) is new, empty, or
this sweep's own (its `sweep.json` records the sweep; `metrics` may differ, as they only shape the summary):
a run directory or another sweep's folder is refused. summary.json is strict JSON (NaN as null).

A measure is a function (scenario, run result) -> {name: value} registered under its name with
`register_measure`; the studies register theirs (cavlab.experiments.study: `lane_changes`,
`lane_change_disruption`) and `cavlab.experiments` imports them, so the registry is filled
wherever this module is imported, in the worker processes too. This module imports no study.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from importlib.resources import files
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cavlab.config.files import read_json, read_yaml
from cavlab.errors import UserError, validation_message
from cavlab.runs.ray_local import init_ray
from cavlab.runs.rundir import parquet_error_text, write_json, write_parquet, write_text
from cavlab.runs.stats import format_mean_ci, mean_ci
from cavlab.sim.engine import Engine
from cavlab.sim.resolve import load_scenario


class Distribution(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    uniform: tuple[float, float] | None = None
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _one(self) -> Distribution:
        if (self.uniform is None) == (self.choice is None):
            raise ValueError("give exactly one of uniform: [low, high] or choice: [...]")
        if self.choice is not None and not self.choice:
            raise ValueError("choice: give at least one value")
        if self.uniform is not None and self.uniform[0] > self.uniform[1]:
            raise ValueError(f"uniform: [low, high] needs low ≤ high (got [{self.uniform[0]:g}, {self.uniform[1]:g}])")
        return self


class RandomSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    samples: int = Field(ge=1)
    seed: int = 0
    fields: dict[str, Distribution] = Field(min_length=1)


Cases = dict[str | int | float, list[str] | dict[str, list[str]]]
"""A named axis: label → its overrides, for every scenario (a list) or per scenario (scenario → list)."""

SCENARIO_AXIS = "scenario"
"""The grid axis that runs the other points in several scenarios."""

MAX_RUNS = 100_000
"""The most runs a sweep may plan."""

RECORD = "sweep.json"
"""The file in a sweep's folder that records the sweep."""

ROW_MAX_BYTES = 16 * 1024 * 1024
"""A run's row file is far smaller (a few kB); a larger one is not a row."""

Measure = Callable[[Any, Any], dict[str, float]]
MEASURES: dict[str, Measure] = {}
"""The measures a sweep may name in `measures:`, by name (filled by `register_measure`)."""


def register_measure(name: str) -> Callable[[Measure], Measure]:
    """Decorator: make `fn(scenario, result) -> {name: value}` (result: the `RunResult` of a run that recorded
    its trajectories) the sweep measure `name`."""

    def register(fn: Measure) -> Measure:
        MEASURES[name] = fn
        return fn

    return register


def registered_measures() -> str:
    return ", ".join(sorted(MEASURES)) or "none"


def get_measure(name: str) -> Measure:
    """The measure registered as `name`; a `UserError` listing the registered ones if there is none."""
    if name not in MEASURES:
        raise UserError(f"unknown measure '{name}' (registered: {registered_measures()})")
    return MEASURES[name]


class SweepSpec(BaseModel):
    """A sweep file (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    scenario: str | None = None
    set: list[str] = Field(default_factory=list)
    grid: dict[str, list[Any] | Cases] = Field(default_factory=dict)
    random: RandomSpec | None = None
    seeds: int | list[int] = 3
    measures: list[str] = Field(default_factory=list)
    metrics: list[str] | None = None

    @field_validator("grid", mode="before")
    @classmethod
    def _axes(cls, grid: Any) -> Any:
        for key, values in grid.items() if isinstance(grid, dict) else ():
            if key == SCENARIO_AXIS:
                continue  # checked with the scenario (below)
            if not isinstance(values, (list, dict)):
                raise ValueError(f"axis '{key}': give a list of values or a mapping label → overrides")
            if not values:
                raise ValueError(f"axis '{key}' has no values; give at least one")
            texts = [json.dumps(v, sort_keys=True, default=str) for v in values] if isinstance(values, list) else []
            twice = _repeated(texts)
            if twice is not None:
                raise ValueError(f"axis '{key}' lists {twice} twice")
        return grid

    @field_validator("seeds", mode="before")
    @classmethod
    def _some_seeds(cls, seeds: Any) -> Any:
        def integer(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not (integer(seeds) or (isinstance(seeds, list) and all(integer(v) for v in seeds))):
            raise ValueError("give a number of seeds (an integer ≥ 1) or a list of integer seeds")
        if integer(seeds) and seeds < 1:
            raise ValueError(f"must be at least 1 (got {seeds}), or a list of seeds")
        if isinstance(seeds, list):
            if not seeds:
                raise ValueError("the list of seeds is empty; give at least one")
            twice = _repeated(seeds)
            if twice is not None:
                raise ValueError(f"lists seed {twice} twice")
        return seeds

    @field_validator("metrics")
    @classmethod
    def _some_metrics(cls, metrics: list[str] | None) -> list[str] | None:
        if metrics is not None and not metrics:
            raise ValueError("the list is empty; name at least one metric, or leave metrics out for all of them")
        twice = _repeated(metrics or [])
        if twice is not None:
            raise ValueError(f"lists '{twice}' twice")
        return metrics

    @field_validator("measures")
    @classmethod
    def _registered(cls, measures: list[str]) -> list[str]:
        for name in measures:
            if name not in MEASURES:
                raise ValueError(f"unknown measure '{name}' (registered: {registered_measures()})")
        return measures

    @model_validator(mode="after")
    def _scenarios_given(self) -> SweepSpec:
        axis = self.grid.get(SCENARIO_AXIS)
        if axis is None and self.scenario is None:
            raise ValueError("give a scenario, or a grid axis scenario: [...] for several")
        if axis is not None:
            if self.scenario is not None:
                raise ValueError("give either scenario or the grid axis scenario, not both")
            if not isinstance(axis, list) or not axis or not all(isinstance(name, str) for name in axis):
                raise ValueError("grid.scenario: must be a list of scenario names or files")
            if len(set(axis)) < len(axis):
                raise ValueError("grid.scenario: lists a scenario twice")
        for key, values in self.grid.items():
            for label, sets in values.items() if isinstance(values, dict) else ():
                for name in self.scenarios if isinstance(sets, dict) else ():
                    if name not in sets:
                        raise ValueError(
                            f"grid.{key}.{label}: no overrides for scenario '{name}' (given for: {', '.join(sets)})"
                        )
        return self

    @property
    def scenarios(self) -> list[str]:
        """The scenarios the sweep runs: the grid axis `scenario`, or the one `scenario`."""
        axis = self.grid.get(SCENARIO_AXIS)
        return list(axis) if axis is not None else [self.scenario]

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else self.seeds

    @property
    def fields(self) -> list[str]:
        """The columns that tell the runs apart: the swept fields and the named axes, in grid order."""
        return [*self.grid, *(self.random.fields if self.random else {})]


def _repeated(values: Iterable[Any]) -> Any:
    """The first value that comes a second time, or None."""
    seen: set = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None


@dataclass(frozen=True)
class SweepRun:
    """One run: the swept fields' values (`params`), the named axes' labels and their overrides, a seed."""

    scenario: str
    fixed: tuple[str, ...]
    params: tuple[tuple[str, Any], ...]
    seed: int
    labels: tuple[tuple[str, Any], ...] = ()
    label_overrides: tuple[str, ...] = ()
    measures: tuple[str, ...] = ()

    @property
    def overrides(self) -> list[str]:
        # a one-item flow list, unwrapped: YAML for the value without the document-end marker of scalars
        values = [
            f"{key}={yaml.safe_dump([value], default_flow_style=True).strip()[1:-1]}" for key, value in self.params
        ]
        return [*self.fixed, *self.label_overrides, *values, f"simulation.seed={self.seed}"]

    @property
    def run_id(self) -> str:
        text = json.dumps([self.scenario, self.overrides, self.labels, self.measures], sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:16]


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def shipped_sweeps() -> dict[str, Path]:
    """The sweep files shipped with cavlab, by name."""
    folder = files("cavlab.scenarios").joinpath("sweeps")
    return {Path(f.name).stem: Path(str(f)) for f in folder.iterdir() if f.name.endswith(".yaml")}


def load_sweep(path: Path | str) -> SweepSpec:
    """Read and validate a sweep file (or a shipped sweep by name); every problem is a `UserError`
    naming the field."""
    path = Path(path)
    if not path.exists() and path.suffix == "" and len(path.parts) == 1:
        shipped = shipped_sweeps()
        if path.name not in shipped:
            raise UserError(f"{path}: no such sweep file, and not a shipped sweep ({', '.join(sorted(shipped))})")
        path = shipped[path.name]
    raw = read_yaml(path, "sweep file")
    if not isinstance(raw, dict):
        fields = ", ".join(SweepSpec.model_fields)
        got = "an empty file" if raw is None else f"a {type(raw).__name__}"
        raise UserError(f"{path}: a sweep file is a mapping of {fields} (got {got})")
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as exc:
        # an unknown field at any depth lists the top-level fields, in declaration order
        message = validation_message(exc, SweepSpec, allowed=lambda _block: SweepSpec.model_fields,
                                     invalid_at_root="{msg}")  # fmt: skip
        raise UserError(f"{path}: {message}") from None


def plan(spec: SweepSpec) -> list[SweepRun]:
    """Every run of the sweep, each scenario validated (a bad field fails here, before anything runs)."""
    # (key, value, overrides): overrides None for a swept field, else a named axis's label with its overrides
    # (a list, or a mapping scenario -> list); the scenario axis's values are labels without overrides
    axes = [[(key, label, sets) for label, sets in values.items()] if isinstance(values, dict)
            else [(key, value, () if key == SCENARIO_AXIS else None) for value in values]
            for key, values in spec.grid.items()]  # fmt: skip
    count = math.prod(map(len, axes)) * (spec.random.samples if spec.random else 1)
    count *= spec.seeds if isinstance(spec.seeds, int) else len(spec.seeds)
    if count > MAX_RUNS:
        raise UserError(f"the sweep has {count} runs; at most {MAX_RUNS} are allowed (give fewer values or seeds)")
    grid = list(itertools.product(*axes))
    samples: list[tuple[tuple[str, Any], ...]] = [()]
    if spec.random is not None:
        rng = np.random.default_rng(spec.random.seed)
        samples = []
        for _ in range(spec.random.samples):
            sample = []
            for key, dist in spec.random.fields.items():
                if dist.uniform is not None:
                    value = float(rng.uniform(*dist.uniform))
                else:
                    value = dist.choice[int(rng.integers(len(dist.choice)))]
                sample.append((key, value))
            samples.append(tuple(sample))

    def point(g: tuple) -> tuple[str, tuple, tuple, tuple]:
        """A grid point's scenario, swept values, labels and the labels' overrides in that scenario."""
        scenario = next((value for key, value, _ in g if key == SCENARIO_AXIS), spec.scenario)
        sets = [s if isinstance(s, (list, tuple)) else s[scenario] for _, _, s in g if s is not None]
        return (scenario, tuple((k, v) for k, v, s in g if s is None), tuple((k, v) for k, v, s in g if s is not None),
                tuple(o for overrides in sets for o in overrides))  # fmt: skip

    runs = [
        SweepRun(scenario, tuple(spec.set), params + s, seed, labels=labels, label_overrides=label_overrides,
                 measures=tuple(spec.measures))
        for scenario, params, labels, label_overrides in map(point, grid) for s in samples for seed in spec.seed_list
    ]  # fmt: skip
    seen: set[tuple] = set()
    for run in runs:
        key = (run.scenario, run.params, run.labels)
        if key not in seen:
            seen.add(key)
            load_scenario(run.scenario, run.overrides)
    return runs


def run_one(run: SweepRun) -> dict[str, Any]:
    """Run one scenario (in a worker process); its row: the swept values, the seed, every numeric metric."""
    # one compute thread per run: runs share the cores (torch is imported later, and reads this)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    scenario = load_scenario(run.scenario, run.overrides)
    measures = [get_measure(name) for name in run.measures]  # an unknown one fails before the run, not after
    if not measures:  # nothing needs the trajectories
        scenario = scenario.model_copy(update={"outputs": scenario.outputs.model_copy(update={"trajectories": False})})
    with tempfile.TemporaryDirectory() as tmp:
        result = Engine(scenario, Path(tmp) / "sumo").run()
    row: dict[str, Any] = {"run_id": run.run_id, "seed": run.seed, **dict(run.labels), **dict(run.params)}
    metrics = {**result.metrics, **{f"controller_{k}": v for k, v in result.controller_report.metrics.items()}}
    for measure in measures:
        metrics.update(measure(scenario, result))
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            row[key] = float(value)
        elif isinstance(value, dict):
            row.update({f"{key}.{k}": float(v) for k, v in value.items() if isinstance(v, (int, float))})
    row["wall_time_s"] = result.wall_time_s
    return row


def prepare_folder(spec: SweepSpec, runs: list[SweepRun], folder: Path) -> list[str]:
    """Make `folder` the sweep's folder, its record (`RECORD`) written if it has none; the warnings to show, one line
    each.

    The folder must be new, empty or this sweep's (its record the same but for `metrics`, which `write_summary`
    updates); a file, a run directory, another sweep's folder or one holding other things is a `UserError`, before
    anything is written. A record that cannot be read is reported and written anew; a row file of `runs` that cannot
    be read is reported and removed (its run is done again)."""
    folder, record = Path(folder), Path(folder) / RECORD
    warnings = []
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: is a file, not a directory; choose another --out")
    recorded = None
    if os.path.lexists(record):
        try:
            recorded = read_json(record, "sweep record")
        except UserError as exc:
            warnings.append(f"{exc}; written anew")
        if recorded is not None and not (isinstance(recorded, dict) and set(recorded) == set(SweepSpec.model_fields)):
            warnings.append(f"{record}: not the record of a sweep; written anew")
            recorded = None
        elif recorded is not None and _identity(recorded) != _identity(spec.model_dump(mode="json")):
            raise UserError(f"{folder}: holds another sweep (its {RECORD} differs); choose another --out")
    elif folder.is_dir() and any(folder.iterdir()):
        run_dir = (folder / "summary.json").is_file() and (folder / "scenario.yaml").is_file()
        what = "a run directory (written by `cavlab run`)" if run_dir else f"not empty and holds no sweep (no {RECORD})"
        raise UserError(f"{folder}: is {what}; choose another --out: a new or empty directory, or a sweep's to resume")
    folder.mkdir(parents=True, exist_ok=True)
    if recorded is None:
        write_json(record, spec.model_dump(mode="json"))
    for run in runs:
        path = folder / "runs" / f"{run.run_id}.parquet"
        problem = _row_problem(path, run.run_id)
        if problem is not None:
            path.unlink()
            warnings.append(f"{path}: {problem}; removed, the run is done again")
    return warnings


def _identity(record: dict[str, Any]) -> Any:
    """What tells sweeps apart: the record without `metrics`, as JSON has it."""
    return json.loads(json.dumps({k: v for k, v in record.items() if k != "metrics"}, sort_keys=True))


def _row_problem(path: Path, run_id: str) -> str | None:
    """Why the row file `path` of run `run_id` cannot be used (None: it can, or there is none); a `UserError` if it
    is not a regular file (a directory, link or device is not removed for the user)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{path}: is not a run's row file (a directory, link or device); remove it to run it again")
    if info.st_size > ROW_MAX_BYTES:
        return f"{info.st_size} bytes, not one run's row"
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        return f"cannot read it ({parquet_error_text(exc)})"
    if table.num_rows != 1 or "run_id" not in table.column_names or table["run_id"][0].as_py() != run_id:
        return "not the row of this run"
    return None


def execute(runs: list[SweepRun], folder: Path, workers: int,
            progress: Callable[[str], None] | None = None) -> int:  # fmt: skip
    """Run every run not yet in `folder/runs` (each in a fresh process), writing each row as it ends;
    how many ran."""
    out = Path(folder) / "runs"
    out.mkdir(parents=True, exist_ok=True)
    todo = [r for r in runs if not (out / f"{r.run_id}.parquet").exists()]
    with ProcessPoolExecutor(max(1, workers), mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        pending = {pool.submit(run_one, r): r for r in todo}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    run = pending.pop(future)
                    write_row(out, future.result())
                    if progress is not None:
                        progress(run.run_id)
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return len(todo)


def execute_ray(runs: list[SweepRun], folder: Path, address: str | None, workers: int,
                progress: Callable[[str], None] | None = None) -> int:  # fmt: skip
    """`execute` on Ray: a local instance of `workers` CPUs (address None) or the cluster at
    `address`; each run is a task in a fresh worker process (`max_calls=1`), its row written on
    the driver as it ends. Ray is shut down on every exit path."""
    try:
        import ray
    except ImportError:
        raise UserError("running on Ray needs ray: pip install 'cavlab[distributed]'") from None
    out = Path(folder) / "runs"
    out.mkdir(parents=True, exist_ok=True)
    todo = [r for r in runs if not (out / f"{r.run_id}.parquet").exists()]
    init_ray(address, max(1, workers))  # local: listening on the loopback only
    try:
        remote = ray.remote(num_cpus=1, max_calls=1, max_retries=1)(run_one)
        pending = {remote.remote(r): r for r in todo}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                run = pending.pop(ref)
                write_row(out, ray.get(ref))
                if progress is not None:
                    progress(run.run_id)
    finally:
        ray.shutdown()
    return len(todo)


def write_row(folder: Path, row: dict[str, Any]) -> None:
    """One run's row as `<run_id>.parquet`, atomically (written aside, then renamed)."""
    write_parquet(pa.Table.from_pylist([row]), Path(folder) / f"{row['run_id']}.parquet")


def load_rows(folder: Path, run_ids: list[str] | None = None) -> list[dict[str, Any]]:
    """The rows in `folder`/runs: every one, or those of `run_ids` that are there."""
    rows = Path(folder) / "runs"
    if run_ids is None:
        files = sorted(rows.glob("*.parquet"))
    else:
        files = sorted(path for run_id in set(run_ids) if (path := rows / f"{run_id}.parquet").exists())
    if not files:
        return []
    tables = [pq.read_table(f) for f in files]
    return pa.concat_tables(tables, promote_options="default").to_pylist()


def summarize(spec: SweepSpec, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per point (the swept fields' values): runs, and each metric's mean and 95 % CI over the seeds."""
    fields = spec.fields
    skip = {"run_id", "seed", *fields}
    known = sorted({k for r in rows for k, v in r.items() if k not in skip and isinstance(v, float)})
    for name in spec.metrics or []:
        if rows and name not in known:
            raise UserError(
                f"metrics: unknown metric '{name}' (the runs give: {', '.join(known)}); the runs are kept, and a "
                "rerun into the same --out with the name fixed only summarises them"
            )
    metrics = spec.metrics or known
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(f) for f in fields), []).append(row)
    summary = []
    for key, members in sorted(groups.items(), key=lambda kv: [str(v) for v in kv[0]]):
        entry: dict[str, Any] = dict(zip(fields, key, strict=True)) | {"runs": len(members)}
        for m in metrics:
            mean, ci = mean_ci([r.get(m) for r in members])
            entry[m], entry[f"{m}_ci95"] = mean, ci
        summary.append(entry)
    return summary


def write_summary(spec: SweepSpec, rows: list[dict[str, Any]], folder: Path) -> str:
    """summary.json, summary.md and the plots into `folder`, and the sweep's record (`RECORD`, its `metrics` those
    summarised); the Markdown table."""
    summary = summarize(spec, rows)
    write_json(Path(folder) / "summary.json", summary)
    table = summary_markdown(spec, summary)
    write_text(Path(folder) / "summary.md", table)
    plot_summary(spec, summary, folder)
    write_json(Path(folder) / RECORD, spec.model_dump(mode="json"))
    return table


def summary_markdown(spec: SweepSpec, summary: list[dict[str, Any]]) -> str:
    metrics = [
        k for k in (summary[0] if summary else {}) if k not in (*spec.fields, "runs") and not k.endswith("_ci95")
    ]
    lines = [
        "| " + " | ".join([*spec.fields, "runs", *metrics]) + " |",
        "|---" * (len(spec.fields) + 1 + len(metrics)) + "|",
    ]
    for e in summary:
        cells = [str(e[f]) for f in spec.fields] + [str(e["runs"])]
        cells += [format_mean_ci(e[m], e[m + "_ci95"], digits=4) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_summary(spec: SweepSpec, summary: list[dict[str, Any]], folder: Path) -> list[Path]:
    """Per metric: mean ± CI against the first swept field (lines if it is numeric, grouped bars if not),
    one line or bar colour per value of the others; with the scenario axis (and other fields), one panel
    per scenario, against the first field after it."""
    from matplotlib.figure import Figure  # no pyplot: no global state, the backend stays the user's

    from cavlab.runs.plot import save_png

    if not spec.fields or not summary:
        return []
    panel = SCENARIO_AXIS if SCENARIO_AXIS in spec.fields and len(spec.fields) > 1 else None
    fields = [f for f in spec.fields if f != panel]
    x_field, others = fields[0], fields[1:]
    numeric = all(isinstance(e[x_field], (int, float)) and not isinstance(e[x_field], bool) for e in summary)
    categories = list(dict.fromkeys(e[x_field] for e in summary))
    panels = list(dict.fromkeys(e[panel] for e in summary)) if panel else [None]
    keys = list(dict.fromkeys(tuple(e[f] for f in others) for e in summary))  # one colour per series in every panel
    n_series = len(keys)
    metrics = [k for k in summary[0] if k not in (*spec.fields, "runs") and not k.endswith("_ci95")]
    paths = []
    for m in metrics:
        width_in = max(6, 0.9 * len(categories) * max(1, n_series) / 2)  # room for the bars
        if panel:
            width_in = 5.0 if numeric else 0.8 * width_in
        fig = Figure(figsize=(width_in * len(panels), 4))
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, name in zip(axes, panels, strict=True):
            series: dict[tuple, list[dict]] = {}
            for e in summary:
                if panel is None or e[panel] == name:
                    series.setdefault(tuple(e[f] for f in others), []).append(e)
            width = 0.8 / max(1, len(series))
            for i, (key, entries) in enumerate(series.items()):
                label = ", ".join(f"{f}={v}" for f, v in zip(others, key, strict=True)) or None
                if numeric:
                    entries = sorted(entries, key=lambda e: e[x_field])
                offset = (i - (len(series) - 1) / 2) * width
                xs = [e[x_field] if numeric else categories.index(e[x_field]) + offset for e in entries]
                ys = [e[m] for e in entries]
                err = [0 if np.isnan(e[m + "_ci95"]) else e[m + "_ci95"] for e in entries]
                colour = f"C{keys.index(key) % 10}"
                if numeric:
                    ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label, color=colour)
                else:
                    ax.bar(xs, ys, width, yerr=err, capsize=2, label=label, color=colour)
            if not numeric:
                ax.set_xticks(range(len(categories)), [str(c) for c in categories])
            if panel:
                ax.set_title(str(name))
            ax.set_xlabel(x_field)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel(m)
        if others:
            axes[-1].legend(fontsize=7)
        fig.tight_layout()
        paths.append(save_png(fig, Path(folder) / f"{m.replace('/', '_')}.png", dpi=110))
    return paths
