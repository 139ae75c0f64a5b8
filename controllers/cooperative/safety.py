"""The safety filter applied to every commanded acceleration: a bound from the measured leader."""

from __future__ import annotations

import math

from cavlab.controllers.cooperative.params import CooperativeParams
from cavlab.controllers.cooperative.snapshot import Lanes, lane_end_ahead
from cavlab.controllers.longitudinal import Headway
from cavlab.world import WorldState

BARRIER_RATE_PER_S = 1.0
"""κ of the discrete barrier condition h' ≥ (1 − κΔt)·h: a follower closes in on its safe gap no faster
than h decays at this rate (h → 0 smoothly instead of at u_max up to h = 0, where a one-step
deceleration of the leader then forces hard braking), and a barrier already broken (a cut-in)
recovers at least this fast, braking harder than |u_min| only when that is needed to avoid a
collision."""
MIN_GAP_M = 1.0
"""The least gap braking at |u_min| must keep before the filter may brake harder (up to 2·|u_min|)."""


def safe_accel(row: int, world: WorldState, lanes: Lanes, params: CooperativeParams, dt_s: float,
               lane_ends_m: dict[tuple[int, int], float] | None = None, also_behind: tuple[int, ...] = ()
               ) -> float:  # fmt: skip
    """An upper bound on a controlled vehicle's acceleration from its measured leader (`barrier_accel`),
    and from the vehicles of `also_behind` (rows ahead of it in the other lane of a lane change under
    way, which it is behind already), and, where its lane ends, from the end: stop δ short of it,
    braking only once that needs 2·|u_min| (an emergency: a planned lane change leaves before that,
    the planner's `_end_line`), a = −v²/(2·(x_end − x − δ))."""
    x, v = float(world.x_m[row]), float(world.speed_mps[row])
    bound = math.inf
    lead = lanes.leader(row)
    for ahead in also_behind if lead is None else (lead, *also_behind):
        gap = float(world.x_m[ahead] - world.length_m[ahead]) - x
        v_lead, a_lead = float(world.speed_mps[ahead]), min(0.0, float(world.accel_mps2[ahead]))
        bound = min(bound, barrier_accel(gap, v, v_lead, a_lead, params, dt_s))
    end_m = lane_end_ahead(lane_ends_m, world, row)
    if end_m is not None:
        room = end_m - x - params.standstill_gap_m
        if room < v * v / (4 * -params.u_min_mps2):
            bound = min(bound, -v * v / (2 * max(room, 0.5)))
    return bound


def barrier(gap_m: float, v_mps: float, v_lead_mps: float, params: CooperativeParams) -> float:
    """h = gap − (φv + δ) − max(0, v − v_L)²/(2|u_min|): the safe-gap slack less what shedding the
    closing speed at the comfortable rate uses up. h ≥ 0 keeps the slack ≥ 0 behind a leader that
    does not brake harder than it does now."""
    closing = max(0.0, v_mps - v_lead_mps)
    return gap_m - params.headway.gap_m(v_mps) - closing * closing / (2 * -params.u_min_mps2)


def sumo_safe_speed(gap_m: float, v_lead_mps: float, headway: Headway, brake_mps2: float) -> float:
    """The speed SUMO's Krauss driver takes at once behind a leader (braking harder than its decel if it
    must): v_safe = −τb + √((τb)² + v_L² + 2b·max(0, gap − minGap)), τ and minGap its type's (`headway`)."""
    tau_b = headway.reaction_time_s * brake_mps2
    return -tau_b + math.sqrt(tau_b * tau_b + v_lead_mps * v_lead_mps
                              + 2 * brake_mps2 * max(0.0, gap_m - headway.standstill_m))  # fmt: skip


def barrier_accel(gap_m: float, v_mps: float, v_lead_mps: float, a_lead_mps2: float, params: CooperativeParams,
                  dt_s: float) -> float:  # fmt: skip
    """The largest acceleration a over the next step Δt that keeps the barrier h (`barrier`) at
    h' ≥ H = (1 − κΔt)·h (`BARRIER_RATE_PER_S`); +∞ where u_max does.
    Never below u_min while braking at |u_min| still sheds the closing speed before the gap falls to
    MIN_GAP_M (`_room_at_u_min`: a broken barrier then recovers at the comfortable rate, as a driver
    lets a vehicle that cut in pull away), else never below 2·u_min (an emergency). Ballistic step,
    the leader at its measured deceleration a_L:

        h'(a) = A − B·a − max(0, c + a·Δt)²/(2b),   b = |u_min|, B = Δt²/2 + φΔt, c = v − v_L − a_LΔt,
        A = gap + (v_L − v)Δt + a_LΔt²/2 − φv − δ,

    strictly decreasing in a: the bound is the root of h'(a) = H, on the closing branch the larger
    root of (Δt²/2b)·a² + (cΔt/b + B)·a + c²/(2b) + H − A = 0."""
    p, b, phi = params, -params.u_min_mps2, params.reaction_time_s
    h = barrier(gap_m, v_mps, v_lead_mps, p)
    target = (1 - BARRIER_RATE_PER_S * dt_s) * h
    A = gap_m + (v_lead_mps - v_mps) * dt_s + a_lead_mps2 * dt_s * dt_s / 2 - phi * v_mps - p.standstill_gap_m
    B = dt_s * dt_s / 2 + phi * dt_s
    c = v_mps - v_lead_mps - a_lead_mps2 * dt_s

    def h_next(a: float) -> float:
        return A - B * a - max(0.0, c + a * dt_s) ** 2 / (2 * b)

    if h_next(p.u_max_mps2) >= target:
        return math.inf
    floor = p.u_min_mps2 if _room_at_u_min(gap_m, v_mps, v_lead_mps, a_lead_mps2, p) else 2 * p.u_min_mps2
    if h_next(floor) <= target:
        return floor
    a = (A - target) / B  # the branch without closing
    if c + a * dt_s > 0:
        k, m, n = dt_s * dt_s / (2 * b), c * dt_s / b + B, c * c / (2 * b) + target - A
        a = (-m + math.sqrt(max(m * m - 4 * k * n, 0.0))) / (2 * k)
    return max(floor, a)


def _room_at_u_min(gap_m: float, v_mps: float, v_lead_mps: float, a_lead_mps2: float,
                   params: CooperativeParams) -> bool:  # fmt: skip
    """Whether braking at |u_min| sheds the closing speed c = v − v_L before the gap falls to MIN_GAP_M,
    the leader keeping its measured deceleration a_L: gap − MIN_GAP_M ≥ c²/(2(|u_min| + a_L))."""
    relative = -params.u_min_mps2 + min(0.0, a_lead_mps2)
    closing = max(0.0, v_mps - v_lead_mps)
    return relative > 0 and gap_m - MIN_GAP_M >= closing * closing / (2 * relative)
