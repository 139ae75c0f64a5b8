"""Perception in the loop: the perceived world, latency in steps, tracks, ghosts, metrics, and the closed
loop from the CLI on real SUMO (torch and ONNX Runtime)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import cavlab.perception
from cavlab.cli import app
from cavlab.config.scenario import ContextSpec, PerceptionSpec, SimulationSpec
from cavlab.errors import UserError
from cavlab.hw.backends.onnxruntime import OrtPerception
from cavlab.perception.inference import BatchedPerception
from cavlab.perception.task import SLOTS, neighbour_targets
from cavlab.sim.perception_loop import PerceptionLoop, radar_leader
from cavlab.world import Accelerate, Release, SetSpeed, WorldState

DT = 0.1
# id, CAV, lane, x at t = 0 [m], speed [m/s]
VEHICLES = [("hdv_front", False, 0, 130.0, 20.0), ("cav_a", True, 0, 100.0, 20.0),
            ("hdv_left", False, 1, 80.0, 25.0), ("cav_b", True, 1, 40.0, 25.0)]  # fmt: skip


def world_at(step: int, drop: tuple[str, ...] = ()) -> WorldState:
    """The vehicles of VEHICLES at constant speed, t = step·Δt, without those in `drop`."""
    rows = [v for v in VEHICLES if v[0] not in drop]
    n = len(rows)
    return WorldState(
        time_s=step * DT, ids=np.array([r[0] for r in rows], dtype=object),
        slot=np.array([VEHICLES.index(r) for r in rows]), type_index=np.array([1 if r[1] else 0 for r in rows]),
        is_cav=np.array([r[1] for r in rows]), controlled=np.zeros(n, dtype=bool), edge=np.zeros(n, dtype=np.int16),
        lane=np.array([r[2] for r in rows], dtype=np.int16), x_m=np.array([r[3] + r[4] * step * DT for r in rows]),
        speed_mps=np.array([r[4] for r in rows], dtype=float), accel_mps2=np.zeros(n), length_m=np.full(n, 5.0),
        type_names=("car", "cav"), edge_names=("main",),
    )  # fmt: skip


class Oracle:
    """A backend that estimates every slot exactly (the truth of the world it is pointed at), optionally
    with a ghost in one slot: lets the tests check the loop around the model."""

    def __init__(self) -> None:
        self.world: WorldState | None = None
        self.ghost: tuple[int, int] | None = None  # (observer index, slot)
        self.leader_speed_error_mps = 0.0  # added to every own-lane leader's estimated Δv

    def estimate(self, frames: dict, configuration: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        observers = np.flatnonzero(self.world.is_cav)
        out = neighbour_targets(self.world, observers)
        if self.ghost is not None:
            out[self.ghost] = (1.0, 12.0, -3.0)
        out[:, SLOTS.index("own_front"), 2] += self.leader_speed_error_mps * (out[:, SLOTS.index("own_front"), 0] > 0.5)
        return out, np.zeros(len(observers), dtype=np.int64)


def make_loop(model: Path, **spec) -> tuple[PerceptionLoop, Oracle]:
    """The loop around an exact oracle (the raw radar's leader speed off unless asked: it is noisy)."""
    spec = {"radar_leader_speed": False, **spec}
    loop = PerceptionLoop(PerceptionSpec(enabled=True, model=str(model), **spec), ContextSpec(),
                          SimulationSpec(step_length_s=DT, duration_s=10.0, warmup_s=0.0),
                          lane_width_m=3.2)  # fmt: skip
    oracle = Oracle()
    loop.backend = oracle
    return loop, oracle


def observe(loop: PerceptionLoop, oracle: Oracle, world: WorldState) -> WorldState:
    oracle.world = world
    return loop.observe(world)


def test_the_controller_sees_cavs_exactly_and_others_after_the_latency(perception_model_dir: Path) -> None:
    loop, oracle = make_loop(perception_model_dir, latency_s=0.25, uncertainty_k=0.0)  # ⌈0.25 / 0.1⌉ = 3 steps
    assert loop.delay_steps.tolist() == [3] * len(loop.delay_steps)
    seen = [observe(loop, oracle, world_at(k)) for k in range(1, 6)]
    for perceived in seen[:3]:  # the first frame (step 1) is delivered at step 4
        assert sorted(perceived.ids.tolist()) == ["cav_a", "cav_b"]
    truth = world_at(4)
    perceived = seen[3]
    assert sorted(perceived.ids.tolist()) == sorted(truth.ids.tolist())
    for vid in truth.ids.tolist():  # constant speeds: the prediction to the time of use is exact
        p, t = perceived.index_of(vid), truth.index_of(vid)
        assert perceived.x_m[p] == pytest.approx(truth.x_m[t], abs=1e-4)
        assert perceived.speed_mps[p] == pytest.approx(truth.speed_mps[t], abs=1e-4)
        assert perceived.lane[p] == truth.lane[t] and perceived.is_cav[p] == truth.is_cav[t]
    order = np.lexsort((perceived.x_m, perceived.lane))
    assert order.tolist() == list(range(len(perceived)))  # grouped by lane, by position within a lane
    metrics = loop.metrics()
    assert metrics["perception_slot_accuracy"] == 1.0 and metrics["perception_missed_share"] == 0.0
    assert metrics["perception_plan_position_error_m"] == pytest.approx(0.0, abs=1e-4)
    assert metrics["perception_delay_s"] == pytest.approx(0.3)
    assert metrics["perception_cav_frames"] == 2 * 5


def test_unseen_vehicles_are_held_then_dropped_and_ghosts_last_one_step(perception_model_dir: Path) -> None:
    loop, oracle = make_loop(perception_model_dir, latency_s=0.0, track_hold_s=0.3, leader_hold_s=0.0,
                             uncertainty_k=0.0)  # fmt: skip
    assert loop.delay_steps.tolist() == [0] * len(loop.delay_steps)
    observe(loop, oracle, world_at(1))
    oracle.ghost = (0, 2)  # cav_a reports a vehicle 12 m ahead in the left lane that is not there
    perceived = observe(loop, oracle, world_at(2))
    (ghost,) = [vid for vid in perceived.ids.tolist() if vid.startswith("ghost:")]
    row = perceived.index_of(ghost)
    cav_a = world_at(2).x_m[1]
    assert perceived.lane[row] == 1 and perceived.x_m[row] == pytest.approx(cav_a + 12.0 + 5.0)
    assert perceived.speed_mps[row] == pytest.approx(20.0 - 3.0) and not perceived.is_cav[row]
    oracle.ghost = None
    # hdv_front leaves the sensors' view (gone from the world the oracle sees): held 0.3 s, then dropped
    for k in range(3, 8):
        perceived = observe(loop, oracle, world_at(k, drop=("hdv_front",)))
        assert not any(vid.startswith("ghost:") for vid in perceived.ids.tolist())
        held = perceived.index_of("hdv_front") >= 0
        assert held == (k <= 5), k  # last seen at step 2: kept while t − 0.2 ≤ 0.3 s
        if held:
            assert perceived.x_m[perceived.index_of("hdv_front")] == pytest.approx(130.0 + 20.0 * k * DT)
    assert loop.metrics()["perception_ghost_share"] > 0


def test_a_look_into_a_lane_its_cav_sees_clear_is_dropped(perception_model_dir: Path) -> None:
    """cav_a (lane 0, x ≈ 100) sees nobody behind it within 60 m; a ghost cav_b reports in lane 0 12 m ahead of
    itself (x ≈ 59, 43 m behind cav_a) reaches into that clear stretch and is dropped; one 12 m behind cav_b
    (x ≈ 23) lies beyond cav_a's view less the 10 m margin (x > 47) and stays; and the first stays too once
    cav_a drives in another corridor of an external network."""
    loop, oracle = make_loop(perception_model_dir, latency_s=0.0, uncertainty_k=0.0)
    observe(loop, oracle, world_at(1))
    for slot, kept in ((SLOTS.index("right_front"), False), (SLOTS.index("right_rear"), True)):
        oracle.ghost = (1, slot)
        perceived = observe(loop, oracle, world_at(2))
        ghosts = [vid for vid in perceived.ids.tolist() if vid.startswith("ghost:")]
        assert ghosts == ([f"ghost:cav_b:{slot}"] if kept else []), slot
        assert perceived.index_of("hdv_front") >= 0 and perceived.index_of("hdv_left") >= 0  # true looks stay
    metrics = loop.metrics()
    # non-CAV looks: hdv_front by cav_a, hdv_left by both (3 a step), and the ghost in the two steps with one
    assert metrics["perception_contradicted_share"] == pytest.approx(1 / (3 + 4 + 4))
    assert metrics["perception_contradicted_real_share"] == 0.0
    # on an external network, cav_a in another corridor (edge 1) says nothing of the lane 0 cav_b sees
    loop.corridor = np.array([0, 1])
    oracle.ghost = (1, SLOTS.index("right_front"))
    elsewhere = world_at(3)
    perceived = observe(loop, oracle, dataclasses.replace(elsewhere, edge=np.array([1, 1, 0, 0], dtype=np.int16)))
    assert "ghost:cav_b:4" in perceived.ids.tolist()


def test_the_own_lane_leader_speed_comes_from_the_raw_radar(perception_model_dir: Path) -> None:
    """The estimate puts every own-lane leader 5 m/s too fast; with the radar's range rate (noise 0.15 m/s) the
    controller sees hdv_front (20 m/s, 25 m ahead of cav_a) within 0.6 m/s, without it 5 m/s off; the slot
    metrics score the model's own estimate either way."""
    for radar, off_mps in ((True, 0.6), (False, None)):
        loop, oracle = make_loop(perception_model_dir, latency_s=0.0, uncertainty_k=0.0, radar_leader_speed=radar)
        oracle.leader_speed_error_mps = 5.0
        for k in (1, 2):
            perceived = observe(loop, oracle, world_at(k))
        speed = perceived.speed_mps[perceived.index_of("hdv_front")]
        if off_mps is None:
            assert speed == pytest.approx(25.0)
        else:
            assert abs(speed - 20.0) < off_mps
        # matched slots: hdv_front and hdv_left by cav_a, hdv_left and cav_a by cav_b; two of the four are leaders
        assert loop.metrics()["perception_speed_error_mps"] == pytest.approx(5.0 * 2 / 4)


def test_footprints_widen_with_uncertainty_and_leaders_are_held_through_misses(perception_model_dir: Path) -> None:
    """cav_b out of the way: hdv_front is cav_a's own-lane leader, hdv_left only its left rear. Exact estimates
    (presence 1: σ = σ₀) delivered after 0.2 s: every perceived non-CAV is k·σ longer at both ends, σ = σ₀ + σ_v·age.
    Then both leave the sensors' view: hdv_left is dropped after track_hold_s, the leader held for leader_hold_s."""
    spec = {"latency_s": 0.15, "track_hold_s": 0.3, "leader_hold_s": 1.0, "uncertainty_k": 2.0, "gap_sigma_m": 1.5,
            "speed_sigma_mps": 1.0}  # fmt: skip
    loop, oracle = make_loop(perception_model_dir, **spec)
    for k in range(1, 4):
        perceived = observe(loop, oracle, world_at(k, drop=("cav_b",)))
    truth = world_at(3, drop=("cav_b",))
    for vid in ("hdv_front", "hdv_left"):
        p, t = perceived.index_of(vid), truth.index_of(vid)
        margin = 2.0 * (1.5 + 1.0 * 0.2)  # the frame of step 1, delivered at step 3: 0.2 s old
        assert perceived.x_m[p] == pytest.approx(truth.x_m[t] + margin, abs=1e-4)
        assert perceived.length_m[p] == pytest.approx(5.0 + 2 * margin, abs=1e-4)
    a = perceived.index_of("cav_a")
    assert perceived.x_m[a] == truth.x_m[truth.index_of("cav_a")] and perceived.length_m[a] == 5.0  # CAVs exact
    seen_last = 3 * DT  # the frame of step 3 is the last with both in view
    for k in range(4, 20):
        perceived = observe(loop, oracle, world_at(k, drop=("cav_b", "hdv_front", "hdv_left")))
        age = 0.2 if k <= 5 else k * DT - seen_last  # frames of steps 2 and 3 still come at steps 4 and 5
        assert (perceived.index_of("hdv_left") >= 0) == (k * DT - seen_last <= 0.3 + 0.2 + 1e-9), k
        held = perceived.index_of("hdv_front") >= 0
        assert held == (k * DT - seen_last <= 1.0 + 0.2 + 1e-9), k
        if held:
            row = perceived.index_of("hdv_front")
            assert perceived.length_m[row] == pytest.approx(5.0 + 4.0 * (1.5 + 1.0 * age), abs=1e-4)
    assert loop.metrics()["perception_leader_hold_s"] > 0


def test_faults_are_injected_and_emergency_braking_overrides_the_plan(perception_model_dir: Path) -> None:
    """cav_a (driven by the controller) closes on a slower hdv_front 12 m ahead (TTC 1.2 s) while an injected
    fault hides every own-lane leader: the raw radar sees it, the fused estimate does not, cav_a brakes."""
    loop, oracle = make_loop(perception_model_dir, latency_s=0.0, track_hold_s=0.0, leader_hold_s=0.0,
                             faults=[{"kind": "miss", "slot": "own_front", "start_s": 0.0, "duration_s": 5.0},
                                     {"kind": "ghost", "slot": "left_front", "start_s": 0.25, "duration_s": 0.1,
                                      "gap_m": 9.0, "speed_mps": -2.0}])  # fmt: skip
    base = world_at(1)
    rows = {vid: base.index_of(vid) for vid in ("hdv_front", "cav_a")}
    x, v = base.x_m.copy(), base.speed_mps.copy()
    x[rows["hdv_front"]], v[rows["hdv_front"]] = x[rows["cav_a"]] + 5.0 + 12.0, 10.0
    controlled = base.ids == "cav_a"
    world = dataclasses.replace(base, x_m=x, speed_mps=v, controlled=controlled)
    perceived = observe(loop, oracle, world)
    assert perceived.index_of("hdv_front") < 0  # missed by the fault (and no track held)
    commands = [Accelerate("cav_a", 1.0), SetSpeed("cav_b", 25.0), Release("hdv_left")]
    guarded = loop.guard(commands)
    assert Accelerate("cav_a", -loop.spec.emergency_decel_mps2) in guarded and guarded[1:] == commands[1:]
    assert loop.metrics()["perception_emergency_brakings"] == 1
    later = dataclasses.replace(world, time_s=0.3)
    perceived = observe(loop, oracle, later)
    assert any(vid.startswith("ghost:") for vid in perceived.ids.tolist())  # the ghost fault's window
    assert loop.guard([]) == [Accelerate("cav_a", -loop.spec.emergency_decel_mps2)]
    metrics = loop.metrics()  # one braking going on over two steps; the fault windows, 2 + 1 steps
    assert metrics["perception_emergency_brakings"] == 1 and metrics["perception_emergency_braking_s"] == 0.2
    assert metrics["perception_fault_s"] == pytest.approx(0.3)
    released = loop.guard([Release("cav_a")])
    assert released == [Release("cav_a")]  # handed back to SUMO: SUMO's driver, on the truth, brakes
    calm = dataclasses.replace(later, controlled=np.zeros(len(later), dtype=bool))
    observe(loop, oracle, calm)
    assert loop.guard(commands) == commands  # nobody the controller drives is in danger


def test_radar_leader_is_the_nearest_return_in_the_lane_ahead() -> None:
    """Returns (present, range/160, azimuth/π, rate/30): one 30 m straight ahead closing at 5 m/s, one nearer in
    the next lane, one behind; the gap subtracts half of each length (the observer's 4 m, an assumed 5 m)."""
    adjacent = np.arctan2(3.2, 20.0)
    radar = np.array([[[1, 30 / 160, 0.0, -5 / 30], [1, np.hypot(20, 3.2) / 160, adjacent / np.pi, 0.0],
                       [1, 10 / 160, 1.0, 0.0], [0, 0, 0, 0]],
                      [[0, 0, 0, 0]] * 4], dtype=np.float32)  # fmt: skip
    gap, rate = radar_leader(radar, np.array([4.0, 4.0]), 3.2, 160.0)
    assert gap[0] == pytest.approx(30.0 - 4.5, abs=1e-4) and rate[0] == pytest.approx(-5.0, abs=1e-5)
    assert gap[1] == np.inf and rate[1] == 0.0


def test_costs_come_from_the_target_and_gate_modes_choose(perception_model_dir: Path) -> None:
    fast = PerceptionLoop(PerceptionSpec(enabled=True, model=str(perception_model_dir), target="jetson-agx-orin"),
                          ContextSpec(), SimulationSpec(), lane_width_m=3.2)  # fmt: skip
    slow = PerceptionLoop(PerceptionSpec(enabled=True, model=str(perception_model_dir), target="zynq-zcu104"),
                          ContextSpec(), SimulationSpec(), lane_width_m=3.2)  # fmt: skip
    assert (slow.latency_s > fast.latency_s).all() and (fast.latency_s < DT).all()
    assert fast.delay_steps.tolist() == [1] * len(fast.delay_steps)  # any latency below a step costs one step
    # the all-branches configuration costs the most; the deep gate adds its own cost to every configuration
    assert fast.energy_pj.argmax() == len(fast.energy_pj) - 1
    plain = PerceptionLoop(PerceptionSpec(enabled=True, model=str(perception_model_dir), gate="all",
                                          target="jetson-agx-orin"), ContextSpec(), SimulationSpec(),
                           lane_width_m=3.2)  # fmt: skip
    assert (plain.energy_pj < fast.energy_pj).all()
    extra = PerceptionLoop(PerceptionSpec(enabled=True, model=str(perception_model_dir), extra_latency_s=0.3),
                           ContextSpec(), SimulationSpec(), lane_width_m=3.2)  # fmt: skip
    assert extra.delay_steps.tolist() == [4] * len(extra.delay_steps)


def test_the_gpu_path_falls_back_to_the_cpu(perception_model_dir: Path) -> None:
    """backend auto: torch on CUDA, ONNX Runtime on a CPU; torch asked for runs on the CPU without CUDA."""
    loop = PerceptionLoop(PerceptionSpec(enabled=True, model=str(perception_model_dir)), ContextSpec(),
                          SimulationSpec(), lane_width_m=3.2)  # fmt: skip
    assert isinstance(loop.backend, BatchedPerception if torch.cuda.is_available() else OrtPerception)
    loop = PerceptionLoop(PerceptionSpec(enabled=True, model=str(perception_model_dir), backend="torch"),
                          ContextSpec(), SimulationSpec(), lane_width_m=3.2)  # fmt: skip
    assert loop.backend.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match=r"perception\.device: cuda, but torch sees no CUDA device"):
            PerceptionLoop(PerceptionSpec(enabled=True, model=str(perception_model_dir), device="cuda"),
                           ContextSpec(), SimulationSpec(), lane_width_m=3.2)  # fmt: skip


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["perception.enabled=true"], "perception: model: needed when enabled is true"),
        (["perception.model=/nowhere"], "model: /nowhere has no checkpoint.pt"),
        (["perception.target=tpu"], "unknown target 'tpu' (available: "),
        (["perception.gate=magic"], "perception.gate"),
    ],
)
def test_bad_perception_blocks_are_one_line_errors(sets: list[str], message: str) -> None:
    args = ["validate", "highway-lane-change"] + [a for s in sets for a in ("--set", s)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.sumo
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_the_closed_loop_runs_from_the_cli(perception_model_dir: Path, tmp_path: Path, backend: str) -> None:
    out = tmp_path / "run"
    sets = ["demand.cav_share=1.0", "control.controller=cooperative", "simulation.warmup_s=20",
            "perception.enabled=true", f"perception.model={perception_model_dir}", f"perception.backend={backend}",
            "context.weather=fog"]  # fmt: skip
    result = CliRunner().invoke(app, ["run", "highway-lane-change", "--duration", "40", "--out", str(out), "-q",
                                      *[a for s in sets for a in ("--set", s)]])  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert metrics["perception_cav_frames"] > 100
    assert 0 <= metrics["perception_slot_accuracy"] <= 1
    assert metrics["perception_delay_s"] == pytest.approx(0.1)  # the Orin Nano's µs latency: one step
    assert metrics["perception_energy_j_per_cav_hour"] > 0
    assert "perception_plan_position_error_m" in metrics  # null if this random-weight model saw no one
    assert "min_gap_controlled_m" in metrics and "critical_ttc_controlled_s" in metrics


def test_the_perception_study_plans_every_context_and_configuration(perception_model_dir: Path, tmp_path: Path) -> None:
    from cavlab.experiments.sweep import load_sweep, plan

    spec = load_sweep("perception-study")
    runs = plan(spec.model_copy(update={"set": [*spec.set, f"perception.model={perception_model_dir}"]}))
    assert len(runs) == 4 * 6 * 3
    labels = {dict(r.labels)["context"] for r in runs}, {dict(r.labels)["perception"] for r in runs}
    assert labels[0] == {"clear", "rain", "fog", "night"} and "ground-truth" in labels[1] and len(labels[1]) == 6
    fog_all = next(r for r in runs if dict(r.labels) == {"context": "fog", "perception": "all@zcu104"})
    assert {"context.weather=fog", "perception.gate=all", "perception.target=zynq-zcu104"} <= set(fog_all.overrides)
    out = tmp_path / "study"
    result = CliRunner().invoke(app, ["perception", "study", str(tmp_path / "no-model"), "--out", str(out)])
    assert result.exit_code == 2 and "has no checkpoint.pt" in result.output and not out.exists()


@pytest.mark.sumo
def test_the_defence_acts_on_injected_faults_and_nothing_collides(tmp_path: Path) -> None:
    """The shipped model in the loop of highway-lane-change (cooperative controller, every CAV flow a CAV) with
    0.3 s more latency, every CAV's own-lane leader missed for 2 s every 10 s and a ghost in its left-front slot
    for 1 s every 15 s: leaders are held through the misses, and no vehicle collides (SUMO's collision check)."""
    model = Path(cavlab.perception.__file__).parent / "models" / "highway-fusion-h64"
    faults = ("[{kind: miss, slot: own_front, start_s: 30, duration_s: 2, every_s: 10}, "
              "{kind: ghost, slot: left_front, start_s: 35, duration_s: 1, every_s: 15, gap_m: 8}]")  # fmt: skip
    sets = ["demand.cav_share=1.0", "control.controller=cooperative", "simulation.warmup_s=30", "simulation.seed=1",
            "perception.enabled=true", f"perception.model={model}", "perception.extra_latency_s=0.3",
            f"perception.faults={faults}"]  # fmt: skip
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "highway-lane-change", "--duration", "120", "--out", str(out), "-q",
                                      *[a for s in sets for a in ("--set", s)]])  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert metrics["perception_fault_s"] == pytest.approx(9 * 2.0 + 6 * 1.0, abs=0.15)  # the windows after 30 s
    assert metrics["perception_leader_hold_s"] > 0 and metrics["perception_delay_s"] >= 0.4
    assert metrics["collisions"] == 0


@pytest.mark.sumo
def test_the_loop_runs_on_an_external_network_and_tracks_stay_in_their_corridor(tmp_path: Path) -> None:
    """The shipped model in the loop of SUMO's ramp example (scenarios/sumo-ramp-network.yaml): vehicles that
    take the off-ramp or cross a junction into another corridor are dropped from the tracks instead of
    predicted on along the lane they left (a corridor's x means nothing in another), so the perceived
    positions stay as close to the truth as on the generated road (2.1 m there; 33 m before, from the
    0.4 % of tracks predicted on in a corridor their vehicle had left)."""
    model = Path(cavlab.perception.__file__).parent / "models" / "highway-fusion-h64"
    out = tmp_path / "run"
    sets = ["demand.cav_share=0.5", "simulation.warmup_s=30", "perception.enabled=true", f"perception.model={model}"]
    result = CliRunner().invoke(app, ["run", "sumo-ramp-network", "--duration", "150", "--out", str(out), "-q",
                                      *[a for s in sets for a in ("--set", s)]])  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert metrics["collisions"] == 0 and metrics["perception_cav_frames"] > 1000
    assert metrics["perception_plan_position_error_m"] < 5.0
