"""Cooperative lane change with minimal disruption of the target lane.

After Armijos, Li, Cassandras et al. (Automatica 2024); docs/theory.md gives the equations
as implemented. A CAV C stuck behind a slower leader U asks to move into the faster lane:

1. C's plan: the time-and-energy optimum T* of min ρT + ∫½u² + β_C(v(T) − v_flow)² sets the
   starting duration (closed form |Δv|/√(2ρ), or the free-time NLP when the safe gap to U
   binds); for a duration T, C's plan is the fixed-time optimum of ∫½u² + β_C(v(T) − v_flow)²
   keeping the safe gap to U (cruising) until the lateral phase ends (closed form, or the QP).
2. Candidate slots: consecutive pairs (front i, rear i+1) of the target lane around C's
   position at T. Cooperating CAVs get fixed-time plans min ∫½u² + β(v(T) − v0)² that open
   the slot (front ahead of x_C(T) by L_i + φv_C + δ, rear behind by L_C + φv_rear + δ);
   vehicles that do not cooperate (HDVs) are predicted to cruise; slots next to the
   vehicles of another maneuver are skipped.
3. Disruption of the cooperators, D = Σ γ_x(x(T) − x0 − v0T)² + γ_v(v(T) − v0)²; a slot is
   valid when D ≤ D_th; otherwise T ← λT, up to k_max times. The valid slot with the least
   disruption wins.
4. Execution: the plans are tracked step by step (Accelerate), the lane change is issued
   once the slot is certified on the measured state, control is handed back afterwards.
   A request with no valid slot falls back to following U and is retried later.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cavlab.controllers.base import Controller, ControllerReport, ControlSetup, Table
from cavlab.controllers.longitudinal import (
    Arc,
    Headway,
    Limits,
    fixed_state_arc,
    min_slack,
    position_range,
    reachable,
    terminal_speed_arc,
    time_energy_duration,
)
from cavlab.controllers.ocp import FixedTimeQP, FreeTimeNLP, Profile
from cavlab.world import Accelerate, ChangeLane, Command, ControlModes, Release, WorldState

Positive = Annotated[float, Field(gt=0)]
Plan = Arc | Profile
MAX_INTERVALS = 50  # numeric plans: at most this many piecewise-constant intervals


class CooperativeParams(BaseModel):
    """Parameters of the cooperative lane-change controller (scenario `control.params`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    u_min_mps2: Annotated[float, Field(lt=0)] = -4.0
    u_max_mps2: Positive = 2.5
    v_min_mps: Annotated[float, Field(ge=0)] = 10.0
    v_max_mps: Positive = 35.0
    reaction_time_s: Annotated[float, Field(ge=0)] = 0.9
    standstill_gap_m: Annotated[float, Field(ge=0)] = 3.0
    planning_margin_m: Annotated[float, Field(ge=0)] = Field(1.0, description="Extra gap planned for")
    time_weight: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.5, description="α in ρ = α·max(u²)/(2(1−α)), the weight of time against energy for C"
    )
    terminal_speed_weight: Annotated[float, Field(ge=0)] = Field(
        1.0, description="β of the cooperators' terminal-speed term"
    )
    changer_speed_weight: Positive = Field(10.0, description="β_C of C's terminal-speed term")
    disruption_gamma: Annotated[float, Field(ge=0, le=1)] = Field(0.5, description="Weight of position vs speed")
    disruption_time_s: Positive = Field(8.0, description="t_avg normalising the position part")
    max_disruption: Annotated[float, Field(ge=0)] = Field(0.05, description="D_th")
    relaxation_factor: Annotated[float, Field(gt=1)] = Field(1.15, description="λ in T ← λT")
    max_relaxations: Annotated[int, Field(ge=0, le=30)] = 7
    min_maneuver_s: Positive = Field(4.0, description="Shortest longitudinal phase")
    max_maneuver_s: Positive = Field(20.0, description="Longest longitudinal phase (T_max)")
    search_ahead_m: Positive = Field(150.0, description="L_f: slots up to this far ahead of C at T")
    search_behind_m: Positive = Field(150.0, description="L_r: slots up to this far behind C at T")
    request_gap_m: Positive = Field(60.0, description="C asks when its gap to U is below this")
    request_after_m: Annotated[float, Field(ge=0)] = Field(
        200.0, description="No requests nearer the road start: vehicles appear there unannounced"
    )
    request_speed_gain_mps: Annotated[float, Field(ge=0)] = Field(
        2.0, description="... and the target lane flows at least this much faster than U"
    )
    scan_period_s: Positive = Field(0.5, description="How often CAVs are checked for requests")
    retry_after_s: Positive = Field(3.0, description="Wait before a refused request is tried again")
    certify_timeout_s: Annotated[float, Field(ge=0)] = Field(2.0, description="Wait for a certifiable slot")

    @model_validator(mode="after")
    def _check(self) -> CooperativeParams:
        if self.v_min_mps >= self.v_max_mps:
            raise ValueError(f"v_min_mps = {self.v_min_mps:g} must be below v_max_mps = {self.v_max_mps:g}")
        if self.min_maneuver_s > self.max_maneuver_s:
            raise ValueError("min_maneuver_s must not exceed max_maneuver_s")
        return self

    @property
    def limits(self) -> Limits:
        return Limits(self.u_min_mps2, self.u_max_mps2, self.v_min_mps, self.v_max_mps)

    @property
    def headway(self) -> Headway:
        return Headway(self.reaction_time_s, self.standstill_gap_m)

    @property
    def rho(self) -> float:
        """ρ = α·max(u_min², u_max²) / (2(1 − α))."""
        umax2 = max(self.u_min_mps2**2, self.u_max_mps2**2)
        return self.time_weight * umax2 / (2 * (1 - self.time_weight))


# ----------------------------------------------------------------------------- the snapshot


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
        order = np.lexsort((world.x_m, world.lane))
        lanes = world.lane[order]
        cuts = np.flatnonzero(np.diff(lanes)) + 1
        self.rows = {int(world.lane[g[0]]): g for g in np.split(order, cuts) if len(g)}
        self.position = np.empty(len(world), dtype=np.int64)  # index of each row within its lane
        for rows in self.rows.values():
            self.position[rows] = np.arange(len(rows))
        self.row_of = {vid: i for i, vid in enumerate(world.ids.tolist())}

    def vehicle(self, row: int) -> Vehicle:
        w = self.world
        return Vehicle(
            str(w.ids[row]), float(w.x_m[row]), float(w.speed_mps[row]), float(w.length_m[row]),
            int(w.lane[row]), bool(w.is_cav[row]),
        )  # fmt: skip

    def leader(self, row: int) -> int | None:
        rows = self.rows[int(self.world.lane[row])]
        k = self.position[row] + 1
        return int(rows[k]) if k < len(rows) else None

    def in_lane(self, lane: int) -> np.ndarray:
        return self.rows.get(lane, np.zeros(0, dtype=np.int64))

    def mean_speed(self, lane: int, x_from: float, x_to: float) -> float | None:
        rows = self.in_lane(lane)
        x = self.world.x_m[rows]
        near = rows[(x >= x_from) & (x <= x_to)]
        return float(self.world.speed_mps[near].mean()) if len(near) else None


# ----------------------------------------------------------------------------- plans


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


# ----------------------------------------------------------------------------- execution


@dataclass
class ManeuverRecord:
    """One lane-change request and what became of it (a row of maneuvers.csv)."""

    request_time_s: float
    vehicle_id: str
    leader_id: str
    target_lane: int
    status: str  # completed | aborted | infeasible
    reason: str = ""
    front_id: str = ""
    rear_id: str = ""
    cooperators: int = 0
    candidates: int = 0
    relaxations: int = 0
    longitudinal_time_s: float = (
        math.nan
    )  # planned T; the lane change is commanded at T (or up to certify_timeout_s later)
    maneuver_time_s: float = math.nan  # request to the end of the lateral phase
    disruption_planned: float = math.nan
    disruption_position_planned: float = math.nan
    disruption_speed_planned: float = math.nan
    disruption_executed: float = math.nan
    disruption_position_executed: float = math.nan
    disruption_speed_executed: float = math.nan
    energy_planned_m2ps3: float = math.nan  # ∫½u² of C and the cooperators, planned
    energy_executed_m2ps3: float = math.nan
    min_slack_planned_m: float = math.nan
    min_slack_executed_m: float = math.nan
    solve_time_changer_s: float = 0.0
    solve_time_slots_s: float = 0.0


class Maneuver:
    """Executes one `LaneChangePlan` step by step."""

    def __init__(self, plan: LaneChangePlan, record: ManeuverRecord, params: CooperativeParams, setup: ControlSetup):
        self.plan = plan
        self.record = record
        self.p = params
        self.dt = setup.step_length_s
        self.t_lat = setup.lane_change_duration_s
        self.phase: Literal["longitudinal", "certify", "lateral", "fallback", "done"] = "longitudinal"
        self.t_abort: float | None = None
        self.t_lane_change: float | None = None
        self.energy = 0.0
        self.min_slack = math.inf
        self.tracked: dict[str, Plan] = {plan.changer.id: plan.changer_plan}
        for coop in plan.cooperators:
            self.tracked[coop.vehicle.id] = coop.plan

    @property
    def vehicles(self) -> list[str]:
        return list(self.tracked)

    def step(self, world: WorldState, lanes: Lanes) -> list[Command]:
        """Commands for this step; sets `phase` to "done" and fills the record when finished."""
        t, p, c_id = world.time_s, self.plan, self.plan.changer.id
        if any(vid not in lanes.row_of for vid in self.tracked):
            if self.phase == "fallback":
                self.phase = "done"
                return []
            return self._finish("aborted", "a vehicle of the maneuver left the network")
        c_row = lanes.row_of[c_id]
        if self.phase == "fallback":
            return self._fall_back(world, lanes, c_row)
        self._account(world, lanes)
        t_f = p.t0_s + p.duration_s
        if self.phase == "longitudinal" and t >= t_f - 1e-9:
            self._record_executed(world, lanes)
            self.phase = "certify"
        commands: list[Command] = []
        if self.phase == "certify":
            if self._certified(world, lanes):
                commands.append(ChangeLane(c_id, p.target_lane, hold_s=self.t_lat + self.p.certify_timeout_s + 1.0))
                self.phase, self.t_lane_change = "lateral", t
            elif t > t_f + self.p.certify_timeout_s:
                return self._finish("aborted", "slot not certified on the measured state")
        if self.phase == "lateral" and self.t_lane_change is not None:
            if world.lane[c_row] == p.target_lane and t >= self.t_lane_change + self.t_lat - 1e-9:
                self.record.maneuver_time_s = t - p.t0_s
                return self._finish("completed", "")
            if t > self.t_lane_change + self.t_lat + self.p.certify_timeout_s:
                return self._finish("aborted", "the lane change did not complete")
        for vid, arc in self.tracked.items():
            u = arc.mean_accel(t, self.dt) if self.phase == "longitudinal" else 0.0
            commands.append(Accelerate(vid, self._safe(u, lanes.row_of[vid], world, lanes)))
        return commands

    def _safe(self, u: float, row: int, world: WorldState, lanes: Lanes) -> float:
        """The plan's u, unless the measured leader (which need not behave as predicted) is too
        close: see `safe_accel`."""
        return min(u, safe_accel(row, world, lanes, self.p))

    def _certified(self, world: WorldState, lanes: Lanes) -> bool:
        """Safe gaps to the target lane's actual neighbours now and, at constant speeds, through the
        lateral phase (a gap that changes linearly: both ends suffice)."""
        c_row = lanes.row_of[self.plan.changer.id]
        x_c, v_c, l_c = (float(a[c_row]) for a in (world.x_m, world.speed_mps, world.length_m))
        rows = lanes.in_lane(self.plan.target_lane)
        xs = world.x_m[rows]
        k = int(np.searchsorted(xs, x_c))
        hw = self.p.headway
        for horizon in (0.0, self.t_lat):
            if k < len(rows):  # front neighbour
                f = rows[k]
                gap = (world.x_m[f] + world.speed_mps[f] * horizon) - world.length_m[f] - (x_c + v_c * horizon)
                if gap < hw.gap_m(v_c):
                    return False
            if k > 0:  # rear neighbour
                r = rows[k - 1]
                gap = (x_c + v_c * horizon) - l_c - (world.x_m[r] + world.speed_mps[r] * horizon)
                if gap < hw.gap_m(float(world.speed_mps[r])):
                    return False
        return True

    def _account(self, world: WorldState, lanes: Lanes) -> None:
        for vid in self.tracked:
            row = lanes.row_of[vid]
            self.energy += 0.5 * float(world.accel_mps2[row]) ** 2 * self.dt
            lead = lanes.leader(row)
            if lead is not None:
                gap = world.x_m[lead] - world.length_m[lead] - world.x_m[row]
                self.min_slack = min(self.min_slack, float(gap - self.p.headway.gap_m(world.speed_mps[row])))

    def _record_executed(self, world: WorldState, lanes: Lanes) -> None:
        dx = dv = 0.0
        for coop in self.plan.cooperators:
            row = lanes.row_of[coop.vehicle.id]
            parts = disruption_parts(
                coop.vehicle.x_m, coop.vehicle.v_mps, float(world.x_m[row]), float(world.speed_mps[row]),
                world.time_s - self.plan.t0_s, self.p,
            )  # fmt: skip
            dx, dv = dx + parts[0], dv + parts[1]
        self.record.disruption_position_executed = dx
        self.record.disruption_speed_executed = dv
        self.record.disruption_executed = dx + dv

    def _finish(self, status: str, reason: str) -> list[Command]:
        self.record.status, self.record.reason = status, reason
        self.record.energy_executed_m2ps3 = self.energy
        self.record.min_slack_executed_m = self.min_slack
        c_id = self.plan.changer.id
        if status == "aborted" and self.phase in ("longitudinal", "certify"):
            # C may be closing in on U for the lane change that will not happen: it falls back
            # behind U under control and is handed back to SUMO only once that is done
            self.phase = "fallback"
            released = [vid for vid in self.tracked if vid != c_id]
            self.tracked = {c_id: self.tracked[c_id]}
            return [Release(vid) for vid in released]
        self.phase = "done"
        return [Release(vid) for vid in self.tracked]

    def _fall_back(self, world: WorldState, lanes: Lanes, c_row: int) -> list[Command]:
        """Follow the actual leader, u = k_g·(gap − φv − δ) + k_v·(v_lead − v), until C is no faster
        than it and at a safe distance (or for 10 s at most), then release C."""
        c_id = self.plan.changer.id
        if self.t_abort is None:
            self.t_abort = world.time_s
        lead = lanes.leader(c_row)
        v = float(world.speed_mps[c_row])
        if lead is None:
            self.phase = "done"
            return [Release(c_id)]
        gap = float(world.x_m[lead] - world.length_m[lead] - world.x_m[c_row])
        slack = gap - self.p.headway.gap_m(v)
        v_lead = float(world.speed_mps[lead])
        if (slack >= 0 and v <= v_lead + 0.3) or world.time_s > self.t_abort + 10.0:
            self.phase = "done"
            return [Release(c_id)]
        u = min(self.p.u_max_mps2, max(self.p.u_min_mps2, 0.25 * slack + 0.8 * (v_lead - v)))
        return [Accelerate(c_id, min(u, safe_accel(c_row, world, lanes, self.p)))]


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


class CooperativeLaneChange(Controller):
    """Cooperative, minimally disruptive lane changes of CAVs stuck behind slower leaders."""

    Params = CooperativeParams
    # CAVs keep their lane unless told (strategic changes only); commanded ones obey exactly
    modes = ControlModes(speed_mode=32, lane_change_mode=0, idle_speed_mode=31, idle_lane_change_mode=257)
    cooperation = True

    def __init__(self, params: CooperativeParams, setup: ControlSetup) -> None:
        super().__init__(params, setup)
        self.planner = Planner(params, setup, cooperation=self.cooperation)
        self.active: list[Maneuver] = []
        self.records: list[ManeuverRecord] = []
        self.autonomous = True  # serve stuck CAVs on its own; if not, only `request` starts maneuvers
        self._next_scan_s = 0.0
        self._retry_at: dict[str, float] = {}

    def step(self, world: WorldState) -> list[Command]:
        if not len(world):
            return []
        lanes = Lanes(world)
        commands: list[Command] = []
        for m in self.active:
            commands += m.step(world, lanes)
            if m.phase == "done":
                self.records.append(m.record)
        self.active = [m for m in self.active if m.phase != "done"]
        if self.autonomous and world.time_s >= self._next_scan_s - 1e-9:
            self._next_scan_s = world.time_s + self.params.scan_period_s
            commands += self._serve_requests(world, lanes)
        return commands

    def maneuvering(self, vehicle_id: str) -> bool:
        """Whether a maneuver of this controller commands the vehicle now."""
        return any(vehicle_id in m.vehicles for m in self.active)

    def request(self, world: WorldState, vehicle_id: str, target_lane: int) -> tuple[ManeuverRecord, list[Command]]:
        """Plan a lane change of `vehicle_id` into `target_lane` now (for vehicles that ask rather than
        wait for the scan, e.g. an RL agent); the record says whether a maneuver started, and why not."""
        lanes = Lanes(world)
        row = lanes.row_of[vehicle_id]
        lead = lanes.leader(row)
        why = ""
        if vehicle_id in self._busy():
            why = "the vehicle is in a maneuver already"
        elif lead is None:
            why = "no leader ahead (the planner plans behind one)"
        elif world.x_m[lead] - world.length_m[lead] - world.x_m[row] < self.params.headway.gap_m(world.speed_mps[row]):
            why = "not at a safe distance behind the leader"
        elif str(world.ids[lead]) in self._busy():
            why = "the leader is in a maneuver"
        if why:
            record = ManeuverRecord(world.time_s, vehicle_id, str(world.ids[lead]) if lead is not None else "",
                                    target_lane, "infeasible", why)  # fmt: skip
            self.records.append(record)
            return record, []
        record, _, commands = self._start(world, lanes, row, lead, target_lane)
        return record, commands

    def _busy(self) -> set[str]:
        return {
            vid
            for m in self.active
            for vid in (
                *m.vehicles,
                m.plan.front.vehicle.id if m.plan.front else "",
                m.plan.rear.vehicle.id if m.plan.rear else "",
            )
        } - {""}

    def _serve_requests(self, world: WorldState, lanes: Lanes) -> list[Command]:
        p, t = self.params, world.time_s
        commands: list[Command] = []
        top_lane = self.setup.lanes - 1
        eligible = world.is_cav & (world.lane >= 0) & (world.lane < top_lane) & (world.x_m >= p.request_after_m)
        for row in np.flatnonzero(eligible).tolist():
            vid = str(world.ids[row])
            if vid in self._busy() or self._retry_at.get(vid, -math.inf) > t:
                continue
            lead = lanes.leader(row)
            if lead is None:
                continue
            gap = world.x_m[lead] - world.length_m[lead] - world.x_m[row]
            target = int(world.lane[row]) + 1
            flow = lanes.mean_speed(target, world.x_m[row] - p.search_behind_m, world.x_m[row] + p.search_ahead_m)
            flow = min(self.setup.speed_limit_mps if flow is None else flow, p.v_max_mps)
            if gap > p.request_gap_m or flow - world.speed_mps[lead] < p.request_speed_gain_mps:
                continue
            if gap < p.headway.gap_m(world.speed_mps[row]):
                continue  # not yet at a safe distance behind U (a cut-in): wait until it is
            if str(world.ids[lead]) in self._busy():
                continue  # U is in a maneuver of its own: it will not cruise as predicted
            _, maneuver, started = self._start(world, lanes, row, lead, target)
            if maneuver is None:
                self._retry_at[vid] = t + p.retry_after_s
            commands += started
        return commands

    def _start(
        self, world: WorldState, lanes: Lanes, row: int, lead: int, target: int
    ) -> tuple[ManeuverRecord, Maneuver | None, list[Command]]:
        """Plan a request and start its maneuver if there is a plan; the request is recorded either way."""
        p = self.params
        outcome = self.planner.plan(lanes, row, lead, target, self._busy())
        record = ManeuverRecord(
            request_time_s=world.time_s, vehicle_id=str(world.ids[row]), leader_id=str(world.ids[lead]),
            target_lane=target, status=outcome.status, reason=outcome.reason, candidates=outcome.candidates,
            solve_time_changer_s=outcome.solve_time_changer_s, solve_time_slots_s=outcome.solve_time_slots_s,
        )  # fmt: skip
        if outcome.plan is None:
            self.records.append(record)
            return record, None, []
        plan = outcome.plan
        dx, dv = plan.disruption
        record.front_id = plan.front.vehicle.id if plan.front else ""
        record.rear_id = plan.rear.vehicle.id if plan.rear else ""
        record.cooperators = len(plan.cooperators)
        record.relaxations = plan.relaxations
        record.longitudinal_time_s = plan.duration_s
        record.disruption_position_planned, record.disruption_speed_planned = dx, dv
        record.disruption_planned = dx + dv
        record.energy_planned_m2ps3 = plan.changer_plan.energy_m2ps3 + sum(
            c.plan.energy_m2ps3 for c in plan.cooperators
        )
        record.min_slack_planned_m = plan.min_slack_m
        maneuver = Maneuver(plan, record, p, self.setup)
        self.active.append(maneuver)
        return record, maneuver, maneuver.step(world, lanes)

    def report(self) -> ControllerReport:
        records = [*self.records, *(m.record for m in self.active)]
        for m in self.active:  # still running when the simulation ended (not those falling back after an abort)
            if m.record.status == "planned":
                m.record.status, m.record.reason = "unfinished", "the simulation ended first"
        rows = [asdict(r) for r in records]
        done = [r for r in records if r.status == "completed"]
        metrics = {
            "requests": len(records),
            "maneuvers_completed": len(done),
            "maneuvers_aborted": sum(r.status == "aborted" for r in records),
            "requests_infeasible": sum(r.status == "infeasible" for r in records),
            "mean_maneuver_time_s": _mean([r.maneuver_time_s for r in done]),
            "mean_disruption_planned": _mean([r.disruption_planned for r in done]),
            "mean_disruption_executed": _mean([r.disruption_executed for r in done]),
            "mean_relaxations": _mean([r.relaxations for r in done]),
            "min_slack_executed_m": min((r.min_slack_executed_m for r in done), default=math.nan),
        }
        columns = [f.name for f in fields(ManeuverRecord)]
        return ControllerReport(tables={"maneuvers": Table(columns, rows)}, metrics=metrics)


class SelfishLaneChange(CooperativeLaneChange):
    """Baseline: C takes the nearest gap as fast as it can; nobody cooperates."""

    cooperation = False


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan
