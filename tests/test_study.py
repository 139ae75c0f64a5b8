"""The lane-change study: statistics, the uniform lane-change measures, and a tiny real study."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from typer.testing import CliRunner

from cavlab.cli import app
from cavlab.controllers.cooperative import CooperativeParams
from cavlab.experiments.study import VARIANTS, aggregate, lane_change_measures, study_sweep
from cavlab.experiments.sweep import load_rows, load_sweep, plan
from cavlab.runs.stats import mean_ci


def test_mean_ci_uses_student_t() -> None:
    mean, half = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert half == pytest.approx(3.18 * math.sqrt(5 / 3) / 2)  # t_{0.975,3} · s/√n
    assert mean_ci([7.0]) == (7.0, pytest.approx(math.nan, nan_ok=True))
    assert math.isnan(mean_ci([math.nan, math.nan])[0])


def test_aggregate_groups_points() -> None:
    rows = [
        {"variant": "cooperative", "demand_vph": 800.0, "demand.cav_share": 1.0, "seed": s, "throughput_vph": 100.0 + s,
         "maneuver_time_s": 5.0, "disruption": 0.0, "control_energy_per_trip_cav_m2ps3": 1.0, "mean_delay_s": 2.0,
         "stuck_lane_changes": 3, "collisions": 0}
        for s in range(3)
    ]  # fmt: skip
    (entry,) = aggregate(rows)
    assert entry["runs"] == 3 and entry["throughput_vph"] == 101.0
    assert entry["throughput_vph_ci95"] == pytest.approx(4.30 * 1.0 / math.sqrt(3))


def test_no_cooperation_sets_lccooperative_zero_on_every_type() -> None:
    (run,) = plan(study_sweep(["no-cooperation"], [1000.0], [0.5], seeds=1))
    sets = run.overrides
    assert "control.controller=sumo" in sets
    assert {s.split(".")[2] for s in sets if "lane_change.cooperative=0" in s} == {"truck", "slow_car", "car", "cav"}
    assert "demand.flows.2.vehicles_per_hour=1000.0" in sets and "demand.flows.0.vehicles_per_hour=450.0" in sets
    assert dict(run.labels) == {"variant": "no-cooperation", "demand_vph": 1000.0}


def test_the_shipped_sweep_is_the_default_study() -> None:
    default = study_sweep(list(VARIANTS), [800.0, 1200.0, 1600.0, 2000.0], [0.3, 1.0], seeds=10)
    assert load_sweep("lane-change-study") == default
    assert len(plan(default)) == 320


def test_lane_change_measures_on_a_hand_made_trajectory() -> None:
    """A CAV behind a slow truck from t = 1 s, changes lane at t = 4 s between two cars that cruise."""
    rows = []
    for k in range(1, 61):
        t = k * 0.1
        rows.append((t, "truck", "truck", 0, 100.0 + 20.0 * t, 20.0))
        rows.append((t, "cav1", "cav", 0 if t < 4.0 else 1, 60.0 + 20.0 * t, 20.0))
        rows.append((t, "front", "car", 1, 150.0 + 30.0 * t, 30.0))  # cruises: no disruption
        rows.append(
            (
                t,
                "rear",
                "car",
                1,
                20.0 + 30.0 * t - (0.5 * (t - 1.0) ** 2 if t > 1 else 0.0),
                30.0 - (t - 1.0 if t > 1 else 0.0),
            )
        )  # brakes at 1 m/s² from t = 1 s
    columns = ["t_s", "vehicle_id", "vehicle_type", "lane", "x_m", "speed_mps"]
    table = pa.table(dict(zip(columns, zip(*rows, strict=True), strict=True)))
    lengths = {"truck": 12.0, "cav": 5.0, "car": 5.0}
    ((wait, disruption),) = lane_change_measures(table, 0.0, lengths, CooperativeParams())
    assert wait == pytest.approx(4.0 - 0.1)  # stuck from the first sample: gap 40 − 12 = 28 m ≤ 60 m
    assert disruption > 0  # the rear car braked; the front car cruised


@pytest.mark.sumo
def test_a_tiny_study_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "study"
    result = CliRunner().invoke(
        app,
        ["study", "--demand", "1200", "--cav-share", "1.0", "--variant", "cooperative", "--variant", "sumo-default",
         "--seeds", "1", "--duration", "120", "--warmup", "30", "--workers", "2", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "study.json").read_text())
    assert [e["variant"] for e in summary] == ["cooperative", "sumo-default"]
    assert all(e["collisions"] == 0 for e in summary)
    assert (out / "throughput_vph.png").read_bytes()[:4] == b"\x89PNG"
    assert "| cooperative | 1200 |" in (out / "study.md").read_text()
    # the same study as a sweep file through `cavlab sweep`: the same rows
    spec = study_sweep(["cooperative", "sumo-default"], [1200.0], [1.0], seeds=1, duration_s=120.0, warmup_s=30.0)
    sweep_file = tmp_path / "study.yaml"
    sweep_file.write_text(yaml.safe_dump(spec.model_dump(), sort_keys=False))
    again = CliRunner().invoke(app, ["sweep", str(sweep_file), "--workers", "2", "--out", str(tmp_path / "sweep")])
    assert again.exit_code == 0, again.output

    def rows(folder: Path) -> dict[str, dict]:
        return {r["run_id"]: {k: v for k, v in r.items() if k != "wall_time_s" and v == v} for r in load_rows(folder)}

    assert rows(tmp_path / "sweep") == rows(out) and len(rows(out)) == 2
    assert all(r["stuck_lane_changes"] >= 0 and "maneuver_time_s" in r for r in rows(out).values())


def test_study_rejects_unknown_variants() -> None:
    result = CliRunner().invoke(app, ["study", "--variant", "magic"])
    assert result.exit_code == 2 and "unknown variant 'magic' (allowed: cooperative, selfish" in result.output
