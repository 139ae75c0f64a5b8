"""Planning one lane-change request on a snapshot: C's plan, the candidate slots, the cooperators'
plans, the disruption test and the relaxation T ← λT (docs/theory.md)."""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cavlab.controllers.base import ControlSetup
from cavlab.controllers.cooperative.params import CooperativeParams
from cavlab.controllers.cooperative.safety import barrier
from cavlab.controllers.cooperative.snapshot import Lanes, Vehicle
from cavlab.controllers.longitudinal import (
    Arc,
    fixed_state_arc,
    min_slack,
    position_range,
    reachable,
    terminal_speed_arc,
    time_energy_duration,
)
from cavlab.controllers.ocp import FixedTimeQP, FreeTimeNLP, Profile

Plan = Arc | Profile
MAX_INTERVALS = 50  # numeric plans: at most this many piecewise-constant intervals
MIN_REPLAN_S = 1.0  # re-planning stops when less of the longitudinal phase is left
OFF_GRID = "what is left of the plan is off the numeric grid"
SLOT_GONE = ("a vehicle cut into the slot", "the slot's front vehicle left the target lane",
             "the slot's rear vehicle left the target lane")  # fmt: skip
FOLLOWER_BRAKES = "C's follower would have to brake"
BUDGET_SPENT = "solve budget spent"
DISRUPTION_ABOVE = "disruption above D_th"


@dataclass
class CooperatorPlan:
    """A target-lane vehicle of the chosen slot: its plan, and whether it cooperates."""

    vehicle: Vehicle
    role: Literal["front", "rear"]
    plan: Plan
    cooperates: bool
    disruption_position: float = 0.0
    disruption_speed: float = 0.0


@dataclass
class LaneChangePlan:
    """A complete maneuver: C's plan, its slot, the times."""

    changer: Vehicle
    leader: Vehicle | None
    target_lane: int
    changer_plan: Plan
    front: CooperatorPlan | None
    rear: CooperatorPlan | None
    t0_s: float
    duration_s: float  # longitudinal phase T; the lane change is issued at t0 + T
    relaxations: int
    min_slack_m: float
    v_flow_mps: float  # the target lane's flow speed at the request: C's and the cooperators' reference

    @property
    def disruption(self) -> tuple[float, float]:
        parts = [c for c in (self.front, self.rear) if c is not None]
        return sum(c.disruption_position for c in parts), sum(c.disruption_speed for c in parts)

    @property
    def cooperators(self) -> list[CooperatorPlan]:
        return [c for c in (self.front, self.rear) if c is not None and c.cooperates]


@dataclass
class PlanOutcome:
    """What planning one request produced."""

    plan: LaneChangePlan | None
    status: str  # "planned" or "infeasible"
    reason: str
    candidates: int
    solve_time_changer_s: float
    solve_time_slots_s: float
    numeric_solves: int  # QP and NLP solves of this request


def disruption_parts(
    x0: float, v0: float, x_end: float, v_end: float, duration_s: float, params: CooperativeParams
) -> tuple[float, float]:
    """γ_x(x(T) − x0 − v0T)² and γ_v(v(T) − v0)², with γ_x = γ/(Δv_range·t_avg)²,
    γ_v = (1 − γ)/Δv_range², Δv_range = max(|v_max − v0|, |v_min − v0|)."""
    gx, gv = disruption_weights(v0, params)
    return gx * (x_end - x0 - v0 * duration_s) ** 2, gv * (v_end - v0) ** 2


def disruption_weights(v0: float, params: CooperativeParams) -> tuple[float, float]:
    """(γ_x, γ_v) of `disruption_parts` for a vehicle starting at v0."""
    span = max(abs(params.v_max_mps - v0), abs(params.v_min_mps - v0), 1e-6)
    return params.disruption_gamma / (span * params.disruption_time_s) ** 2, (1 - params.disruption_gamma) / span**2


class Planner:
    """Plans one lane-change request on a snapshot; `cooperation=False` gives the selfish baseline."""

    def __init__(self, params: CooperativeParams, setup: ControlSetup, cooperation: bool = True) -> None:
        self.p = params
        self.setup = setup
        self.cooperation = cooperation
        self.dt = setup.step_length_s
        self.t_lat = setup.lane_change_duration_s
        self._qps: dict[int, FixedTimeQP] = {}
        self._nlp = FreeTimeNLP(MAX_INTERVALS)
        self.numeric_solves = 0
        self._end: tuple[str, float, float] | None = None  # the request's `_end_line`

    def _on_grid(self, t: float) -> float:
        """t rounded up to a whole number of numeric-grid intervals, each a whole number of steps,
        so that a numeric plan is executed exactly by SUMO's ballistic update; rounded down
        instead where rounding up would pass max_maneuver_s."""

        def snap(steps_exact: float, rounding) -> float:
            steps = max(1, rounding(steps_exact))
            per_interval = math.ceil(steps / MAX_INTERVALS)
            return max(1, rounding(steps / per_interval)) * per_interval * self.dt

        up = snap(t / self.dt - 1e-9, math.ceil)
        return up if up <= self.p.max_maneuver_s + 1e-9 else snap(self.p.max_maneuver_s / self.dt + 1e-9, math.floor)

    def _qp(self, T: float) -> FixedTimeQP:
        steps = round(T / self.dt)
        n = steps // math.ceil(steps / MAX_INTERVALS)
        if n not in self._qps:
            self._qps[n] = FixedTimeQP(n)
        return self._qps[n]

    def plan(self, lanes: Lanes, changer_row: int, u: Vehicle | None, target_lane: int, busy: set[str],
             lane_end_m: float | None = None) -> PlanOutcome:  # fmt: skip
        """The best valid slot for C (or why there is none) behind its leader `u` (if any), with the lane
        change done before `lane_end_m` where C's lane ends (`_end_line`)."""
        p, t0 = self.p, lanes.world.time_s
        c = lanes.vehicle(changer_row)
        self._end = self._end_line(c, lane_end_m)
        started, solves_before = time.perf_counter(), self.numeric_solves
        v_flow = lanes.mean_speed(target_lane, c.x_m - p.search_behind_m, c.x_m + p.search_ahead_m)
        v_flow = min(v_flow if v_flow is not None else self.setup.speed_limit_mps, p.v_max_mps)
        T0 = self._start_duration(c, u, v_flow, t0) if self.cooperation else p.min_maneuver_s
        changer_time = time.perf_counter() - started
        target = [lanes.vehicle(int(r)) for r in lanes.in_lane(target_lane)]
        valid: dict[tuple[str | None, str | None], LaneChangePlan] = {}
        reasons: set[str] = set()
        candidates, best_disruption = 0, math.inf
        # cooperative: T0·λ^k; selfish: every half second from min_maneuver_s, the least time that fits wins
        times = (
            [T0 * p.relaxation_factor**k for k in range(p.max_relaxations + 1)]
            if self.cooperation
            else list(np.arange(p.min_maneuver_s, p.max_maneuver_s + 1e-9, 0.5))
        )
        previous = 0.0
        for k, T_raw in enumerate(times):
            T = self._on_grid(T_raw)
            if previous + 1e-9 >= T:  # clamped at T_max: nothing longer to try
                reasons.add("T_max reached")
                break
            previous = T
            tick = time.perf_counter()
            c_plan = self._changer_plan(c, u, v_flow, t0, T) if self.cooperation else None
            changer_time += time.perf_counter() - tick
            if self.cooperation and c_plan is None:
                reasons.add("C cannot reach the flow speed behind its leader and before its lane ends")
                continue
            if not self._changer_absorbed(c, c_plan, lanes, t0, T):
                reasons.add(FOLLOWER_BRAKES)
                continue
            probe = c_plan or Arc(t0, T, c.x_m, c.v_mps, (v_flow - c.v_mps) / T, 0.0)
            # branch and bound: the least bound on D first, no slot planned that cannot win (selfish: bound 0)
            ranked = [(self._disruption_bound(c, c_plan, f, r, T) if self.cooperation else 0.0, f, r)
                      for f, r in self._slots(target, probe, t0 + T)]  # fmt: skip
            ranked.sort(key=lambda item: item[0])
            for bound, front, rear in ranked:
                key = (front.id if front else None, rear.id if rear else None)
                if key in valid:
                    continue  # already valid with less relaxation
                if bound > p.max_disruption:
                    reasons.add(DISRUPTION_ABOVE)
                    continue
                if bound > best_disruption + 1e-12:
                    continue  # its disruption cannot be below the best valid slot's
                if self.numeric_solves - solves_before >= p.max_solves_per_request:
                    reasons.add(BUDGET_SPENT)
                    break
                candidates += 1
                plan, why = self._slot_plan(c, u, c_plan, front, rear, v_flow, target_lane, t0, T, k, busy, lanes)
                if plan is None:
                    reasons.add(why)
                    continue
                valid[key] = plan
                best_disruption = min(best_disruption, sum(plan.disruption))
                if not self.cooperation:
                    break  # selfish: the nearest slot at the least time
            if (valid and not self.cooperation) or BUDGET_SPENT in reasons:
                break
        slots_time = time.perf_counter() - started - changer_time
        solves = self.numeric_solves - solves_before
        if not valid:
            reason = "; ".join(sorted(reasons)) or "no slot in range"
            return PlanOutcome(None, "infeasible", reason, candidates, changer_time, slots_time, solves)
        best = min(valid.values(), key=lambda m: (sum(m.disruption), m.duration_s))
        return PlanOutcome(best, "planned", "", candidates, changer_time, slots_time, solves)

    def replan(self, lanes: Lanes, current: LaneChangePlan, busy: set[str], lane_end_m: float | None = None
               ) -> tuple[LaneChangePlan | None, str]:  # fmt: skip
        """The receding-horizon step: the same slot (front and rear by identity) planned again from the
        measured states over what is left of the longitudinal phase, T' = t0 + T − t, behind C's
        measured leader, towards the same flow speed; None with the reason when the slot no longer
        exists (a vehicle cut into it or left it) or has no plan any more. The end time stays: T' must
        lie on the numeric grid (`OFF_GRID` otherwise: try a step later). Less than `MIN_REPLAN_S`
        left: None (the current plan is finished open loop)."""
        t0 = lanes.world.time_s
        left = current.t0_s + current.duration_s - t0
        if left < MIN_REPLAN_S:
            return None, "too little time left to re-plan"
        c_row = lanes.row_of.get(current.changer.id)
        if c_row is None:
            return None, "C left the network"
        c = lanes.vehicle(c_row)
        lead = lanes.leader(c_row)
        u = lanes.vehicle(lead) if lead is not None else None
        self._end = self._end_line(c, lane_end_m)
        front = rear = None
        rows = lanes.in_lane(current.target_lane)
        ids = [str(lanes.world.ids[r]) for r in rows]
        for role, coop in (("front", current.front), ("rear", current.rear)):
            if coop is None:
                continue
            if coop.vehicle.id not in ids:
                return None, f"the slot's {role} vehicle left the target lane"
            veh = lanes.vehicle(int(rows[ids.index(coop.vehicle.id)]))
            front, rear = (veh, rear) if role == "front" else (front, veh)
        if front is not None and rear is not None and ids.index(front.id) != ids.index(rear.id) + 1:
            return None, "a vehicle cut into the slot"
        v_flow = current.v_flow_mps
        T = self._on_grid(left)
        if abs(T - left) > 1e-6:
            return None, OFF_GRID
        c_plan = self._changer_plan(c, u, v_flow, t0, T) if self.cooperation else None
        if self.cooperation and c_plan is None:
            return None, "C cannot reach the flow speed behind its leader and before its lane ends"
        if not self._changer_absorbed(c, c_plan, lanes, t0, T):
            return None, FOLLOWER_BRAKES
        return self._slot_plan(c, u, c_plan, front, rear, v_flow, current.target_lane, t0, T,
                               current.relaxations, busy, lanes)  # fmt: skip

    def _end_line(self, c: Vehicle, lane_end_m: float | None) -> tuple[str, float, float] | None:
        """Where C's lane ends, C must be in the target lane before the end (SUMO moves it across
        half-way through the lateral phase), δ + planning margin short of it, and still able to stop
        there at 2·|u_min| if the slot is not certified: x(T) + (t_lat/2 + v̂/(4|u_min|))·v(T) ≤
        x_end − δ − margin, with v̂ = v_max (v² ≤ v̂·v for 0 ≤ v ≤ v̂), a line in C's end state."""
        if lane_end_m is None:
            return None
        p = self.p
        c_s = self.t_lat / 2 + p.v_max_mps / (4 * -p.u_min_mps2)
        return ("rear", lane_end_m - p.standstill_gap_m - p.planning_margin_m, c_s)

    def _before_end(self, plan: Plan, t_f: float) -> bool:
        if self._end is None:
            return True
        x_T, v_T, _ = plan.state(t_f)
        return x_T + self._end[2] * v_T <= self._end[1] + 1e-3

    def _start_duration(self, c: Vehicle, u: Vehicle | None, v_flow: float, t0: float) -> float:
        """C's time-energy-optimal T* (min ρT + ∫½u² + β_C(v(T) − v_flow)²): the closed form
        |Δv|/√(2ρ) when U is far enough (or absent), else the free-time NLP with the safe gap to U;
        then clamped to [min_maneuver_s, max_maneuver_s]."""
        p = self.p
        T_star = time_energy_duration(c.v_mps, v_flow, p.rho, p.limits)
        arc = terminal_speed_arc(t0, c.x_m, c.v_mps, v_flow, p.changer_speed_weight, max(T_star, self.dt))
        if u is not None and not (arc.within(p.limits)
                                  and self._slack(u.predicted(t0), arc, u.length_m, t0, arc.t_end_s) >= 0):  # fmt: skip
            self.numeric_solves += 1
            profile, status = self._nlp.solve(
                t0_s=t0, x0_m=c.x_m, v0_mps=c.v_mps, v_f_mps=v_flow, rho=p.rho, beta=p.changer_speed_weight,
                limits=p.limits, headway=p.headway, leader=(u.x_m - p.planning_margin_m, u.v_settled_mps, u.length_m),
                t_min_s=p.min_maneuver_s, t_max_s=p.max_maneuver_s,
                t_guess_s=min(max(T_star, p.min_maneuver_s), p.max_maneuver_s),
            )  # fmt: skip
            if status.ok:
                T_star = profile.duration_s
        return min(max(T_star, p.min_maneuver_s), p.max_maneuver_s)

    def _changer_plan(self, c: Vehicle, u: Vehicle | None, v_flow: float, t0: float, T: float) -> Plan | None:
        """C's fixed-time plan, min ∫½u² + β_C(v(T) − v_flow)², keeping the safe gap to U (as predicted)
        until the lateral phase ends and, where its lane ends, `_end_line`: the closed form, or the QP
        when a constraint binds. Through the lateral phase at C's constant speed the gap condition is
        linear in the end state: x(T) + (φ + t_lat)·v(T) ≤ x_U(T + t_lat) − L_U − δ."""
        p, hw = self.p, self.p.headway

        def ok(plan: Plan) -> bool:
            safe = u is None or self._slack(u.predicted(t0), plan, u.length_m, t0, t0 + T + self.t_lat) >= 0
            return safe and self._before_end(plan, t0 + T)

        arc = terminal_speed_arc(t0, c.x_m, c.v_mps, v_flow, p.changer_speed_weight, T)
        if arc.within(p.limits) and ok(arc):
            return arc
        lines = [self._end] if self._end is not None else []
        if u is not None:
            x_u_end = u.predicted(t0).state(t0 + T + self.t_lat)[0]
            bound = x_u_end - u.length_m - hw.standstill_m - p.planning_margin_m
            lines.insert(0, ("rear", bound, hw.reaction_time_s + self.t_lat))
        return self._numeric(c, t0, T, v_flow, p.changer_speed_weight, leader=u, slot=lines[0] if lines else None,
                             check=ok, more_slots=tuple(lines[1:]))  # fmt: skip

    def _numeric(self, veh: Vehicle, t0: float, T: float, v_ref: float, beta: float, leader: Vehicle | None,
                 slot, check, more_slots: tuple = ()) -> Plan | None:  # fmt: skip
        """The QP with a leader kept `planning_margin_m` farther than needed (safety is imposed at
        the grid nodes only) and cruising at the speed it settles at (below its prediction), accepted
        if `check` holds on the exact trajectory."""
        self.numeric_solves += 1
        lead = (leader.x_m - self.p.planning_margin_m, leader.v_settled_mps, leader.length_m) if leader else None
        profile, status = self._qp(T).solve(
            t0_s=t0, x0_m=veh.x_m, v0_mps=veh.v_mps, duration_s=T, v_ref_mps=v_ref, beta=beta,
            limits=self.p.limits, headway=self.p.headway, leader=lead, slot=slot, more_slots=more_slots,
        )  # fmt: skip
        return profile if status.ok and check(profile) else None

    def _slack(self, leader: Plan, follower: Plan, leader_length_m: float, t_from: float, t_to: float) -> float:
        return min_slack(leader, follower, leader_length_m, self.p.headway, t_from, t_to)[0]

    def _fitted_plan(
        self, c: Vehicle, u: Vehicle, front: Vehicle | None, rear: Vehicle | None, v_flow: float, t0: float, T: float
    ) -> Plan | None:
        """Selfish C: at T, match the speed of the gap (its rear vehicle's, else v_flow) at the point of
        the predicted gap nearest to where a constant acceleration would take it, still behind U through
        the lateral phase (energy-optimal arc with both end states fixed)."""
        hw, m, t_f, t_lat = self.p.headway, self.p.planning_margin_m, t0 + T, self.t_lat
        x_r, v_r, _ = rear.predicted(t0).state(t_f) if rear else (-math.inf, v_flow, 0.0)
        v_end = min(v_r, self.p.v_max_mps)
        x_free = c.x_m + (c.v_mps + v_end) / 2 * T
        hi = math.inf
        for ahead in (u, front):
            if ahead is not None:
                x_a, v_a, _ = ahead.predicted(t0).state(t_f)
                hi = min(hi, x_a - ahead.length_m - hw.gap_m(v_end) - m - max(0.0, v_end - v_a) * t_lat)
        if self._end is not None:
            hi = min(hi, self._end[1] - self._end[2] * v_end)
        lo = x_r + c.length_m + hw.gap_m(v_r) + m if rear else -math.inf
        x_end = min(max(x_free, lo), hi)
        if lo > hi or not reachable(c.x_m, c.v_mps, T, x_end, v_end, self.p.limits):
            return None
        arc = fixed_state_arc(t0, c.x_m, c.v_mps, x_end, v_end, T)
        if not arc.within(self.p.limits) or (u is not None and self._slack(u.predicted(t0), arc, u.length_m, t0,
                                                                             t_f + t_lat) < 0):  # fmt: skip
            return None
        return arc

    def _slot_bounds(
        self, role: str, veh: Vehicle, c: Vehicle, x_c: float, v_c: float, v_veh: float
    ) -> tuple[float, tuple[str, float, float], list[tuple[float, float]]]:
        """Where a cooperator must be at T for the gap to hold from T through the lateral phase (at
        constant speeds from T on the gap changes linearly: both ends suffice). Each end is a line
        x(T) + c·v(T) ≷ b in the cooperator's end state (≥ for the front one, ≤ for the rear one):
        front  x_f − L_f − (x_C + v_C·τ) + v_f·τ ≥ φ·v_C + δ,   rear  x_C + v_C·τ − L_C − x_r − v_r·τ ≥ φ·v_r + δ,
        τ ∈ {0, t_lat}. Returned: the bound on x(T) if it drove as predicted, at `v_veh` at T (whether it must move, and
        whether it can get there), the line the QP imposes (the end that binds at its own speed) and
        both lines [(b, c)]."""
        p, hw, t_lat = self.p, self.p.headway, self.t_lat
        m = p.planning_margin_m
        if role == "front":
            closes = v_c > v_veh
            bound = x_c + veh.length_m + hw.gap_m(v_c) + m + (v_c - v_veh) * t_lat * closes
            lines = [(x_c + veh.length_m + hw.gap_m(v_c) + m + v_c * tau, tau) for tau in (0.0, t_lat)]
            return bound, ("front", *lines[closes]), lines
        closes = v_veh > v_c
        bound = x_c - c.length_m - hw.gap_m(v_veh) - m - (v_veh - v_c) * t_lat * closes
        lines = [(x_c + v_c * tau - c.length_m - hw.standstill_m - m, hw.reaction_time_s + tau) for tau in (0.0, t_lat)]
        return bound, ("rear", *lines[closes]), lines

    def _cooperator_plan(
        self, veh: Vehicle, lead: Vehicle | None, slot: tuple[str, float, float], lines: list[tuple[float, float]],
        v_flow: float, t0: float, T: float,
    ) -> Plan | None:  # fmt: skip
        """min ∫½u² + β(v(T) − v_flow)² (the cooperators harmonise at the target lane's flow speed) with
        the end state on the slot's side of both lines of `_slot_bounds`, safe behind its own leader
        (as predicted) until the lateral phase ends, u and v bounded.

        The end-state constraints are lines s·(x(T) + c·v(T) − b) ≥ 0: the slot's two and, behind a
        leader, the gap to it at the end of the lateral phase at the cooperator's constant speed,
        x(T) + (φ + t_lat)·v(T) ≤ x_L(T + t_lat) − L_L − δ. Without the other constraints the optimum
        has none of them active, one (`terminal_speed_arc` on it), or two (the end state fixed where
        they cross): the cheapest candidate on the right side of every line. If it also keeps u, v
        and the gap to the leader before T, it is the optimum; otherwise the QP with every line."""
        p = self.p
        end = t0 + T + self.t_lat
        side = slot[0]
        sign = 1.0 if side == "front" else -1.0
        signed = [(sign, b, c) for b, c in lines]
        if lead is not None:
            b_lead = lead.predicted(t0).state(t0 + T + self.t_lat)[0] - lead.length_m - p.standstill_gap_m
            signed.append((-1.0, b_lead, p.reaction_time_s + self.t_lat))

        def on_side(arc: Plan) -> bool:
            x_T, v_T, _ = arc.state(t0 + T)
            return all(s * (x_T + c * v_T - b) >= -1e-3 for s, b, c in signed)  # 1 mm: the QP's tolerance

        def ok(plan: Plan) -> bool:
            safe = lead is None or self._slack(lead.predicted(t0), plan, lead.length_m, t0, end) >= 0
            return on_side(plan) and safe

        beta = p.terminal_speed_weight
        arcs = [terminal_speed_arc(t0, veh.x_m, veh.v_mps, v_flow, beta, T)]
        arcs += [terminal_speed_arc(t0, veh.x_m, veh.v_mps, v_flow, beta, T, b, c) for _, b, c in signed]
        for (_, bi, ci), (_, bj, cj) in itertools.combinations(signed, 2):
            if abs(cj - ci) > 1e-9:  # x + c_i·v = b_i and x + c_j·v = b_j
                v_T = (bj - bi) / (cj - ci)
                arcs.append(fixed_state_arc(t0, veh.x_m, veh.v_mps, bi - ci * v_T, v_T, T))
        candidates = [arc for arc in arcs if on_side(arc)]
        if candidates:
            best = min(candidates, key=lambda arc: arc.energy_m2ps3 + beta * (arc.v_end_mps - v_flow) ** 2)
            if best.within(p.limits) and ok(best):
                return best
        qp_lines = tuple(("front" if s > 0 else "rear", b, c) for s, b, c in signed)
        return self._numeric(veh, t0, T, v_flow, beta, leader=lead, slot=qp_lines[0], check=ok,
                             more_slots=qp_lines[1:])  # fmt: skip

    def _changer_absorbed(self, c: Vehicle, c_plan: Plan | None, lanes: Lanes, t0: float, T: float) -> bool:
        """Whether C's followers absorb C's plan until C leaves its lane (half-way through the lateral
        phase), for every slot at this T (`_absorbed`; the selfish C is not checked)."""
        if c_plan is None or not self.p.absorbing_followers:
            return True
        return self._absorbed(c, c_plan, lanes, t0, t0 + T + self.t_lat / 2)

    def _absorbed(self, veh: Vehicle, plan: Plan, lanes: Lanes, t0: float, t_to: float) -> bool:
        """Whether the vehicles behind `veh` absorb its plan: a vehicle that falls back into its
        follower's safe gap (a rear cooperator opening the slot, C dropping back to it) makes the
        follower fall back by the intrusion Δ₁ = max(0, −min_t slack(t)) (follower cruising, until
        `t_to`), and the k-th vehicle behind by Δ_k = max(0, Δ_{k−1} − s_k), s_k its slack now
        (gap − (φv + δ)). Absorbed: Δ_k = 0 within `absorbing_followers` vehicles, or the queue ends
        first; otherwise a braking wave runs upstream (in dense traffic, a jam) that the disruption of
        the cooperators alone does not see."""
        rows = lanes.in_lane(veh.lane)
        k = int(np.searchsorted(lanes.world.x_m[rows], veh.x_m))
        if k == 0:
            return True
        w, hw = lanes.world, self.p.headway
        follower = lanes.vehicle(int(rows[k - 1]))
        intrusion = -self._slack(plan, Arc.cruise(t0, follower.x_m, follower.v_mps), veh.length_m, t0, t_to)
        for j in range(k - 2, k - 1 - self.p.absorbing_followers, -1):
            if intrusion <= 0 or j < 0:
                return True
            ahead, behind = rows[j + 1], rows[j]
            intrusion -= max(0.0, w.x_m[ahead] - w.length_m[ahead] - w.x_m[behind] - hw.gap_m(w.speed_mps[behind]))
        return intrusion <= 0

    def _disruption_bound(self, c: Vehicle, c_plan: Plan, front: Vehicle | None, rear: Vehicle | None,
                          T: float) -> float:  # fmt: skip
        """A lower bound on the slot's disruption (`disruption_parts` of its CAVs at T): the least D over
        the end states that leave C its safe gap at T, x_F ≥ x_C + L_F + φv_C + δ in front and
        x_R + φv_R ≤ x_C − L_C − δ behind, which every valid plan meets. From the cruising end
        (x₀ + v₀T, v₀), violating a line x + c·v ≷ b by e, the least D on the line is
        e² / (1/γ_x + c²/γ_v)."""
        x_c, v_c, _ = c_plan.state(c_plan.t0_s + T)  # C's end state at t_f
        hw, bound = self.p.headway, 0.0
        for veh, sign, b, coef in (
            (front, 1.0, x_c + (front.length_m if front else 0.0) + hw.gap_m(v_c), 0.0),
            (rear, -1.0, x_c - c.length_m - hw.standstill_m, hw.reaction_time_s),
        ):
            if veh is None or not veh.is_cav:
                continue  # a human driver's plan is not counted
            violation = sign * (b - (veh.x_m + veh.v_mps * T + coef * veh.v_mps))
            if violation > 0:
                gx, gv = disruption_weights(veh.v_mps, self.p)
                bound += violation**2 / (1 / gx + coef * coef / gv)
        return bound

    def _slots(self, target: list[Vehicle], c_plan: Arc, t_f: float) -> list[tuple[Vehicle | None, Vehicle | None]]:
        """Consecutive (front, rear) pairs of the target lane whose slot lies within [x_C − L_r, x_C + L_f] at t_f."""
        x_c = c_plan.state(t_f)[0]
        at_t_f = [veh.predicted(c_plan.t0_s).state(t_f)[0] for veh in target]
        # target is sorted by x: (target[i+1], target[i]) are consecutive; plus the ends of the queue
        pairs: list[tuple[int | None, int | None]] = [(None, None)]
        if target:
            pairs = [*zip([*range(1, len(target)), None], range(len(target)), strict=True), (0, None)]
        keep = []
        for i_front, i_rear in pairs:
            hi = at_t_f[i_front] if i_front is not None else math.inf
            lo = at_t_f[i_rear] if i_rear is not None else -math.inf
            if hi >= x_c - self.p.search_behind_m and lo <= x_c + self.p.search_ahead_m:
                front = target[i_front] if i_front is not None else None
                rear = target[i_rear] if i_rear is not None else None
                keep.append((0.0 if lo <= x_c <= hi else min(abs(x_c - lo), abs(hi - x_c)), front, rear))
        # nearest slots first (for the selfish baseline; cooperative ties are resolved by disruption)
        return [(front, rear) for _, front, rear in sorted(keep, key=lambda item: item[0])]

    def _sheds_closing(self, c: Vehicle, c_plan: Plan, front: CooperatorPlan | None, rear: CooperatorPlan | None,
                       t_s: float) -> bool:  # fmt: skip
        """Whether, when the lateral phase ends, C behind the front vehicle and the rear one behind C
        have the barrier h ≥ 0 (`safety.barrier`: the slack covers shedding the closing speed at
        |u_min|), the condition the maneuver certifies on the measured state."""
        x_c, v_c, _ = c_plan.state(t_s)
        if front is not None:
            x_f, v_f, _ = front.plan.state(t_s)
            if barrier(x_f - front.vehicle.length_m - x_c, v_c, v_f, self.p) < 0:
                return False
        if rear is not None:
            x_r, v_r, _ = rear.plan.state(t_s)
            if barrier(x_c - c.length_m - x_r, v_r, v_c, self.p) < 0:
                return False
        return True

    def _slot_plan(
        self,
        c: Vehicle,
        u: Vehicle,
        c_plan: Arc | None,
        front: Vehicle | None,
        rear: Vehicle | None,
        v_flow: float,
        target_lane: int,
        t0: float,
        T: float,
        k: int,
        busy: set[str],
        lanes: Lanes,
    ) -> tuple[LaneChangePlan | None, str]:
        p = self.p
        t_f = t0 + T
        if c_plan is None:  # selfish: C fits itself into the gap as it is
            c_plan = self._fitted_plan(c, u, front, rear, v_flow, t0, T)
            if c_plan is None:
                return None, "C cannot fit into the gap in time"
        x_c, v_c, _ = c_plan.state(t_f)
        plans: dict[str, CooperatorPlan | None] = {"front": None, "rear": None}
        if (front is not None and front.id in busy) or (rear is not None and rear.id in busy):
            return None, "slot next to another maneuver"
        for role, veh in (("front", front), ("rear", rear)):
            if veh is None:
                continue
            cooperates = self.cooperation and veh.is_cav
            plan: Plan = veh.predicted(t0)
            x_pred, v_pred, _ = plan.state(t_f)
            bound, slot, lines = self._slot_bounds(role, veh, c, x_c, v_c, v_pred)
            needs_move = x_pred < bound if role == "front" else x_pred > bound
            if needs_move:
                if not cooperates:
                    return None, "slot closed and its vehicles do not cooperate"
                lo, hi = position_range(veh.x_m, veh.v_mps, T, p.limits)
                if not lo <= bound <= hi:
                    return None, "slot not reachable by the cooperators"
                lead_row = lanes.leader(lanes.row_of[veh.id])  # for the rear one: the front one
                lead = lanes.vehicle(lead_row) if lead_row is not None else None
                plan = self._cooperator_plan(veh, lead, slot, lines, v_flow, t0, T)
                if plan is None:
                    return None, "no cooperator plan within the bounds and safe behind its leader"
                if (
                    role == "rear"
                    and p.absorbing_followers
                    and not self._absorbed(veh, plan, lanes, t0, t_f + self.t_lat)
                ):
                    return None, "the rear cooperator's follower would have to brake"
            dx, dv = disruption_parts(veh.x_m, veh.v_mps, *plan.state(t_f)[:2], T, p) if cooperates else (0.0, 0.0)
            # a rear CAV that need not move still holds its predicted plan: SUMO's driver would follow
            # the front vehicle (which may open the slot by speeding up) into C's gap
            plans[role] = CooperatorPlan(veh, role, plan, cooperates and (needs_move or role == "rear"), dx, dv)
        slack = math.inf
        end = t_f + self.t_lat
        if plans["front"] is not None:
            f = plans["front"]
            slack = min(slack, self._slack(f.plan, c_plan, f.vehicle.length_m, t_f, end))
        if plans["rear"] is not None:
            r = plans["rear"]
            slack = min(slack, self._slack(c_plan, r.plan, c.length_m, t_f, end))
        if u is not None:
            slack = min(slack, self._slack(u.predicted(t0), c_plan, u.length_m, t0, end))
        if slack < 0 or not self._sheds_closing(c, c_plan, plans["front"], plans["rear"], end):
            return None, "slot too tight for the lateral phase"
        f, r = plans["front"], plans["rear"]
        if f is not None and r is not None and (f.cooperates or r.cooperates) \
                and self._slack(f.plan, r.plan, f.vehicle.length_m, t0, t_f + self.t_lat / 2) < 0:  # fmt: skip
            # the rear one is planned behind the front one's prediction: checked behind its plan until C is between
            return None, "the rear cooperator is not safe behind the front one's plan"
        plan = LaneChangePlan(c, u, target_lane, c_plan, plans["front"], plans["rear"], t0, T, k, slack, v_flow)
        if self.cooperation and sum(plan.disruption) > p.max_disruption:
            return None, DISRUPTION_ABOVE
        return plan, ""
