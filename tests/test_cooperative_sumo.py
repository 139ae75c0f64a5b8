"""The cooperative controller in the real SUMO: plans are executed as planned, runs stay safe."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cavlab.cli import app

pytestmark = pytest.mark.sumo

# Deterministic traffic (no driver imperfection, no speed spread, uniform arrivals): slow trucks
# with CAVs behind them on the right, a dense platoon of CAVs at 28 m/s on the left. Every
# vehicle that is not part of a maneuver cruises, as the plans predict.
DETERMINISTIC = """
name: deterministic-lane-change
road: {kind: highway, length_m: 4000, lanes: 2, speed_limit_mps: 33.33, detectors_m: [3900]}
demand:
  vehicle_types:
    truck: {vehicle_class: truck, length_m: 12, max_speed_mps: 22, sigma: 0, speed_factor_dev: 0,
            lane_change: {speed_gain: 0, keep_right: 0}}
    cav: {max_speed_mps: 28, sigma: 0, speed_factor_dev: 0}
  cav_share: 1.0
  flows:
    - {lane: 0, vehicles_per_hour: 240, arrivals: uniform, vehicle_types: {truck: 1}, cav_share: 0.0}
    - {lane: 0, vehicles_per_hour: 240, arrivals: uniform, depart_speed: 22}
    - {lane: 1, vehicles_per_hour: 2400, arrivals: uniform, depart_speed: 28}
control: {controller: CONTROLLER}
simulation: {duration_s: 240, warmup_s: 30, lane_change_duration_s: 3.0}
"""


def run(tmp_path: Path, text: str, *args: str) -> tuple[dict, list[dict]]:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(text)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(scenario), "--out", str(out), "-q", *args])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    with (out / "maneuvers.csv").open() as fh:
        return summary, list(csv.DictReader(fh))


def test_executed_maneuvers_match_their_plans(tmp_path: Path) -> None:
    summary, maneuvers = run(tmp_path, DETERMINISTIC.replace("CONTROLLER", "cooperative"))
    done = [m for m in maneuvers if m["status"] == "completed"]
    assert len(done) >= 5
    assert any(int(m["cooperators"]) == 2 for m in done), "front and rear cooperators both acted"
    for m in done:
        assert float(m["min_slack_planned_m"]) >= 0
        assert float(m["min_slack_executed_m"]) >= 0, m
        planned, executed = float(m["disruption_planned"]), float(m["disruption_executed"])
        assert executed == pytest.approx(planned, rel=0.01, abs=1e-6), m
        assert float(m["maneuver_time_s"]) == pytest.approx(float(m["longitudinal_time_s"]) + 3.0, abs=0.11)
        assert float(m["solve_time_changer_s"]) + float(m["solve_time_slots_s"]) < 1.0
    metrics = summary["metrics"]
    assert metrics["collisions"] == 0 and metrics["hard_braking_events"] == 0
    assert summary["controller_metrics"]["maneuvers_completed"] == len(done)
    for m in maneuvers:
        assert m["status"] in ("completed", "aborted", "infeasible", "unfinished")
        if m["status"] != "completed":
            assert m["reason"], "every refusal or abort says why"


@pytest.mark.parametrize("controller", ["cooperative", "selfish"])
def test_mixed_traffic_runs_safely(controller: str, tmp_path: Path) -> None:
    text = Path(__file__).parent.parent.joinpath("scenarios", "highway-lane-change.yaml").read_text()
    summary, maneuvers = run(
        tmp_path, text, "--duration", "300", "--set", "simulation.warmup_s=60",
        "--set", f"control.controller={controller}", "--set", "demand.cav_share=0.5",
    )  # fmt: skip
    assert summary["metrics"]["collisions"] == 0
    assert summary["controller_metrics"]["maneuvers_completed"] >= 3
    if controller == "selfish":
        assert all(int(m["cooperators"]) == 0 for m in maneuvers)
    lane_changes = list(csv.DictReader((tmp_path / "run" / "lane_changes.csv").open()))
    commanded = {m["vehicle_id"] for m in maneuvers if m["status"] == "completed"}
    cav_changes = {c["vehicle_id"] for c in lane_changes if c["is_cav"] == "True" and c["from_lane"] == "0"}
    assert commanded <= cav_changes, "every completed maneuver shows up as a lane change"
