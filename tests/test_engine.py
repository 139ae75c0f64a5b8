"""The engine on the real SUMO: determinism across seeds and backends, metrics against the trajectories."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from cavlab.controllers import Controller, ControlSetup
from cavlab.sim.engine import Engine, RunResult
from cavlab.world import Command, SetSpeed, WorldState

from .conftest import short

pytestmark = pytest.mark.sumo


def run(scenario, tmp_path: Path, **kwargs) -> RunResult:
    return Engine(scenario, tmp_path / "sumo", **kwargs).run()


@pytest.fixture(scope="module")
def merge_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunResult]:
    """on-ramp-merge, 200 s, on both backends and with two seeds."""
    root = tmp_path_factory.mktemp("merge")
    cases = {
        "libsumo": short("on-ramp-merge", duration_s=200, warmup_s=60),
        "traci": short("on-ramp-merge", "simulation.backend=traci", duration_s=200, warmup_s=60),
        "libsumo-again": short("on-ramp-merge", duration_s=200, warmup_s=60),
        "seed-7": short("on-ramp-merge", "simulation.seed=7", duration_s=200, warmup_s=60),
    }
    return {name: run(s, root / name) for name, s in cases.items()}


def test_same_seed_gives_identical_runs_on_libsumo_and_traci(merge_runs: dict[str, RunResult]) -> None:
    a, b, again = merge_runs["libsumo"], merge_runs["traci"], merge_runs["libsumo-again"]
    assert a.trajectories.num_rows > 10_000
    assert a.trajectories.equals(b.trajectories)
    assert a.trajectories.equals(again.trajectories)
    assert a.lane_changes == b.lane_changes
    assert a.metrics == b.metrics


def test_different_seeds_differ(merge_runs: dict[str, RunResult]) -> None:
    a, other = merge_runs["libsumo"], merge_runs["seed-7"]
    assert not a.trajectories.equals(other.trajectories)
    assert a.metrics["throughput_vph"] != other.metrics["throughput_vph"] or a.lane_changes != other.lane_changes


def _crossings(result: RunResult, x_d: float, start_s: float) -> dict[int, int]:
    """Per road lane, vehicles whose front passed x_d after `start_s`, counted from the trajectories."""
    t = result.trajectories
    order = pc.sort_indices(t, [("vehicle_id", "ascending"), ("t_s", "ascending")])
    t = t.take(order)
    vid = np.asarray(t["vehicle_id"].to_pylist(), dtype=object)
    x, time, lane = t["x_m"].to_numpy(), t["t_s"].to_numpy(), t["lane"].to_numpy()
    same = vid[1:] == vid[:-1]
    crossed = same & (x[:-1] < x_d) & (x[1:] >= x_d) & (time[1:] > start_s)
    lanes, counts = np.unique(lane[1:][crossed], return_counts=True)
    return dict(zip(lanes.tolist(), counts.tolist(), strict=True))


def test_detector_throughput_agrees_with_the_trajectories(merge_runs: dict[str, RunResult]) -> None:
    result = merge_runs["libsumo"]
    hours = (200 - 60) / 3600
    for point in result.metrics["detectors"]:
        counted = _crossings(result, point["x_m"], 60)
        for lane, vph in point["per_lane_vph"].items():
            assert abs(vph * hours - counted.get(int(lane), 0)) <= 1, (point["x_m"], lane)
        on_mainline = sum(counted.get(int(lane), 0) for lane in point["per_lane_vph"])  # the ramp overlaps in x
        assert abs(point["throughput_vph"] * hours - on_mainline) <= 1
    assert result.metrics["throughput_vph"] == result.metrics["detectors"][-1]["throughput_vph"] > 1000


def test_speed_lane_change_and_energy_metrics_match_the_trajectories(merge_runs: dict[str, RunResult]) -> None:
    result = merge_runs["libsumo"]
    t = result.trajectories
    after = t.filter(pc.greater(t["t_s"], 60 + 1e-9))
    assert result.metrics["mean_speed_mps"] == pytest.approx(pc.mean(after["speed_mps"]).as_py(), rel=1e-9)
    assert result.metrics["vehicle_hours"] == pytest.approx(after.num_rows * 0.1 / 3600)
    # every recorded lane change shows up as a lane switch of that vehicle in the trajectories
    assert result.lane_changes
    for change in result.lane_changes[:20]:
        rows = t.filter(pc.equal(t["vehicle_id"], change.vehicle_id))
        times, lanes = rows["t_s"].to_numpy(), rows["lane"].to_numpy()
        k = int(np.flatnonzero(np.isclose(times, change.time_s))[0])
        assert (lanes[k - 1], lanes[k]) == (change.from_lane, change.to_lane)
    assert result.metrics["lane_changes"] == sum(c.time_s > 60 for c in result.lane_changes)
    merges = [c for c in result.lane_changes if c.from_lane == -1]
    assert merges and all(c.to_lane == 0 for c in merges), "ramp vehicles merge into lane 0"
    assert result.metrics["trips_completed"] > 30
    assert 0 < result.metrics["mean_delay_s"] < result.metrics["mean_travel_time_s"]
    assert result.metrics["control_energy_per_trip_m2ps3"] > 0
    assert result.metrics["collisions"] == 0


class HoldSpeed(Controller):
    """Test controller: every CAV drives at 18 m/s; records what it was shown."""

    def __init__(self, setup: ControlSetup) -> None:
        super().__init__(self.Params(), setup)
        self.seen: list[WorldState] = []

    def step(self, world: WorldState) -> list[Command]:
        self.seen.append(world)
        return [SetSpeed(str(v), 18.0) for v in world.ids[world.is_cav & ~world.controlled]]


class Blindfold:
    """Test perception: hides every vehicle."""

    def observe(self, world: WorldState) -> WorldState:
        return WorldState(
            **{**world.__dict__, **{k: v[:0] for k, v in world.__dict__.items() if isinstance(v, np.ndarray)}}
        )

    def guard(self, commands: list[Command]) -> list[Command]:
        return commands

    def metrics(self) -> dict:
        return {"blindfolded": True}


def test_controller_commands_reach_sumo_and_perception_sits_in_between(tmp_path: Path) -> None:
    scenario = short("lane-drop", "demand.cav_share=0.5", duration_s=90, warmup_s=30)
    setup = ControlSetup(0.1, 3, 33.33, 3.0, 42)
    controller = HoldSpeed(setup)
    result = run(scenario, tmp_path / "a", controller=controller)
    # it plans on every world but the last one (whose commands no SUMO step would carry out), in order
    seen_s = [w.time_s for w in controller.seen]
    assert seen_s == pytest.approx([k * 0.1 for k in range(1, scenario.simulation.steps)])
    t = result.trajectories
    cav = t.filter(pc.and_(pc.equal(t["vehicle_type"], "cav"), pc.greater(t["t_s"], 60)))
    assert cav.num_rows > 100
    assert np.median(cav["speed_mps"].to_numpy()) == pytest.approx(18.0)
    blind = HoldSpeed(setup)
    result = run(scenario, tmp_path / "b", controller=blind, perception=Blindfold())
    assert all(len(w) == 0 for w in blind.seen)
    assert result.metrics["blindfolded"] is True
    cav = result.trajectories.filter(pc.equal(result.trajectories["vehicle_type"], "cav"))
    assert not math.isclose(float(np.median(cav["speed_mps"].to_numpy())), 18.0, abs_tol=0.5)
