"""Executing a `LaneChangePlan` step by step: tracking, certification of the slot, the lane change,
hand-back, and the fallback behind U after an abort; `ManeuverRecord` is what becomes of a request."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cavlab.controllers.base import ControlSetup
from cavlab.controllers.cooperative.params import CooperativeParams
from cavlab.controllers.cooperative.planner import LaneChangePlan, Plan, disruption_parts
from cavlab.controllers.cooperative.safety import barrier, safe_accel, sumo_safe_speed
from cavlab.controllers.cooperative.snapshot import Lanes, lane_end_ahead
from cavlab.world import Accelerate, ChangeLane, Command, Release, WorldState


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
    replans: int = 0  # plans replaced while the maneuver ran (receding horizon, a new slot)
    numeric_solves: int = 0  # QP and NLP solves of the request's planning
    cut_ins: int = 0  # vehicles outside the maneuver that changed lanes into the gap ahead of one of its vehicles


class Maneuver:
    """Executes one `LaneChangePlan` step by step."""

    def __init__(self, plan: LaneChangePlan, record: ManeuverRecord, params: CooperativeParams, setup: ControlSetup,
                 cut_in: Callable[[WorldState, int], bool]):  # fmt: skip
        """`cut_in(world, row)`: whether the vehicle of that row just changed into its lane."""
        self.plan = plan
        self.cut_in = cut_in
        self._cut_in: dict[str, str] = {}  # a maneuver vehicle -> the vehicle that cut in ahead of it
        self.record = record
        self.p = params
        self.dt = setup.step_length_s
        self.t_lat = setup.lane_change_duration_s
        self.lane_ends_m = setup.lane_ends_m
        self.edge_lanes = setup.edge_lanes
        self.sumo_headways = setup.sumo_headways
        self.phase: Literal["longitudinal", "certify", "lateral", "fallback", "done"] = "longitudinal"
        self.t_abort: float | None = None
        self.t_lane_change: float | None = None
        self.energy = 0.0
        self.min_slack = math.inf
        self.tracked: dict[str, Plan] = {}
        self.first_state: dict[str, tuple[float, float, float]] = {}  # a cooperator's (t, x, v) when it joined
        self._released_parts = (0.0, 0.0)  # the executed (D_x, D_v) of cooperators a new plan released
        self.next_replan_s = plan.t0_s + params.replan_period_s
        self._track(plan)

    def _track(self, plan: LaneChangePlan) -> None:
        self.tracked = {plan.changer.id: plan.changer_plan}
        for coop in plan.cooperators:
            self.tracked[coop.vehicle.id] = coop.plan
            self.first_state.setdefault(coop.vehicle.id, (plan.t0_s, coop.vehicle.x_m, coop.vehicle.v_mps))

    def replace(self, plan: LaneChangePlan, world: WorldState, lanes: Lanes) -> list[Command]:
        """Go on with a new plan for the same C (re-planned from the measured state): back to the
        longitudinal phase; cooperators the new plan does not use are released."""
        old = set(self.tracked)
        self.plan = plan
        self._track(plan)
        gone = sorted(vid for vid in old - set(self.tracked) if vid in self.first_state)
        released = {vid: self.first_state.pop(vid) for vid in gone}
        dx, dv = self._executed_parts(released, world, lanes)
        self._released_parts = (self._released_parts[0] + dx, self._released_parts[1] + dv)
        self.phase = "longitudinal"
        self.record.replans += 1
        self.record.front_id = plan.front.vehicle.id if plan.front else ""
        self.record.rear_id = plan.rear.vehicle.id if plan.rear else ""
        self.record.cooperators = len(plan.cooperators)
        self.record.longitudinal_time_s = plan.t0_s + plan.duration_s - self.record.request_time_s
        return [Release(vid) for vid in sorted(old - set(self.tracked))]

    def slot_intact(self, world: WorldState, lanes: Lanes) -> bool:
        """Whether the slot's front and rear vehicles are still in the target lane, with no vehicle
        between them (nobody cut into the slot)."""
        ids = [str(world.ids[r]) for r in lanes.in_lane(self.plan.target_lane)]
        at = [ids.index(c.vehicle.id) if c.vehicle.id in ids else None for c in (self.plan.front, self.plan.rear)
              if c is not None]  # fmt: skip
        if None in at:
            return False
        return len(at) < 2 or at[0] == at[1] + 1

    def certified_now(self, world: WorldState, lanes: Lanes) -> bool:
        """Whether C could change lanes now (the target lane beside it, the gaps safe)."""
        return self._target_beside(world, lanes.row_of[self.plan.changer.id]) and self._certified(world, lanes)

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
        if self.phase in ("longitudinal", "certify") and self._lane_changed(world, lanes):
            self.phase = "done"  # SUMO's lane change under way at the request: nobody is held any more
            return self._finish("aborted", "a vehicle of the maneuver changed lanes on its own")
        self._account(world, lanes)
        t_f = p.t0_s + p.duration_s
        if self.phase == "longitudinal" and t >= t_f - 1e-9:
            self._record_executed(world, lanes)
            self.phase = "certify"
        commands: list[Command] = []
        if self.phase == "certify":
            if self.certified_now(world, lanes):
                commands.append(ChangeLane(c_id, p.target_lane, hold_s=self.t_lat + self.p.certify_timeout_s + 1.0))
                self.phase, self.t_lane_change = "lateral", t
            elif t > t_f + self.p.certify_timeout_s:
                return self._finish("aborted", "slot not certified on the measured state")
        if self.phase == "lateral" and self.t_lane_change is not None:
            if world.lane[c_row] == p.target_lane and t >= self.t_lane_change + self.t_lat - 1e-9:
                self.record.maneuver_time_s = t - self.record.request_time_s
                return self._finish("completed", "")
            if t > self.t_lane_change + self.t_lat + self.p.certify_timeout_s:
                return self._finish("aborted", "the lane change did not complete")
        for vid, arc in self.tracked.items():
            u = arc.mean_accel(t, self.dt) if self.phase == "longitudinal" else 0.0
            commands.append(Accelerate(vid, self._safe(u, lanes.row_of[vid], world, lanes)))
        return commands

    def _lane_changed(self, world: WorldState, lanes: Lanes) -> bool:
        """Whether C left its lane, or a cooperator the target lane, before the lane change."""
        lane_of = {vid: int(world.lane[lanes.row_of[vid]]) for vid in self.tracked}
        c_id = self.plan.changer.id
        return lane_of[c_id] != self.plan.changer.lane or any(
            lane != self.plan.target_lane for vid, lane in lane_of.items() if vid != c_id
        )

    def _target_beside(self, world: WorldState, row: int) -> bool:
        """Whether the target lane exists on C's edge now (an on-ramp joins the road only further on)."""
        if not self.edge_lanes:
            return True
        lo, hi = self.edge_lanes[int(world.edge[row])]
        return lo <= self.plan.target_lane <= hi

    def _safe(self, u: float, row: int, world: WorldState, lanes: Lanes) -> float:
        """The plan's u, unless the measured leader (which need not behave as predicted) is too
        close: see `safe_accel`. In the lateral phase C occupies both lanes: it keeps its barrier to
        the target lane's vehicle ahead of it too, the vehicles of the maneuver behind it in the
        target lane keep theirs to C, and C's old lane's end does not brake it while C crosses over
        before it (`_flips_before_end`)."""
        ends, also = self.lane_ends_m, ()
        if self.phase == "lateral":
            c_row = lanes.row_of[self.plan.changer.id]
            target = self.plan.target_lane
            if row == c_row:
                if world.lane[c_row] != target:
                    front, _ = lanes.beside(c_row, target)
                    also = () if front is None else (front,)
                    if self._flips_before_end(world, c_row):
                        ends = None
            elif world.lane[c_row] != target and world.x_m[c_row] > world.x_m[row]:
                lead = lanes.leader(row)
                if lead is None or world.x_m[lead] > world.x_m[c_row]:
                    also = (c_row,)
        return min(u, safe_accel(row, world, lanes, self.p, self.dt, ends, also))

    def _flips_before_end(self, world: WorldState, c_row: int) -> bool:
        """Whether C, at its speed now, is across in the target lane (half-way through the lateral
        phase, where SUMO moves it over) δ before its old lane ends, if that lane ends."""
        end_m = lane_end_ahead(self.lane_ends_m, world, c_row)
        if end_m is None:
            return True
        started = world.time_s if self.t_lane_change is None else self.t_lane_change
        to_flip_s = max(0.0, started + self.t_lat / 2 - world.time_s)
        x, v = float(world.x_m[c_row]), float(world.speed_mps[c_row])
        return x + v * to_flip_s + self.p.standstill_gap_m <= end_m

    def _certified(self, world: WorldState, lanes: Lanes) -> bool:
        """Safe gaps to the target lane's actual neighbours now and, at constant speeds, through the
        lateral phase (a gap that changes linearly: both ends suffice), and, where C's lane ends, C
        across before the end (`_flips_before_end`)."""
        c_row = lanes.row_of[self.plan.changer.id]
        if not self._flips_before_end(world, c_row):
            return False
        x_c, v_c, l_c = (float(a[c_row]) for a in (world.x_m, world.speed_mps, world.length_m))
        f, r = lanes.beside(c_row, self.plan.target_lane)
        v = world.speed_mps
        for horizon in (0.0, self.t_lat):
            if f is not None:
                gap = (world.x_m[f] + v[f] * horizon) - world.length_m[f] - (x_c + v_c * horizon)
                if barrier(float(gap), v_c, float(v[f]), self.p) < 0:
                    return False
            if r is not None:
                gap = (x_c + v_c * horizon) - l_c - (world.x_m[r] + v[r] * horizon)
                if barrier(float(gap), float(v[r]), v_c, self.p) < 0:
                    return False
        return True

    def _account(self, world: WorldState, lanes: Lanes) -> None:
        """Energy, and the least slack behind the actual leaders, but for the time from a cut-in (a
        vehicle outside the maneuver that changed into the lane just ahead, `cut_in`) until the
        follower has its safe gap back: those are counted in `cut_ins`."""
        for vid in self.tracked:
            row = lanes.row_of[vid]
            self.energy += 0.5 * float(world.accel_mps2[row]) ** 2 * self.dt
            lead = lanes.leader(row)
            if lead is None:
                continue
            lead_id = str(world.ids[lead])
            slack = float(world.x_m[lead] - world.length_m[lead] - world.x_m[row]
                          - self.p.headway.gap_m(world.speed_mps[row]))  # fmt: skip
            if lead_id not in self.tracked and self._cut_in.get(vid) != lead_id and self.cut_in(world, lead):
                self._cut_in[vid] = lead_id
                self.record.cut_ins += 1
            if self._cut_in.get(vid) == lead_id and slack < 0:
                continue
            self._cut_in.pop(vid, None)
            self.min_slack = min(self.min_slack, slack)

    def _executed_parts(self, states: dict[str, tuple[float, float, float]], world: WorldState, lanes: Lanes
                        ) -> tuple[float, float]:  # fmt: skip
        """Σ (D_x, D_v) of the vehicles of `states` (vid → (t0, x0, v0)) from those states to now."""
        dx = dv = 0.0
        for vid, (t0, x0, v0) in states.items():
            row = lanes.row_of.get(vid)
            if row is None:
                continue
            parts = disruption_parts(x0, v0, float(world.x_m[row]), float(world.speed_mps[row]), world.time_s - t0,
                                     self.p)  # fmt: skip
            dx, dv = dx + parts[0], dv + parts[1]
        return dx, dv

    def _record_executed(self, world: WorldState, lanes: Lanes) -> None:
        """Each cooperator's D_k from its state when it joined to now; one a new plan released counts
        with its D_k at the release (`replace`): after it, SUMO drove it."""
        dx, dv = self._executed_parts(self.first_state, world, lanes)
        dx, dv = dx + self._released_parts[0], dv + self._released_parts[1]
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
        """Follow the actual leader, u = k_g·(gap − φv − δ) + k_v·(v_lead − v), until C is at a safe
        distance from it with its closing speed shed at the comfortable rate, barrier h ≥ 0
        (`safety.barrier`), or for 10 s at most; then release C to SUMO. (Released only once no faster
        than its leader, a C far behind a slower one was driven towards it at u_max, past the
        vehicles about to merge in front of it that SUMO's own driver would have let in.) Released
        also only where SUMO's own driver of C's type (its tau and minGap) need not brake harder
        than |u_min| (released nearer, it braked harder than its type's decel at once); the gap
        followed is the larger of the controller's and SUMO's."""
        c_id = self.plan.changer.id
        if self.t_abort is None:
            self.t_abort = world.time_s
        lead = lanes.leader(c_row)
        v = float(world.speed_mps[c_row])
        if lead is None:
            self.phase = "done"
            return [Release(c_id)]
        gap = float(world.x_m[lead] - world.length_m[lead] - world.x_m[c_row])
        sumo = self.sumo_headways.get(world.type_names[world.type_index[c_row]], self.p.headway)
        slack = gap - max(self.p.headway.gap_m(v), sumo.gap_m(v))
        v_lead = float(world.speed_mps[lead])
        b = -self.p.u_min_mps2  # released only where SUMO's driver brakes by at most one step at b
        at_ease = sumo_safe_speed(gap, v_lead, sumo, b) >= v - b * self.dt
        if (at_ease and barrier(gap, v, v_lead, self.p) >= 0) or world.time_s > self.t_abort + 10.0:
            self.phase = "done"
            return [Release(c_id)]
        u = min(self.p.u_max_mps2, max(self.p.u_min_mps2, 0.25 * slack + 0.8 * (v_lead - v)))
        return [Accelerate(c_id, min(u, safe_accel(c_row, world, lanes, self.p, self.dt, self.lane_ends_m)))]
