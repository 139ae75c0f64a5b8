"""The trajectories' edge column and `cavlab plot --route` on real SUMO runs: a generated road (known answer: the
route distance along up.0,up.1,down is x), SUMO's own ramp network (the distance runs on across junctions as the
vehicles drive), `--route auto`, and each bad input (exit 2, one line, no PNG)."""

from __future__ import annotations

import itertools
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cavlab.cli import app
from cavlab.runs.plot import most_travelled_route, route_distance
from cavlab.sim.network import Network, build_network
from cavlab.sim.resolve import load_scenario

from .test_bad_inputs_runs import fails

runner = CliRunner()
SHORT = ["--duration", "60", "--set", "simulation.warmup_s=10", "-q"]
COLUMNS = ["t_s", "vehicle_id", "vehicle_type", "lane", "x_m", "speed_mps", "accel_mps2", "edge"]
PNGS = {"time_space.png", "speed_heatmap.png", "time_space_route.png"}


def _run(root: Path, scenario: str) -> Path:
    out = root / scenario
    result = runner.invoke(app, ["run", scenario, *SHORT, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def lane_drop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("runs"), "lane-drop")


@pytest.fixture(scope="module")
def ramp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("runs"), "sumo-ramp-network")


def _network(run: Path) -> Network:
    return build_network(load_scenario(run / "scenario.yaml").road)


def _distance(run: Path, route: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The route distance of every row, and the trajectories' columns (edge as its ids)."""
    table = pq.read_table(run / "trajectories.parquet")
    codes = table["edge"].combine_chunks().dictionary_encode()
    distance = route_distance(
        _network(run), route, table["x_m"].to_numpy(), codes.indices.to_numpy(), codes.dictionary.to_pylist()
    )
    columns = {name: np.asarray(table[name].to_numpy(zero_copy_only=False)) for name in table.column_names}
    return distance, columns


def _plot(run: Path, out: Path, route: str) -> None:
    """`cavlab plot --route` succeeds and writes the three PNGs."""
    result = runner.invoke(app, ["plot", str(run), "--out", str(out), "--route", route])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == PNGS


@pytest.mark.sumo
def test_trajectories_record_the_sumo_edge(lane_drop: Path) -> None:
    table = pq.read_table(lane_drop / "trajectories.parquet")
    assert table.column_names == COLUMNS
    assert [str(table[c].type) for c in COLUMNS] == [
        "double", "string", "string", "int16", "double", "double", "double", "string"
    ]  # fmt: skip
    x, edge = table["x_m"].to_numpy(), np.array(table["edge"].to_pylist())
    # lane-drop: up (1500 m, segments up.0 of 1000 m and up.1) then down
    assert (edge[x < 1000] == "up.0").all() and (edge[(x > 1000) & (x < 1500)] == "up.1").all()
    assert (edge[x > 1500] == "down").all() and (x > 1500).sum() > 100


@pytest.mark.sumo
def test_route_distance_on_a_generated_road_is_x(lane_drop: Path, tmp_path: Path) -> None:
    distance, columns = _distance(lane_drop, ("up.0", "up.1", "down"))
    np.testing.assert_allclose(distance, columns["x_m"], rtol=0, atol=1e-9)
    _plot(lane_drop, tmp_path / "plots", "up.0,up.1,down")
    # a part of the route: only its rows, counted from its first edge's start
    distance, columns = _distance(lane_drop, ("up.1", "down"))
    on = np.isin(columns["edge"], ["up.1", "down"])
    assert np.isnan(distance[~on]).all()
    np.testing.assert_allclose(distance[on], columns["x_m"][on] - 1000.0, rtol=0, atol=1e-9)


@pytest.mark.sumo
def test_route_distance_on_a_network_runs_on_across_junctions(ramp: Path, tmp_path: Path) -> None:
    route = ("gneE2", "offramp", "gneE3", "gneE7", "gneE8", "gneE11")
    _plot(ramp, tmp_path / "plots", ",".join(route))
    distance, c = _distance(ramp, route)
    on = np.isfinite(distance)
    assert set(c["edge"][on]) > set(route) and any(e.startswith(":") for e in c["edge"][on])  # junctions included
    assert set(c["edge"][~on]).isdisjoint(route)
    crossed = 0
    for vehicle in np.unique(c["vehicle_id"][on]):
        rows = np.flatnonzero(on & (c["vehicle_id"] == vehicle))
        rows = rows[np.argsort(c["t_s"][rows], kind="stable")]
        step = np.diff(distance[rows])
        assert (step >= 0).all(), vehicle
        # each step moves the vehicle by (v_{k-1} + v_k)/2 · Δt (ballistic update), junction or not
        dt, v = np.diff(c["t_s"][rows]), c["speed_mps"][rows]
        np.testing.assert_allclose(step, (v[1:] + v[:-1]) / 2 * dt, rtol=0, atol=0.5)
        crossed += len(set(c["edge"][rows]) & set(route)) > 2
    assert crossed >= 10


@pytest.mark.sumo
def test_route_auto_picks_consecutive_edges(ramp: Path, tmp_path: Path) -> None:
    _plot(ramp, tmp_path / "plots", "auto")
    table = pq.read_table(ramp / "trajectories.parquet")
    vehicle, edge = (table[name].combine_chunks().dictionary_encode() for name in ("vehicle_id", "edge"))
    network = _network(ramp)
    route = most_travelled_route(
        network,
        vehicle.indices.to_numpy(),
        table["t_s"].to_numpy(),
        edge.indices.to_numpy(),
        edge.dictionary.to_pylist(),
    )
    assert route == ("gneE2", "offramp", "gneE3", "gneE7", "gneE8", "gneE11")  # the motorway, end to end
    for a, b in itertools.pairwise(route):
        assert b in network.external.successors[a], (a, b)


@pytest.mark.sumo
def test_bad_routes_are_one_line_and_write_nothing(ramp: Path, tmp_path: Path) -> None:
    out = tmp_path / "plots"
    plot = ["plot", str(ramp), "--out", str(out), "--route"]
    before = sorted(p.name for p in ramp.iterdir())
    fails([*plot, "nowhere"], "--route", "unknown edge 'nowhere'", "gneE11")
    fails([*plot, "gneE2,gneE3"], "--route", "'gneE3' does not follow 'gneE2'", "consecutive", "offramp")
    fails([*plot, "gneE11,gneE2"], "'gneE2' does not follow 'gneE11'", "exit")
    fails([*plot, ""], "--route", "empty")
    fails([*plot, " , "], "--route", "empty")
    fails([*plot, "gneE2,:gneJ15_0"], "':gneJ15_0'", "internal edge")
    fails([*plot, "gneE2,gneE2"], "appears twice")
    assert not out.exists()
    assert sorted(p.name for p in ramp.iterdir()) == before


@pytest.mark.sumo
def test_route_needs_the_edge_column_and_the_network(ramp: Path, tmp_path: Path) -> None:
    old = tmp_path / "old-run"
    shutil.copytree(ramp, old)
    table = pq.read_table(old / "trajectories.parquet")
    pq.write_table(table.drop_columns(["edge"]), old / "trajectories.parquet")
    fails(["plot", str(old), "--route", "auto"], "trajectories.parquet", "no edge column", "--route")
    assert not PNGS & {p.name for p in old.iterdir()}
    assert runner.invoke(app, ["plot", str(old)]).exit_code == 0  # without --route: as before

    moved = tmp_path / "moved-run"
    shutil.copytree(ramp, moved)
    text = (moved / "scenario.yaml").read_text()
    gone = tmp_path / "gone" / "ramp.sumocfg"
    (moved / "scenario.yaml").write_text(re.sub(r"(?m)^(    file: ).*$", rf"\g<1>{gone}", text, count=1))
    fails(["plot", str(moved), "--route", "gneE2,offramp"], "--route", "cannot rebuild the run's network", str(gone),
          "no such file")  # fmt: skip
    assert not PNGS & {p.name for p in moved.iterdir()}
