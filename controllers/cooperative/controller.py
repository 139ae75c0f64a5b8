"""The controllers: `CooperativeLaneChange` (serves stuck CAVs, plans, runs the maneuvers, reports)
and its `SelfishLaneChange` baseline."""

from __future__ import annotations

import math
from dataclasses import asdict, fields

import numpy as np

from cavlab.controllers.base import Controller, ControllerReport, ControlSetup, Table
from cavlab.controllers.cooperative.maneuver import Maneuver, ManeuverRecord
from cavlab.controllers.cooperative.params import CooperativeParams
from cavlab.controllers.cooperative.planner import OFF_GRID, SLOT_GONE, Planner, PlanOutcome
from cavlab.controllers.cooperative.snapshot import (
    CarFollowing,
    Lanes,
    Vehicle,
    continuing_lane,
    lane_end_ahead,
    on_edge,
)
from cavlab.controllers.cooperative.zipper import merges, zipper_caps
from cavlab.controllers.longitudinal import Headway
from cavlab.world import CapSpeed, Command, ControlModes, HoldLane, Release, WorldState


class CooperativeLaneChange(Controller):
    """Cooperative, minimally disruptive lane changes: discretionary ones of CAVs stuck behind slower
    leaders, and mandatory ones of CAVs whose lane ends (an on-ramp's acceleration lane, a lane drop)."""

    Params = CooperativeParams
    # commanded vehicles obey exactly; outside a maneuver every CAV drives as SUMO's own (LC2013), so
    # a refused or aborted request leaves the lane change to SUMO
    modes = ControlModes(speed_mode=32, lane_change_mode=0)
    cooperation = True

    def __init__(self, params: CooperativeParams, setup: ControlSetup) -> None:
        super().__init__(params, setup)
        self.planner = Planner(params, setup, cooperation=self.cooperation)
        self.active: list[Maneuver] = []
        self.records: list[ManeuverRecord] = []
        self.autonomous = True  # serve stuck CAVs on its own; if not, only `request` starts maneuvers
        self._next_scan_s = 0.0
        self._retry_at: dict[str, float] = {}
        self._refusals: dict[str, int] = {}  # consecutive refused requests per CAV
        self._held_since: dict[str, float] = {}  # CAVs claimed (`HoldLane`) for a request, since when
        self._lane_of_slot = np.full(0, -99, dtype=np.int16)  # per vehicle slot: its lane at the last step
        self._flip_time_s = np.zeros(0)  # ... and when its lane index last changed
        self._waiting_since: dict[str, float] = {}
        self._guards: set[str] = set()  # CAVs held in lane beside a slot (`_guard_slots`)
        self._merges = merges(setup) if self.cooperation and params.zipper_zone_m > 0 else []
        self._capped: set[str] = set()  # CAVs under the zipper's speed cap (`_zipper`)
        self._following = (
            CarFollowing(dict(setup.sumo_headways), params.headway, -params.u_min_mps2)
            if params.predict_following else None
        )  # fmt: skip

    def step(self, world: WorldState) -> list[Command]:
        if not len(world):
            return []
        lanes = Lanes(world, self._following)
        self._note_lane_flips(world)
        commands: list[Command] = []
        for m in self.active:
            if self.params.replan_period_s > 0 and m.phase in ("longitudinal", "certify") \
                    and world.time_s >= m.next_replan_s - 1e-9:  # fmt: skip
                commands += self._replan(world, lanes, m)
            elif m.phase == "longitudinal" and not m.slot_intact(world, lanes):
                commands += self._new_slot(world, lanes, m)
            commands += m.step(world, lanes)
            if m.phase == "done":
                self.records.append(m.record)
        self.active = [m for m in self.active if m.phase != "done"]
        if self.autonomous and world.time_s >= self._next_scan_s - 1e-9:
            self._next_scan_s = world.time_s + self.params.scan_period_s
            commands += self._serve_requests(world, lanes)
        commands += self._guard_slots(world, lanes)
        if self.autonomous:
            commands += self._zipper(world, lanes)
        return commands

    def _zipper(self, world: WorldState, lanes: Lanes) -> list[Command]:
        """Cap the speeds of the CAVs near each lane end that no maneuver drives (`zipper_caps`); lift the
        caps of all others capped before (those that left the zone, and on an external network those on a
        junction, which the controller does not see as CAVs; a cap of a vehicle a maneuver took over is gone)."""
        if not self._merges:
            return []
        free = world.is_cav & ~world.controlled
        for vid in self._busy():
            row = lanes.row_of.get(vid)
            if row is not None:
                free[row] = False
        caps: dict[int, float] = {}
        for merge in self._merges:
            caps.update(zipper_caps(lanes, merge, self.params, self.setup, free))
        capped = {str(world.ids[row]) for row in caps}
        commands: list[Command] = [CapSpeed(str(world.ids[row]), cap) for row, cap in caps.items()]
        commands += [CapSpeed(vid, math.inf) for vid in sorted(self._capped - capped) if vid in lanes.row_of]
        self._capped = capped
        return commands

    def _guard_slots(self, world: WorldState, lanes: Lanes) -> list[Command]:
        """Hold in lane (`HoldLane`) the CAVs beside a slot that is being opened, in the lanes either
        side of the target lane, from `guard_margin_m` behind its rear vehicle to as far ahead of
        its front one (C where one is missing), until the lane change is issued: the slot is for C
        (human drivers may still take it: the maneuver is then not certified and aborts)."""
        margin, guards = self.params.guard_margin_m, set()
        for m in self.active if self.params.guard_slots else ():
            if m.phase not in ("longitudinal", "certify") or m.plan.changer.id not in lanes.row_of:
                continue
            x_c = float(world.x_m[lanes.row_of[m.plan.changer.id]])
            ends = [float(world.x_m[lanes.row_of[c.vehicle.id]]) for c in (m.plan.rear, m.plan.front)
                    if c is not None and c.vehicle.id in lanes.row_of]  # fmt: skip
            lo, hi = min([x_c, *ends]) - margin, max([x_c, *ends]) + margin
            for lane in (m.plan.target_lane - 1, m.plan.target_lane + 1):
                rows = lanes.in_lane(lane)
                xs = world.x_m[rows]
                for row in rows[np.searchsorted(xs, lo):np.searchsorted(xs, hi, side="right")]:
                    if world.is_cav[row]:
                        guards.add(str(world.ids[row]))
        taken = self._busy() | set(self._held_since)  # held or driven by a maneuver or a claim already
        guards -= taken
        commands: list[Command] = [HoldLane(vid) for vid in sorted(guards - self._guards)]
        commands += [Release(vid) for vid in sorted(self._guards - guards - taken) if vid in lanes.row_of]
        self._guards = guards
        return commands

    def _note_lane_flips(self, world: WorldState) -> None:
        """When each vehicle's lane index last changed (per slot, vectorised)."""
        if world.slot.max() >= self._lane_of_slot.size:
            size = 2 * int(world.slot.max()) + 1024
            self._lane_of_slot = np.concatenate([self._lane_of_slot, np.full(size - self._lane_of_slot.size, -99,
                                                                                  dtype=np.int16)])  # fmt: skip
            self._flip_time_s = np.concatenate([self._flip_time_s, np.full(size - self._flip_time_s.size, -np.inf)])
        before = self._lane_of_slot[world.slot]
        flipped = (before != world.lane) & (before != -99)
        self._flip_time_s[world.slot[flipped]] = world.time_s
        self._lane_of_slot[world.slot] = world.lane

    def _flipped_within(self, world: WorldState, row: int, lane_changes: float) -> bool:
        """Whether the vehicle's lane index flipped less than `lane_changes`·t_lat ago. The index flips in
        the middle of a lane change: within ½ SUMO may still be moving it across (the first half is not
        visible in the world state; a maneuver whose vehicle turns up in another lane is aborted); within
        1, seen from behind, it cut in."""
        age = world.time_s - self._flip_time_s[world.slot[row]]
        return age < lane_changes * self.setup.lane_change_duration_s + 1e-9

    @property
    def safe_gap(self) -> Headway:
        return self.params.headway

    def maneuvering(self, vehicle_id: str) -> bool:
        """Whether a maneuver of this controller commands the vehicle now."""
        return any(vehicle_id in m.vehicles for m in self.active)

    def request(self, world: WorldState, vehicle_id: str, target_lane: int) -> tuple[ManeuverRecord, list[Command]]:
        """Plan a lane change of `vehicle_id` into `target_lane` now (for vehicles that ask rather than
        wait for the scan, e.g. an RL agent); the record says whether a maneuver started, and why not."""
        lanes = Lanes(world, self._following)
        row = lanes.row_of[vehicle_id]
        lead = lanes.leader(row)
        u = lanes.vehicle(lead) if lead is not None else None
        why = ""
        if vehicle_id in self._busy():
            why = "the vehicle is in a maneuver already"
        elif u is None and self._lane_end(world, row) is None:
            why = "no leader ahead (the planner plans behind one, or before its lane's end)"
        elif u is not None and u.x_m - u.length_m - world.x_m[row] < self.params.headway.gap_m(world.speed_mps[row]):
            why = "not at a safe distance behind the leader"
        elif u is not None and u.id in self._busy():
            why = "the leader is in a maneuver"
        if why:
            record = ManeuverRecord(world.time_s, vehicle_id, u.id if u is not None else "", target_lane,
                                    "infeasible", why)  # fmt: skip
            self.records.append(record)
            return record, []
        record, _, commands = self._start(world, lanes, row, u, target_lane)
        return record, commands

    def _lane_end(self, world: WorldState, row: int) -> float | None:
        return lane_end_ahead(self.setup.lane_ends_m, world, row)

    def _busy(self, besides: Maneuver | None = None) -> set[str]:
        """The vehicles of the running maneuvers (but `besides`) and their slots' front and rear."""
        return {
            vid
            for m in self.active
            if m is not besides
            for vid in (
                *m.vehicles,
                m.plan.front.vehicle.id if m.plan.front else "",
                m.plan.rear.vehicle.id if m.plan.rear else "",
            )
        } - {""}

    def _beside(self, world: WorldState, row: int, lane: int) -> bool:
        """Whether `lane` exists on the vehicle's edge (it could change into it now)."""
        return on_edge(self.setup, int(world.edge[row]), lane)

    def _serve_requests(self, world: WorldState, lanes: Lanes) -> list[Command]:
        p, t = self.params, world.time_s
        commands: list[Command] = []
        ends = self.setup.lane_ends_m
        waiting: set[str] = set()  # the CAVs that want a lane change now
        for row in np.flatnonzero(world.is_cav).tolist():
            vid = str(world.ids[row])
            if vid in self._busy() or self._retry_at.get(vid, -math.inf) > t or self._flipped_within(world, row, 0.5):
                continue
            edge, lane, x = int(world.edge[row]), int(world.lane[row]), float(world.x_m[row])
            end_m = ends.get((edge, lane), math.inf)
            if x < end_m < math.inf:  # mandatory: the lane ends ahead
                target = continuing_lane(self.setup, edge, lane, end_m)
                if end_m - x > p.mandatory_range_m or target is None:
                    continue  # too early, or the target lane is not beside it yet (an on-ramp's own edge)
                lead = lanes.leader(row)
                u = lanes.vehicle(lead) if lead is not None and world.x_m[lead] < end_m else None
                close = u is not None and u.x_m - u.length_m - x < p.headway.gap_m(world.speed_mps[row])
                if close or (u is not None and u.id in self._busy()):
                    continue  # not yet at a safe distance behind its leader, or the leader maneuvers: wait
                if self._flow_speed(lanes, target, x) < p.min_flow_speed_mps or self._saturated(lanes, target, x):
                    continue  # a congested or saturated target lane: LC2013's zipper merge, nobody slows down in it
                if not self._patient(vid, t, waiting) or not self._claimed(world, lanes, row, u, target, commands):
                    continue  # LC2013 has the first go; then SUMO must have finished any lane change it began
                commands += self._request(world, lanes, row, u, target)
                continue
            target = lane + 1
            if lane < 0 or x < p.request_after_m or not self._beside(world, row, target) or (edge, target) in ends:
                continue  # no lane to the left here, or one that ends ahead (the CAV would have to leave it again)
            if self._zipping(lane, x):
                continue  # near a lane end that merges into this lane: the CAV is the zipper's
            lead = lanes.leader(row)
            if lead is None:
                continue
            gap = world.x_m[lead] - world.length_m[lead] - world.x_m[row]
            flow = self._flow_speed(lanes, target, x)
            if gap > p.request_gap_m or flow - world.speed_mps[lead] < p.request_speed_gain_mps \
                    or flow < p.min_flow_speed_mps or self._saturated(lanes, target, x):  # fmt: skip
                continue
            if gap < p.headway.gap_m(world.speed_mps[row]):
                continue  # not yet at a safe distance behind U (a cut-in): wait until it is
            if str(world.ids[lead]) in self._busy():
                continue  # U is in a maneuver of its own: it will not cruise as predicted
            u = lanes.vehicle(lead)
            if not self._patient(vid, t, waiting) or not self._claimed(world, lanes, row, u, target, commands):
                continue  # LC2013 has the first go; then SUMO must have finished any lane change it began
            commands += self._request(world, lanes, row, u, target)
        self._waiting_since = {vid: s for vid, s in self._waiting_since.items() if vid in waiting}
        busy = self._busy()
        for vid in [vid for vid in self._held_since if vid not in waiting]:  # no longer asking: SUMO's again
            del self._held_since[vid]
            if vid not in busy:  # (a cooperator of another maneuver now: that one releases it)
                commands.append(Release(vid))
        return commands

    def _zipping(self, lane: int, x_m: float) -> bool:
        """Whether x lies within L_f before the zipper zone of a lane end merging into `lane` to L_r past
        the end: a discretionary maneuver there would take the zipper's CAVs out of it."""
        p = self.params
        return any(m.target_lane == lane and m.end_m - p.zipper_zone_m - p.search_ahead_m <= x_m
                   <= m.end_m + p.search_behind_m for m in self._merges)  # fmt: skip

    def _flow_speed(self, lanes: Lanes, lane: int, x_m: float) -> float:
        """The lane's mean speed in [x − L_r, x + L_f] (the speed limit if empty), capped at v_max, as the
        planner's v_flow."""
        p = self.params
        flow = lanes.mean_speed(lane, x_m - p.search_behind_m, x_m + p.search_ahead_m)
        return min(self.setup.speed_limit_mps if flow is None else flow, p.v_max_mps)

    def _saturated(self, lanes: Lanes, lane: int, x_m: float) -> bool:
        """Whether the lane's vehicles in [x − L_r, x + L_f] are packed closer than their safe spacing over
        `max_target_occupancy`: n·(φv̄ + δ + L̄)/(L_r + L_f) > max (v̄, L̄ their means): a lane near its
        capacity, where every gap opened by slowing down is flow lost."""
        p, w = self.params, lanes.world
        near = lanes.near(lane, x_m - p.search_behind_m, x_m + p.search_ahead_m)
        if not len(near):
            return False
        spacing = p.headway.gap_m(float(w.speed_mps[near].mean())) + float(w.length_m[near].mean())
        return len(near) * spacing / (p.search_behind_m + p.search_ahead_m) > p.max_target_occupancy

    def _claimed(self, world: WorldState, lanes: Lanes, row: int, u: Vehicle | None, target: int,
                 commands: list[Command]) -> bool:  # fmt: skip
        """Whether the CAV has been held in its lane (`HoldLane`) for t_lat/2: a lane change SUMO began
        before the hold has then flipped its lane index (and the request is dropped), so the plan
        starts from where the vehicle really is. The first call plans on the state as it is and holds
        the CAV only if that finds a plan: a request refused there is recorded and backed off without
        touching SUMO's lane changing (no side effect of a request that cannot be served)."""
        vid, t = str(world.ids[row]), world.time_s
        since = self._held_since.get(vid)
        if since is None:
            outcome = self.planner.plan(lanes, row, u, target, self._busy(), self._lane_end(world, row))
            if outcome.plan is None:
                self.records.append(self._record(world, row, u, target, outcome))
                self._back_off(vid, t, refused=True)
                return False
            self._held_since[vid] = t
            commands.append(HoldLane(vid))
            return False
        return t - since >= self.setup.lane_change_duration_s / 2 - 1e-9

    def _request(self, world: WorldState, lanes: Lanes, row: int, u: Vehicle | None, target: int) -> list[Command]:
        """Plan a claimed CAV's request: its maneuver's first commands, or its lane changing handed back
        to SUMO and the next request put off (`_back_off`)."""
        vid = str(world.ids[row])
        del self._held_since[vid]
        _, maneuver, started = self._start(world, lanes, row, u, target)
        self._back_off(vid, world.time_s, refused=maneuver is None)
        return started if maneuver is not None else [Release(vid)]

    def _replan(self, world: WorldState, lanes: Lanes, m: Maneuver) -> list[Command]:
        """Receding horizon, every `replan_period_s`: the slot planned again from the measured states
        (`Planner.replan`), kept open loop where that finds no plan; where the slot is gone (a vehicle
        cut into it, one of its vehicles left the lane) or, at the end of the longitudinal phase, is not
        certified, a new slot is planned as for a new request (while the maneuver is younger than
        `max_maneuver_s`). The maneuver goes on with any plan found."""
        p, t = self.params, world.time_s
        m.next_replan_s = t + p.replan_period_s
        row = lanes.row_of.get(m.plan.changer.id)
        if row is None or t - m.record.request_time_s > p.max_maneuver_s:
            return []  # left, or too old: the plan is finished open loop
        busy, end = self._busy(besides=m), self._lane_end(world, row)
        if m.phase == "longitudinal":
            plan, why = self.planner.replan(lanes, m.plan, busy, end)
            if plan is not None:
                return m.replace(plan, world, lanes)
            if why == OFF_GRID:
                m.next_replan_s = t + self.setup.step_length_s
            if why not in SLOT_GONE:
                return []
        elif m.certified_now(world, lanes):
            return []  # the lane change is issued now
        return self._new_slot(world, lanes, m)

    def _new_slot(self, world: WorldState, lanes: Lanes, m: Maneuver) -> list[Command]:
        """A running maneuver whose slot is gone (a vehicle cut into it, one of its vehicles left the
        lane) planned again as a new request from the measured state, while it is younger than
        `max_maneuver_s`; without a plan it goes on (and aborts if the slot is not certified)."""
        row = lanes.row_of.get(m.plan.changer.id)
        if row is None or world.time_s - m.record.request_time_s > self.params.max_maneuver_s:
            return []
        busy = self._busy(besides=m)
        lead = lanes.leader(row)
        u = lanes.vehicle(lead) if lead is not None else None
        if u is not None and u.id in busy:
            return []
        outcome = self.planner.plan(lanes, row, u, m.plan.target_lane, busy, self._lane_end(world, row))
        return m.replace(outcome.plan, world, lanes) if outcome.plan is not None else []

    def _back_off(self, vehicle_id: str, t: float, refused: bool) -> None:
        """After the n-th refusal in a row a CAV asks again only after min(2ⁿ⁻¹·retry_after_s,
        retry_after_max_s): a request refused once is likely refused again soon (the traffic around it
        changes slowly), and each costs a full slot search."""
        if not refused:
            self._refusals.pop(vehicle_id, None)
            return
        n = self._refusals[vehicle_id] = self._refusals.get(vehicle_id, 0) + 1
        p = self.params
        self._retry_at[vehicle_id] = t + min(p.retry_after_s * 2 ** (n - 1), max(p.retry_after_s, p.retry_after_max_s))

    def _patient(self, vehicle_id: str, t: float, waiting: set[str]) -> bool:
        """Whether a CAV that wants a lane change has wanted it for `request_patience_s` (outside its
        maneuvers a CAV is SUMO's: LC2013 takes the gaps there are first)."""
        waiting.add(vehicle_id)
        since = self._waiting_since.setdefault(vehicle_id, t)
        return t - since >= self.params.request_patience_s - 1e-9

    def _start(
        self, world: WorldState, lanes: Lanes, row: int, u: Vehicle | None, target: int
    ) -> tuple[ManeuverRecord, Maneuver | None, list[Command]]:
        """Plan a request and start its maneuver if there is a plan; the request is recorded either way."""
        p = self.params
        outcome = self.planner.plan(lanes, row, u, target, self._busy(), self._lane_end(world, row))
        record = self._record(world, row, u, target, outcome)
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
        maneuver = Maneuver(plan, record, p, self.setup, cut_in=lambda w, row: self._flipped_within(w, row, 1.0))
        self.active.append(maneuver)
        return record, maneuver, maneuver.step(world, lanes)

    @staticmethod
    def _record(world: WorldState, row: int, u: Vehicle | None, target: int, outcome: PlanOutcome) -> ManeuverRecord:
        """The record of a request planned now."""
        return ManeuverRecord(
            request_time_s=world.time_s, vehicle_id=str(world.ids[row]), leader_id=u.id if u is not None else "",
            target_lane=target, status=outcome.status, reason=outcome.reason, candidates=outcome.candidates,
            solve_time_changer_s=outcome.solve_time_changer_s, solve_time_slots_s=outcome.solve_time_slots_s,
            numeric_solves=outcome.numeric_solves,
        )  # fmt: skip

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
