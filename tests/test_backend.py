"""SUMO backends on the real SUMO: world-state reads, commands, lifecycle."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cavlab.config.scenario import parse_scenario
from cavlab.errors import SimulationError
from cavlab.sim.backends import SumoBackend, make_backend
from cavlab.sim.engine import Engine
from cavlab.world import Accelerate, CapSpeed, ChangeLane, HoldLane, Release, SetSpeed

from .conftest import short

pytestmark = pytest.mark.sumo

CAVS_ONLY = """
name: cavs-only
road: {kind: highway, length_m: 3000, lanes: 2}
demand:
  cav_share: 1.0
  flows:
    - {lane: 0, vehicles_per_hour: 240, arrivals: uniform, depart_speed: 20}
simulation: {duration_s: 60, warmup_s: 0, backend: BACKEND}
"""


def cavs_only(backend: str = "libsumo"):
    return parse_scenario(CAVS_ONLY.replace("BACKEND", backend))


def open_backend(scenario, tmp_path: Path) -> SumoBackend:
    """A started backend on the scenario's SUMO inputs (the caller closes it)."""
    engine = Engine(scenario, tmp_path / "sumo")
    backend = make_backend(scenario, engine.network, engine.inputs)
    backend.start(engine.controller.modes)
    return backend


def step_until(backend: SumoBackend, predicate, limit: int = 1000):
    for _ in range(limit):
        world, *_ = backend.step()
        if predicate(world):
            return world
    raise AssertionError("condition never met")


def test_second_libsumo_simulation_is_refused(tmp_path: Path) -> None:
    first = open_backend(short("lane-drop"), tmp_path / "a")
    try:
        with pytest.raises(SimulationError, match=r"already running in this process.*backend 'traci'"):
            open_backend(short("highway-lane-change"), tmp_path / "b")
        first.step()  # the first simulation is untouched
        assert first.api.simulation.getTime() == pytest.approx(0.1)
    finally:
        first.close()
    second = open_backend(short("highway-lane-change"), tmp_path / "c")
    second.close()


def test_libsumo_is_closed_when_the_loop_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="controller bug"), open_backend(short("lane-drop"), tmp_path / "a") as b:
        b.step()
        raise RuntimeError("controller bug")
    open_backend(short("lane-drop"), tmp_path / "b").close()  # not refused: the first one was closed


@pytest.mark.parametrize("backend", ["libsumo", "traci"])
def test_world_state_matches_sumo(backend: str, tmp_path: Path) -> None:
    with open_backend(short("on-ramp-merge", f"simulation.backend={backend}"), tmp_path) as b:
        api = b.api
        prev_x: dict[str, tuple[float, float]] = {}
        for _ in range(900):
            world, *_ = b.step()
            if not len(world):
                continue
            # rows grouped by lane, then ordered by position along the lane
            lane_ids = [api.vehicle.getLaneID(v) for v in world.ids]
            assert lane_ids == sorted(lane_ids, key=b.network.lane_ids.index)
            for lane in set(lane_ids):
                rows = [i for i, lid in enumerate(lane_ids) if lid == lane]
                assert np.all(np.diff(world.x_m[rows]) >= 0)
            sample = world.ids[:: max(1, len(world) // 7)]
            for vid in sample:
                row = world.index_of(vid)
                assert world.speed_mps[row] == api.vehicle.getSpeed(vid)
                assert world.accel_mps2[row] == pytest.approx(api.vehicle.getAcceleration(vid), abs=1e-9)
                assert world.type_names[world.type_index[row]] == api.vehicle.getTypeID(vid)
                assert world.is_cav[row] == (api.vehicle.getTypeID(vid) == "cav")
                assert world.length_m[row] == api.vehicle.getLength(vid)
            # ballistic update: x advances by the mean of the two speeds times the step
            for vid, x, v in zip(world.ids, world.x_m, world.speed_mps, strict=True):
                if vid in prev_x:
                    px, pv = prev_x[vid]
                    assert x - px == pytest.approx((pv + v) / 2 * 0.1, abs=1e-6)
            prev_x = dict(zip(world.ids, zip(world.x_m, world.speed_mps, strict=True), strict=True))
        assert (world.lane == -1).any(), "ramp vehicles carry road lane -1"


def test_libsumo_native_read_equals_sumos_getters_grows_its_buffers_and_names_unknown_vehicles(tmp_path: Path) -> None:
    from cavlab.sim.backends import _libsumo_reads

    with open_backend(short("highway-lane-change"), tmp_path) as b:
        step_until(b, lambda w: len(w) >= 5)
        api, lanes = b.api, b.network.lane_ids
        b._read_lane_row, b._read_slot = np.zeros(2, np.intp), np.zeros(2, np.intp)  # too small: must grow
        b._read_pos, b._read_speed = np.zeros(2), np.zeros(2)
        raw = b._read_vehicles()
        ids = [vid for lane in lanes for vid in api.lane.getLastStepVehicleIDs(lane)]
        assert len(ids) >= 5 and len(b._read_slot) >= len(ids)
        assert [b.vehicle_ids[s] for s in raw.slot] == ids
        assert [lanes[r] for r in raw.lane_row] == [api.vehicle.getLaneID(v) for v in ids]
        assert raw.lane_pos_m.tolist() == [api.vehicle.getLanePosition(v) for v in ids]
        assert raw.speed_mps.tolist() == [api.vehicle.getSpeed(v) for v in ids]
        buffers = (np.zeros(64, np.intp), np.zeros(64, np.intp), np.zeros(64), np.zeros(64))
        with pytest.raises(KeyError, match=rf"vehicle '{ids[0]}' is not registered"):
            _libsumo_reads.read({}, *buffers)


LOADS_ARROW_AFTER_A_READ = """
import sys
from pathlib import Path
from cavlab.sim.engine import Engine
from tests.conftest import short
engine = Engine(short("highway-lane-change"), Path(sys.argv[1]))
engine.start()
for _ in range(50):
    engine.step()
engine.close()
import pyarrow.compute as pc
assert pc.utf8_zero_fill(["7"], width=3).to_pylist() == ["007"]
"""


def test_libsumo_reader_leaves_the_libraries_loaded_after_it_alone(tmp_path: Path) -> None:
    """The C++ reader finds libsumo's functions without making libsumo's symbols global: made global, the Arrow
    that libsumo bundles shadowed pyarrow's, loaded later, and pyarrow.compute failed to import (a fresh process:
    in this one pyarrow is loaded already)."""
    done = subprocess.run([sys.executable, "-c", LOADS_ARROW_AFTER_A_READ, str(tmp_path)], capture_output=True,
                          text=True, cwd=Path(__file__).parents[1], timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def test_accelerate_follows_the_double_integrator_exactly(tmp_path: Path) -> None:
    with open_backend(cavs_only(), tmp_path) as b:
        world = step_until(b, lambda w: len(w) > 0)
        vid = str(world.ids[0])
        x, v = world.x_m[0], world.speed_mps[0]
        u = [1.5 * np.sin(0.05 * k) for k in range(120)]
        for uk in u:
            b.apply([Accelerate(vid, uk)])
            world, *_ = b.step()
            row = world.index_of(vid)
            x, v = x + v * 0.1 + 0.5 * uk * 0.01, v + uk * 0.1
            assert world.x_m[row] == pytest.approx(x, abs=1e-9)
            assert world.speed_mps[row] == pytest.approx(v, abs=1e-9)
            assert world.accel_mps2[row] == pytest.approx(uk, abs=1e-9)
            assert world.controlled[row]
        assert b.api.vehicle.getSpeedMode(vid) == 32 and b.api.vehicle.getLaneChangeMode(vid) == 0
        b.apply([Release(vid)])
        assert b.api.vehicle.getSpeedMode(vid) == 31 and b.api.vehicle.getLaneChangeMode(vid) == 1621
        world, *_ = b.step()
        assert not world.controlled[world.index_of(vid)]


def test_set_speed_holds_until_released(tmp_path: Path) -> None:
    with open_backend(cavs_only(), tmp_path) as b:
        world = step_until(b, lambda w: len(w) > 0)
        vid = str(world.ids[0])
        b.apply([SetSpeed(vid, 15.0)])
        for _ in range(100):
            world, *_ = b.step()
        assert world.speed_mps[world.index_of(vid)] == pytest.approx(15.0)


def test_change_lane_takes_the_scenario_duration(tmp_path: Path) -> None:
    with open_backend(cavs_only(), tmp_path) as b:
        world = step_until(b, lambda w: len(w) > 0)
        vid, t0 = str(world.ids[0]), world.time_s
        b.apply([ChangeLane(vid, 1)])
        world = step_until(b, lambda w: w.lane[w.index_of(vid)] == 1, limit=60)
        # lanechange.duration 3 s: the vehicle crosses the line half way through the maneuver
        assert world.time_s - t0 == pytest.approx(1.5, abs=0.15)
        with pytest.raises(ValueError, match=r"edge 'main\.0' has road lanes 0\.\.1"):
            b.apply([ChangeLane(vid, 2)])


def test_hold_lane_keeps_sumo_driving_but_not_changing_lanes(tmp_path: Path) -> None:
    """HoldLane sets only the lane-change mode (speed stays SUMO's, the vehicle is not counted as
    controlled); Release gives lane changing back; a later Accelerate takes full control."""
    with open_backend(cavs_only(), tmp_path) as b:
        world = step_until(b, lambda w: len(w) > 0)
        vid = str(world.ids[0])
        b.apply([HoldLane(vid)])
        v = b.api.vehicle
        assert (v.getSpeedMode(vid), v.getLaneChangeMode(vid)) == (31, 0)
        world, *_ = b.step()
        assert not world.controlled[world.index_of(vid)]
        b.apply([Release(vid)])
        assert (v.getSpeedMode(vid), v.getLaneChangeMode(vid)) == (31, 1621)
        b.apply([HoldLane(vid), Accelerate(vid, 0.0)])
        assert (v.getSpeedMode(vid), v.getLaneChangeMode(vid)) == (32, 0)
        b.apply([HoldLane(vid), Release(vid)])  # a hold on a controlled vehicle changes nothing; Release ends both
        assert (v.getSpeedMode(vid), v.getLaneChangeMode(vid)) == (31, 1621)


def test_cap_speed_keeps_sumo_driving_below_the_cap_until_lifted(tmp_path: Path) -> None:
    """CapSpeed leaves the modes SUMO's (31/1621, not controlled) and holds the vehicle at the cap, never
    above its own desired speed; `inf` lifts it (SUMO's desired speed again), as Release does; a command
    that takes control ends the cap."""
    with open_backend(cavs_only(), tmp_path) as b:
        world = step_until(b, lambda w: len(w) > 0)
        vid, v = str(world.ids[0]), b.api.vehicle
        desired = v.getAllowedSpeed(vid)
        b.apply([CapSpeed(vid, 12.0)])
        for _ in range(100):
            world, *_ = b.step()
        row = world.index_of(vid)
        assert world.speed_mps[row] == pytest.approx(12.0) and not world.controlled[row]
        assert (v.getSpeedMode(vid), v.getLaneChangeMode(vid)) == (31, 1621)
        b.apply([CapSpeed(vid, 100.0)])  # above the desired speed: the desired speed
        for _ in range(100):
            world, *_ = b.step()
        assert world.speed_mps[world.index_of(vid)] == pytest.approx(desired)
        for lift in (CapSpeed(vid, math.inf), Release(vid)):
            b.apply([CapSpeed(vid, 12.0)])
            for _ in range(100):
                world, *_ = b.step()
            assert world.speed_mps[world.index_of(vid)] == pytest.approx(12.0)
            b.apply([lift])
            for _ in range(100):
                world, *_ = b.step()
            assert world.speed_mps[world.index_of(vid)] == pytest.approx(desired)
            assert (v.getSpeedMode(vid), v.getLaneChangeMode(vid)) == (31, 1621)
        b.apply([CapSpeed(vid, 12.0)])
        b.step()
        b.apply([Accelerate(vid, 0.5)])  # full control: the cap is gone with SUMO's speed
        world, *_ = b.step()
        assert world.accel_mps2[world.index_of(vid)] == pytest.approx(0.5)
        b.apply([CapSpeed(vid, 5.0)])  # ignored while controlled
        world, *_ = b.step()
        assert world.controlled[world.index_of(vid)] and v.getSpeedMode(vid) == 32


def test_commands_for_vehicles_that_left_are_ignored(tmp_path: Path) -> None:
    with open_backend(cavs_only(), tmp_path) as b:
        b.step()
        b.apply([Accelerate("ghost", 1.0), ChangeLane("ghost", 1), Release("ghost")])


def test_collisions_are_detected_and_counted(tmp_path: Path) -> None:
    with open_backend(cavs_only(), tmp_path) as b:
        world = step_until(b, lambda w: len(w) >= 2)
        follower = str(world.ids[np.argmin(world.x_m)])  # the upstream of the two on lane 0
        collisions = []
        for _ in range(300):
            b.apply([Accelerate(follower, 3.0)])  # speed mode 32: nothing stops it
            world, events = b.step()
            collisions += events.collisions
            if collisions:
                break
        assert collisions and collisions[0].collider == follower
        assert follower in {a.vehicle_id for a in events.arrivals}  # collision.action remove
        assert follower not in set(world.ids)


def test_traci_child_process_ends_on_close_and_on_errors(tmp_path: Path) -> None:
    b = open_backend(short("lane-drop", "simulation.backend=traci"), tmp_path / "a")
    proc = b.process
    assert proc is not None and proc.poll() is None
    b.step()
    b.close()
    assert proc.poll() is not None
    with (
        pytest.raises(KeyboardInterrupt),
        open_backend(short("lane-drop", "simulation.backend=traci"), tmp_path / "b") as b2,
    ):
        proc = b2.process
        b2.step()
        raise KeyboardInterrupt
    assert proc.poll() is not None


@pytest.mark.parametrize("backend", ["libsumo", "traci"])
def test_unread_steps_then_read_give_the_fully_read_state(tmp_path: Path, backend: str) -> None:
    scenario = short("highway-lane-change", f"simulation.backend={backend}")

    def run(read_every: int, folder: str):
        with open_backend(scenario, tmp_path / folder) as b:
            departed, states = [], []
            for k in range(1, 601):
                world, events = b.step(read_world=k % read_every == 0)
                departed += [d.vehicle_id for d in events.departures]
                if k % read_every == 0:
                    states.append(world)
            last = states[-1]
            row = len(last) - 1
            expected = (int(last.edge[row]), int(last.lane[row]), last.x_m[row], last.speed_mps[row])
            return departed, states, b.vehicle_state(str(last.ids[row])), expected

    full_departed, full, _, _ = run(1, "full")
    light_departed, light, state, expected = run(50, "light")
    assert light_departed == full_departed
    for world in light:
        ref = full[round(world.time_s / 0.1) - 1]
        assert world.time_s == pytest.approx(ref.time_s)
        np.testing.assert_array_equal(world.ids, ref.ids)
        np.testing.assert_allclose(world.x_m, ref.x_m)
        # after unread steps the accelerations are SUMO's own: equal to Δv/Δt under the ballistic update
        np.testing.assert_allclose(world.accel_mps2, ref.accel_mps2, atol=1e-9)
    assert state[:2] == expected[:2] and state[2:] == pytest.approx(expected[2:])
