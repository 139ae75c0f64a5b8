"""The safety filter applied to every commanded acceleration: a bound from the measured leader."""

from __future__ import annotations

import math

from cavlab.controllers.cooperative.params import CooperativeParams
from cavlab.controllers.cooperative.snapshot import Lanes
from cavlab.world import WorldState


def safe_accel(row: int, world: WorldState, lanes: Lanes, params: CooperativeParams) -> float:
    """An upper bound on a controlled vehicle's acceleration from its measured leader.

    Inactive (+∞) while gap − (φv + δ) covers the distance needed to shed the closing speed at
    the comfortable rate, (v − v_lead)²/(2|u_min|). Otherwise the follow law
    k_g·(gap − φv − δ) + k_v·(v_lead − v) (k_g = 0.5 s⁻², k_v = 1 s⁻¹), no harder than u_min
    unless stopping the closing before the standstill gap needs more,
    a_stop = (v − v_lead)²/(2·(gap − δ)), which is then applied (down to 2·u_min).
    """
    lead = lanes.leader(row)
    if lead is None:
        return math.inf
    v, v_lead = float(world.speed_mps[row]), float(world.speed_mps[lead])
    gap = float(world.x_m[lead] - world.length_m[lead] - world.x_m[row])
    slack = gap - params.headway.gap_m(v)
    closing = max(0.0, v - v_lead)
    if slack - closing**2 / (2 * -params.u_min_mps2) >= 0:
        return math.inf
    a_stop = closing**2 / (2 * max(gap - params.standstill_gap_m, 0.5))
    follow = 0.5 * slack + 1.0 * (v_lead - v)
    if a_stop <= -params.u_min_mps2:
        return max(params.u_min_mps2, min(follow, -a_stop))
    return max(2 * params.u_min_mps2, -a_stop)
