"""The zipper before a lane's end: the CAVs near the end of an ending lane and beside it in the lane it
merges into keep a safe distance to the vehicle ahead of them in *either* lane (their virtual leader),
so that every vehicle of the ending lane arrives at the end with its gap in the target lane open."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cavlab.controllers.base import ControlSetup
from cavlab.controllers.cooperative.params import CooperativeParams
from cavlab.controllers.cooperative.snapshot import Lanes, continuing_lane

LEADER_REACH_M = 150.0  # virtual leaders are looked for this far beyond the zone
STANDING_MPS = 0.1  # a vehicle this slow stands: one short of its gap behind it in the other lane goes first


@dataclass(frozen=True, order=True)
class Merge:
    """A lane that ends at `end_m` and the lane its vehicles merge into."""

    end_m: float
    ending_lane: int
    target_lane: int


def merges(setup: ControlSetup) -> list[Merge]:
    """The road's lane ends, each with the neighbour lane that runs on past it (left first)."""
    found = set()
    for (edge, lane), end_m in setup.lane_ends_m.items():
        target = continuing_lane(setup, edge, lane, end_m)
        if target is not None:
            found.add(Merge(end_m, lane, target))
    return sorted(found)


def zipper_caps(lanes: Lanes, merge: Merge, params: CooperativeParams, setup: ControlSetup,
                free: np.ndarray) -> dict[int, float]:  # fmt: skip
    """Row → speed cap of the CAVs (`free`: those the controller may cap) in [end − zone, end] of both
    lanes: Krauss' safe speed behind their virtual leader l, the nearest vehicle ahead in either lane but a
    standing one in the other lane that they are already short of their gap to (g < 0: waiting behind it
    could never open the gap it needs to change lanes, so they go first),
    v_cap = v_l + (g − φv_l) / ((v + v_l)/(2b) + φ), g = x_l − L_l − x − δ, b = |u_min|, with φ and δ
    SUMO's own tau and minGap of the vehicle's type (those its lane-change model checks a gap with)."""
    w, start = lanes.world, merge.end_m - params.zipper_zone_m
    rows = np.concatenate([lanes.near(merge.ending_lane, start, merge.end_m),
                           lanes.near(merge.target_lane, start, merge.end_m + LEADER_REACH_M)])  # fmt: skip
    order = rows[np.argsort(-w.x_m[rows], kind="stable")].tolist()
    headways = [setup.sumo_headways.get(name, params.headway) for name in w.type_names]
    b = -params.u_min_mps2
    caps: dict[int, float] = {}
    for i, row in enumerate(order):
        if not free[row] or w.x_m[row] > merge.end_m:
            continue
        h = headways[w.type_index[row]]
        for lead in (order[k] for k in range(i - 1, -1, -1)):
            gap = w.x_m[lead] - w.length_m[lead] - w.x_m[row] - h.standstill_m
            if w.lane[lead] == w.lane[row] or gap >= 0 or w.speed_mps[lead] > STANDING_MPS:
                v, v_l = w.speed_mps[row], w.speed_mps[lead]
                cap = v_l + (gap - h.reaction_time_s * v_l) / ((v + v_l) / (2 * b) + h.reaction_time_s)
                caps[row] = max(float(cap), 0.0)
                break
    return caps
