"""`cavlab sweep`: the sweep file, the plan (one scenario or several), resumable execution, identical results for
the same seeds."""

from __future__ import annotations

import ast
import json
import math
import os
import re
import subprocess
import sys
from multiprocessing import get_context
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cavlab.cli import app
from cavlab.errors import UserError
from cavlab.experiments import sweep
from cavlab.experiments.sweep import SweepSpec, get_measure, load_rows, load_sweep, plan, registered_measures

runner = CliRunner()
SWEEP = """
scenario: lane-drop
set: [simulation.duration_s=60, simulation.warmup_s=20]
grid:
  demand.scale: [0.5, 1.0]
seeds: 2
metrics: [mean_speed_mps, trips_completed]
"""


def test_plan_is_the_product_of_grid_samples_and_seeds() -> None:
    spec = SweepSpec.model_validate({
        "scenario": "highway-lane-change",
        "grid": {"demand.cav_share": [0.3, 1.0], "control.controller": ["sumo", "cooperative"]},
        "random": {"samples": 3, "seed": 1, "fields": {"demand.scale": {"uniform": [0.8, 1.2]}}}, "seeds": [4, 5],
    })  # fmt: skip
    runs = plan(spec)
    assert len(runs) == 2 * 2 * 3 * 2
    assert len({r.run_id for r in runs}) == len(runs)
    assert [r.run_id for r in plan(spec)] == [r.run_id for r in runs]  # stable: the random samples are seeded
    scales = {dict(r.params)["demand.scale"] for r in runs}
    assert len(scales) == 3 and all(0.8 <= s <= 1.2 for s in scales)
    assert runs[0].overrides[-1] == "simulation.seed=4"


def test_a_sweep_over_several_scenarios_plans_each_in_its_own() -> None:
    """No SUMO: the grid axis `scenario`, a named axis with overrides per scenario, ids, and the ids of sweeps of
    one scenario as they were before the axis existed."""
    spec = load_sweep_text("""
grid:
  scenario: [lane-drop, on-ramp-merge]
  demand.scale: [0.5, 1.0]
  variant:
    sumo: [control.controller=sumo]
    selfish-cars:
      lane-drop: [demand.vehicle_types.car.lane_change.cooperative=0]
      on-ramp-merge: [demand.vehicle_types.car.lane_change.cooperative=0.5, demand.cav_share=0.5]
seeds: [0, 1]
""")
    assert spec.scenario is None and spec.scenarios == ["lane-drop", "on-ramp-merge"]
    assert spec.fields == ["scenario", "demand.scale", "variant"]
    runs = plan(spec)
    assert len(runs) == 2 * 2 * 2 * 2 and len({r.run_id for r in runs}) == len(runs)
    assert [r.scenario for r in runs] == ["lane-drop"] * 8 + ["on-ramp-merge"] * 8
    by_point = {(r.scenario, dict(r.params)["demand.scale"], dict(r.labels)["variant"], r.seed): r for r in runs}
    ramp = by_point[("on-ramp-merge", 1.0, "selfish-cars", 1)]
    assert ramp.labels == (("scenario", "on-ramp-merge"), ("variant", "selfish-cars"))
    assert ramp.overrides == ["demand.vehicle_types.car.lane_change.cooperative=0.5", "demand.cav_share=0.5",
                              "demand.scale=1.0", "simulation.seed=1"]  # fmt: skip
    assert by_point[("lane-drop", 1.0, "selfish-cars", 1)].overrides[0].endswith("cooperative=0")
    assert by_point[("lane-drop", 0.5, "sumo", 0)].overrides == ["control.controller=sumo", "demand.scale=0.5",
                                                                 "simulation.seed=0"]  # fmt: skip
    # the same point in two scenarios: two runs; the same sweep: the same ids
    assert by_point[("lane-drop", 0.5, "sumo", 0)].run_id != by_point[("on-ramp-merge", 0.5, "sumo", 0)].run_id
    assert [r.run_id for r in plan(spec)] == [r.run_id for r in runs]
    # a sweep of one scenario keeps its ids
    one = plan(load_sweep_text(SWEEP))
    assert [r.run_id for r in one] == ["8bf5877dd2aed39f", "25ab75de1e5479bc", "4822941918777a0d", "aad1105afd6d8dd9"]
    assert all(r.labels == () for r in one)


def load_sweep_text(text: str) -> SweepSpec:
    return SweepSpec.model_validate(yaml.safe_load(text))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("scenario: lane-drop\ngrids: {}\n", "unknown field 'grids' (allowed: scenario, set, grid, random, seeds"),
        ("scenario: lane-drop\nrandom: {samples: 2, fields: {demand.scale: {}}}\n", "give exactly one of uniform"),
        ("scenario: lane-drop\ngrid: {road.lanes: [0]}\n", "road.lanes: Input should be greater than or equal to 1"),
        ("scenario: nope\n", "unknown scenario 'nope'"),
        ("grid: {demand.scale: [1.0]}\n", "give a scenario, or a grid axis scenario: [...] for several"),
        ("scenario: lane-drop\ngrid: {scenario: [lane-drop]}\n", "give either scenario or the grid axis scenario"),
        ("grid: {scenario: {a: [x=1]}}\n", "grid.scenario: must be a list of scenario names or files"),
        ("grid: {scenario: [lane-drop, lane-drop]}\n", "grid.scenario: lists a scenario twice"),
        ("grid: {scenario: [lane-drop, nope]}\n", "unknown scenario 'nope'"),
        (
            "grid:\n  scenario: [lane-drop, on-ramp-merge]\n  v: {a: {lane-drop: [demand.scale=1]}}\n",
            "grid.v.a: no overrides for scenario 'on-ramp-merge' (given for: lane-drop)",
        ),
    ],
)
def test_bad_sweep_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=re.escape(message)):
        plan(load_sweep(path))


def comparable(rows: dict[str, dict]) -> dict[str, dict]:
    """Rows without the wall time, NaN as None (NaN != NaN)."""
    return {k: {m: (None if isinstance(v, float) and math.isnan(v) else v) for m, v in r.items() if m != "wall_time_s"}
            for k, r in rows.items()}  # fmt: skip


@pytest.mark.sumo
def test_sweep_runs_resumes_and_repeats_exactly(tmp_path: Path) -> None:
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(SWEEP)
    first = tmp_path / "first"
    done = runner.invoke(app, ["sweep", str(sweep_file), "--workers", "2", "--out", str(first)])
    assert done.exit_code == 0, done.output
    rows = {r["run_id"]: r for r in load_rows(first)}
    assert len(rows) == 4 and "4 runs (0 from before)" in done.output
    summary = json.loads((first / "summary.json").read_text())
    assert [s["demand.scale"] for s in summary] == [0.5, 1.0] and all(s["runs"] == 2 for s in summary)
    assert (first / "mean_speed_mps.png").exists()
    # an interrupted sweep: one run lost; the rerun runs only that one and ends with the same rows
    lost = sorted((first / "runs").glob("*.parquet"))[0]
    lost.unlink()
    done = runner.invoke(app, ["sweep", str(sweep_file), "--workers", "1", "--out", str(first)])
    assert done.exit_code == 0 and "4 runs (3 from before)" in done.output
    again = {r["run_id"]: r for r in load_rows(first)}
    assert comparable(again) == comparable(rows)
    # on a local Ray instance: the same rows
    on_ray = tmp_path / "ray"
    done = runner.invoke(app, ["sweep", str(sweep_file), "--ray", "local", "--workers", "2", "--out", str(on_ray)])
    assert done.exit_code == 0, done.output
    assert comparable({r["run_id"]: r for r in load_rows(on_ray)}) == comparable(rows)
    # a different sweep into the same folder is refused
    sweep_file.write_text(SWEEP.replace("seeds: 2", "seeds: 3"))
    done = runner.invoke(app, ["sweep", str(sweep_file), "--out", str(first)])
    assert done.exit_code == 2 and "holds another sweep" in done.output


def test_shipped_sweeps_load_by_name_and_unknown_names_are_listed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_sweep("lane-change-study").measures == ["lane_changes"]
    assert load_sweep("bottleneck-study").scenarios == ["highway-lane-change", "lane-drop", "on-ramp-merge"]
    result = runner.invoke(app, ["sweep", "lane-change-studdy"])
    assert result.exit_code == 2
    assert "not a shipped sweep (bottleneck-study, lane-change-study, perception-study)" in " ".join(
        result.output.split()
    )


def test_measures_come_from_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text("scenario: lane-drop\nmeasures: [lane_chanegs]\n")
    registered = r"\(registered: lane_change_disruption, lane_changes\)$"
    with pytest.raises(UserError, match=r"measures: unknown measure 'lane_chanegs' " + registered):
        load_sweep(path)
    with pytest.raises(UserError, match=r"^unknown measure 'nope' " + registered):
        get_measure("nope")
    monkeypatch.setitem(sweep.MEASURES, "zero", lambda scenario, result: {"zero": 0.0})
    decorated = sweep.register_measure("one")(lambda scenario, result: {"one": 1.0})
    monkeypatch.setitem(sweep.MEASURES, "one", decorated)  # undone after the test
    path.write_text("scenario: lane-drop\nmeasures: [one, lane_changes]\n")
    assert load_sweep(path).measures == ["one", "lane_changes"] and get_measure("one") is decorated
    assert registered_measures() == "lane_change_disruption, lane_changes, one, zero"


def test_sweep_imports_no_study_and_workers_see_the_registered_measures() -> None:
    tree = ast.parse(Path(sweep.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not [m for m in imported if "study" in m or "controllers" in m], imported
    code = "import sys; from cavlab.experiments import sweep; print(sorted(sweep.MEASURES))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['lane_change_disruption', 'lane_changes']"
    with get_context("spawn").Pool(1) as pool:  # as sweep workers start
        assert pool.apply(registered_measures) == "lane_change_disruption, lane_changes"


PLOTS = """
import json, math, sys
from pathlib import Path
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
import matplotlib
from cavlab.experiments import study, sweep
from cavlab.rl import evaluation, sb3
from cavlab.runs.plot import plot_run
out = Path(sys.argv[1])
spec = sweep.SweepSpec(scenario="lane-drop", grid={"demand.scale": [0.5, 1.0]})
paths = sweep.plot_summary(spec, [{"demand.scale": s, "runs": 2, "m": s, "m_ci95": 0.1} for s in (0.5, 1.0)], out)
spec = sweep.SweepSpec(grid={"scenario": ["a", "b"], "demand.scale": [0.5, 1.0], "variant": {"x": [], "y": []}})
paths += sweep.plot_summary(spec, [{"scenario": c, "demand.scale": s, "variant": v, "runs": 2, "n": s, "n_ci95": 0.1}
                                   for c in "ab" for s in (0.5, 1.0) for v in "xy"], out)
cells = [{"scenario": c, "scale": s, "cav_share": 1.0, "variant": v, "runs": 2, "offered_vph": 1000 * s}
         | {k: x for m in study.SUMMARY_METRICS for k, x in ((m, s), (m + "_ci95", math.nan))}
         for c in ("lane-drop", "on-ramp-merge") for s in (0.5, 1.0) for v in ("cooperative", "sumo-default")]
paths += study.plot_study({"cells": cells, "capacity": {}}, out)
sb3.plot_learning_curve([(1.0, 10), (2.0, 12)], out / "curve.png", "t")
evaluation.plot_evaluation({"random": {"mean_return": 1.0, "ci95": 0.5}}, out / "returns.png", "t")
run = out / "run"
run.mkdir()
pq.write_table(pa.table({"t_s": [0.0, 1.0], "lane": [0, 1], "x_m": [0.0, 20.0], "speed_mps": [10.0, 20.0]}),
               run / "trajectories.parquet")
(run / "summary.json").write_text(json.dumps({"scenario": "s", "seed": 0, "controller": "sumo"}))
paths += plot_run(run)
paths += [out / "curve.png", out / "returns.png"]
assert all(p.read_bytes()[:4] == b"\\x89PNG" for p in paths), paths
print(len(paths), "matplotlib.pyplot" in sys.modules, matplotlib.rcParams._get("backend"))
"""


def test_plots_leave_pyplot_and_the_backend_alone(tmp_path: Path) -> None:
    """Figures through matplotlib's object API: no pyplot imported, the user's backend (here svg) kept."""
    done = subprocess.run([sys.executable, "-c", PLOTS, str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "MPLBACKEND": "svg"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["11", "False", "svg"]  # 1 + 1 sweep plots, 5 of the study, 2 + 2
