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

import dataclasses
import math
import time
from dataclasses import dataclass, fields
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
from cavlab.perception.sensors import SPEED_SCALE_MPS, SensorSuite, context_label
from cavlab.perception.spiking_branch import SpikingStream
from cavlab.perception.task import (
    RANGE_M,
    SLOT_AHEAD,
    SLOT_LANE,
    SLOTS,
    neighbour_rows,
    neighbour_targets,
    slot_correct,
)
from cavlab.perception.training import configuration_energies, load_checkpoint, spiking_head
from cavlab.world import Accelerate, Command, Release, SetSpeed, WorldState

ASSOCIATION_GAP_M = 10.0
GHOST_LENGTH_M = 5.0  # also the length the emergency braking assumes of a radar return
EMERGENCY_GAP_M = 2.0  # a radar return closer than this brakes whatever its closing speed


@dataclass
class Frame:
    """One step's estimates: per observer the detections it will deliver at `ready_step`."""

    time_s: float
    ready_step: np.ndarray  # (N,)
    observers: np.ndarray  # (N,) object: their ids
    observer_slot: np.ndarray  # (N,) their world slots
    x_m: np.ndarray  # (N, 6) perceived front-bumper positions at time_s
    speed_mps: np.ndarray  # (N, 6)
    lane: np.ndarray  # (N, 6)
    present: np.ndarray  # (N, 6) bool
    vehicle: np.ndarray  # (N, 6) object: the id tied to each detection (a ghost's own id)
    length_m: np.ndarray  # (N, 6)
    type_index: np.ndarray  # (N, 6)
    slot: np.ndarray  # (N, 6) the vehicle's world slot, −1 for ghosts
    sigma_m: np.ndarray  # (N, 6) σ of the position at time_s: σ₀·(2 − c), c = 2p − 1 the presence confidence
    key: np.ndarray  # (N, 6) who each detection is: the vehicle's world slot, −(6·observer slot + s) − 1 for ghosts
    edge: np.ndarray  # (N,) the observer's edge


@dataclass(frozen=True)
class Tracks:
    """Perceived vehicles that are not CAVs, one entry each: its state at `time_s`, predicted at constant
    speed from there."""

    ids: np.ndarray  # object
    time_s: np.ndarray
    x_m: np.ndarray
    speed_mps: np.ndarray
    lane: np.ndarray
    length_m: np.ndarray
    type_index: np.ndarray
    slot: np.ndarray  # the vehicle's world slot, −1 for ghosts
    edge: np.ndarray
    sigma_m: np.ndarray  # σ of the position at time_s; it grows by the speed's σ per second after
    leader: np.ndarray  # bool: some CAV's own-lane leader when last seen
    key: np.ndarray  # int: the world slot, negative for ghosts (`Frame.key`): what entries are grouped by

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: np.ndarray) -> Tracks:
        return Tracks(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    @staticmethod
    def empty() -> Tracks:
        ints = (np.zeros(0, dtype=np.int64) for _ in range(5))
        return Tracks(np.zeros(0, dtype=object), *(np.zeros(0) for _ in range(3)), *ints, np.zeros(0),
                      np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64))  # fmt: skip

    @staticmethod
    def join(first: Tracks, second: Tracks) -> Tracks:
        """Both, `first`'s entry where an id is in both."""
        both = Tracks(**{f.name: np.concatenate([getattr(first, f.name), getattr(second, f.name)])
                         for f in fields(first)})  # fmt: skip
        _, rows = np.unique(both.key, return_index=True)  # the first occurrence of each vehicle
        return both.take(np.sort(rows))


class PerceptionLoop:
    """The engine's perception hook when `perception.enabled` (see the module docstring); the sensors
    see lanes `lane_width_m` wide (the scenario's `road.lane_width_m`)."""

    def __init__(self, spec: PerceptionSpec, context: ContextSpec, simulation: SimulationSpec, *,
                 lane_width_m: float, corridor: np.ndarray | None = None) -> None:  # fmt: skip
        self.spec = spec
        self.corridor = corridor  # per edge index on an external network: the corridor it lies in
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
        cuda = spec.device == "cuda" or (spec.device == "auto" and torch.cuda.is_available())
        if spec.backend == "onnxruntime" or (spec.backend == "auto" and not cuda):
            self.backend = OrtPerception(model, gate, selection, energies, threads=1)
        else:
            self.backend = BatchedPerception(model, gate, selection, energies, spec.device)
        self.knowledge = checkpoint["knowledge_table"]
        head = spiking_head(checkpoint, Path(spec.model) / "checkpoint.pt")
        self.spiking = None if head is None else SpikingStream(model, head, checkpoint["spiking"]["branch"])
        self.energy_pj, self.latency_s = self._costs(spec)
        self.step = 0
        self.pending: list[Frame] = []
        self.tracks = Tracks.empty()
        self.stats = dict.fromkeys(
            ("frames", "slots_correct", "truth_present", "missed", "estimated_present", "ghosts", "matched",
             "gap_error_m", "speed_error_mps", "plan_errors", "plan_position_error_m", "plan_speed_error_mps",
             "energy_j", "delay_steps", "sensors_s", "inference_s", "steps", "spiking_slots_correct", "emergency_steps",
             "emergency_events", "leader_holds", "fault_steps", "looks", "contradicted",
             "contradicted_real"), 0.0)  # fmt: skip
        self.modality_off = dict.fromkeys(MODALITIES, 0.0)
        self._braking: set[str] = set()

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
        radar_lead = None
        if len(observers):
            frame, radar_lead = self._estimate(world, observers, measuring)
            self.pending.append(frame)
        perceived, sigma = self._deliver(world)
        if measuring:
            self._score_plan(world, perceived)
            self.stats["steps"] += 1
        self._braking = self._emergency(world, observers, radar_lead, perceived)
        return _widened(perceived, self.spec.uncertainty_k * sigma)

    def guard(self, commands: list[Command]) -> list[Command]:
        """The last line of defence: CAVs the controller drives whose raw radar shows a leader closing in that
        the fused estimate does not (`_emergency`) brake at `emergency_decel_mps2` this step, whatever was
        planned (a vehicle handed back to SUMO stays with SUMO)."""
        if not self._braking:
            return commands
        u_brake = -self.spec.emergency_decel_mps2
        released = {c.vehicle_id for c in commands if isinstance(c, Release)}
        out = [Accelerate(c.vehicle_id, min(c.accel_mps2, u_brake)) if isinstance(c, Accelerate)
               and c.vehicle_id in self._braking else c for c in commands
               if not (isinstance(c, SetSpeed) and c.vehicle_id in self._braking)]  # fmt: skip
        accelerated = {c.vehicle_id for c in out if isinstance(c, Accelerate)}
        return out + [Accelerate(vid, u_brake) for vid in sorted(self._braking - released - accelerated)]

    def _emergency(self, world: WorldState, observers: np.ndarray,
                   radar_lead: tuple[np.ndarray, np.ndarray] | None, perceived: WorldState) -> set[str]:  # fmt: skip
        """The CAVs to brake this step: driven by the controller, their raw radar's nearest in-lane return ahead
        (`radar_lead`: its gap and range rate per observer) closer than `emergency_ttc_s` of time to collision (or
        than 2 m), and their fused own-lane leader (none counts as infinitely far) more than
        `emergency_disagreement_m` farther."""
        spec = self.spec
        if radar_lead is None or not spec.emergency_braking or not world.controlled[observers].any():
            return set()
        gap, rate = radar_lead
        ttc = np.where(rate < 0, gap / np.maximum(-rate, 1e-9), np.inf)
        danger = world.controlled[observers] & ((ttc < spec.emergency_ttc_s) | (gap < EMERGENCY_GAP_M))
        if not danger.any():
            return set()
        ids = world.ids[observers]
        _, mine, rows = np.intersect1d(world.slot[observers], perceived.slot, return_indices=True)
        fused = np.full(len(ids), np.inf)
        lead = perceived.leader_ahead_row[rows]
        fused[mine] = np.where(lead >= 0, perceived.gap_m(rows, np.maximum(lead, 0)), np.inf)
        braking = set(ids[danger & (fused > gap + spec.emergency_disagreement_m)].tolist())
        if world.time_s > self.warmup_s + 1e-9:
            self.stats["emergency_steps"] += len(braking)
            self.stats["emergency_events"] += len(braking - self._braking)
        return braking

    # ------------------------------------------------------------------ a step's estimates

    def _estimate(self, world: WorldState, observers: np.ndarray, measuring: bool
                  ) -> tuple[Frame, tuple[np.ndarray, np.ndarray]]:  # fmt: skip
        """This step's frame of estimates, and the raw radar's nearest in-lane return ahead per observer (gap, rate)."""
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
        self._inject_faults(estimate, world.time_s, measuring)
        spiking = None if self.spiking is None else self.spiking.estimate(world.ids[observers].tolist(), arrays)
        truth_rows = neighbour_rows(world, observers)
        truth = neighbour_targets(world, observers, truth_rows)
        radar_lead = radar_leader(frames.radar, world.length_m[observers], self.suite.lane_width_m,
                                  self.suite.radar_range_m)  # fmt: skip
        used = _radar_closing_speed(estimate, *radar_lead) if self.spec.radar_leader_speed \
            else estimate  # the model's own estimate is what the slot metrics score
        frame = self._frame(world, observers, used, truth_rows, truth, choice)
        if measuring:
            self._score_frames(observers, estimate, truth, choice)
            if spiking is not None:
                self.stats["spiking_slots_correct"] += float(slot_correct(spiking, truth).sum())
            self.stats["sensors_s"] += sensed - started
            self.stats["inference_s"] += done - sensed
        return frame, radar_lead

    def _inject_faults(self, estimate: np.ndarray, time_s: float, measuring: bool) -> None:
        """`perception.faults` active now, applied to every CAV's estimates."""
        for fault in self.spec.faults:
            if fault.active(time_s):
                s = SLOTS.index(fault.slot)
                estimate[:, s] = (0.0, 0.0, 0.0) if fault.kind == "miss" else (1.0, fault.gap_m, fault.speed_mps)
                if measuring:
                    self.stats["fault_steps"] += 1

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
        ids = world.ids[observers]
        confidence = np.clip(2 * estimate[..., 0] - 1, 0.0, 1.0)
        vehicle = np.full((n, len(SLOT_AHEAD)), None, dtype=object)
        vehicle[tied] = world.ids[rows[tied]]
        for k, s in zip(*np.nonzero(present & ~tied), strict=True):  # ghosts: a vehicle of their own, this step
            vehicle[k, s] = f"ghost:{ids[k]}:{s}"
        ghost_type = _hdv_type(world)
        observer_slot = world.slot[observers]
        key = np.where(tied, world.slot[rows], -(6 * observer_slot[:, None] + np.arange(6)[None, :]) - 1)
        return Frame(
            time_s=world.time_s, ready_step=self.step + self.delay_steps[choice], observers=ids,
            observer_slot=observer_slot, x_m=x, speed_mps=v_o + dv,
            lane=world.lane[observers][:, None] + np.array(SLOT_LANE)[None, :], present=present, vehicle=vehicle,
            length_m=length,
            type_index=np.where(tied, world.type_index[rows], ghost_type), slot=np.where(tied, world.slot[rows], -1),
            sigma_m=self.spec.gap_sigma_m * (2 - confidence), key=key, edge=world.edge[observers],
        )  # fmt: skip

    # ------------------------------------------------------------------ the world the controller sees

    def _deliver(self, world: WorldState) -> tuple[WorldState, np.ndarray]:
        """The perceived world at this step: CAVs as they are, the rest from the newest delivered
        estimate of each observer (and the tracks still held); and the σ of each row's position (0 for CAVs),
        σ = σ₀ + σ_v·age."""
        t = world.time_s
        cav_slots = world.slot[world.is_cav]
        # the newest delivered frame of each CAV (frames are in time order: the last one wins)
        delivered = [np.flatnonzero((f.ready_step <= self.step) & np.isin(f.observer_slot, cav_slots))
                     for f in self.pending]  # fmt: skip
        frame_of = np.concatenate([np.full(len(k), f) for f, k in enumerate(delivered)] or [np.zeros(0, int)])
        index = np.concatenate(delivered or [np.zeros(0, int)])
        observers = np.concatenate([f.observer_slot[k] for f, k in zip(self.pending, delivered, strict=True)]
                                   or [np.zeros(0, dtype=np.int64)])  # fmt: skip
        _, last = np.unique(observers[::-1], return_index=True)
        last = np.sort(len(observers) - 1 - last)
        frame_of, index = frame_of[last], index[last]
        looks, seer, seen_in = self._looks(frame_of, index, t)
        of_cav = np.isin(looks.key, cav_slots)  # V2V: the CAVs' own states win
        contradicted = ~of_cav & _contradicted(world, looks, seer, seen_in, self.corridor)
        if world.time_s > self.warmup_s + 1e-9:
            self.stats["looks"] += float((~of_cav).sum())
            self.stats["contradicted"] += float(contradicted.sum())
            self.stats["contradicted_real"] += float((contradicted & (looks.slot >= 0)).sum())
        looks = looks.take(np.flatnonzero(~of_cav & ~contradicted))
        keep_after = min((self.pending[f].time_s for f in np.unique(frame_of).tolist()), default=-math.inf)
        self.pending = [f for f in self.pending if f.time_s >= keep_after or (f.ready_step > self.step).any()]
        seen = _averaged(looks)
        ghost = seen.slot < 0
        self.tracks = Tracks.join(seen.take(np.flatnonzero(~ghost)), self.tracks)
        age = t - self.tracks.time_s
        spec = self.spec
        hold = np.where(self.tracks.leader, max(spec.leader_hold_s, spec.track_hold_s), spec.track_hold_s)
        if world.time_s > self.warmup_s + 1e-9:
            self.stats["leader_holds"] += float((self.tracks.leader & (age > self.spec.track_hold_s + 1e-9)
                                                 & (age <= hold + 1e-9)).sum())  # fmt: skip
        self.tracks = self.tracks.take(np.flatnonzero((age <= hold + 1e-9) & self._in_corridor(world, self.tracks)))
        others = Tracks.join(self.tracks, seen.take(np.flatnonzero(ghost)))
        cavs = np.flatnonzero(world.is_cav)
        x = np.concatenate([world.x_m[cavs], others.x_m + others.speed_mps * (t - others.time_s)])
        lane = np.concatenate([world.lane[cavs], others.lane.astype(world.lane.dtype)])
        sigma = np.concatenate([np.zeros(len(cavs)), others.sigma_m + self.spec.speed_sigma_mps * (t - others.time_s)])
        order = np.lexsort((x, lane))

        def column(name: str, values: np.ndarray) -> np.ndarray:
            mine = getattr(world, name)
            return np.concatenate([mine[cavs], values.astype(mine.dtype)])[order]

        absent = np.zeros(len(others), dtype=bool)
        perceived = WorldState(
            time_s=t, ids=column("ids", others.ids), slot=column("slot", others.slot),
            type_index=column("type_index", others.type_index), is_cav=column("is_cav", absent),
            controlled=column("controlled", absent), edge=column("edge", others.edge), lane=lane[order],
            x_m=x[order], speed_mps=column("speed_mps", others.speed_mps),
            accel_mps2=column("accel_mps2", np.zeros(len(others))), length_m=column("length_m", others.length_m),
            type_names=world.type_names, edge_names=world.edge_names,
        )  # fmt: skip
        return perceived, sigma[order]

    def _in_corridor(self, world: WorldState, tracks: Tracks) -> np.ndarray:
        """Per track, whether its vehicle is still on the road it was seen on: on an external network a
        tracker sees a vehicle take a ramp or cross a junction into another corridor (x means something
        else there), or leave the network, and drops it rather than predicting it on along the old lane."""
        if self.corridor is None or not len(tracks):
            return np.ones(len(tracks), dtype=bool)
        row_of_slot = np.full(max(int(world.slot.max(initial=-1)), int(tracks.slot.max())) + 1, -1)
        row_of_slot[world.slot] = np.arange(len(world))
        rows = row_of_slot[tracks.slot]
        return (rows >= 0) & (self.corridor[world.edge[rows]] == self.corridor[tracks.edge])

    def _looks(self, frame_of: np.ndarray, index: np.ndarray, t: float) -> tuple[Tracks, np.ndarray, np.ndarray]:
        """Every detection of the observers `index` of the pending frames `frame_of`, predicted to `t`; the
        world slot of the observer that made each, and the neighbour slot (`SLOTS` index) it was made in."""
        parts, seers, slots = [], [], []
        for f in np.unique(frame_of).tolist():
            frame = self.pending[f]
            k = index[frame_of == f]
            kk, ss = np.nonzero(frame.present[k])
            kk = k[kk]
            parts.append(Tracks(
                frame.vehicle[kk, ss], np.full(len(kk), t), frame.x_m[kk, ss] + frame.speed_mps[kk, ss] *
                (t - frame.time_s), frame.speed_mps[kk, ss], frame.lane[kk, ss], frame.length_m[kk, ss],
                frame.type_index[kk, ss], frame.slot[kk, ss], frame.edge[kk], frame.sigma_m[kk, ss] +
                self.spec.speed_sigma_mps * (t - frame.time_s), ss == SLOTS.index("own_front"),
                frame.key[kk, ss]))  # fmt: skip
            seers.append(frame.observer_slot[kk])
            slots.append(ss)
        if not parts:
            return Tracks.empty(), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        looks = Tracks(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Tracks)})
        return looks, np.concatenate(seers), np.concatenate(slots)

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
        others = np.flatnonzero(~perceived.is_cav)
        _, p, w = np.intersect1d(perceived.slot[others], world.slot, return_indices=True)  # ghosts' slot −1: none
        if len(p):
            p = others[p]
            self.stats["plan_errors"] += len(p)
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
            "perception_emergency_brakings": st["emergency_events"],
            "perception_emergency_braking_s": st["emergency_steps"] * self.dt,
            "perception_leader_hold_s": st["leader_holds"] * self.dt,
            "perception_fault_s": st["fault_steps"] * self.dt,
            "perception_contradicted_share": ratio("contradicted", "looks"),
            "perception_contradicted_real_share": ratio("contradicted_real", "contradicted"),
            **{f"perception_{m}_off_share": self.modality_off[m] / st["frames"] if st["frames"] else math.nan
               for m in MODALITIES},
        }  # fmt: skip


def _averaged(looks: Tracks) -> Tracks:
    """One entry per vehicle: the mean position and speed of its looks, the smallest σ, a leader if any look was
    of an own-lane leader, the rest from its first look."""
    keys, first, which = np.unique(looks.key, return_index=True, return_inverse=True)
    counts = np.bincount(which, minlength=len(keys))
    merged, n = looks.take(first), len(keys)
    sigma = np.full(n, np.inf)
    np.minimum.at(sigma, which, looks.sigma_m)
    return Tracks(merged.ids, merged.time_s, np.bincount(which, looks.x_m, n) / counts,
                  np.bincount(which, looks.speed_mps, n) / counts, merged.lane, merged.length_m, merged.type_index,
                  merged.slot, merged.edge, sigma, np.bincount(which, looks.leader, n) > 0, keys)  # fmt: skip


def _radar_closing_speed(estimate: np.ndarray, gap_m: np.ndarray, rate_mps: np.ndarray) -> np.ndarray:
    """`estimate` with the own-lane leader's relative speed from the raw radar, as ACC takes it: where the nearest
    in-lane return ahead (`radar_leader`: `gap_m`, `rate_mps` per observer) lies within ASSOCIATION_GAP_M of the
    estimated leader, its range rate replaces the estimated Δv (the radar measures it to a fraction of a m/s; the
    model's estimate of a fast-closing leader falls short)."""
    s = SLOTS.index("own_front")
    same = (estimate[:, s, 0] > 0.5) & np.isfinite(gap_m) & (np.abs(gap_m - estimate[:, s, 1]) <= ASSOCIATION_GAP_M)
    used = estimate.copy()
    used[same, s, 2] = rate_mps[same]
    return used


def _contradicted(world: WorldState, looks: Tracks, seer: np.ndarray, seen_in: np.ndarray,
                  corridor: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Per look, whether a CAV's own view of its lane rules it out. The nearest vehicle ahead of a CAV in its
    lane and the nearest behind cannot be hidden from it, so its own estimates of them (or none within RANGE_M)
    leave its lane clear in between: [front of the one behind + m, rear of the one ahead − m], or x_o ± RANGE_M ∓ m
    where it sees none, m = ASSOCIATION_GAP_M; its view ends at the CAVs next to it in the lane (V2V). A look by
    another CAV whose footprint reaches into that interval (the CAV itself included) is dropped: a ghost, or a
    vehicle misplaced into the lane. (Adjacent lanes are left alone: the model misplaces vehicles alongside,
    and a CAV's own side view would drop others' right looks of them.) On an external network (`corridor`: per
    edge, the corridor it lies in) only a CAV in the corridor of the look's observer counts: x and the lane
    index mean something else in another."""
    cavs = np.flatnonzero(world.is_cav)
    if not len(looks) or not len(cavs):
        return np.zeros(len(looks), dtype=bool)
    slot_cav, lane_cav = world.slot[cavs], world.lane[cavs]
    x_o, rear_o = world.x_m[cavs], world.x_m[cavs] - world.length_m[cavs]
    ahead_m, behind_m = x_o + RANGE_M - ASSOCIATION_GAP_M, rear_o - RANGE_M + ASSOCIATION_GAP_M
    road = np.zeros(len(cavs), dtype=np.int64) if corridor is None else corridor[world.edge[cavs]]
    by_lane = np.lexsort((x_o, lane_cav, road))
    next_to = (lane_cav[by_lane][1:] == lane_cav[by_lane][:-1]) & (road[by_lane][1:] == road[by_lane][:-1])
    behind, ahead = by_lane[:-1][next_to], by_lane[1:][next_to]
    ahead_m[behind] = np.minimum(ahead_m[behind], rear_o[ahead])
    behind_m[ahead] = np.maximum(behind_m[ahead], x_o[behind])
    rear = looks.x_m - looks.length_m
    row_of = np.argsort(slot_cav)
    for s, limit, seen_m in ((SLOTS.index("own_front"), ahead_m, rear - ASSOCIATION_GAP_M),
                             (SLOTS.index("own_rear"), behind_m, looks.x_m + ASSOCIATION_GAP_M)):  # fmt: skip
        mine = np.flatnonzero(seen_in == s)  # each observer's own look there (one per delivered frame)
        at = row_of[np.searchsorted(slot_cav, seer[mine], sorter=row_of)]
        nearer = np.minimum if limit is ahead_m else np.maximum
        limit[at] = nearer(limit[at], seen_m[mine])
    seeing = np.isin(slot_cav, seer)  # only a CAV whose frame was delivered knows its lane now
    reaches = (looks.lane[:, None] == lane_cav[None, :]) & (rear[:, None] < ahead_m[None, :]) \
        & (looks.x_m[:, None] > behind_m[None, :]) & (seer[:, None] != slot_cav[None, :]) & seeing[None, :]
    if corridor is not None:
        reaches &= corridor[looks.edge][:, None] == road[None, :]
    return reaches.any(axis=1)


def _widened(world: WorldState, margin_m: np.ndarray) -> WorldState:
    """`world` with each vehicle's footprint widened by `margin_m` at both ends (front x + m, length L + 2m),
    rows re-sorted by lane and position: every gap to it shrinks by its margin."""
    if not margin_m.any():
        return world
    x = world.x_m + margin_m
    order = np.lexsort((x, world.lane))
    columns = {f.name: getattr(world, f.name) for f in fields(WorldState) if f.name not in _NOT_ROWS}
    columns.update(x_m=x, length_m=world.length_m + 2 * margin_m)
    return dataclasses.replace(world, **{name: column[order] for name, column in columns.items()})


_NOT_ROWS = ("time_s", "type_names", "edge_names")


def radar_leader(radar: np.ndarray, length_m: np.ndarray, lane_width_m: float, range_m: float
                 ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per radar frame (N, returns, 4: present, range/range_m, azimuth/π, range rate/30 m/s), the nearest
    return ahead within half a lane width of the axis: its bumper-to-bumper gap, r·cos(az) − (L + L_assumed)/2
    (L the observer's length, L_assumed = `GHOST_LENGTH_M`), and range rate [m/s]; (inf, 0) where none."""
    r, azimuth = radar[..., 1] * range_m, radar[..., 2] * np.pi
    along, across = r * np.cos(azimuth), r * np.sin(azimuth)
    ahead = (radar[..., 0] > 0.5) & (along > 0) & (np.abs(across) < lane_width_m / 2)
    gap = np.where(ahead, along - (length_m[:, None] + GHOST_LENGTH_M) / 2, np.inf)
    nearest = gap.argmin(axis=1) if gap.shape[1] else np.zeros(len(gap), dtype=int)
    rows = np.arange(len(gap))
    best = gap[rows, nearest] if gap.shape[1] else np.full(len(gap), np.inf)
    rate = np.where(np.isfinite(best), radar[rows, nearest, 3] * SPEED_SCALE_MPS if gap.shape[1] else 0.0, 0.0)
    return best, rate


def _hdv_type(world: WorldState) -> int:
    """The type index ghosts get: the most common type among the vehicles that are not CAVs."""
    types = world.type_index[~world.is_cav]
    return int(np.bincount(types).argmax()) if len(types) else 0
