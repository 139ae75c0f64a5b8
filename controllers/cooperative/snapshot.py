"""The planner's view of the world at the planning time: `Vehicle` states and `Lanes`, the vehicles
of each road lane sorted by position for neighbour queries."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cavlab.controllers.base import ControlSetup
from cavlab.controllers.longitudinal import Arc
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

    def cruise(self, t0_s: float) -> Arc:
        return Arc.cruise(t0_s, self.x_m, self.v_mps)


class Lanes:
    """The vehicles of each road lane, sorted by position, for neighbour queries."""

    def __init__(self, world: WorldState) -> None:
        self.world = world
        order = world.lane_order
        cuts = np.flatnonzero(np.diff(world.lane[order])) + 1
        self.rows = {int(world.lane[g[0]]): g for g in np.split(order, cuts) if len(g)}
        self.row_of = {vid: i for i, vid in enumerate(world.ids.tolist())}

    def vehicle(self, row: int) -> Vehicle:
        w = self.world
        return Vehicle(
            str(w.ids[row]), float(w.x_m[row]), float(w.speed_mps[row]), float(w.length_m[row]),
            int(w.lane[row]), bool(w.is_cav[row]),
        )  # fmt: skip

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
