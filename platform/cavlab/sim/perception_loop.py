"""Perception in the loop: the controller plans on what the CAVs perceive, not on SUMO's truth.

Every step, each CAV's simulated camera, lidar and radar observe the world under the
scenario's context, and one batched call of the gated fusion model (`BatchedPerception` in
torch, CUDA when present, or `OrtPerception`) estimates the six neighbour slots of every CAV.
The world the controller sees is built from those estimates:

- CAVs: their true state (each knows its own, and they share it over V2V);
- other vehicles, as the CAVs estimate them. An estimate of slot s of observer o belongs to
  the vehicle truly in that slot when its gap is within `ASSOCIATION_GAP_M` of the true gap
  (a tracker with perfect data association); otherwise it is a ghost, a vehicle of its own
  for that step. Position x = x_o + gap + L (ahead) or x_o − L_o − gap (behind), speed
  v = v_o + Δv, averaged over the CAVs that see the vehicle and predicted at constant speed
  to the time of use: x(t) = x + v·(t − t_frame);
- a vehicle no CAV sees any more is predicted at constant speed for `track_hold_s`, then
  dropped.

An estimate reaches the controller d = ⌈(latency + extra latency) / Δt⌉ steps after its
frame; the latency is the target's roofline latency of what the frame ran (the gate and the
chosen branches, batch 1: each CAV has its own computer) or the measured `latency_s`.
Energy per frame is the target's cost model (cavlab.hw.profile) of the same components.

When the checkpoint has a spiking branch, it runs next to the gated model on every CAV's frame as a
stream (`SpikingStream`: each CAV's membranes carry over from step to step in a `StateTable`, rows
dropped when the CAV leaves) and is scored as `perception_spiking_slot_accuracy`; the controller plans
on the gated model's estimates.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cavlab.config.scenario import ContextSpec, PerceptionSpec, SimulationSpec
from cavlab.errors import UserError
from cavlab.hw.backends.onnxruntime import OrtPerception
from cavlab.hw.profile import profile_model
from cavlab.hw.targets import get_target
from cavlab.perception.fusion import BRANCHES, CONFIGURATIONS, MODALITIES, Selection
from cavlab.perception.inference import BatchedPerception
from cavlab.perception.sensors import SensorSuite, context_label
from cavlab.perception.spiking_branch import SpikingStream
from cavlab.perception.task import SLOT_AHEAD, SLOT_LANE, neighbour_rows, neighbour_targets, slot_correct
from cavlab.perception.training import configuration_energies, load_checkpoint, spiking_head
from cavlab.world import WorldState

ASSOCIATION_GAP_M = 10.0
GHOST_LENGTH_M = 5.0


@dataclass
class Frame:
    """One step's estimates: per observer the detections it will deliver at `ready_step`."""

    time_s: float
    ready_step: np.ndarray  # (N,)
    observers: list[str]
    x_m: np.ndarray  # (N, 6) perceived front-bumper positions at time_s
    speed_mps: np.ndarray  # (N, 6)
    lane: np.ndarray  # (N, 6)
    present: np.ndarray  # (N, 6) bool
    vehicle: np.ndarray  # (N, 6) object: the id tied to each detection (a ghost's own id)
    length_m: np.ndarray  # (N, 6)
    type_index: np.ndarray  # (N, 6)
    slot: np.ndarray  # (N, 6) the vehicle's world slot, −1 for ghosts
    edge: np.ndarray  # (N,) the observer's edge


@dataclass
class Track:
    time_s: float
    x_m: float
    speed_mps: float
    lane: int
    length_m: float
    type_index: int
    slot: int
    edge: int


class PerceptionLoop:
    """The engine's perception hook when `perception.enabled` (see the module docstring); the sensors
    see lanes `lane_width_m` wide (the scenario's `road.lane_width_m`)."""

    def __init__(self, spec: PerceptionSpec, context: ContextSpec, simulation: SimulationSpec, *,
                 lane_width_m: float) -> None:  # fmt: skip
        self.spec = spec
        self.dt = simulation.step_length_s
        self.warmup_s = simulation.warmup_s
        self.suite = SensorSuite(context, lane_width_m=lane_width_m)
        self.label = context_label(context)
        self.rng = np.random.default_rng([simulation.seed, 1729])
        model, gate, checkpoint = load_checkpoint(Path(spec.model))
        expected = {k: list(v) for k, v in self.suite.shapes().items()}
        if {k: list(v) for k, v in checkpoint["shapes"].items()} != expected:
            raise UserError(
                f"perception.model: {spec.model} takes frames {dict(checkpoint['shapes'])}, the sensors make {expected}"
            )
        selection, energies = Selection(**checkpoint["selection"]), configuration_energies(model)
        if spec.device == "cuda" and not torch.cuda.is_available():
            raise UserError("perception.device: cuda, but torch sees no CUDA device here (allowed: auto, cpu)")
        if spec.backend == "onnxruntime":
            self.backend = OrtPerception(model, gate, selection, energies, threads=1)
        else:
            self.backend = BatchedPerception(model, gate, selection, energies, spec.device)
        self.knowledge = checkpoint["knowledge_table"]
        head = spiking_head(checkpoint, Path(spec.model) / "checkpoint.pt")
        self.spiking = None if head is None else SpikingStream(model, head, checkpoint["spiking"]["branch"])
        self.energy_pj, self.latency_s = self._costs(spec)
        self.step = 0
        self.pending: list[Frame] = []
        self.tracks: dict[str, Track] = {}
        self.stats = dict.fromkeys(
            ("frames", "slots_correct", "truth_present", "missed", "estimated_present", "ghosts", "matched",
             "gap_error_m", "speed_error_mps", "plan_errors", "plan_position_error_m", "plan_speed_error_mps",
             "energy_j", "delay_steps", "sensors_s", "inference_s", "steps", "spiking_slots_correct"), 0.0)  # fmt: skip
        self.modality_off = dict.fromkeys(MODALITIES, 0.0)

    def _costs(self, spec: PerceptionSpec) -> tuple[np.ndarray, np.ndarray]:
        """Per configuration: the energy [pJ] and latency [s] of one frame on the target (batch 1),
        the deep gate's own cost included when it chooses."""
        report = profile_model(Path(spec.model), get_target(spec.target), measure=False, batch=1)
        comps, configs = report["components"], report["configurations"]
        energy, latency = [], []
        for name in CONFIGURATIONS:
            parts = list(configs[name]["components"])
            if self.spec.gate == "deep":
                parts = [p for p in parts if p != "stem.radar"] + ["stem.radar", "gate"]
            energy.append(sum(comps[p]["energy_pj"] for p in parts))
            latency.append(sum(comps[p]["latency_roofline_s"]["1"] for p in parts))
        if spec.latency_s is not None:
            latency = [spec.latency_s] * len(CONFIGURATIONS)
        return np.array(energy), np.array(latency) + spec.extra_latency_s

    @property
    def delay_steps(self) -> np.ndarray:
        """Per configuration: steps from a frame to the controller, ⌈latency / Δt⌉."""
        return np.ceil(self.latency_s / self.dt - 1e-9).astype(np.int64)

    def observe(self, world: WorldState) -> WorldState:
        self.step += 1
        measuring = world.time_s > self.warmup_s + 1e-9
        observers = np.flatnonzero(world.is_cav)
        if len(observers):
            self.pending.append(self._estimate(world, observers, measuring))
        perceived = self._deliver(world)
        if measuring:
            self._score_plan(world, perceived)
            self.stats["steps"] += 1
        return perceived

    # ------------------------------------------------------------------ a step's estimates

    def _estimate(self, world: WorldState, observers: np.ndarray, measuring: bool) -> Frame:
        started = time.perf_counter()
        frames = self.suite.observe(world, observers, self.rng)
        sensed = time.perf_counter()
        arrays = {"camera": frames.camera, "lidar": frames.lidar, "radar": frames.radar}
        n = len(observers)
        configuration = None
        if self.spec.gate == "all":
            configuration = ["all branches"] * n
        elif self.spec.gate == "knowledge":
            configuration = [self.knowledge.get(self.label, "all branches")] * n
        estimate, choice = self.backend.estimate(arrays, configuration)
        done = time.perf_counter()
        spiking = None if self.spiking is None else self.spiking.estimate(world.ids[observers].tolist(), arrays)
        truth_rows = neighbour_rows(world, observers)
        truth = neighbour_targets(world, observers, truth_rows)
        frame = self._frame(world, observers, estimate, truth_rows, truth, choice)
        if measuring:
            self._score_frames(observers, estimate, truth, choice)
            if spiking is not None:
                self.stats["spiking_slots_correct"] += float(slot_correct(spiking, truth).sum())
            self.stats["sensors_s"] += sensed - started
            self.stats["inference_s"] += done - sensed
        return frame

    def _frame(self, world: WorldState, observers: np.ndarray, estimate: np.ndarray, truth_rows: np.ndarray,
               truth: np.ndarray, choice: np.ndarray) -> Frame:  # fmt: skip
        """The estimates as vehicles: positions, speeds, lanes, and the vehicle each is tied to."""
        n = len(observers)
        ahead = np.array(SLOT_AHEAD)[None, :]
        x_o, v_o = world.x_m[observers][:, None], world.speed_mps[observers][:, None]
        present = estimate[..., 0] > 0.5
        gap, dv = np.maximum(estimate[..., 1], 0.0), estimate[..., 2]
        tied = present & (truth_rows >= 0) & (np.abs(gap - truth[..., 1]) <= ASSOCIATION_GAP_M)
        rows = np.where(tied, truth_rows, 0)
        length = np.where(tied, world.length_m[rows], GHOST_LENGTH_M)
        x = np.where(ahead, x_o + gap + length, x_o - world.length_m[observers][:, None] - gap)
        ids = world.ids[observers].tolist()
        vehicle = np.empty((n, len(SLOT_AHEAD)), dtype=object)
        for k, s in zip(*np.nonzero(present), strict=True):
            vehicle[k, s] = str(world.ids[rows[k, s]]) if tied[k, s] else f"ghost:{ids[k]}:{s}"
        ghost_type = _hdv_type(world)
        return Frame(
            time_s=world.time_s, ready_step=self.step + self.delay_steps[choice], observers=ids, x_m=x,
            speed_mps=v_o + dv, lane=world.lane[observers][:, None] + np.array(SLOT_LANE)[None, :],
            present=present, vehicle=vehicle, length_m=length,
            type_index=np.where(tied, world.type_index[rows], ghost_type), slot=np.where(tied, world.slot[rows], -1),
            edge=world.edge[observers],
        )  # fmt: skip

    # ------------------------------------------------------------------ the world the controller sees

    def _deliver(self, world: WorldState) -> WorldState:
        """The perceived world at this step: CAVs as they are, the rest from the newest delivered
        estimate of each observer (and the tracks still held)."""
        t = world.time_s
        cav_ids = set(world.ids[world.is_cav].tolist())
        newest: dict[str, tuple[Frame, int]] = {}
        for frame in self.pending:
            for k, vid in enumerate(frame.observers):
                if frame.ready_step[k] <= self.step and vid in cav_ids:
                    newest[vid] = (frame, k)  # frames are in time order: the last one wins
        keep_after = min((f.time_s for f, _ in newest.values()), default=-math.inf)
        self.pending = [f for f in self.pending if f.time_s >= keep_after or (f.ready_step > self.step).any()]
        seen: dict[str, list[tuple[float, float, Frame, int, int]]] = {}
        for frame, k in newest.values():
            for s in np.flatnonzero(frame.present[k]).tolist():
                vid = frame.vehicle[k, s]
                x_now = frame.x_m[k, s] + frame.speed_mps[k, s] * (t - frame.time_s)
                seen.setdefault(vid, []).append((x_now, frame.speed_mps[k, s], frame, k, s))
        ghosts: dict[str, Track] = {}
        for vid, looks in seen.items():
            if vid in cav_ids:
                continue  # V2V: the CAV's own state wins
            _, _, frame, k, s = looks[0]
            track = Track(t, float(np.mean([lk[0] for lk in looks])), float(np.mean([lk[1] for lk in looks])),
                          int(frame.lane[k, s]), float(frame.length_m[k, s]), int(frame.type_index[k, s]),
                          int(frame.slot[k, s]), int(frame.edge[k]))  # fmt: skip
            (ghosts if vid.startswith("ghost:") else self.tracks)[vid] = track
        self.tracks = {vid: tr for vid, tr in self.tracks.items() if t - tr.time_s <= self.spec.track_hold_s + 1e-9}
        others = {**self.tracks, **ghosts}
        cavs = np.flatnonzero(world.is_cav)
        ids = np.array([*world.ids[cavs].tolist(), *others], dtype=object)
        tracks = list(others.values())

        def column(values, cav_values, dtype):
            return np.concatenate([cav_values, np.array(values, dtype=dtype)]).astype(dtype)

        x = column([tr.x_m + tr.speed_mps * (t - tr.time_s) for tr in tracks], world.x_m[cavs], np.float64)
        lane = column([tr.lane for tr in tracks], world.lane[cavs], world.lane.dtype)
        order = np.lexsort((x, lane))
        return WorldState(
            time_s=t, ids=ids.astype(world.ids.dtype)[order],
            slot=column([tr.slot for tr in tracks], world.slot[cavs], world.slot.dtype)[order],
            type_index=column([tr.type_index for tr in tracks], world.type_index[cavs], world.type_index.dtype)[order],
            is_cav=column([False] * len(tracks), world.is_cav[cavs], bool)[order],
            controlled=column([False] * len(tracks), world.controlled[cavs], bool)[order],
            edge=column([tr.edge for tr in tracks], world.edge[cavs], world.edge.dtype)[order],
            lane=lane[order], x_m=x[order],
            speed_mps=column([tr.speed_mps for tr in tracks], world.speed_mps[cavs], np.float64)[order],
            accel_mps2=column([0.0] * len(tracks), world.accel_mps2[cavs], np.float64)[order],
            length_m=column([tr.length_m for tr in tracks], world.length_m[cavs], np.float64)[order],
            type_names=world.type_names, edge_names=world.edge_names,
        )  # fmt: skip

    # ------------------------------------------------------------------ metrics

    def _score_frames(self, observers: np.ndarray, estimate: np.ndarray, target: np.ndarray, choice: np.ndarray
                      ) -> None:  # fmt: skip
        st = self.stats
        truth, present = target[..., 0] > 0.5, estimate[..., 0] > 0.5
        both = truth & present
        st["frames"] += len(observers)
        st["slots_correct"] += float(slot_correct(estimate, target).sum())
        st["truth_present"] += float(truth.sum())
        st["missed"] += float((truth & ~present).sum())
        st["estimated_present"] += float(present.sum())
        st["ghosts"] += float((present & ~truth).sum())
        st["matched"] += float(both.sum())
        st["gap_error_m"] += float(np.abs(estimate[..., 1] - target[..., 1])[both].sum())
        st["speed_error_mps"] += float(np.abs(estimate[..., 2] - target[..., 2])[both].sum())
        st["energy_j"] += float(self.energy_pj[choice].sum()) * 1e-12
        st["delay_steps"] += float(self.delay_steps[choice].sum())
        for index in np.unique(choice).tolist():
            config = CONFIGURATIONS[index]
            used = {m for b in (BRANCHES if config == "all branches" else (config,)) for m in BRANCHES[b]}
            count = float((choice == index).sum())
            for m in MODALITIES:
                self.modality_off[m] += count * (m not in used)

    def _score_plan(self, world: WorldState, perceived: WorldState) -> None:
        """Errors of the perceived non-CAVs that exist, against their true state now."""
        truth = {vid: k for k, vid in enumerate(world.ids.tolist())}
        rows = [(k, truth[vid]) for k, vid in enumerate(perceived.ids.tolist())
                if not perceived.is_cav[k] and vid in truth]  # fmt: skip
        if rows:
            p, w = np.array(rows).T
            self.stats["plan_errors"] += len(rows)
            self.stats["plan_position_error_m"] += float(np.abs(perceived.x_m[p] - world.x_m[w]).sum())
            self.stats["plan_speed_error_mps"] += float(np.abs(perceived.speed_mps[p] - world.speed_mps[w]).sum())

    def metrics(self) -> dict:
        """The run's perception metrics (after the warm-up)."""
        st = self.stats

        def ratio(a: str, b: str) -> float:
            return st[a] / st[b] if st[b] else math.nan

        cav_hours = st["frames"] * self.dt / 3600
        spiking = {} if self.spiking is None else {
            "perception_spiking_slot_accuracy": st["spiking_slots_correct"] / (6 * st["frames"]) if st["frames"]
            else math.nan,
        }  # fmt: skip
        return {
            **spiking,
            "perception_slot_accuracy": st["slots_correct"] / (6 * st["frames"]) if st["frames"] else math.nan,
            "perception_missed_share": ratio("missed", "truth_present"),
            "perception_ghost_share": ratio("ghosts", "estimated_present"),
            "perception_gap_error_m": ratio("gap_error_m", "matched"),
            "perception_speed_error_mps": ratio("speed_error_mps", "matched"),
            "perception_plan_position_error_m": ratio("plan_position_error_m", "plan_errors"),
            "perception_plan_speed_error_mps": ratio("plan_speed_error_mps", "plan_errors"),
            "perception_energy_j_per_cav_hour": st["energy_j"] / cav_hours if cav_hours else math.nan,
            "perception_delay_s": ratio("delay_steps", "frames") * self.dt,
            "perception_sensors_ms_per_step": 1e3 * ratio("sensors_s", "steps"),
            "perception_inference_ms_per_step": 1e3 * ratio("inference_s", "steps"),
            "perception_cav_frames": st["frames"],
            **{f"perception_{m}_off_share": self.modality_off[m] / st["frames"] if st["frames"] else math.nan
               for m in MODALITIES},
        }  # fmt: skip


def _hdv_type(world: WorldState) -> int:
    """The type index ghosts get: the most common type among the vehicles that are not CAVs."""
    types = world.type_index[~world.is_cav]
    return int(np.bincount(types).argmax()) if len(types) else 0
