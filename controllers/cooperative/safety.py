"""The safety filter applied to every commanded acceleration: a bound from the measured leader."""

from __future__ import annotations

import math

from cavlab.controllers.cooperative.params import CooperativeParams
from cavlab.controllers.cooperative.snapshot import Lanes
from cavlab.world import WorldState


def safe_accel(row: int, world: WorldState, lanes: Lanes, params: CooperativeParams,
               lane_ends_m: dict[int, float] | None = None) -> float:  # fmt: skip
    """An upper bound on a controlled vehicle's acceleration from its measured leader and, where its
    lane ends, from the end: stop δ short of it, braking only once that needs 2·|u_min| (an
    emergency: a planned lane change leaves before that, the planner's `_end_line`),
    a = −v²/(2·(x_end − x − δ)).

    Inactive (+∞) while gap − (φv + δ) covers the distance needed to shed the closing speed at
    the comfortable rate, (v − v_lead)²/(2|u_min|). Otherwise the follow law
    k_g·(gap − φv − δ) + k_v·(v_lead − v) (k_g = 0.5 s⁻², k_v = 1 s⁻¹), no harder than u_min
    unless stopping the closing before the standstill gap needs more,
    a_stop = (v − v_lead)²/(2·(gap − δ)), which is then applied (down to 2·u_min).
    """
    lead = lanes.leader(row)
    x, v = float(world.x_m[row]), float(world.speed_mps[row])
    bound = math.inf
    if lead is not None:
        gap = float(world.x_m[lead] - world.length_m[lead]) - x
        bound = _behind_leader(gap, v, float(world.speed_mps[lead]), params)
    end_m = (lane_ends_m or {}).get(int(world.lane[row]))
    if end_m is not None and end_m > x:
        room = end_m - x - params.standstill_gap_m
        if room < v * v / (4 * -params.u_min_mps2):
            bound = min(bound, -v * v / (2 * max(room, 0.5)))
    return bound


def _behind_leader(gap: float, v: float, v_lead: float, params: CooperativeParams) -> float:
    slack = gap - params.headway.gap_m(v)
    closing = max(0.0, v - v_lead)
    if slack - closing**2 / (2 * -params.u_min_mps2) >= 0:
        return math.inf
    a_stop = closing**2 / (2 * max(gap - params.standstill_gap_m, 0.5))
    follow = 0.5 * slack + 1.0 * (v_lead - v)
    if a_stop <= -params.u_min_mps2:
        return max(params.u_min_mps2, min(follow, -a_stop))
    return max(2 * params.u_min_mps2, -a_stop)
