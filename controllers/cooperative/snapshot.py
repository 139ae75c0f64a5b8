"""The planner's view of the world at the planning time: `Vehicle` states and `Lanes`, the vehicles
of each road lane sorted by position for neighbour queries."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cavlab.controllers.base import ControlSetup
from cavlab.controllers.longitudinal import Arc, Headway
from cavlab.world import WorldState


@dataclass(frozen=True)
class Vehicle:
    """One vehicle's state at the planning time."""

    id: str
    x_m: float
    v_mps: float
    length_m: float
    lane: int
    is_cav: bool
    brake_mps2: float = 0.0  # predicted braking for a slower leader (`CarFollowing`), for brake_s
    brake_s: float = 0.0

    def predicted(self, t0_s: float) -> Arc:
        """Where the vehicle will be if nothing commands it: braking at `brake_mps2` for `brake_s`, then
        cruising (a cruise when it closes on no one)."""
        return Arc(t0_s, self.brake_s, self.x_m, self.v_mps, -self.brake_mps2, 0.0)

    @property
    def v_settled_mps(self) -> float:
        """The speed it settles at: a lower bound of its predicted speed, so x0 + v_settled·t bounds its
        predicted position from below (a cruising leader the QPs can take)."""
        return self.v_mps - self.brake_mps2 * self.brake_s


@dataclass(frozen=True)
class CarFollowing:
    """SUMO's car following as the planner predicts it: a vehicle that SUMO drives, closing on a slower
    leader (taken to cruise at v_l), brakes at the constant a that brings it to v_l exactly at its type's
    safe gap φv_l + δ, a = (v − v_l)² / (2(g − φv_l − δ)), at most b, for t_b = (v − v_l)/a
    (g the bumper gap, φ and δ its SUMO tau and minGap); one that closes on no one cruises."""

    headways: dict[str, Headway]  # per vehicle type name, SUMO's tau and minGap
    default: Headway  # for types SUMO's headway is not known of
    max_brake_mps2: float  # b

    def braking(self, gap_m: float, v_mps: float, v_lead_mps: float, type_name: str) -> tuple[float, float]:
        """(a, t_b) of a vehicle at `v_mps` with `gap_m` to a leader at `v_lead_mps`; (0, 0) if not closing."""
        closing = v_mps - v_lead_mps
        if closing <= 0:
            return 0.0, 0.0
        h = self.headways.get(type_name, self.default)
        room = gap_m - h.gap_m(v_lead_mps)
        a = self.max_brake_mps2 if room <= 0 else min(closing * closing / (2 * room), self.max_brake_mps2)
        return a, closing / a


class Lanes:
    """The vehicles of each road lane, sorted by position, for neighbour queries."""

    def __init__(self, world: WorldState, following: CarFollowing | None = None) -> None:
        self.world = world
        self.following = following  # None: every vehicle is predicted to cruise
        self._vehicles: dict[int, Vehicle] = {}  # built once per row and snapshot
        order = world.lane_order
        cuts = np.flatnonzero(np.diff(world.lane[order])) + 1
        self.rows = {int(world.lane[g[0]]): g for g in np.split(order, cuts) if len(g)}
        self.row_of = {vid: i for i, vid in enumerate(world.ids.tolist())}

    def vehicle(self, row: int) -> Vehicle:
        """The row's vehicle, with its predicted braking when SUMO drives it (`CarFollowing`; the
        vehicles the controller commands follow their plans and are taken to cruise)."""
        if row in self._vehicles:
            return self._vehicles[row]
        w = self.world
        brake = (0.0, 0.0)
        lead = int(w.leader_row[row])
        if self.following is not None and lead >= 0 and not w.controlled[row]:
            gap = float(w.x_m[lead] - w.length_m[lead] - w.x_m[row])
            name = w.type_names[w.type_index[row]]
            brake = self.following.braking(gap, float(w.speed_mps[row]), float(w.speed_mps[lead]), name)
        vehicle = self._vehicles[row] = Vehicle(
            str(w.ids[row]), float(w.x_m[row]), float(w.speed_mps[row]), float(w.length_m[row]),
            int(w.lane[row]), bool(w.is_cav[row]), *brake,
        )  # fmt: skip
        return vehicle

    def leader(self, row: int) -> int | None:
        lead = int(self.world.leader_row[row])
        return lead if lead >= 0 else None

    def in_lane(self, lane: int) -> np.ndarray:
        return self.rows.get(lane, np.zeros(0, dtype=np.int64))

    def near(self, lane: int, x_from: float, x_to: float) -> np.ndarray:
        """The rows of the lane's vehicles with x_from ≤ x ≤ x_to."""
        rows = self.in_lane(lane)
        x = self.world.x_m[rows]
        return rows[(x >= x_from) & (x <= x_to)]

    def mean_speed(self, lane: int, x_from: float, x_to: float) -> float | None:
        near = self.near(lane, x_from, x_to)
        return float(self.world.speed_mps[near].mean()) if len(near) else None

    def beside(self, row: int, lane: int) -> tuple[int | None, int | None]:
        """The rows of `lane`'s nearest vehicle with x ≥ the row's x (front) and nearest with x below it (rear)."""
        rows = self.in_lane(lane)
        k = int(np.searchsorted(self.world.x_m[rows], self.world.x_m[row]))
        return (int(rows[k]) if k < len(rows) else None), (int(rows[k - 1]) if k > 0 else None)


def lane_end_ahead(lane_ends_m: dict[tuple[int, int], float] | None, world: WorldState, row: int) -> float | None:
    """Where the vehicle's lane ends ahead of it (`ControlSetup.lane_ends_m`), if it does."""
    end_m = (lane_ends_m or {}).get((int(world.edge[row]), int(world.lane[row])))
    return end_m if end_m is not None and end_m > world.x_m[row] else None


def on_edge(setup: ControlSetup, edge: int, lane: int) -> bool:
    """Whether road lane `lane` exists on edge `edge` (a vehicle there could change into it)."""
    if not setup.edge_lanes:
        return 0 <= lane < setup.lanes
    lo, hi = setup.edge_lanes[edge]
    return lo <= lane <= hi


def continuing_lane(setup: ControlSetup, edge: int, lane: int, end_m: float) -> int | None:
    """The neighbour of `lane` on `edge` that runs on past `end_m`, where `lane` ends (left first)."""
    for target in (lane + 1, lane - 1):
        if on_edge(setup, edge, target) and setup.lane_ends_m.get((edge, target), math.inf) > end_m:
            return target
    return None
