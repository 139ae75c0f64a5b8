"""The shared data types of one simulation step: `WorldState` and the controller commands.

Coordinates are global along the mainline: `x_m` is the front bumper's distance from the
mainline start (ramp positions are counted so that the ramp ends where the acceleration
lane begins), and `lane` is the road lane index — 0 is the rightmost mainline lane, −1 an
on-ramp or acceleration lane. Controllers and perception see only these types, never SUMO.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np


@dataclass(frozen=True, eq=False)
class WorldState:
    """Every vehicle in the network at `time_s`, one row per vehicle.

    Rows are grouped by SUMO lane and ordered by position within a lane. `slot` is a
    per-run vehicle number (stable while the vehicle is in the network, never reused), for
    indexing per-vehicle tables. Acceleration is the one applied during the last step,
    u_k = (v_k − v_{k−1}) / Δt, which is exact under SUMO's ballistic update.
    """

    time_s: float
    ids: np.ndarray  # str, (n,)
    slot: np.ndarray  # int64, (n,)
    type_index: np.ndarray  # int16 index into `type_names`
    is_cav: np.ndarray  # bool
    controlled: np.ndarray  # bool: a controller holds this vehicle
    edge: np.ndarray  # int16 index into `edge_names`
    lane: np.ndarray  # int16 road lane index (0 = rightmost mainline lane, −1 = ramp)
    x_m: np.ndarray  # float64 front bumper, global
    speed_mps: np.ndarray
    accel_mps2: np.ndarray
    length_m: np.ndarray
    type_names: tuple[str, ...] = field(repr=False)
    edge_names: tuple[str, ...] = field(repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, vehicle_id: str) -> int:
        """Row of a vehicle, or −1 if it is not in the network."""
        hits = np.flatnonzero(self.ids == vehicle_id)
        return int(hits[0]) if len(hits) else -1

    # --------------------------------------------------------------------- leaders (computed once per world)
    # `cached_property` stores into the instance __dict__, which the frozen dataclass allows; a copy made by
    # `dataclasses.replace` is a new instance and computes its own. The cached arrays are read-only.

    @cached_property
    def lane_order(self) -> np.ndarray:
        """The rows sorted by lane, then by position `x_m`; equal positions in a lane keep row order."""
        order = np.lexsort((self.x_m, self.lane))
        order.setflags(write=False)
        return order

    @cached_property
    def leader_row(self) -> np.ndarray:
        """Per row, its leader: the row after it in `lane_order` if that one is in the same lane, else −1.

        A vehicle at exactly the same position in the same lane and a higher row counts as ahead (the
        gap to it is minus its length); `leader_ahead_row` skips such ties."""
        order = self.lane_order
        lead = np.full(len(self), -1, dtype=np.int64)
        same = self.lane[order[1:]] == self.lane[order[:-1]]
        lead[order[:-1][same]] = order[1:][same]
        lead.setflags(write=False)
        return lead

    @cached_property
    def leader_ahead_row(self) -> np.ndarray:
        """Per row, the nearest vehicle strictly ahead (larger `x_m`) in the same lane, the lowest row
        among vehicles at the same position; −1 where there is none."""
        order = self.lane_order
        lane, x = self.lane[order], self.x_m[order]
        first = np.ones(len(order), dtype=bool)  # the first of a group of equal (lane, x)
        first[1:] = (lane[1:] != lane[:-1]) | (x[1:] != x[:-1])
        starts = np.flatnonzero(first)
        nxt = np.append(starts[1:], len(order))[np.cumsum(first) - 1]  # where the next group starts
        ok = nxt < len(order)
        ok[ok] = lane[nxt[ok]] == lane[ok]
        lead = np.full(len(self), -1, dtype=np.int64)
        lead[order[ok]] = order[nxt[ok]]
        lead.setflags(write=False)
        return lead

    def gap_m(self, rows: np.ndarray | int, ahead: np.ndarray | int) -> np.ndarray:
        """Bumper-to-bumper gap from `rows` to `ahead` (e.g. their `leader_row`): x_ahead − L_ahead − x."""
        return self.x_m[ahead] - self.length_m[ahead] - self.x_m[rows]


@dataclass(frozen=True)
class Departure:
    """A vehicle that entered the network in the last step."""

    vehicle_id: str
    slot: int
    type_name: str
    route: str
    speed_factor: float
    time_s: float


@dataclass(frozen=True)
class Arrival:
    """A vehicle that left the network (or was removed after a collision) in the last step."""

    vehicle_id: str
    slot: int
    time_s: float


@dataclass(frozen=True)
class StepEvents:
    """What happened during the last step, besides the vehicles' motion."""

    departures: tuple[Departure, ...] = ()
    arrivals: tuple[Arrival, ...] = ()
    collisions: tuple[Collision, ...] = ()


@dataclass(frozen=True)
class Collision:
    """A collision SUMO detected (gap below zero: `collision.mingap-factor` is 0)."""

    time_s: float
    collider: str
    victim: str
    kind: str
    lane_id: str
    position_m: float


# ----------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class Accelerate:
    """Apply `accel_mps2` during the next step (v_{k+1} = v_k + u·Δt under the ballistic update)."""

    vehicle_id: str
    accel_mps2: float


@dataclass(frozen=True)
class SetSpeed:
    """Drive at `speed_mps` from the next step on, until another command or `Release`."""

    vehicle_id: str
    speed_mps: float


@dataclass(frozen=True)
class CapSpeed:
    """Leave the vehicle to SUMO's driver models (safe speed, lane changes) but drive no faster than
    `speed_mps` (nor its own desired speed) from the next step on; `math.inf` lifts the cap, as `Release` does."""

    vehicle_id: str
    speed_mps: float


@dataclass(frozen=True)
class ChangeLane:
    """Move to road lane `lane`; SUMO keeps this target for `hold_s` seconds."""

    vehicle_id: str
    lane: int
    hold_s: float = 5.0


@dataclass(frozen=True)
class HoldLane:
    """Keep the vehicle in its lane (the controller's lane-change mode, a lane change SUMO has begun
    is finished), its speed still SUMO's: a controller claims a CAV before planning for it."""

    vehicle_id: str


@dataclass(frozen=True)
class Release:
    """Hand the vehicle back to SUMO's driver models (default speed and lane-change modes)."""

    vehicle_id: str


Command = Accelerate | SetSpeed | CapSpeed | ChangeLane | HoldLane | Release


@dataclass(frozen=True)
class ControlModes:
    """SUMO speed and lane-change modes a controller wants on the CAVs.

    `speed_mode`/`lane_change_mode` are set when a controller first commands a vehicle: by
    default SUMO's own checks are off (32) and LC2013 makes no lane change on its own (0), so
    the controller's plan is executed exactly and the controller is responsible for safety.
    `idle_*` are set on every CAV when it enters and restored by `Release`: SUMO's defaults
    (31, 1621) unless the controller wants, say, CAVs that change lanes only when told to.
    """

    speed_mode: int = 32
    lane_change_mode: int = 0
    idle_speed_mode: int = 31
    idle_lane_change_mode: int = 1621


SUMO_DEFAULT_MODES = ControlModes(speed_mode=31, lane_change_mode=1621)
