"""External networks (road.kind: network): SUMO's own example networks from the eclipse-sumo wheel
(found through the installed `sumo` package, not copied here) and an OpenStreetMap file converted
by netconvert. Bad network inputs are one line and exit code 2; runs agree with SUMO's own outputs."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
import sumo
import yaml
from typer.testing import CliRunner

import cavlab.sim.network as net_mod
from cavlab.cli import app
from cavlab.config.files import read_yaml
from cavlab.sim.engine import Engine
from cavlab.sim.network import CORRIDOR_GAP_M, build_network
from cavlab.sim.resolve import load_scenario

GAME = Path(sumo.SUMO_HOME) / "tools" / "game"
OSM = GAME / "racing" / "spreewaldring.osm"  # OpenStreetMap data, © OpenStreetMap contributors, ODbL 1.0
runner = CliRunner()


def _write(folder: Path, network: dict, flows: list | None = None, **blocks) -> Path:
    """A scenario file in `folder` on an external network."""
    scenario = {"name": "net", "road": {"kind": "network", "network": network}, "demand": {"flows": flows or []}}
    scenario.update(blocks)
    path = folder / "s.yaml"
    path.write_text(yaml.safe_dump(scenario))
    return path


def _error(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


RAMP_NET = "sumo:tools/game/ramp/ramp.net.xml"
MOTORWAY = {"from_edge": "gneE2", "to_edge": "gneE11", "vehicles_per_hour": 1800}


# ----------------------------------------------------------------------------- checked before SUMO starts


def _broken(folder: Path) -> dict:
    (folder / "broken.net.xml").write_text('<net version="1.20">\n  <edge id="a">\n</net>\n')
    return {"file": "broken.net.xml"}


def _not_a_network(folder: Path) -> dict:
    (folder / "routes.net.xml").write_text("<routes/>\n")
    return {"file": "routes.net.xml"}


def _bad_route_file(folder: Path) -> dict:
    (folder / "x.rou.xml").write_text('<routes><route id="r" edges="gneE2 nowhere"/></routes>\n')
    return {"file": RAMP_NET, "route_files": ["x.rou.xml"]}


def _cfg_without_net(folder: Path) -> dict:
    (folder / "x.sumocfg").write_text(
        '<configuration><input><route-files value="a.rou.xml"/></input></configuration>\n'
    )
    return {"file": "x.sumocfg"}


@pytest.mark.parametrize(
    ("network", "flows", "expected"),
    [
        pytest.param(
            lambda f: {"file": "missing.net.xml"},
            [MOTORWAY],
            ["road.network.file", "missing.net.xml", "no such file"],
            id="missing-file",
        ),
        pytest.param(_broken, [MOTORWAY], ["road.network.file", "broken.net.xml", "not valid XML", "line"], id="xml"),
        pytest.param(_not_a_network, [MOTORWAY], ["expected a SUMO network (<net>)", "<routes>"], id="not-a-net"),
        pytest.param(
            lambda f: {"file": RAMP_NET},
            [{**MOTORWAY, "from_edge": "A0"}],
            ["demand.flows.0.from_edge", "unknown edge 'A0'", "ramp.net.xml", "(edges: ", "gneE2"],
            id="unknown-edge",
        ),
        pytest.param(
            lambda f: {"file": RAMP_NET},
            [{**MOTORWAY, "from_edge": "gneE11", "to_edge": "gneE2"}],
            ["demand.flows.0", "no route from edge 'gneE11' to edge 'gneE2'"],
            id="no-route",
        ),
        pytest.param(
            lambda f: {"file": RAMP_NET},
            [{**MOTORWAY, "lane": 3}],
            ["demand.flows.0.lane", "edge 'gneE2' has lanes 0..2"],
            id="no-such-lane",
        ),
        pytest.param(
            lambda f: {"file": RAMP_NET, "lane_change_edges": ["gneE2", "gneE15"]},
            [MOTORWAY],
            ["road.network.lane_change_edges", "edge 'gneE15' has 1 lane", "2 or more"],
            id="single-lane-zone",
        ),
        pytest.param(
            lambda f: {"file": RAMP_NET, "lane_change_edges": ["nowhere"]},
            [MOTORWAY],
            ["road.network.lane_change_edges", "unknown edge 'nowhere'"],
            id="unknown-zone",
        ),
        pytest.param(
            lambda f: {"file": RAMP_NET, "detectors": [{"edge": "gneE11", "position_m": 5000}]},
            [MOTORWAY],
            ["road.network.detectors.0.position_m", "beyond the end of edge 'gneE11'"],
            id="detector",
        ),
        pytest.param(
            _bad_route_file,
            [],
            ["road.network.route_files", "x.rou.xml", "unknown edge 'nowhere'"],
            id="route-file-edge",
        ),
        pytest.param(_cfg_without_net, [], ["road.network.file", "x.sumocfg", "needs one net-file"], id="cfg-no-net"),
        pytest.param(
            lambda f: {"file": RAMP_NET}, [], ["demand.flows", "at least 1 item", "no route files"], id="no-demand"
        ),
        pytest.param(
            lambda f: {"file": "map.shp"},
            [MOTORWAY],
            ["road.network.file", "must be a file ending in", ".net.xml.gz", ".sumocfg", ".osm"],
            id="suffix",
        ),
        pytest.param(
            lambda f: {"file": RAMP_NET},
            [{"vehicles_per_hour": 100}],
            ["demand.flows.0", "needs from_edge and to_edge"],
            id="flow-without-edges",
        ),
    ],
)
def test_bad_network_inputs_are_one_line_at_validate_and_run(tmp_path: Path, network, flows, expected) -> None:
    path = _write(tmp_path, network(tmp_path), flows)
    for args in (["validate", str(path)], ["run", str(path), "--out", str(tmp_path / "run"), "-q"]):
        line = _error(args)
        assert line.startswith(f"error: {path}: ")
        for word in expected:
            assert word in line, line
    assert not (tmp_path / "run").exists()


def test_the_road_kinds_keep_their_own_fields(tmp_path: Path) -> None:
    base = {"name": "x", "demand": {"flows": [{"vehicles_per_hour": 100}]}}
    cases = [
        ({"kind": "network"}, "road: kind 'network' needs a 'network' block"),
        ({"kind": "network", "lanes": 2, "network": {"file": "a.net.xml"}}, "'lanes' is not allowed with kind"),
        ({"kind": "highway", "lanes": 2}, "road: kind 'highway' needs 'length_m'"),
        ({"kind": "highway", "length_m": 500, "lanes": 2, "network": {"file": "a.net.xml"}},
         "'network' is only allowed with kind 'network', not 'highway'"),
    ]  # fmt: skip
    for road, expected in cases:
        (tmp_path / "k.yaml").write_text(yaml.safe_dump({**base, "road": road}))
        assert expected in _error(["validate", str(tmp_path / "k.yaml")])
    flows = {"flows": [{"from_edge": "a", "to_edge": "b", "vehicles_per_hour": 100}]}
    highway = {"kind": "highway", "length_m": 500, "lanes": 2}
    (tmp_path / "k.yaml").write_text(yaml.safe_dump({**base, "demand": flows, "road": highway}))
    assert "demand.flows.0: from_edge and to_edge need road.kind 'network'" in _error(
        ["validate", str(tmp_path / "k.yaml")]
    )


# ----------------------------------------------------------------------------- reading a network


def test_a_network_is_laid_out_as_corridors_with_road_lanes_matched_by_connections() -> None:
    network = build_network(load_scenario("sumo-ramp-network").road)
    ext = network.external
    corridor = dict(zip((e.id for e in network.edges), ext.corridor, strict=True))
    motorway = ["gneE2", "offramp", "gneE3", "gneE7", "gneE8", "gneE11"]  # the route file's route "highway"
    assert len({corridor[e] for e in motorway}) == 1  # through the off- and on-ramp's junctions
    edges = [e for e in network.edges if ext.corridor[network.edges.index(e)] == corridor["gneE2"]]
    for a, b in itertools.pairwise(edges):
        assert b.start_m == pytest.approx(a.start_m + a.length_m)  # x is continuous within a corridor
    starts = {}
    for e, c in zip(network.edges, ext.corridor, strict=True):
        starts.setdefault(c, (e.start_m, e.start_m + e.length_m))
        starts[c] = (starts[c][0], e.start_m + e.length_m)
    bounds = sorted(starts.values())
    assert all(b[0] - a[1] == pytest.approx(CORRIDOR_GAP_M) for a, b in itertools.pairwise(bounds))
    lanes = {e.id: (e.lane_offset, e.lanes) for e in network.edges}
    assert lanes["gneE2"] == (0, 3) and lanes["gneE3"] == (1, 2) and lanes["gneE7"] == (0, 3)  # off- and on-ramp lane
    ends = {(network.edges[k].id, lane): x for (k, lane), x in network.lane_ends().items()}
    off, on = network.edge("offramp"), network.edge("gneE7")
    assert ends == {("offramp", 0): off.start_m + off.length_m, ("gneE7", 0): on.start_m + on.length_m}
    assert ext.exits == ("gneE9", "gneE11")
    assert sorted(network.edges[k].id for k in ext.control_edges) == sorted(motorway)  # every multi-lane edge
    assert {d.edge for d in network.detectors} == {"gneE9", "gneE11"}


def test_paths_are_relative_to_the_scenario_file_and_a_saved_scenario_runs_again(tmp_path: Path) -> None:
    own = tmp_path / "project"
    (own / "net").mkdir(parents=True)
    shutil.copy(GAME / "ramp" / "ramp.net.xml", own / "net")
    path = _write(own, {"file": "net/ramp.net.xml"}, [MOTORWAY], simulation={"duration_s": 30, "warmup_s": 10})
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "run"), "-q"])
    assert result.exit_code == 0, result.output
    saved = read_yaml(tmp_path / "run" / "scenario.yaml", "scenario")
    assert saved["road"]["network"]["file"] == str(own / "net" / "ramp.net.xml")
    result = runner.invoke(app, ["validate", str(tmp_path / "run" / "scenario.yaml")])
    assert result.exit_code == 0 and "network ramp.net.xml" in result.output


def test_osm_files_are_converted_once_and_cached_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(OSM, tmp_path / "ring.osm")
    path = _write(tmp_path, {"file": "ring.osm"}, [{"from_edge": "x", "to_edge": "y", "vehicles_per_hour": 1}])
    assert "(edges: -244341734#2, 244341734#0)" in _error(["validate", str(path)])  # converted: two one-lane edges

    def fail(*args, **kwargs):
        raise AssertionError("netconvert ran again")

    monkeypatch.setattr(net_mod, "_run_netconvert", fail)
    first = build_network(load_scenario(_write(tmp_path, {"file": "ring.osm"}, _RING_FLOWS)).road)
    assert first.net_file.name == "osm.net.xml" and first.net_file.is_relative_to(net_mod.cache_dir())
    (tmp_path / "ring.osm").write_bytes(OSM.read_bytes().replace(b"Waldstr.", b"Waldstrasse"))
    with pytest.raises(AssertionError, match="netconvert ran again"):
        build_network(load_scenario(path).road)
    (tmp_path / "bad.osm").write_text("<osm><way id='1'>\n")
    monkeypatch.undo()
    bad = _write(tmp_path, {"file": "bad.osm"}, _RING_FLOWS)
    assert "netconvert failed" in _error(["validate", str(bad)])


_RING_FLOWS = [
    {"from_edge": "-244341734#2", "to_edge": "-244341734#2", "vehicles_per_hour": 900},
    {"from_edge": "244341734#0", "to_edge": "244341734#0", "vehicles_per_hour": 900},
]


# ----------------------------------------------------------------------------- runs on real SUMO


def _run(scenario, tmp_path: Path):
    result = Engine(scenario, tmp_path / "sumo").run()
    m = result.metrics
    assert m["collisions"] == 0 and not result.collisions
    sumo_own = m["sumo"]
    assert sumo_own["trips_completed"] > 50
    assert m["trips_completed"] == pytest.approx(sumo_own["trips_completed"], rel=0.01)
    assert m["throughput_vph"] > 0
    assert m["throughput_vph"] == pytest.approx(sumo_own["arrivals_on_measured_edges_vph"], rel=0.01)
    assert m["lane_changes"] == sumo_own["lane_changes"]  # junction crossings are no lane changes
    assert set(m["per_edge"]) == {e.id for e in build_network(scenario.road).edges if not e.internal}
    return result


OUTPUTS = "outputs.sumo=[tripinfo, lanechange]"


@pytest.mark.sumo
def test_sumo_ramp_example_with_cooperative_cavs(tmp_path: Path) -> None:
    """The shipped scenario: SUMO's ramp example (.sumocfg, its route file with a CAV share)."""
    scenario = load_scenario("sumo-ramp-network", ["simulation.duration_s=240", "simulation.warmup_s=60", OUTPUTS])
    result = _run(scenario, tmp_path)
    assert result.controller_report.metrics["maneuvers_completed"] >= 1
    assert result.metrics["lane_changes_cav"] > 0


def test_lane_ends_are_read_per_edge_and_a_lane_to_an_off_ramp_is_no_lane_end() -> None:
    """SUMO's ramp example: the on-ramp's acceleration lane (gneE7 lane 0) stops without a connection, so
    every vehicle in it, and in the lanes leading to it, must leave it; lane 0 of gneE2 leads off the
    motorway to the off-ramp, which only the vehicles routed on through it must leave (left to SUMO)."""
    network = build_network(load_scenario("sumo-ramp-network").road)
    end_of_e7 = network.edge("gneE7").start_m + network.edge("gneE7").length_m
    named = {(network.edges[k].id, lane): x for (k, lane), x in network.lane_ends_ahead().items()}
    assert named == {("gneE7", 0): pytest.approx(end_of_e7)}
    leaving = {(network.edges[k].id, lane) for k, lane in network.lane_ends_ahead(leaving=True)}
    assert {("gneE2", 0), ("offramp", 0)} <= leaving and ("gneE7", 0) not in leaving


@pytest.mark.sumo
def test_lanes_to_an_off_ramp_are_handed_back_to_sumo_before_their_end(tmp_path: Path) -> None:
    """SUMO's ramp example with every vehicle a CAV: a CAV in the lane that leads to the off-ramp is SUMO's
    again before that lane leaves the motorway's corridor (once a controlled CAV there followed a leader
    that had crossed into the off-ramp's corridor, out of its sight, and collided at the junction)."""
    scenario = load_scenario("sumo-ramp-network", ["simulation.duration_s=300", "simulation.warmup_s=60",
                                                   "demand.cav_share=1.0", OUTPUTS])  # fmt: skip
    result = _run(scenario, tmp_path)  # no collision
    assert result.controller_report.metrics["maneuvers_completed"] >= 10


@pytest.mark.sumo
def test_acceleration_lane_merges_on_a_network_are_the_controllers_mandatory_maneuvers(tmp_path: Path) -> None:
    """cavlab's own on-ramp network read back as an external network (flows from edge to edge): the
    acceleration lane's end is found from the network's connections, and the merges off it are planned and
    executed as mandatory maneuvers (commanded: "traci" in SUMO's lane-change output) with executed
    slack ≥ 0, as on the generated road (tests/test_cooperative_sumo.py)."""
    generated = build_network(load_scenario("on-ramp-merge").road)
    shutil.copy(generated.net_file, tmp_path / "onramp.net.xml")
    flows = [
        {"from_edge": "up", "to_edge": "down.1", "vehicles_per_hour": 2000, "arrivals": "uniform"},
        {"from_edge": "ramp", "to_edge": "down.1", "vehicles_per_hour": 400, "arrivals": "uniform"},
    ]
    path = _write(tmp_path, {"file": "onramp.net.xml"}, flows,
                  control={"controller": "cooperative", "params": {"request_patience_s": 0, "mandatory_range_m": 400}},
                  simulation={"duration_s": 300, "warmup_s": 60})  # fmt: skip
    scenario = load_scenario(path, ["demand.cav_share=1.0", "demand.vehicle_types.cav.sigma=0", OUTPUTS])
    network = build_network(scenario.road)
    merge = network.edge("merge")
    ends = {(network.edges[k].id, lane): x for (k, lane), x in network.lane_ends_ahead().items()}
    assert ends == {("merge", merge.lane_offset): pytest.approx(merge.start_m + 250, abs=5)}  # the ramp: a corridor
    result = _run(scenario, tmp_path)
    import xml.etree.ElementTree as ET

    changes = list(ET.parse(tmp_path / "sumo" / "lanechanges.xml").getroot().iter("change"))
    commanded = {c.get("id") for c in changes if c.get("from") == "merge_0" and "traci" in c.get("reason", "")}
    maneuvers = result.controller_report.tables["maneuvers"].rows
    merges = [m for m in maneuvers if m["status"] == "completed" and m["vehicle_id"] in commanded]
    assert len(merges) >= 5, [(m["vehicle_id"], m["status"], m["reason"]) for m in maneuvers][:10]
    assert all(float(m["min_slack_executed_m"]) >= 0 for m in merges), merges


@pytest.mark.sumo
def test_sumo_a10_motorway_with_cooperative_cavs(tmp_path: Path) -> None:
    """SUMO's A10KW example: an OpenStreetMap motorway network with seven route files (the largest of the
    wheel's game networks), cavlab's own flow added from edge to edge."""
    path = _write(tmp_path, {"file": "sumo:tools/game/A10KW.sumocfg"},
                  [{"from_edge": "264306385", "to_edge": "264308376", "vehicles_per_hour": 300}],
                  control={"controller": "cooperative"}, simulation={"duration_s": 240, "warmup_s": 60,
                  "step_length_s": 0.5})  # fmt: skip
    scenario = load_scenario(path, ["demand.cav_share=0.2", OUTPUTS])
    result = _run(scenario, tmp_path)
    assert result.controller_report.metrics["maneuvers_completed"] >= 1


@pytest.mark.sumo
def test_sumo_ingolstadt_gzipped_network_with_traffic_lights(tmp_path: Path) -> None:
    """SUMO's fkk_in example: a gzipped city network with a traffic-light program as an additional file."""
    path = _write(tmp_path, {"file": "sumo:tools/game/fkk_in.sumocfg"}, control={"controller": "cooperative"},
                  simulation={"duration_s": 240, "warmup_s": 30})  # fmt: skip
    scenario = load_scenario(path, ["demand.cav_share=0.3", OUTPUTS])
    _run(scenario, tmp_path)
    assert (tmp_path / "sumo" / "road.net.xml.gz").is_file()
    assert (tmp_path / "sumo" / "extra.0.fkk_in.tls.add.xml").is_file()


@pytest.mark.sumo
def test_an_osm_extract_converted_by_netconvert_runs(tmp_path: Path) -> None:
    """spreewaldring.osm of the wheel (OpenStreetMap data, ODbL): netconvert keeps two one-lane roads."""
    path = _write(tmp_path, {"file": str(OSM)}, _RING_FLOWS, simulation={"duration_s": 300, "warmup_s": 60})
    result = _run(load_scenario(path, ["demand.cav_share=0.3", OUTPUTS]), tmp_path)
    assert set(result.metrics["throughput_per_edge_vph"]) == {"-244341734#2", "244341734#0"}
