"""Planning one lane-change request on a snapshot: C's plan, the candidate slots, the cooperators'
plans, the disruption test and the relaxation T ← λT (docs/theory.md)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cavlab.controllers.base import ControlSetup
from cavlab.controllers.cooperative.params import CooperativeParams
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
    leader: Vehicle
    target_lane: int
    changer_plan: Plan
    front: CooperatorPlan | None
    rear: CooperatorPlan | None
    t0_s: float
    duration_s: float  # longitudinal phase T; the lane change is issued at t0 + T
    relaxations: int
    min_slack_m: float

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


def disruption_parts(
    x0: float, v0: float, x_end: float, v_end: float, duration_s: float, params: CooperativeParams
) -> tuple[float, float]:
    """γ_x(x(T) − x0 − v0T)² and γ_v(v(T) − v0)², with γ_x = γ/(Δv_range·t_avg)²,
    γ_v = (1 − γ)/Δv_range², Δv_range = max(|v_max − v0|, |v_min − v0|)."""
    span = max(abs(params.v_max_mps - v0), abs(params.v_min_mps - v0), 1e-6)
    gx = params.disruption_gamma / (span * params.disruption_time_s) ** 2
    gv = (1 - params.disruption_gamma) / span**2
    return gx * (x_end - x0 - v0 * duration_s) ** 2, gv * (v_end - v0) ** 2


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

    def plan(self, lanes: Lanes, changer_row: int, leader_row: int, target_lane: int, busy: set[str]) -> PlanOutcome:
        """The best valid slot for C (or why there is none)."""
        p, t0 = self.p, lanes.world.time_s
        c, u = lanes.vehicle(changer_row), lanes.vehicle(leader_row)
        started = time.perf_counter()
        v_flow = lanes.mean_speed(target_lane, c.x_m - p.search_behind_m, c.x_m + p.search_ahead_m)
        v_flow = min(v_flow if v_flow is not None else self.setup.speed_limit_mps, p.v_max_mps)
        T0 = self._start_duration(c, u, v_flow, t0) if self.cooperation else p.min_maneuver_s
        changer_time = time.perf_counter() - started
        target = [lanes.vehicle(int(r)) for r in lanes.in_lane(target_lane)]
        valid: dict[tuple[str | None, str | None], LaneChangePlan] = {}
        reasons: set[str] = set()
        candidates = 0
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
                reasons.add("C cannot reach the flow speed behind its leader")
                continue
            probe = c_plan or Arc(t0, T, c.x_m, c.v_mps, (v_flow - c.v_mps) / T, 0.0)
            for front, rear in self._slots(target, probe, t0 + T):
                key = (front.id if front else None, rear.id if rear else None)
                if key in valid:
                    continue  # already valid with less relaxation
                candidates += 1
                plan, why = self._slot_plan(c, u, c_plan, front, rear, v_flow, target_lane, t0, T, k, busy, lanes)
                if plan is None:
                    reasons.add(why)
                    continue
                valid[key] = plan
                if not self.cooperation:
                    break  # selfish: the nearest slot at the least time
            if valid and not self.cooperation:
                break
        slots_time = time.perf_counter() - started - changer_time
        if not valid:
            reason = "; ".join(sorted(reasons)) or "no slot in range"
            return PlanOutcome(None, "infeasible", reason, candidates, changer_time, slots_time)
        best = min(valid.values(), key=lambda m: (sum(m.disruption), m.duration_s))
        return PlanOutcome(best, "planned", "", candidates, changer_time, slots_time)

    def _start_duration(self, c: Vehicle, u: Vehicle, v_flow: float, t0: float) -> float:
        """C's time-energy-optimal T* (min ρT + ∫½u² + β_C(v(T) − v_flow)²): the closed form
        |Δv|/√(2ρ) when U is far enough, else the free-time NLP with the safe gap to U; then
        clamped to [min_maneuver_s, max_maneuver_s]."""
        p = self.p
        T_star = time_energy_duration(c.v_mps, v_flow, p.rho, p.limits)
        arc = terminal_speed_arc(t0, c.x_m, c.v_mps, v_flow, p.changer_speed_weight, max(T_star, self.dt))
        if not (arc.within(p.limits) and self._slack(u.cruise(t0), arc, u.length_m, t0, arc.t_end_s) >= 0):
            self.numeric_solves += 1
            profile, status = self._nlp.solve(
                t0_s=t0, x0_m=c.x_m, v0_mps=c.v_mps, v_f_mps=v_flow, rho=p.rho, beta=p.changer_speed_weight,
                limits=p.limits, headway=p.headway, leader=(u.x_m - p.planning_margin_m, u.v_mps, u.length_m),
                t_min_s=p.min_maneuver_s, t_max_s=p.max_maneuver_s,
                t_guess_s=min(max(T_star, p.min_maneuver_s), p.max_maneuver_s),
            )  # fmt: skip
            if status.ok:
                T_star = profile.duration_s
        return min(max(T_star, p.min_maneuver_s), p.max_maneuver_s)

    def _changer_plan(self, c: Vehicle, u: Vehicle, v_flow: float, t0: float, T: float) -> Plan | None:
        """C's fixed-time plan, min ∫½u² + β_C(v(T) − v_flow)², keeping the safe gap to U (cruising)
        until the lateral phase ends: the closed form, or the QP when the gap to U binds. Through
        the lateral phase at constant speeds the gap condition is linear in the end state:
        x(T) + (φ + t_lat)·v(T) ≤ x_U(T) + v_U·t_lat − L_U − δ."""
        p, hw = self.p, self.p.headway
        arc = terminal_speed_arc(t0, c.x_m, c.v_mps, v_flow, p.changer_speed_weight, T)
        if arc.within(p.limits) and self._slack(u.cruise(t0), arc, u.length_m, t0, t0 + T + self.t_lat) >= 0:
            return arc
        x_u_end = u.x_m + u.v_mps * T
        bound = x_u_end + u.v_mps * self.t_lat - u.length_m - hw.standstill_m - p.planning_margin_m
        return self._numeric(
            c, t0, T, v_flow, p.changer_speed_weight, leader=u,
            slot=("rear", bound, hw.reaction_time_s + self.t_lat),
            check=lambda plan: self._slack(u.cruise(t0), plan, u.length_m, t0, t0 + T + self.t_lat) >= 0,
        )  # fmt: skip

    def _numeric(self, veh: Vehicle, t0: float, T: float, v_ref: float, beta: float, leader: Vehicle | None,
                 slot, check) -> Plan | None:  # fmt: skip
        """The QP with a leader kept `planning_margin_m` farther than needed (safety is imposed at
        the grid nodes only), accepted if `check` holds on the exact trajectory."""
        self.numeric_solves += 1
        lead = (leader.x_m - self.p.planning_margin_m, leader.v_mps, leader.length_m) if leader else None
        profile, status = self._qp(T).solve(
            t0_s=t0, x0_m=veh.x_m, v0_mps=veh.v_mps, duration_s=T, v_ref_mps=v_ref, beta=beta,
            limits=self.p.limits, headway=self.p.headway, leader=lead, slot=slot,
        )  # fmt: skip
        return profile if status.ok and check(profile) else None

    def _slack(self, leader: Plan, follower: Plan, leader_length_m: float, t_from: float, t_to: float) -> float:
        return min_slack(leader, follower, leader_length_m, self.p.headway, t_from, t_to)[0]

    def _fitted_plan(
        self, c: Vehicle, u: Vehicle, front: Vehicle | None, rear: Vehicle | None, v_flow: float, t0: float, T: float
    ) -> Plan | None:
        """Selfish C: at T, match the speed of the gap (its rear vehicle's, else v_flow) at the point of
        the cruising gap nearest to where a constant acceleration would take it, still behind U through
        the lateral phase (energy-optimal arc with both end states fixed)."""
        hw, m, t_f, t_lat = self.p.headway, self.p.planning_margin_m, t0 + T, self.t_lat
        v_end = min(rear.v_mps if rear else v_flow, self.p.v_max_mps)
        x_free = c.x_m + (c.v_mps + v_end) / 2 * T
        closing_u = max(0.0, v_end - u.v_mps) * t_lat
        hi = u.x_m + u.v_mps * T - u.length_m - hw.gap_m(v_end) - m - closing_u
        if front:
            closing_f = max(0.0, v_end - front.v_mps) * t_lat
            hi = min(hi, front.x_m + front.v_mps * T - front.length_m - hw.gap_m(v_end) - m - closing_f)
        lo = -math.inf
        if rear:
            lo = rear.x_m + rear.v_mps * T + c.length_m + hw.gap_m(rear.v_mps) + m
        x_end = min(max(x_free, lo), hi)
        if lo > hi or not reachable(c.x_m, c.v_mps, T, x_end, v_end, self.p.limits):
            return None
        arc = fixed_state_arc(t0, c.x_m, c.v_mps, x_end, v_end, T)
        if not arc.within(self.p.limits) or self._slack(u.cruise(t0), arc, u.length_m, t0, t_f + t_lat) < 0:
            return None
        return arc

    def _slot_bounds(
        self, role: str, veh: Vehicle, c: Vehicle, x_c: float, v_c: float
    ) -> tuple[float, tuple[str, float, float]]:
        """Where a cooperator must be at T: a closed-form bound on x(T) (its terminal speed taken as
        v0: conservative, as the front one only speeds up and the rear one only slows down) and the
        exact linear slot x(T) + c·v(T) ≷ b for the QP. The gap must also last through the lateral
        phase at constant speeds, which matters when it closes."""
        p, hw, t_lat = self.p, self.p.headway, self.t_lat
        m = p.planning_margin_m
        if role == "front":  # x_f − L_f − x_C ≥ φ·v_C + δ
            closes = v_c > veh.v_mps
            bound = x_c + veh.length_m + hw.gap_m(v_c) + m + (v_c - veh.v_mps) * t_lat * closes
            b = x_c + veh.length_m + hw.gap_m(v_c) + m + v_c * t_lat * closes
            return bound, ("front", b, t_lat * closes)
        # rear: x_C − L_C − x_r ≥ φ·v_r + δ
        closes = veh.v_mps > v_c
        bound = x_c - c.length_m - hw.gap_m(veh.v_mps) - m - (veh.v_mps - v_c) * t_lat * closes
        b = x_c + v_c * t_lat * closes - c.length_m - hw.standstill_m - m
        return bound, ("rear", b, hw.reaction_time_s + t_lat * closes)

    def _cooperator_plan(
        self, veh: Vehicle, lead: Vehicle | None, bound: float, slot: tuple[str, float, float], t0: float, T: float
    ) -> Plan | None:
        """min ∫½u² + β(v(T) − v0)² reaching the slot: the closed form with x(T) on the bound, or
        the QP with the exact slot and the cooperator's own leader (cruising)."""
        p = self.p
        end = t0 + T + self.t_lat

        def safe(plan: Plan) -> bool:
            return lead is None or self._slack(lead.cruise(t0), plan, lead.length_m, t0, end) >= 0

        arc = terminal_speed_arc(t0, veh.x_m, veh.v_mps, veh.v_mps, p.terminal_speed_weight, T, x_end_m=bound)
        if arc.within(p.limits) and safe(arc):
            return arc
        return self._numeric(veh, t0, T, veh.v_mps, p.terminal_speed_weight, leader=lead, slot=slot, check=safe)

    def _slots(self, target: list[Vehicle], c_plan: Arc, t_f: float) -> list[tuple[Vehicle | None, Vehicle | None]]:
        """Consecutive (front, rear) pairs of the target lane whose slot lies within [x_C − L_r, x_C + L_f] at t_f."""
        x_c = c_plan.state(t_f)[0]
        # target is sorted by x: (target[i+1], target[i]) are consecutive; plus the ends of the queue
        pairs: list[tuple[Vehicle | None, Vehicle | None]] = [(None, None)]
        if target:
            pairs = [*zip([*target[1:], None], target, strict=True), (target[0], None)]
        dt = t_f - c_plan.t0_s
        keep = []
        for front, rear in pairs:
            hi = front.x_m + front.v_mps * dt if front else math.inf  # cruising predictions
            lo = rear.x_m + rear.v_mps * dt if rear else -math.inf
            if hi >= x_c - self.p.search_behind_m and lo <= x_c + self.p.search_ahead_m:
                keep.append((0.0 if lo <= x_c <= hi else min(abs(x_c - lo), abs(hi - x_c)), front, rear))
        # nearest slots first (for the selfish baseline; cooperative ties are resolved by disruption)
        return [(front, rear) for _, front, rear in sorted(keep, key=lambda item: item[0])]

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
            bound, slot = self._slot_bounds(role, veh, c, x_c, v_c)
            plan: Plan = veh.cruise(t0)
            x_cruise = plan.state(t_f)[0]
            needs_move = x_cruise < bound if role == "front" else x_cruise > bound
            if needs_move:
                if not cooperates:
                    return None, "slot closed and its vehicles do not cooperate"
                lo, hi = position_range(veh.x_m, veh.v_mps, T, p.limits)
                if not lo <= bound <= hi:
                    return None, "slot not reachable by the cooperators"
                lead_row = lanes.leader(lanes.row_of[veh.id])  # for the rear one: the front one
                lead = lanes.vehicle(lead_row) if lead_row is not None else None
                plan = self._cooperator_plan(veh, lead, bound, slot, t0, T)
                if plan is None:
                    return None, "no cooperator plan within the bounds and safe behind its leader"
            dx, dv = disruption_parts(veh.x_m, veh.v_mps, *plan.state(t_f)[:2], T, p) if cooperates else (0.0, 0.0)
            plans[role] = CooperatorPlan(veh, role, plan, cooperates and needs_move, dx, dv)
        slack = math.inf
        end = t_f + self.t_lat
        if plans["front"] is not None:
            f = plans["front"]
            slack = min(slack, self._slack(f.plan, c_plan, f.vehicle.length_m, t_f, end))
        if plans["rear"] is not None:
            r = plans["rear"]
            slack = min(slack, self._slack(c_plan, r.plan, c.length_m, t_f, end))
        slack = min(slack, self._slack(u.cruise(t0), c_plan, u.length_m, t0, end))
        if slack < 0:
            return None, "slot too tight for the lateral phase"
        plan = LaneChangePlan(c, u, target_lane, c_plan, plans["front"], plans["rear"], t0, T, k, slack)
        if self.cooperation and sum(plan.disruption) > p.max_disruption:
            return None, "disruption above D_th"
        return plan, ""
