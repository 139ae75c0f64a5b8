"""`cavlab sweep`: the sweep file, the plan, resumable execution, identical results for the same seeds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cavlab.cli import app
from cavlab.errors import UserError
from cavlab.experiments.sweep import SweepSpec, load_rows, load_sweep, plan

runner = CliRunner()
SWEEP = """
scenario: lane-drop
set: [simulation.duration_s=60, simulation.warmup_s=20]
grid:
  demand.scale: [0.5, 1.0]
seeds: 2
metrics: [mean_speed_mps, vehicles_departed]
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


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("scenario: lane-drop\ngrids: {}\n", "unknown field 'grids' (allowed: scenario, set, grid, random, seeds"),
        ("scenario: lane-drop\nrandom: {samples: 2, fields: {demand.scale: {}}}\n", "give exactly one of uniform"),
        ("scenario: lane-drop\ngrid: {road.lanes: [0]}\n", "road.lanes: Input should be greater than or equal to 1"),
        ("scenario: nope\n", "unknown scenario 'nope'"),
    ],
)
def test_bad_sweep_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
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
    result = runner.invoke(app, ["sweep", "lane-change-studdy"])
    assert result.exit_code == 2
    assert "not a shipped sweep (lane-change-study, perception-study)" in " ".join(result.output.split())
