"""SUMO's own outputs (`outputs.sumo`) as cross-checks of cavlab's metrics: the options, the parsers
and their window, and the agreement of SUMO's figures with cavlab's on real runs."""

from __future__ import annotations

import json
import math
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cavlab.cli import app
from cavlab.config.scenario import parse_scenario
from cavlab.errors import ScenarioError, SimulationError
from cavlab.sim.engine import Engine, RunResult
from cavlab.sim.sumo_outputs import (
    Window,
    lanechange_measures,
    ssm_measures,
    sumo_output_options,
    tripinfo_measures,
)

from .conftest import short

ALL = "outputs.sumo=[tripinfo, lanechange, ssm]"
MINIMAL = "name: s\nroad: {kind: highway, length_m: 1000, lanes: 2}\ndemand: {flows: [{vehicles_per_hour: 100}]}\n"
SSM_KEYS = {
    "ssm_conflicts", "ssm_ttc_conflicts", "ssm_critical_ttc_conflicts", "ssm_drac_conflicts", "ssm_pet_conflicts",
    "ssm_min_ttc_s", "ssm_max_drac_mps2", "ssm_min_pet_s",
}  # fmt: skip


# ----------------------------------------------------------------------------- the field


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("[fcd]", "outputs.sumo.0: Input should be 'tripinfo', 'lanechange' or 'ssm' (got 'fcd')"),
        ("[tripinfo, TTC]", "outputs.sumo.1: Input should be 'tripinfo', 'lanechange' or 'ssm' (got 'TTC')"),
        ("tripinfo", "outputs.sumo: must be a list of tripinfo, lanechange, ssm (got 'tripinfo')"),
        ("", "outputs.sumo: must be a list of tripinfo, lanechange, ssm (got None)"),
        ("[ssm, tripinfo, ssm]", "outputs.sumo: 'ssm' is listed more than once; allowed: tripinfo, lanechange, ssm"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_allowed_values(value: str, expected: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(MINIMAL, source="s.yaml", overrides=[f"outputs.sumo={value}"])
    message = str(caught.value)
    assert message.startswith("s.yaml: ") and "\n" not in message
    assert expected in message


def test_default_is_none_and_each_output_adds_its_options() -> None:
    assert parse_scenario(MINIMAL).outputs.sumo == []
    assert sumo_output_options(parse_scenario(MINIMAL)) == {}
    options = sumo_output_options(parse_scenario(MINIMAL, overrides=[ALL]))
    assert options["output"] == {"tripinfo-output": "tripinfo.xml", "lanechange-output": "lanechanges.xml"}
    assert options["ssm_device"]["device.ssm.probability"] == "1"
    assert options["ssm_device"]["device.ssm.measures"] == "TTC DRAC PET"
    assert options["ssm_device"]["device.ssm.thresholds"] == "3 3 2"
    assert options["ssm_device"]["device.ssm.file"] == "ssm.xml"
    assert list(sumo_output_options(parse_scenario(MINIMAL, overrides=["outputs.sumo=[ssm]"]))) == ["ssm_device"]


@pytest.mark.sumo
def test_every_option_is_one_sumo_knows(tmp_path: Path) -> None:
    from sumolib import checkBinary

    template = tmp_path / "template.sumocfg"
    subprocess.run([checkBinary("sumo"), "--save-template", str(template)], check=True, capture_output=True)
    known = {node.tag for node in ET.parse(template).getroot().iter()}
    for values in sumo_output_options(parse_scenario(MINIMAL, overrides=[ALL])).values():
        assert set(values) <= known


# ----------------------------------------------------------------------------- the parsers, on written files

WINDOW = Window(step_s=0.1, warmup_steps=600)  # Δt = 0.1 s, T_w = 60 s


def _file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_tripinfo_counts_trips_first_seen_at_or_after_the_warmup(tmp_path: Path) -> None:
    def trip(i: int, depart: str, duration: float, loss: float, vaporized: str = "") -> str:
        return (f'<tripinfo id="v{i}" depart="{depart}" departDelay="0.50" duration="{duration:.2f}" '
                f'timeLoss="{loss:.2f}" vaporized="{vaporized}"/>')  # fmt: skip

    path = _file(tmp_path, "tripinfo.xml", "<tripinfos>" + "".join([
        trip(0, "59.80", 10, 1),  # first seen at 59.9 s: during the warm-up
        trip(1, "59.90", 40, 2),  # first seen at 60.0 s = T_w: in cavlab's trip set
        trip(2, "70.00", 99, 9, vaporized="collision"),  # removed after a collision: not a trip
        trip(3, "80.00", 50, 4),
    ]) + "</tripinfos>")  # fmt: skip
    assert tripinfo_measures(path, WINDOW) == {
        "trips_completed": 2, "mean_travel_time_s": 45.0, "mean_time_loss_s": 3.0, "mean_depart_delay_s": 0.5,
    }  # fmt: skip
    empty = tripinfo_measures(_file(tmp_path, "none.xml", "<tripinfos/>"), WINDOW)
    assert empty["trips_completed"] == 0 and math.isnan(empty["mean_travel_time_s"])


def test_lanechange_counts_changes_seen_after_the_warmup_by_reason_and_kind(tmp_path: Path) -> None:
    def change(time: str, reason: str, vtype: str = "car") -> str:
        return f'<change id="v" type="{vtype}" time="{time}" from="a_0" to="a_1" dir="1" reason="{reason}"/>'

    path = _file(tmp_path, "lanechanges.xml", "<lanechanges>" + "".join([
        change("59.80", "strategic"),  # seen at 59.9 s
        change("59.90", "strategic"),  # seen at 60.0 s, not after T_w
        change("60.00", "strategic|urgent"),  # seen at 60.1 s: the first counted
        change("61.00", "speedGain", "cav"),
        change("62.00", "keepRight"),
        change("63.00", "cooperative|urgent", "cav"),
        change("64.00", "traci"),
        change("65.00", "sublane"),
        change("66.00", "somethingNew"),
    ]) + "</lanechanges>")  # fmt: skip
    counts = lanechange_measures(path, WINDOW, cav_types={"cav"})
    assert counts == {
        "lane_changes": 7, "lane_changes_cav": 2, "lane_changes_hdv": 5,
        "lane_changes_strategic": 1, "lane_changes_cooperative": 1, "lane_changes_speed_gain": 1,
        "lane_changes_keep_right": 1, "lane_changes_sublane": 1, "lane_changes_traci": 1, "lane_changes_other": 1,
        "lane_changes_urgent": 2,
    }  # fmt: skip


def test_ssm_merges_both_vehicles_records_and_counts_extremes_after_the_warmup(tmp_path: Path) -> None:
    def conflict(ego: str, foe: str, begin: str, end: str, ttc: tuple | None, drac: tuple | None) -> str:
        def measure(tag: str, m: tuple | None) -> str:
            time, value = m if m is not None else ("NA", "NA")
            return f'<{tag} time="{time}" position="NA" type="2" value="{value}" speed="NA"/>'

        return (f'<conflict begin="{begin}" end="{end}" ego="{ego}" foe="{foe}">{measure("minTTC", ttc)}'
                f'{measure("maxDRAC", drac)}{measure("PET", None)}</conflict>')  # fmt: skip

    path = _file(tmp_path, "ssm.xml", "<SSMLog>" + "".join([
        conflict("a", "b", "65.00", "75.00", ("70.00", 1.20), ("70.00", 1.00)),  # a follows b ...
        conflict("b", "a", "65.00", "79.00", ("70.00", 1.20), ("70.00", 1.00)),  # ... written by b's device too
        conflict("a", "b", "90.00", "95.00", ("91.00", 2.50), None),  # the same pair, later: a second conflict
        conflict("c", "d", "40.00", "55.00", ("50.00", 0.80), ("50.00", 5.00)),  # during the warm-up
        conflict("e", "f", "80.00", "85.00", None, ("81.00", 3.50)),  # hard braking only
        conflict("g", "h", "59.00", "70.00", ("59.90", 1.00), None),  # its least TTC seen at T_w: not counted
    ]) + "</SSMLog>")  # fmt: skip
    m = ssm_measures(path, WINDOW)
    assert set(m) == SSM_KEYS
    assert (m["ssm_conflicts"], m["ssm_ttc_conflicts"], m["ssm_critical_ttc_conflicts"]) == (3, 2, 1)
    assert (m["ssm_drac_conflicts"], m["ssm_pet_conflicts"]) == (1, 0)
    assert (m["ssm_min_ttc_s"], m["ssm_max_drac_mps2"]) == (1.2, 3.5)
    assert math.isnan(m["ssm_min_pet_s"])
    none = ssm_measures(_file(tmp_path, "empty.xml", "<SSMLog>\n</SSMLog>\n"), WINDOW)
    assert none["ssm_conflicts"] == 0 and math.isnan(none["ssm_min_ttc_s"])


def test_a_missing_or_incomplete_file_is_a_simulation_error(tmp_path: Path) -> None:
    with pytest.raises(SimulationError, match="SUMO wrote no tripinfo output"):
        tripinfo_measures(tmp_path / "nope.xml", WINDOW)
    cut = _file(tmp_path, "cut.xml", '<lanechanges>\n  <change id="v" type="car" time="61.00" reason="speedGain"/>\n')
    with pytest.raises(SimulationError, match="SUMO's lanechange output is incomplete"):
        lanechange_measures(cut, WINDOW, set())


# ----------------------------------------------------------------------------- on the real SUMO


def _run(scenario, folder: Path) -> RunResult:
    return Engine(scenario, folder).run()


@pytest.mark.sumo
@pytest.mark.parametrize(
    "overrides",
    [(), ("simulation.lane_change_duration_s=0",), ("simulation.backend=traci",)],
    ids=["lc-3s", "lc-instant", "traci"],
)
def test_sumo_agrees_with_cavlab_on_trips_and_lane_changes(overrides: tuple[str, ...], tmp_path: Path) -> None:
    scenario = short("lane-drop", ALL, *overrides, duration_s=200, warmup_s=60)
    result = _run(scenario, tmp_path / "sumo")
    m, sumo = result.metrics, result.metrics["sumo"]
    dt = scenario.simulation.step_length_s
    assert m["collisions"] == 0  # so no trip is left out on one side only (cavlab drops colliding vehicles)

    # Trips. cavlab's trip set: first seen at or after T_w, arrived, no collision; its travel time is the
    # time of the arrival event minus the time of the departure event. SUMO stamps `depart` and `arrival`
    # at the start of their steps, Δt before cavlab sees each, so `duration` is the same difference; SUMO
    # prints it to its time resolution (here 0.01 s), at which a multiple of Δt = 0.1 s is exact. So the
    # trip sets are the same (equal counts) and the means agree up to the order of float summation.
    assert m["trips_completed"] > 20
    assert sumo["trips_completed"] == m["trips_completed"]
    assert sumo["mean_travel_time_s"] == pytest.approx(m["mean_travel_time_s"], rel=0, abs=1e-9)
    # SUMO's timeLoss is not cavlab's delay (free-flow time over the whole route length): they differ by how
    # the first metres (the vehicle enters with its front at its own length) are counted, ~0.1 s here.
    assert abs(sumo["mean_time_loss_s"] - m["mean_delay_s"]) < 0.5

    # Lane changes. SUMO writes a `change` record in the step in which the vehicle's centre enters the new
    # lane, and that is the step in which its lane index flips, which is how cavlab detects a change: with a
    # lateral manoeuvre of lanechange.duration = 3 s the record is at its midpoint, not its start, and with
    # instantaneous changes the two coincide anyway. SUMO stamps the step's start, cavlab the state after it
    # (+Δt). So every change is the same, vehicle by vehicle and step by step, warm-up included, and the
    # counts after the warm-up are equal.
    records = ET.parse(result.inputs.sumo_outputs["lanechange"]).getroot().iter("change")
    theirs = sorted((n.get("id"), round(float(n.get("time")) / dt) + 1, int(n.get("dir"))) for n in records)
    ours = sorted((c.vehicle_id, round(c.time_s / dt), int(np.sign(c.to_lane - c.from_lane)))
                  for c in result.lane_changes)  # fmt: skip
    assert len(ours) > 50 and theirs == ours
    assert m["lane_changes"] > 30
    assert sumo["lane_changes"] == m["lane_changes"] and sumo["lane_changes_cav"] == m["lane_changes_cav"]
    assert sumo["lane_changes_cav"] + sumo["lane_changes_hdv"] == sumo["lane_changes"]
    reasons = ("strategic", "cooperative", "speed_gain", "keep_right", "sublane", "traci", "other")
    assert sum(sumo[f"lane_changes_{r}"] for r in reasons) == sumo["lane_changes"]
    assert sumo["lane_changes_strategic"] > 0  # the dropped lane's vehicles must leave it
    assert sumo["lane_changes_traci"] == 0  # the `sumo` controller sends no commands

    assert set(sumo) >= SSM_KEYS
    config = {node.tag: node.get("value") for node in ET.parse(result.inputs.config).getroot().iter()}
    assert config["tripinfo-output"] == "tripinfo.xml" and config["device.ssm.probability"] == "1"


@pytest.mark.sumo
def test_sumo_outputs_leave_the_simulation_as_it_was(tmp_path: Path) -> None:
    plain = _run(short("on-ramp-merge"), tmp_path / "plain")
    watched = _run(short("on-ramp-merge", ALL), tmp_path / "watched")
    assert "sumo" not in plain.metrics and not plain.inputs.sumo_outputs
    assert {k: v for k, v in watched.metrics.items() if k != "sumo"} == plain.metrics
    assert watched.lane_changes == plain.lane_changes
    assert watched.trajectories.equals(plain.trajectories)


@pytest.mark.sumo
def test_ssm_on_close_following(tmp_path: Path) -> None:
    """on-ramp-merge with 1.5× demand and IDM car following: a queue at the merge, with close following."""
    scenario = short(
        "on-ramp-merge", "outputs.sumo=[ssm]", "demand.scale=1.5",
        "demand.vehicle_types.car.car_following=IDM", "demand.vehicle_types.cav.car_following=IDM",
        duration_s=200, warmup_s=60,
    )  # fmt: skip
    result = _run(scenario, tmp_path / "sumo")
    ssm = result.metrics["sumo"]
    assert set(ssm) == SSM_KEYS
    assert ssm["ssm_ttc_conflicts"] > 5 and ssm["ssm_critical_ttc_conflicts"] > 0
    assert ssm["ssm_critical_ttc_conflicts"] <= ssm["ssm_ttc_conflicts"] <= ssm["ssm_conflicts"]
    assert math.isfinite(ssm["ssm_min_ttc_s"]) and 0 < ssm["ssm_min_ttc_s"] < 1.5
    assert math.isfinite(ssm["ssm_max_drac_mps2"]) and ssm["ssm_max_drac_mps2"] > 0
    # SUMO computes PET only where two lanes cross or merge inside a junction; cavlab's roads have none (the
    # acceleration lane and a dropped lane end, their vehicles change lanes), so there is no PET to report.
    assert ssm["ssm_pet_conflicts"] == 0 and math.isnan(ssm["ssm_min_pet_s"])

    # The least TTC is a plain following encounter here: SUMO's gap / closing speed on its own state equals
    # the one of cavlab's trajectories (nearest leader in the road lane, bumper to bumper, after the
    # warm-up), to SUMO's two printed decimals.
    t = result.trajectories
    time, lane, x, v = (t[c].to_numpy() for c in ("t_s", "lane", "x_m", "speed_mps"))
    length = np.array([scenario.demand.vehicle_types[n].length_m for n in t["vehicle_type"].to_pylist()])
    order = np.lexsort((x, lane, time))
    time, lane, x, v, length = time[order], lane[order], x[order], v[order], length[order]
    follows = (time[1:] == time[:-1]) & (lane[1:] == lane[:-1]) & (time[1:] > scenario.simulation.warmup_s + 1e-9)
    gap, closing = x[1:] - length[1:] - x[:-1], v[:-1] - v[1:]
    ttc = gap[follows & (closing > 0)] / closing[follows & (closing > 0)]
    assert ssm["ssm_min_ttc_s"] == pytest.approx(ttc.min(), abs=0.005 + 1e-9)


@pytest.mark.sumo
def test_the_run_directory_keeps_the_files_and_the_summary_the_measures(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = CliRunner().invoke(app, ["run", "lane-drop", "--duration", "100", "--out", str(out), "-q",
                                    "--set", "simulation.warmup_s=30", "--set", ALL])  # fmt: skip
    assert done.exit_code == 0, done.output
    for name in ("tripinfo.xml", "lanechanges.xml", "ssm.xml"):
        ET.parse(out / "sumo" / name)  # complete XML
    summary = json.loads((out / "summary.json").read_text())
    sumo = summary["metrics"]["sumo"]
    assert sumo["trips_completed"] == summary["metrics"]["trips_completed"]
    assert sumo["lane_changes"] == summary["metrics"]["lane_changes"]
    assert sumo["ssm_min_ttc_s"] is None  # no conflict in free-flowing lane-drop traffic: NaN is written as null
