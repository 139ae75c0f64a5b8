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
interrupted sweep loses only the runs that were in flight.

A measure is a function (scenario, run result) -> {name: value} registered under its name with
`register_measure`; the studies register theirs (cavlab.experiments.study: `lane_changes`,
`lane_change_disruption`) and `cavlab.experiments` imports them, so the registry is filled
wherever this module is imported, in the worker processes too. This module imports no study.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tempfile
from collections.abc import Callable
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

from cavlab.errors import UserError, validation_message
from cavlab.runs.stats import mean_ci
from cavlab.sim.engine import Engine
from cavlab.sim.resolve import load_scenario


class Distribution(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    uniform: tuple[float, float] | None = None
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _one(self) -> Distribution:
        if (self.uniform is None) == (self.choice is None):
            raise ValueError("give exactly one of uniform: [low, high] or choice: [...]")
        return self


class RandomSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    samples: int = Field(ge=1)
    seed: int = 0
    fields: dict[str, Distribution] = Field(min_length=1)


Cases = dict[str | int | float, list[str] | dict[str, list[str]]]
"""A named axis: label → its overrides, for every scenario (a list) or per scenario (scenario → list)."""

SCENARIO_AXIS = "scenario"
"""The grid axis that runs the other points in several scenarios."""

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

    model_config = ConfigDict(extra="forbid", frozen=True)

    scenario: str | None = None
    set: list[str] = Field(default_factory=list)
    grid: dict[str, list[Any] | Cases] = Field(default_factory=dict)
    random: RandomSpec | None = None
    seeds: int | list[int] = 3
    measures: list[str] = Field(default_factory=list)
    metrics: list[str] | None = None

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
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"{path}: cannot read the sweep file ({exc.strerror or exc})") from None
    except yaml.YAMLError:
        raise UserError(f"{path}: not valid YAML") from None
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
    if address is None:
        ray.init(num_cpus=max(1, workers), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    else:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
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
    tmp = folder / f".{row['run_id']}.parquet.tmp"
    pq.write_table(pa.Table.from_pylist([row]), tmp)
    os.replace(tmp, folder / f"{row['run_id']}.parquet")


def load_rows(folder: Path) -> list[dict[str, Any]]:
    files = sorted((Path(folder) / "runs").glob("*.parquet"))
    if not files:
        return []
    tables = [pq.read_table(f) for f in files]
    return pa.concat_tables(tables, promote_options="default").to_pylist()


def summarize(spec: SweepSpec, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per point (the swept fields' values): runs, and each metric's mean and 95 % CI over the seeds."""
    fields = spec.fields
    skip = {"run_id", "seed", *fields}
    metrics = spec.metrics or sorted({k for r in rows for k, v in r.items() if k not in skip and isinstance(v, float)})
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
    """summary.json, summary.md and the plots into `folder`; the Markdown table."""
    summary = summarize(spec, rows)
    (Path(folder) / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=True) + "\n")
    table = summary_markdown(spec, summary)
    (Path(folder) / "summary.md").write_text(table)
    plot_summary(spec, summary, folder)
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
        cells += [f"{e[m]:.4g} ± {e[m + '_ci95']:.2g}" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_summary(spec: SweepSpec, summary: list[dict[str, Any]], folder: Path) -> list[Path]:
    """Per metric: mean ± CI against the first swept field (lines if it is numeric, grouped bars if not),
    one line or bar colour per value of the others; with the scenario axis (and other fields), one panel
    per scenario, against the first field after it."""
    from matplotlib.figure import Figure  # no pyplot: no global state, the backend stays the user's

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
        path = Path(folder) / f"{m.replace('/', '_')}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths
