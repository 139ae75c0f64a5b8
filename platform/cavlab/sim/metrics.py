"""Run metrics, gathered step by step from world states and events, after the warm-up.

- throughput (veh/h, per lane and total) from the E1 induction loops;
- mean speed = Σ v·Δt / Σ Δt over all vehicle-steps (space-mean speed);
- travel time and delay against free flow, over trips that start after the warm-up and end
  before the run does; free-flow time = Σ_edges length / min(speed factor · limit, v_max);
- lane changes (a record each), collisions, hard-braking events (a vehicle starts to
  decelerate harder than its type's comfortable `decel_mps2`, by more than 0.01 m/s²);
- control energy per trip, E = ∫ ½ u² dt (m²/s³);
- safety of the vehicles a controller commands, on the true state: the least bumper-to-bumper
  gap to the leader in the lane, and the time spent with a time to collision
  TTC = gap / (v − v_lead) below `CRITICAL_TTC_S` (vehicle-seconds).

On an external network (`road.kind: network`) the throughput is the sum over its measurement
points (by default the exits, so the flow leaving the network), with each point's edge; a vehicle
that moves onto the next edge changes lanes only if no connection of the network leads from its
lane to the new one (its road lane index may change at a junction), and `per_edge` gives every
normal edge's mean speed and vehicle-hours.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cavlab.config.scenario import Scenario
from cavlab.controllers.longitudinal import Headway
from cavlab.sim.network import Network
from cavlab.world import Collision, Departure, StepEvents, WorldState

_NO_LANE = np.iinfo(np.int16).min
CRITICAL_TTC_S = 1.5


@dataclass(frozen=True)
class LaneChange:
    """One lane change, recorded when SUMO moves the vehicle to the new lane."""

    time_s: float
    vehicle_id: str
    vehicle_type: str
    is_cav: bool
    controlled: bool
    from_lane: int
    to_lane: int
    x_m: float
    speed_mps: float


class MetricsCollector:
    """Accumulates a run's metrics; feed it every step, then call `finish`. `safe_gap`: the gap φ·v + δ the
    controller keeps to a leader, against which the slack of the vehicles it commands is measured."""

    def __init__(self, scenario: Scenario, network: Network, safe_gap: Headway | None = None) -> None:
        self.scenario = scenario
        self.safe_gap = safe_gap
        self.network = network
        self.dt = scenario.simulation.step_length_s
        self.warmup_s = scenario.simulation.warmup_s
        types = scenario.demand.vehicle_types
        self._hard_braking_mps2 = np.array([-t.decel_mps2 - 0.01 for t in types.values()])
        self._half_dt = 0.5 * self.dt
        capacity = 1024
        self._prev_lane = np.full(capacity, _NO_LANE, dtype=np.int16)
        self._braking = np.zeros(capacity, dtype=bool)
        self._energy = np.zeros(capacity)
        self._departures: dict[int, Departure] = {}
        self._arrival_s: dict[int, float] = {}
        self.lane_changes: list[LaneChange] = []
        self.collisions: list[Collision] = []
        self._speed_sum = 0.0
        self._vehicle_steps = 0
        self._hard_braking = 0
        self._min_gap_controlled_m = math.inf
        self._min_slack_controlled_m = math.inf
        self._critical_ttc_steps = 0
        self.route_edges: dict[int, tuple[tuple[str, ...], float]] = {}  # external networks: slot → route, depart pos
        external = network.external
        self._continues = external.continuations if external else None  # (edge, lane, edge, lane) of connections
        self._edge_offset = [e.lane_offset for e in network.edges]
        self._prev_edge = np.zeros(capacity, dtype=np.intp)
        self._edge_speed_sum = np.zeros(len(network.edges))
        self._edge_steps = np.zeros(len(network.edges), dtype=np.int64)

    def _ensure(self, slots: int) -> None:
        while slots > len(self._energy):
            grow = len(self._energy)
            self._prev_lane = np.concatenate([self._prev_lane, np.full(grow, _NO_LANE, dtype=np.int16)])
            self._prev_edge = np.concatenate([self._prev_edge, np.zeros(grow, dtype=np.intp)])
            self._braking = np.concatenate([self._braking, np.zeros(grow, dtype=bool)])
            self._energy = np.concatenate([self._energy, np.zeros(grow)])

    def observe(self, world: WorldState, events: StepEvents) -> None:
        """Account for one step."""
        self.collisions.extend(events.collisions)
        for d in events.departures:
            self._departures[d.slot] = d
            self._ensure(d.slot + 1)
        for a in events.arrivals:
            self._arrival_s[a.slot] = a.time_s
        if not len(world):
            return
        slot, lane = world.slot, world.lane
        prev = self._prev_lane[slot]
        changed = prev != lane
        moved = changed & (prev != _NO_LANE)
        if self._continues is not None:
            edge = world.edge
            prev_edge = self._prev_edge[slot]
            crossed = (prev_edge != edge) & (prev != _NO_LANE)
            if crossed.any():  # onto the next edge: a lane change unless a connection leads there
                moved &= ~crossed
                off = self._edge_offset
                for row in np.flatnonzero(crossed).tolist():
                    a, b = int(prev_edge[row]), int(edge[row])
                    moved[row] = (a, int(prev[row]) - off[a], b, int(lane[row]) - off[b]) not in self._continues
            self._prev_edge[slot] = edge
        if changed.any() or moved.any():
            for row in np.flatnonzero(moved).tolist():
                self.lane_changes.append(
                    LaneChange(
                        time_s=world.time_s,
                        vehicle_id=str(world.ids[row]),
                        vehicle_type=world.type_names[world.type_index[row]],
                        is_cav=bool(world.is_cav[row]),
                        controlled=bool(world.controlled[row]),
                        from_lane=int(prev[row]),
                        to_lane=int(lane[row]),
                        x_m=float(world.x_m[row]),
                        speed_mps=float(world.speed_mps[row]),
                    )
                )
            self._prev_lane[slot] = lane
        accel = world.accel_mps2
        self._energy[slot] += accel * accel * self._half_dt
        braking = accel < self._hard_braking_mps2[world.type_index]
        if world.time_s > self.warmup_s + 1e-9:
            if braking.any():
                self._hard_braking += int(np.count_nonzero(braking & ~self._braking[slot]))
            self._speed_sum += float(world.speed_mps.sum())
            self._vehicle_steps += len(world)
            if self.network.external is not None:
                edges = len(self._edge_steps)
                self._edge_speed_sum += np.bincount(world.edge, weights=world.speed_mps, minlength=edges)
                self._edge_steps += np.bincount(world.edge, minlength=edges)
            if world.controlled.any():
                self._observe_controlled(world)
        self._braking[slot] = braking

    def _observe_controlled(self, world: WorldState) -> None:
        lead = world.leader_row
        rows = np.flatnonzero(world.controlled & (lead >= 0))
        if not len(rows):
            return
        ahead = lead[rows]
        gap = world.gap_m(rows, ahead)
        closing = world.speed_mps[rows] - world.speed_mps[ahead]
        self._min_gap_controlled_m = min(self._min_gap_controlled_m, float(gap.min()))
        if self.safe_gap is not None:
            slack = gap - self.safe_gap.gap_m(world.speed_mps[rows])
            self._min_slack_controlled_m = min(self._min_slack_controlled_m, float(slack.min()))
        self._critical_ttc_steps += int(np.count_nonzero((closing > 0) & (gap < CRITICAL_TTC_S * closing)))

    def finish(self, detector_output: Path, end_s: float) -> dict:
        """The metrics of the run up to `end_s` (the time of its last step), as a JSON-ready mapping."""
        window_s = end_s - self.warmup_s
        specs = self.scenario.demand.vehicle_types
        collided = {c.collider for c in self.collisions} | {c.victim for c in self.collisions}
        trips = []
        for slot, dep in self._departures.items():
            arrived = self._arrival_s.get(slot)
            if arrived is None or dep.time_s < self.warmup_s or dep.vehicle_id in collided:
                continue
            spec = specs[dep.type_name]
            route, start_m = self.route_edges.get(slot, (dep.route, 0.0))
            free = self.network.route_free_flow_time_s(route, dep.speed_factor, spec.max_speed_mps, start_m)
            trips.append((arrived - dep.time_s, free, float(self._energy[slot]), spec.kind == "cav"))
        tt = np.array([t[0] for t in trips])
        ff = np.array([t[1] for t in trips])
        energy = np.array([t[2] for t in trips])
        cav = np.array([t[3] for t in trips], dtype=bool)
        after = [c for c in self.lane_changes if c.time_s > self.warmup_s + 1e-9]
        per_edge = {}
        if self.network.external is not None:
            per_edge = {"per_edge": {
                e.id: {"mean_speed_mps": self._edge_speed_sum[k] / n if n else math.nan,
                       "vehicle_hours": n * self.dt / 3600}
                for k, (e, n) in enumerate(zip(self.network.edges, self._edge_steps.tolist(), strict=True))
                if not e.internal
            }}  # fmt: skip
        return {
            **throughput(detector_output, self.network, self.warmup_s, end_s),
            "mean_speed_mps": self._speed_sum / self._vehicle_steps if self._vehicle_steps else math.nan,
            "vehicle_hours": self._vehicle_steps * self.dt / 3600,
            "trips_completed": len(trips),
            "mean_travel_time_s": _mean(tt),
            "mean_delay_s": _mean(tt - ff),
            "lane_changes": len(after),
            "lane_changes_per_hour": len(after) * 3600 / window_s,
            "lane_changes_cav": sum(c.is_cav for c in after),
            "collisions": sum(c.time_s > self.warmup_s + 1e-9 for c in self.collisions),
            "hard_braking_events": self._hard_braking,
            "min_gap_controlled_m": self._min_gap_controlled_m
            if math.isfinite(self._min_gap_controlled_m)
            else math.nan,
            "min_safe_gap_slack_controlled_m": self._min_slack_controlled_m
            if math.isfinite(self._min_slack_controlled_m)
            else math.nan,
            "critical_ttc_controlled_s": self._critical_ttc_steps * self.dt,
            "control_energy_per_trip_m2ps3": _mean(energy),
            "control_energy_per_trip_cav_m2ps3": _mean(energy[cav]),
            "control_energy_per_trip_hdv_m2ps3": _mean(energy[~cav]),
            **per_edge,
        }

    def lane_change_rows(self) -> list[dict]:
        return [asdict(c) for c in self.lane_changes]


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else math.nan


def throughput(detector_output: Path, network: Network, start_s: float, end_s: float) -> dict:
    """Flow through each induction loop between `start_s` and `end_s`, in veh/h.

    Counts vehicles whose front entered a loop (E1 `nVehEntered`), per road lane; the
    headline figure is the most downstream measurement point. On an external network every point
    is on one edge, and the headline figure is their sum (by default: the flow out of the exits).
    """
    counts: dict[str, int] = {}
    for _, node in ET.iterparse(detector_output):
        if node.tag == "interval" and float(node.get("begin")) >= start_s - 1e-6:
            counts[node.get("id")] = counts.get(node.get("id"), 0) + int(node.get("nVehEntered"))
        node.clear()
    hours = (end_s - start_s) / 3600
    if network.external is not None:
        return _edge_throughput(counts, network, hours)
    points: dict[float, dict[int, float]] = {}
    for det in network.detectors:
        points.setdefault(det.x_m, {})[det.lane] = counts.get(det.id, 0) / hours
    by_point = [
        {"x_m": x, "throughput_vph": sum(lanes.values()), "per_lane_vph": {str(k): v for k, v in lanes.items()}}
        for x, lanes in sorted(points.items())
    ]
    last = by_point[-1]
    return {
        "throughput_vph": last["throughput_vph"],
        "throughput_per_lane_vph": last["per_lane_vph"],
        "detectors": by_point,
    }


def _edge_throughput(counts: dict[str, int], network: Network, hours: float) -> dict:
    """Throughput at the measurement points of an external network, each on one edge."""
    points: dict[tuple[str, float], dict[int, float]] = {}
    for det in network.detectors:
        points.setdefault((det.edge, det.x_m), {})[det.lane] = points.get((det.edge, det.x_m), {}).get(
            det.lane, 0.0) + counts.get(det.id, 0) / hours  # fmt: skip
    by_point = [
        {
            "edge": edge,
            "x_m": x,
            "throughput_vph": sum(lanes.values()),
            "per_lane_vph": {str(k): v for k, v in lanes.items()},
        }
        for (edge, x), lanes in points.items()
    ]
    per_edge: dict[str, float] = {}
    for point in by_point:
        per_edge[point["edge"]] = per_edge.get(point["edge"], 0.0) + point["throughput_vph"]
    return {
        "throughput_vph": sum(p["throughput_vph"] for p in by_point),
        "throughput_per_lane_vph": {},
        "throughput_per_edge_vph": per_edge,
        "detectors": by_point,
    }
