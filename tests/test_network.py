"""Network and SUMO input generation: layouts, lane numbering, demand files, the cache."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import sumolib

from cavlab.sim import network as net_mod
from cavlab.sim.network import build_network, detector_period_s, routes_xml, write_sumo_inputs
from cavlab.sim.resolve import load_scenario


@pytest.mark.parametrize(
    ("name", "edges", "road_lanes"),
    [
        ("highway-lane-change", {"main.0": 2, "main.1": 2, "main.2": 2}, {"main.1": [0, 1]}),
        ("on-ramp-merge", {"up": 2, "merge": 3, "down.0": 2, "down.1": 2, "ramp": 1},
         {"up": [0, 1], "merge": [-1, 0, 1], "down.1": [0, 1], "ramp": [-1]}),
        ("lane-drop", {"up.0": 3, "up.1": 3, "down": 2}, {"up.1": [0, 1, 2], "down": [1, 2]}),
    ],
)  # fmt: skip
def test_built_network_matches_the_layout(name: str, edges: dict[str, int], road_lanes: dict[str, list[int]]) -> None:
    scenario = load_scenario(name)
    network = build_network(scenario.road)
    net = sumolib.net.readNet(str(network.net_file))
    assert {e.getID(): e.getLaneNumber() for e in net.getEdges()} == edges
    lane_road = dict(zip(network.lane_ids, network.lane_road_index.tolist(), strict=True))
    for edge_id, expected in road_lanes.items():
        assert [lane_road[f"{edge_id}_{i}"] for i in range(edges[edge_id])] == expected
    for edge in network.edges:
        # SUMO lane lengths are the nominal ones, so x = edge start + lane position is the distance travelled
        for i in range(edge.lanes):
            assert net.getLane(f"{edge.id}_{i}").getLength() == pytest.approx(edge.length_m, abs=1e-3)
    mainline = [network.edge(e) for e in network.routes["mainline"]]
    assert mainline[0].start_m == 0
    for a, b in itertools.pairwise(mainline):
        assert a.start_m + a.length_m == pytest.approx(b.start_m)
    assert mainline[-1].start_m + mainline[-1].length_m == pytest.approx(scenario.road.length_m)


def test_on_ramp_connections_end_the_acceleration_lane() -> None:
    network = build_network(load_scenario("on-ramp-merge").road)
    net = sumolib.net.readNet(str(network.net_file))
    assert [c.getToLane().getID() for c in net.getLane("ramp_0").getOutgoing()] == ["merge_0"]
    assert net.getLane("merge_0").getOutgoing() == []
    assert [c.getToLane().getID() for c in net.getLane("merge_1").getOutgoing()] == ["down.0_0"]
    ramp = network.edge("ramp")
    assert ramp.start_m + ramp.length_m == network.edge("merge").start_m


def test_lane_drop_on_the_left() -> None:
    scenario = load_scenario("lane-drop", ["road.lane_drop.side=left"])
    network = build_network(scenario.road)
    net = sumolib.net.readNet(str(network.net_file))
    assert net.getLane("up.1_2").getOutgoing() == []
    assert network.edge("down").lane_offset == 0


def test_long_sections_are_split_into_segments() -> None:
    network = build_network(load_scenario("lane-drop", ["road.length_m=4050"]).road)
    assert [(e.id, e.start_m, e.length_m) for e in network.edges] == [
        ("up.0", 0, 1000), ("up.1", 1000, 500), ("down.0", 1500, 1000), ("down.1", 2500, 1000),
        ("down.2", 3500, 550),
    ]  # fmt: skip
    assert network.routes["mainline"] == ("up.0", "up.1", "down.0", "down.1", "down.2")


def test_detectors_sit_on_every_lane_at_each_measurement_point() -> None:
    network = build_network(load_scenario("on-ramp-merge").road)
    by_x: dict[float, list[int]] = {}
    for d in network.detectors:
        by_x.setdefault(d.x_m, []).append(d.lane)
        edge = network.edge(d.lane_id.rsplit("_", 1)[0])
        assert edge.start_m + d.position_m == pytest.approx(d.x_m)
    assert by_x == {800.0: [0, 1], 1600.0: [0, 1], 2400.0: [0, 1]}


def test_networks_are_cached_by_content(monkeypatch: pytest.MonkeyPatch) -> None:
    road = load_scenario("lane-drop", ["road.length_m=2600"]).road
    first = build_network(road)
    calls = []
    monkeypatch.setattr(net_mod, "_netconvert", lambda *a: calls.append(a))
    assert build_network(road).net_file == first.net_file
    assert calls == []
    other = build_network(load_scenario("lane-drop", ["road.length_m=2700"]).road)
    assert calls and other.net_file != first.net_file


def test_flows_mix_hdv_types_with_the_cav_share() -> None:
    scenario = load_scenario("highway-lane-change", ["demand.cav_share=0.2", "demand.scale=2"])
    root = ET.fromstring(routes_xml(scenario, build_network(scenario.road)))
    mixes = {d.get("id"): d for d in root.iter("vTypeDistribution")}
    assert mixes["mix0"].get("vTypes") == "truck slow_car"  # this flow sets cav_share 0 itself
    assert [float(p) for p in mixes["mix0"].get("probabilities").split()] == pytest.approx([0.5, 0.5])
    assert mixes["mix2"].get("vTypes") == "car cav"
    assert [float(p) for p in mixes["mix2"].get("probabilities").split()] == pytest.approx([0.8, 0.2])
    flows = {f.get("id"): f for f in root.iter("flow")}
    assert flows["f2"].get("period") == f"exp({2 * 1500 / 3600:.9g})"
    assert flows["f2"].get("departLane") == "1"
    cav = next(t for t in root.iter("vType") if t.get("id") == "cav")
    assert cav.get("sigma") == "0" and cav.get("laneChangeModel") == "LC2013"


def test_zero_flows_are_left_out() -> None:
    scenario = load_scenario("highway-lane-change", ["demand.flows.1.vehicles_per_hour=0"])
    root = ET.fromstring(routes_xml(scenario, build_network(scenario.road)))
    assert sorted(f.get("id") for f in root.iter("flow")) == ["f0", "f2"]


@pytest.mark.parametrize(
    ("warmup", "duration", "period"), [(120, 600, 60), (100, 600, 50), (70, 600, 10), (0, 90, 45), (30.5, 120, 0.5)]
)
def test_detector_period_divides_warmup_and_duration(warmup: float, duration: float, period: float) -> None:
    s = load_scenario("lane-drop", [f"simulation.warmup_s={warmup}", f"simulation.duration_s={duration}"])
    assert detector_period_s(s) == pytest.approx(period)


def test_sumo_inputs_are_self_contained(tmp_path: Path) -> None:
    scenario = load_scenario("on-ramp-merge")
    inputs = write_sumo_inputs(scenario, build_network(scenario.road), tmp_path / "sumo")
    config = ET.parse(inputs.config).getroot()
    values = {el.tag: el.get("value") for section in config for el in section}
    assert values["net-file"] == "road.net.xml" and (inputs.folder / "road.net.xml").is_file()
    assert values["step-method.ballistic"] == "true"
    assert values["lanechange.duration"] == "3"
    assert values["time-to-teleport"] == "-1"
    assert values["seed"] == "42"
    assert values["collision.mingap-factor"] == "0"
