"""The cooperative lane-change planner on hand-made traffic (no simulator)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from cavlab.controllers.base import ControlSetup
from cavlab.controllers.cooperative import CarFollowing, CooperativeParams, Lanes, Planner
from cavlab.controllers.longitudinal import Headway, min_slack
from cavlab.world import WorldState

from .test_ocp import opti_ocp

SETUP = ControlSetup(step_length_s=0.1, lanes=2, speed_limit_mps=33.33, lane_change_duration_s=3.0, seed=1)


def world(rows: list[tuple[str, int, float, float, bool]], t: float = 100.0) -> WorldState:
    """rows: (id, lane, x, v, is_cav); every vehicle 5 m long."""
    ids, lane, x, v, cav = zip(*rows, strict=True)
    n = len(rows)
    return WorldState(
        time_s=t, ids=np.array(ids, dtype=object), slot=np.arange(n), type_index=np.zeros(n, np.int16),
        is_cav=np.array(cav), controlled=np.zeros(n, bool), edge=np.zeros(n, np.int16),
        lane=np.array(lane, np.int16), x_m=np.array(x, float), speed_mps=np.array(v, float),
        accel_mps2=np.zeros(n), length_m=np.full(n, 5.0), type_names=("car",), edge_names=("main",),
    )  # fmt: skip


# The paper's setting: the slot's front and rear vehicles cooperate, the vehicles behind them are not
# modelled (`absorbing_followers=0`); tests of the follower protection say so.
PAPER = {"absorbing_followers": 0}


def plan(rows, params: CooperativeParams | None = None, cooperation: bool = True, busy: frozenset = frozenset()):
    w = world(rows)
    lanes = Lanes(w)
    planner = Planner(params or CooperativeParams(**PAPER), SETUP, cooperation=cooperation)
    c, u = lanes.row_of["C"], lanes.row_of["U"]
    return planner.plan(lanes, c, lanes.vehicle(u), 1, set(busy)), lanes


# C at 25 m/s behind a slow truck U; a tight platoon of CAVs on the fast lane at 28 m/s.
BASIC = [
    ("U", 0, 160.0, 22.0, False),
    ("C", 0, 100.0, 25.0, True),
    *[(f"F{i}", 1, 300.0 - 40.0 * i, 28.0, True) for i in range(8)],
]

# The same with room in the platoon (60 m spacing): only the front vehicle of the slot must move.
LOOSE = [
    ("U", 0, 160.0, 22.0, False),
    ("C", 0, 100.0, 25.0, True),
    *[(f"F{i}", 1, 400.0 - 60.0 * i, 28.0, True) for i in range(10)],
]

# A slower U (18 m/s) and a longer platoon: C falls back along the platoon as T grows, so the slots
# valid at different T lie between different pairs (found by relaxing, or when the best one is busy).
SLOW_U = [
    ("U", 0, 160.0, 18.0, False),
    ("C", 0, 100.0, 25.0, True),
    *[(f"F{i}", 1, 300.0 - 40.0 * i, 28.0, True) for i in range(14)],
]


def test_a_vehicle_closing_on_a_slower_leader_is_predicted_to_brake_to_its_safe_gap() -> None:
    """X at 30 m/s, 72.5 m behind the bumper of L at 20 m/s; X's type keeps tau·v + minGap = 1·v + 2.5 m:
    the safe gap behind L is 22.5 m, 50 m of room, so X brakes at a = 10²/(2·50) = 1 m/s² for 10 s and is
    then at 300 − 50 = 250 m and 20 m/s, 22.5 m behind L's bumper (277.5 − 5). A faster leader, a vehicle
    the controller commands, no room (braking at b) and no `CarFollowing` (a cruise) as stated."""
    following = CarFollowing({"car": Headway(1.0, 2.5)}, Headway(0.9, 3.0), max_brake_mps2=4.0)
    w = world([("L", 0, 77.5, 20.0, False), ("X", 0, 0.0, 30.0, False), ("F", 1, 0.0, 20.0, False),
               ("K", 1, 50.0, 30.0, False)], t=0.0)  # fmt: skip
    lanes = Lanes(w, following)
    x = lanes.vehicle(lanes.row_of["X"])
    assert math.isclose(x.brake_mps2, 1.0) and math.isclose(x.brake_s, 10.0) and math.isclose(x.v_settled_mps, 20.0)
    x10, v10, _ = x.predicted(0.0).state(10.0)
    assert math.isclose(x10, 250.0) and math.isclose(v10, 20.0)
    assert math.isclose(x.predicted(0.0).state(20.0)[0], 450.0)  # cruising at L's speed after
    assert lanes.vehicle(lanes.row_of["F"]).brake_s == 0.0  # its leader K is faster
    assert Lanes(w).vehicle(lanes.row_of["X"]).brake_s == 0.0
    close = Lanes(world([("L", 0, 20.0, 20.0, False), ("X", 0, 0.0, 30.0, False)], t=0.0), following)
    assert close.vehicle(close.row_of["X"]).brake_mps2 == 4.0  # inside its safe gap already: b
    commanded = world([("L", 0, 77.5, 20.0, False), ("X", 0, 0.0, 30.0, True)], t=0.0)
    commanded.controlled[1] = True
    assert Lanes(commanded, following).vehicle(1).brake_s == 0.0  # it follows its plan


def test_the_changer_keeps_its_gap_to_a_leader_that_brakes_for_a_slower_one() -> None:
    """BASIC with a slower truck U2 (16 m/s) 40 m ahead of U's bumper: U, driven by SUMO, will brake for it.
    Predicted to cruise, U lets C plan to close up: C's plan then runs 36 m into its safe gap behind U
    braking as `CarFollowing` predicts (U at 0.8 m/s² for 7.5 s); with the prediction, C's plan keeps
    the planning margin (1 m) behind it through the lateral phase."""
    params = CooperativeParams(**PAPER)
    w = world([("U2", 0, 205.0, 16.0, False), *BASIC])
    braking = Lanes(w, CarFollowing({}, params.headway, max_brake_mps2=-params.u_min_mps2))
    u_pred = braking.vehicle(braking.row_of["U"])
    assert 0.7 < u_pred.brake_mps2 < 0.9 and 7 < u_pred.brake_s < 8
    slack = {}
    for name, lanes in (("cruise", Lanes(w)), ("car-following", braking)):
        out = Planner(params, SETUP).plan(lanes, lanes.row_of["C"], lanes.vehicle(lanes.row_of["U"]), 1, set())
        assert out.status == "planned", out.reason
        p = out.plan
        slack[name] = min_slack(u_pred.predicted(p.t0_s), p.changer_plan, 5.0, params.headway, p.t0_s,
                                p.t0_s + p.duration_s + SETUP.lane_change_duration_s)[0]  # fmt: skip
    assert slack["cruise"] < -30.0
    assert slack["car-following"] >= params.planning_margin_m - 1e-6


def test_lanes_give_leaders_in_each_lane() -> None:
    lanes = Lanes(world(BASIC))
    assert lanes.world.ids[lanes.leader(lanes.row_of["C"])] == "U"
    assert lanes.leader(lanes.row_of["U"]) is None
    assert lanes.world.ids[lanes.leader(lanes.row_of["F3"])] == "F2"
    assert [lanes.world.ids[r] for r in lanes.in_lane(1)][:2] == ["F7", "F6"]


@pytest.mark.parametrize(("situation", "beta"), [("BASIC", 0.0), ("BASIC", 1.0), ("SLOW_U", 1.0), ("LOOSE", 1.0)])
def test_cooperator_plans_reach_the_optimum_of_an_independent_solver(situation: str, beta: float) -> None:
    """Every cooperator of the chosen slot: its plan's cost ∫½u² + β(v(T) − v_flow)² against CasADi
    Opti/IPOPT on the same problem (tests/test_ocp.py's `opti_ocp`, written from docs/theory.md): its
    end state on the slot's side of both lines of `_slot_bounds` (the gap at T and at the end of the
    lateral phase, planning margin included), safe behind its own leader (cruising) until the lateral phase
    ends (at constant speeds after T: a line in the end state too), u and v bounded.
    The oracle is discrete (piecewise-constant u on the 0.1 s steps, safety at the nodes) and the
    plan continuous, so they may differ by O(Δt²); a plan cheaper than the oracle by more than
    that, or dearer by more than 1 %, fails."""
    params = CooperativeParams(terminal_speed_weight=beta, max_disruption=1.0, **PAPER)
    rows = {"BASIC": BASIC, "SLOW_U": SLOW_U, "LOOSE": LOOSE}[situation]
    outcome, lanes = plan(rows, params)
    assert outcome.status == "planned", outcome.reason
    p = outcome.plan
    assert p.cooperators, "the slot needs cooperation"
    planner = Planner(params, SETUP)
    t_f = p.t0_s + p.duration_s
    x_c, v_c, _ = p.changer_plan.state(t_f)
    v_flow = lanes.mean_speed(p.target_lane, p.changer.x_m - params.search_behind_m,
                              p.changer.x_m + params.search_ahead_m)  # fmt: skip
    for coop in p.cooperators:
        veh = coop.vehicle
        v_pred = veh.predicted(p.t0_s).state(t_f)[1]  # a cruise: `plan` predicts no braking
        _, slot, lines = planner._slot_bounds(coop.role, veh, p.changer, x_c, v_c, v_pred)
        exact = tuple((slot[0], b, c) for b, c in lines)
        lead_row = lanes.leader(lanes.row_of[veh.id])
        lead = lanes.vehicle(lead_row) if lead_row is not None else None
        if lead is not None:  # x_L(T + t_lat) − L_L − (x(T) + v(T)·t_lat) ≥ φ·v(T) + δ
            t_end = p.duration_s + SETUP.lane_change_duration_s
            exact += (("rear", lead.x_m + lead.v_mps * t_end - lead.length_m - params.standstill_gap_m,
                       params.reaction_time_s + SETUP.lane_change_duration_s),)  # fmt: skip
        n = round(p.duration_s / SETUP.step_length_s)
        oracle = opti_ocp(n, x0_m=veh.x_m, v0_mps=veh.v_mps, v_ref_mps=v_flow, beta=beta, duration_s=p.duration_s,
                          leader=(lead.x_m, lead.v_mps, lead.length_m) if lead else None, slot=exact[0],
                          more_slots=exact[1:], limits=params.limits, headway=params.headway)  # fmt: skip
        _, v_T, _ = coop.plan.state(t_f)
        cost = coop.plan.energy_m2ps3 + beta * (v_T - v_flow) ** 2
        assert oracle.cost * (1 - 1e-3) - 1e-6 <= cost <= oracle.cost * 1.01 + 1e-6, (coop.role, cost, oracle.cost)


def test_planned_margins_hold_through_the_lateral_phase() -> None:
    outcome, _ = plan(BASIC)
    assert outcome.status == "planned", outcome.reason
    p = outcome.plan
    assert p.front is not None and p.rear is not None, "the slot lies inside the platoon"
    assert sum(p.disruption) <= CooperativeParams().max_disruption
    t = np.linspace(p.t0_s + p.duration_s, p.t0_s + p.duration_s + SETUP.lane_change_duration_s, 300)
    xc, vc, _ = p.changer_plan.state(t)
    hw = CooperativeParams().headway
    xf = p.front.plan.state(t)[0]
    assert np.all(xf - 5.0 - xc - hw.gap_m(vc) >= -1e-9)
    xr, vr, _ = p.rear.plan.state(t)
    assert np.all(xc - 5.0 - xr - hw.gap_m(vr) >= -1e-9)
    tt = np.linspace(p.t0_s, p.t0_s + p.duration_s + SETUP.lane_change_duration_s, 300)
    xc, vc, _ = p.changer_plan.state(tt)
    xu = 160.0 + 22.0 * (tt - p.t0_s)
    assert np.all(xu - 5.0 - xc - hw.gap_m(vc) >= -1e-9)


def test_relaxation_never_makes_the_best_disruption_worse() -> None:
    disruptions = []
    for k_max in range(8):
        outcome, _ = plan(SLOW_U, CooperativeParams(max_relaxations=k_max, **PAPER))
        disruptions.append(sum(outcome.plan.disruption) if outcome.plan else math.inf)
    assert all(later <= earlier + 1e-12 for earlier, later in itertools.pairwise(disruptions)), disruptions
    # not vacuous: a plan exists after one relaxation, and relaxing further finds a less disruptive one
    assert math.isfinite(disruptions[1]) and disruptions[-1] < disruptions[1] - 1e-3, disruptions


def test_infeasible_request_gives_a_reason() -> None:
    # a fast lane packed bumper to bumper by HDVs: no slot, nobody cooperates
    packed = [("U", 0, 160.0, 22.0, False), ("C", 0, 100.0, 25.0, False)]
    packed += [(f"H{i}", 1, 400.0 - 12.0 * i, 28.0, False) for i in range(40)]
    outcome, _ = plan(packed)
    assert outcome.status == "infeasible" and outcome.plan is None
    assert "do not cooperate" in outcome.reason


def test_a_rear_cav_that_need_not_move_holds_its_prediction() -> None:
    """LOOSE: only the slot's front vehicle must move (it speeds up to open the slot); the rear CAV need
    not, but the maneuver still drives it, cruising as predicted, at no disruption: left to SUMO, its
    driver follows the front one away into C's gap (the RL env's planner test aborted so with the
    prediction on). The same rear vehicle human-driven stays SUMO's."""
    out, _ = plan(LOOSE)
    assert out.status == "planned", out.reason
    p = out.plan
    T, t_f = p.duration_s, p.t0_s + p.duration_s
    front, rear = p.front, p.rear
    assert front.cooperates and front.plan.state(t_f)[0] > front.vehicle.x_m + front.vehicle.v_mps * T + 1.0
    assert rear.cooperates and {c.vehicle.id for c in p.cooperators} == {front.vehicle.id, rear.vehicle.id}
    x_r, v_r, _ = rear.plan.state(t_f)
    assert x_r == pytest.approx(rear.vehicle.x_m + rear.vehicle.v_mps * T) and v_r == pytest.approx(rear.vehicle.v_mps)
    assert rear.disruption_position + rear.disruption_speed < 1e-12
    human = [(vid, lane, x, v, cav and vid != rear.vehicle.id) for vid, lane, x, v, cav in LOOSE]
    again, _ = plan(human)
    assert again.status == "planned", again.reason
    assert again.plan.rear.vehicle.id == rear.vehicle.id and not again.plan.rear.cooperates


def test_busy_cavs_do_not_cooperate() -> None:
    """Slots next to the vehicles of another maneuver are skipped: with the best slot's pair busy, the
    planner takes another slot, cooperation included, that neither of them belongs to."""
    free, _ = plan(SLOW_U)
    assert free.status == "planned", free.reason
    assert free.plan.front is not None and free.plan.rear is not None
    busy = frozenset({free.plan.front.vehicle.id, free.plan.rear.vehicle.id})
    other, _ = plan(SLOW_U, busy=busy)
    assert other.status == "planned", other.reason
    assert other.plan.cooperators, "the other slot needs cooperation too"
    slot = {c.vehicle.id for c in (other.plan.front, other.plan.rear) if c is not None}
    assert slot and not slot & busy
    assert not {c.vehicle.id for c in other.plan.cooperators} & busy
    # in BASIC every other slot lies beyond the busy pair: the request is refused, and says why
    free, _ = plan(BASIC)
    refused, _ = plan(BASIC, busy=frozenset({free.plan.front.vehicle.id, free.plan.rear.vehicle.id}))
    assert refused.plan is None and "slot next to another maneuver" in refused.reason


def test_selfish_commands_nobody_else() -> None:
    outcome, _ = plan(BASIC, cooperation=False)
    assert outcome.status == "planned", outcome.reason
    neighbours = [c for c in (outcome.plan.front, outcome.plan.rear) if c is not None]
    assert neighbours and all(c.vehicle.is_cav for c in neighbours), "CAVs next to the slot, which could cooperate"
    assert outcome.plan.cooperators == []
    assert not any(c.cooperates for c in neighbours)
    assert sum(outcome.plan.disruption) == 0.0


@pytest.mark.parametrize("max_s", [6.95, 7.0, 20.0, 13.37])
def test_durations_lie_on_the_step_grid_and_never_pass_t_max(max_s: float) -> None:
    planner = Planner(CooperativeParams(max_maneuver_s=max_s, **PAPER), SETUP)
    for t in np.linspace(0.05, 30.0, 300):
        T = planner._on_grid(float(t))
        steps = round(T / SETUP.step_length_s)
        assert abs(T - steps * SETUP.step_length_s) < 1e-9
        assert steps % math.ceil(steps / 50) == 0  # whole numeric intervals of whole steps
        assert max_s + 1e-9 >= T
        if max_s - 5.0 > T:
            assert t - 1e-9 <= T
    outcome, _ = plan(BASIC, CooperativeParams(max_maneuver_s=max_s, **PAPER))
    assert outcome.candidates > 0, "slots were tried up to T_max, not refused at once"


def _follower_slack(lead_plan, lead_length_m: float, follower: tuple[float, float], t0: float, t_to: float) -> float:
    """min over t of x_lead(t) − L − x_f(t) − (φ·v_f + δ) for a follower cruising from (x, v) at t0,
    on a 1 ms grid (independent of `min_slack`)."""
    hw = CooperativeParams().headway
    t = np.arange(t0, t_to + 1e-9, 1e-3)
    x_f = follower[0] + follower[1] * (t - t0)
    return float(np.min(lead_plan.state(t)[0] - lead_length_m - x_f - hw.gap_m(follower[1])))


def test_followers_absorb_protected_plans() -> None:
    """BASIC's tight platoon (6.8 m of slack behind each vehicle) and three vehicles close behind C (2 m
    of slack each): the paper's plan (followers not modelled) pushes C or the rear cooperator so far
    into its follower's safe gap that three followers' slack cannot absorb it; with
    `absorbing_followers=3` every plan is absorbed (the intrusion, computed here on a 1 ms grid, less
    the followers' slack, is gone within three vehicles), or the request is refused saying whose
    follower would have to brake."""
    hw = CooperativeParams().headway
    behind_c = [(f"B{i}", 0, 100.0 - (i + 1) * (5.0 + hw.gap_m(25.0) + 2.0), 25.0, True) for i in range(3)]
    rows = [*BASIC, *behind_c]

    def left_over(p) -> float:
        """The intrusion not absorbed by three followers, the worse of C's and the rear cooperator's."""
        t0, t_f, t_lat = p.t0_s, p.t0_s + p.duration_s, SETUP.lane_change_duration_s
        worst = -math.inf
        movers = [(p.changer, p.changer_plan, t_f + t_lat / 2)]
        if p.rear is not None and p.rear.cooperates:
            movers.append((p.rear.vehicle, p.rear.plan, t_f + t_lat))
        for veh, arc, t_to in movers:
            queue = sorted((r for r in rows if r[1] == veh.lane and r[2] < veh.x_m), key=lambda r: -r[2])
            if not queue:
                continue
            intrusion = -_follower_slack(arc, 5.0, (queue[0][2], queue[0][3]), t0, t_to)
            for ahead, behind in itertools.pairwise(queue[:3]):
                intrusion -= max(0.0, ahead[2] - 5.0 - behind[2] - hw.gap_m(behind[3]))
            worst = max(worst, intrusion if len(queue) >= 3 else min(intrusion, 0.0))
        return worst

    paper, _ = plan(rows, CooperativeParams(max_disruption=1.0, **PAPER))
    assert paper.status == "planned", paper.reason
    assert left_over(paper.plan) > 0.5, "not vacuous: the paper's plan starts a braking wave"
    guarded, _ = plan(rows, CooperativeParams(max_disruption=1.0, absorbing_followers=3))
    if guarded.plan is None:
        assert "follower would have to brake" in guarded.reason
    else:
        assert left_over(guarded.plan) <= 1e-6


@pytest.mark.parametrize("situation", ["BASIC", "LOOSE"])
def test_replanning_on_the_plan_reproduces_it(situation: str) -> None:
    """Receding horizon, Bellman's principle: with every vehicle where the plan put it 1 s later (the
    others cruising), `Planner.replan` keeps the slot and ends where the plan ended (same end time,
    end positions and speeds of C and the cooperators within the numeric plans' tolerance)."""
    rows = {"BASIC": BASIC, "LOOSE": LOOSE}[situation]
    params = CooperativeParams(**PAPER)
    first, _ = plan(rows, params)
    assert first.status == "planned", first.reason
    p = first.plan
    t1 = p.t0_s + 1.0
    moved = {p.changer.id: p.changer_plan, **{c.vehicle.id: c.plan for c in p.cooperators}}
    later = []
    for vid, lane, x, v, cav in rows:
        x1, v1 = (float(a) for a in moved[vid].state(t1)[:2]) if vid in moved else (x + v * 1.0, v)
        later.append((vid, lane, x1, v1, cav))
    lanes = Lanes(world(later, t=t1))
    again, why = Planner(params, SETUP).replan(lanes, p, set())
    assert again is not None, why
    assert (again.front.vehicle.id, again.rear.vehicle.id) == (p.front.vehicle.id, p.rear.vehicle.id)
    t_f = p.t0_s + p.duration_s
    assert again.t0_s + again.duration_s == pytest.approx(t_f, abs=1e-9)
    pairs = [(p.changer_plan, again.changer_plan)]
    pairs += [(a.plan, b.plan) for a, b in ((p.front, again.front), (p.rear, again.rear)) if a.cooperates]
    for old, new in pairs:
        x_old, v_old, _ = old.state(t_f)
        x_new, v_new, _ = new.state(t_f)
        assert x_new == pytest.approx(x_old, abs=0.05) and v_new == pytest.approx(v_old, abs=0.02)


def test_replanning_notices_a_cut_in() -> None:
    """A vehicle that changed into the slot: `replan` says the slot is gone (the controller then plans a
    new one)."""
    first, _ = plan(LOOSE)
    p = first.plan
    gap_x = (p.front.vehicle.x_m + p.rear.vehicle.x_m) / 2
    lanes = Lanes(world([*LOOSE, ("X", 1, gap_x, 28.0, False)], t=p.t0_s))
    again, why = Planner(CooperativeParams(**PAPER), SETUP).replan(lanes, p, set())
    assert again is None and why == "a vehicle cut into the slot"


# ----------------------------------------------------------------------------- the safety filter


def follow(gap_m: float, v_mps: float, v_lead_mps: float, a_lead_mps2: float, params: CooperativeParams,
           plan_accel_mps2: float, seconds: float = 30.0, dt_s: float = 0.1) -> tuple[float, float, float, float]:
    """A follower that wants `plan_accel_mps2` (its plan, blind to the leader) behind a leader braking at
    `a_lead_mps2` down to standstill, the filter's bound applied each step, ballistic update as in SUMO:
    the least slack, the least bumper gap, the hardest deceleration and the slack at the end."""
    from cavlab.controllers.cooperative.safety import barrier_accel

    x_l, x, least, closest, hardest = gap_m + 5.0, 0.0, math.inf, math.inf, 0.0
    for _ in range(round(seconds / dt_s)):
        a_l = a_lead_mps2 if v_lead_mps > 0 else 0.0
        a = max(min(plan_accel_mps2, barrier_accel(x_l - 5.0 - x, v_mps, v_lead_mps, a_l, params, dt_s)), -v_mps / dt_s)
        x_l, v_lead_mps = x_l + v_lead_mps * dt_s + a_l * dt_s**2 / 2, max(0.0, v_lead_mps + a_l * dt_s)
        x, v_mps = x + v_mps * dt_s + a * dt_s**2 / 2, v_mps + a * dt_s
        slack = x_l - 5.0 - x - params.headway.gap_m(v_mps)
        least, closest, hardest = min(least, slack), min(closest, x_l - 5.0 - x), min(hardest, a)
    return least, closest, hardest, slack


@pytest.mark.parametrize("v_lead", [0.0, 10.0, 25.0])
@pytest.mark.parametrize("v", [5.0, 20.0, 33.0])
@pytest.mark.parametrize("plan_accel", [-1.0, 0.0, 2.5])
def test_filter_keeps_the_slack_behind_a_cruising_leader(v: float, v_lead: float, plan_accel: float) -> None:
    """From any start with the barrier h ≥ 0 (gap ≥ φv + δ + closing²/(2|u_min|)), whatever the plan
    wants, the filtered follower never loses its safe gap behind a leader at constant speed, and
    never brakes harder than |u_min| to keep it."""
    from cavlab.controllers.cooperative.safety import barrier

    p = CooperativeParams()
    closing = max(0.0, v - v_lead)
    gap = p.headway.gap_m(v) + closing**2 / (2 * -p.u_min_mps2) + 0.01
    assert barrier(gap, v, v_lead, p) > 0
    least, _, hardest, _ = follow(gap, v, v_lead, 0.0, p, plan_accel)
    assert least >= -1e-6
    assert hardest >= p.u_min_mps2 - 1e-6


def test_filter_is_inactive_far_behind_and_recovers_after_a_cut_in() -> None:
    from cavlab.controllers.cooperative.safety import barrier, barrier_accel

    p = CooperativeParams()
    assert barrier_accel(200.0, 30.0, 30.0, 0.0, p, 0.1) == math.inf
    # a vehicle cuts in 10 m ahead, 5 m/s slower: the barrier is broken, but braking at |u_min| sheds the
    # 5 m/s within 5²/(2·4) = 3.1 m < 10 − 1 m: the bound is u_min (comfortable), there is no collision,
    # and the safe gap comes back
    assert barrier(10.0, 30.0, 25.0, p) < 0
    assert barrier_accel(10.0, 30.0, 25.0, 0.0, p, 0.1) == p.u_min_mps2
    least, closest, hardest, end = follow(10.0, 30.0, 25.0, 0.0, p, plan_accel_mps2=1.0, seconds=60.0)
    assert least < 0 < closest and hardest >= p.u_min_mps2 - 1e-9
    assert end >= 0
    # 5 m ahead and 7 m/s slower: 7²/8 = 6.1 m > 5 − 1 m, so the filter brakes harder than |u_min|, never
    # past 2·u_min, and still avoids the collision (7²/16 = 3.1 m < 5 m)
    bound = barrier_accel(5.0, 30.0, 23.0, 0.0, p, 0.1)
    assert 2 * p.u_min_mps2 <= bound < p.u_min_mps2
    _, closest, hardest, _ = follow(5.0, 30.0, 23.0, 0.0, p, plan_accel_mps2=1.0, seconds=60.0)
    assert closest > 0 and p.u_min_mps2 > hardest >= 2 * p.u_min_mps2 - 1e-9


def test_filter_bound_is_the_largest_acceleration_keeping_the_barrier() -> None:
    """The closed form against bisection on the one-step prediction h'(a) = H (an independent check)."""
    from cavlab.controllers.cooperative.safety import barrier, barrier_accel

    p, dt = CooperativeParams(), 0.1
    rng = np.random.default_rng(3)
    for _ in range(300):
        v, v_l = rng.uniform(0, 35), rng.uniform(0, 35)
        a_l = rng.uniform(-4, 0)
        gap = p.headway.gap_m(v) + rng.uniform(-10, 30)
        bound = barrier_accel(gap, v, v_l, a_l, p, dt)
        h = barrier(gap, v, v_l, p)
        target = (1 - dt) * h  # h' ≥ (1 − κΔt)·h, κ = 1 1/s
        room = gap - 1.0 >= max(0.0, v - v_l) ** 2 / (2 * (-p.u_min_mps2 + a_l))  # braking at |u_min| avoids it
        floor = p.u_min_mps2 if room else 2 * p.u_min_mps2

        def h_next(a: float, gap=gap, v=v, v_l=v_l, a_l=a_l) -> float:
            gap_next = gap + (v_l - v) * dt + (a_l - a) * dt**2 / 2
            return barrier(gap_next, v + a * dt, v_l + a_l * dt, p)

        if math.isinf(bound):
            assert h_next(p.u_max_mps2) >= target - 1e-9
        elif bound == floor:
            assert h_next(bound) <= target + 1e-9
        else:
            assert h_next(bound) == pytest.approx(target, abs=1e-6)
            assert h_next(bound + 1e-3) < target


def lateral_maneuver(lane_ends_m: dict | None = None):
    """The maneuver of BASIC's plan in its lateral phase, the lane change commanded at t = 100 s."""
    from dataclasses import replace

    from cavlab.controllers.cooperative.maneuver import Maneuver, ManeuverRecord

    outcome, _ = plan(BASIC)
    assert outcome.status == "planned", outcome.reason
    setup = replace(SETUP, lane_ends_m=lane_ends_m or {})
    record = ManeuverRecord(request_time_s=95.0, vehicle_id="C", leader_id="U", target_lane=1, status="")
    m = Maneuver(outcome.plan, record, CooperativeParams(**PAPER), setup, cut_in=lambda w, row: False)
    m.phase, m.t_lane_change = "lateral", 100.0
    return m, outcome.plan


def commanded(m, w: WorldState) -> dict[str, float]:
    return {c.vehicle_id: c.accel_mps2 for c in m.step(w, Lanes(w))}


def test_lateral_phase_keeps_the_barrier_in_both_lanes() -> None:
    """While C crosses over (still in its old lane by index, already in the target lane's space), C keeps
    its barrier to the target lane's vehicle ahead, and the rear cooperator to C: both brake here; a
    vehicle of the target lane ahead of C, and C behind its own lane's far leader, would not otherwise."""
    m, p = lateral_maneuver()
    front, rear = p.front.vehicle.id, p.rear.vehicle.id
    hw = CooperativeParams().headway
    rows = {vid: (lane, x, v) for vid, lane, x, v, _ in BASIC}
    rows["U"] = (0, 900.0, 30.0)  # far ahead of C in its old lane: no bound from there
    rows["C"] = (0, 500.0, 28.0)
    rows[front] = (1, 500.0 + 5.0 + hw.gap_m(28.0) + 1.0, 24.0)  # 4 m/s slower, 1 m beyond C's safe gap
    rows[rear] = (1, 500.0 - 5.0 - hw.gap_m(30.0) - 1.0, 30.0)  # 2 m/s faster than C, 1 m beyond its safe gap
    others = [vid for vid in rows if vid not in ("U", "C", front, rear)]
    for k, vid in enumerate(others):  # the rest of the platoon well clear of the three
        rows[vid] = (1, 1500.0 + 60.0 * k if rows[vid][1] > rows[front][1] else 100.0 - 60.0 * k, 28.0)
    w = world([(vid, lane, x, v, True) for vid, (lane, x, v) in rows.items()], t=100.5)
    u = commanded(m, w)
    assert u["C"] < -0.5, u
    assert u[rear] < -0.1, u
    # the same world with C already in the target lane: the bounds come from the lane's own leaders
    w2 = world([(vid, 1 if vid == "C" else lane, x, v, True) for vid, (lane, x, v) in rows.items()], t=100.5)
    u2 = commanded(lateral_maneuver()[0], w2)
    assert u2["C"] == pytest.approx(u["C"]) and u2[rear] == pytest.approx(u[rear])


def assert_fallback_step(v_c: float, gap_m: float, v_lead: float, released: bool, sumo_headways=None) -> None:
    """One fallback step of C `gap_m` behind a leader at `v_lead`: C released to SUMO, or
    braking under control."""
    from cavlab.world import Accelerate, Release

    m, p = lateral_maneuver()
    m.phase, m.tracked = "fallback", {"C": p.changer_plan}
    if sumo_headways is not None:
        m.sumo_headways = sumo_headways
    rows = [("C", 0, 1000.0, v_c, True), ("L", 0, 1000.0 + 5.0 + gap_m, v_lead, False)]
    rows += [(f"F{i}", 1, 200.0 + 40.0 * i, 28.0, True) for i in range(3)]
    w = world(rows, t=110.0)
    commands = m.step(w, Lanes(w))
    if released:
        assert commands == [Release("C")] and m.phase == "done"
    else:
        assert len(commands) == 1 and isinstance(commands[0], Accelerate) and commands[0].accel_mps2 < 0
        assert m.phase == "fallback"


def test_the_fallback_hands_c_back_once_it_can_shed_its_closing_speed() -> None:
    """After an abort C follows its measured leader under control until its barrier to it is back,
    h = gap − (φv + δ) − (v − v_L)²/(2|u_min|) ≥ 0, then SUMO has it again: 48 m behind a leader 3.3 m/s
    slower (h = 35 m) C is released at once (it used to stay controlled, driven towards the slower
    leader at u_max, until no faster than it); 12 m behind one 7 m/s slower (h < 0) it brakes under control."""
    assert_fallback_step(9.3, 48.0, 6.0, released=True)
    assert_fallback_step(9.3, 12.0, 2.3, released=False)


def test_the_fallback_keeps_c_until_sumo_need_not_brake_hard() -> None:
    """Seen on the straight road: C 28.67 m/s, 37.2 m behind a leader at 21.94 m/s has its barrier back
    (h = 37.2 − 28.8 − 6.73²/8 = +2.7 m), but SUMO's Krauss driver of its type (tau 1 s, minGap 2.5 m)
    wants v_safe = −τb + √((τb)² + v_L² + 2b(gap − minGap)) = 23.8 m/s at once (b = 4): released there,
    it braked at 5 m/s², past its type's decel. C stays controlled and brakes; 80 m behind
    (v_safe = 29.4 m/s) it is released."""
    sumo = {"car": Headway(1.0, 2.5)}
    assert_fallback_step(28.67, 37.2, 21.94, released=False, sumo_headways=sumo)
    assert_fallback_step(28.67, 80.0, 21.94, released=True, sumo_headways=sumo)


def test_lateral_phase_ignores_the_old_lane_end_only_when_c_crosses_before_it() -> None:
    """C in a lane that ends: in the lateral phase the end does not brake C when C is across half-way
    through it (at its speed) δ before the end, and does brake it when it is not; certification asks the
    same (a lane change that would cross after the end is not started)."""
    half_way_m = 28.0 * 1.5  # v·(t_lc + t_lat/2 − t) at t = t_lc, t_lat = 3 s
    for end_m, brakes in [(500.0 + half_way_m + 3.0 + 0.5, False), (500.0 + half_way_m + 3.0 - 0.5, True)]:
        m, p = lateral_maneuver(lane_ends_m={(0, 0): end_m})
        rows = [("U", 0, 2000.0, 30.0, True), ("C", 0, 500.0, 28.0, True)]
        rows += [(c.vehicle.id, 1, 1500.0 + 60.0 * k if c.vehicle.x_m > 100.0 else 100.0 - 60.0 * k, 28.0, True)
                 for k, c in enumerate(p.cooperators)]  # fmt: skip
        rows += [(vid, 1, 3000.0 + 60.0 * k, 28.0, True) for k, (vid, *_) in enumerate(BASIC)
                 if vid not in {r[0] for r in rows}]  # fmt: skip
        w = world(rows, t=100.0)
        assert (commanded(m, w)["C"] < 0) is brakes, end_m
        m.phase = "certify"
        assert m._certified(w, Lanes(w)) is not brakes


# ----------------------------------------------------------------------------- requests: claim, gate


def stuck(t: float, c_lane: int = 0, target_speed: float = 30.0) -> WorldState:
    """C (a CAV at 600 m, 25 m/s) 30 m behind a slower U; the target lane has two vehicles well clear of C."""
    return world([("c", c_lane, 600.0, 25.0, True), ("u", 0, 635.0, 18.0, False),
                  ("a", 1, 450.0, target_speed, False), ("b", 1, 800.0, target_speed, False)], t=t)  # fmt: skip


def test_a_request_claims_the_cav_before_planning_and_hands_it_back_if_sumo_moved_it() -> None:
    from cavlab.controllers.cooperative import CooperativeLaneChange
    from cavlab.world import HoldLane, Release

    params = CooperativeParams(request_patience_s=0.0, scan_period_s=0.5)
    ctrl = CooperativeLaneChange(params, SETUP)
    assert ctrl.step(stuck(100.0)) == [HoldLane("c")] and ctrl.records == []
    assert ctrl.step(stuck(100.5)) == [] and ctrl.records == []  # held for t_lat/2 = 1.5 s first
    commands = ctrl.step(stuck(101.5))
    assert [m.record.vehicle_id for m in ctrl.active] == ["c"]  # planned: a maneuver runs
    assert commands and all(cmd.vehicle_id == "c" for cmd in commands)  # C's first command (no cooperators)
    # SUMO had begun a lane change before the hold: C turns up in the target lane; nobody plans for it
    other = CooperativeLaneChange(params, SETUP)
    other.step(stuck(100.0))
    assert other.step(stuck(101.5, c_lane=1)) == [Release("c")] and other.records == []


def test_a_request_without_a_plan_leaves_sumo_alone() -> None:
    """C asks while the target lane is a tight column of human-driven vehicles (no slot fits, nobody can be
    asked to open one): the request is planned on the state as it is, recorded as refused and put off,
    and C is never held (no command at all: SUMO's lane changing stays on)."""
    from cavlab.controllers.cooperative import CooperativeLaneChange

    column = [(f"h{i}", 1, 100.0 + 12.0 * i, 30.0, False) for i in range(90)]
    rows = [("c", 0, 600.0, 25.0, True), ("u", 0, 635.0, 18.0, False), *column]
    params = CooperativeParams(request_patience_s=0.0, scan_period_s=0.5, max_target_occupancy=10.0)  # no gate
    ctrl = CooperativeLaneChange(params, SETUP)
    assert ctrl.step(world(rows, t=100.0)) == []
    assert [(r.vehicle_id, r.status) for r in ctrl.records] == [("c", "infeasible")]
    assert ctrl.step(world(rows, t=100.5)) == [] and len(ctrl.records) == 1  # put off (retry_after_s = 3 s)
    assert ctrl.step(world(rows, t=103.0)) == [] and len(ctrl.records) == 2


def test_no_request_into_a_congested_target_lane() -> None:
    from cavlab.controllers.cooperative import CooperativeLaneChange

    gated = CooperativeLaneChange(CooperativeParams(request_patience_s=0.0, min_flow_speed_mps=15.0), SETUP)
    assert gated.step(stuck(100.0, target_speed=12.0)) == []
    assert gated.step(stuck(100.0 + 0.5, target_speed=20.0)) != []  # flowing again: claimed


def test_no_request_into_a_target_lane_near_its_capacity() -> None:
    """The target lane (CAVs that could cooperate) flows fast, 30 m/s, but its vehicles are 40 m apart:
    8 of them within C's ±150 m, 8 · 35 m / 300 m = 0.93 of their safe spacing φv + δ + L = 0.9·30 + 3 + 5 m,
    above `max_target_occupancy` (0.8): no request; 55 m apart (6 · 35 / 300 = 0.7) the request finds a
    slot (C is claimed)."""
    from cavlab.controllers.cooperative import CooperativeLaneChange

    def world_with(spacing_m: float) -> WorldState:
        lane = [(f"t{i}", 1, 300.0 + spacing_m * i, 30.0, True) for i in range(round(600 / spacing_m))]
        return world([("c", 0, 600.0, 25.0, True), ("u", 0, 635.0, 18.0, False), *lane])

    from cavlab.world import HoldLane

    params = CooperativeParams(request_patience_s=0.0)
    dense = CooperativeLaneChange(params, SETUP)
    assert dense.step(world_with(40.0)) == [] and dense.records == []
    assert CooperativeLaneChange(params, SETUP).step(world_with(55.0)) == [HoldLane("c")]


def random_situation(rng: np.random.Generator) -> list[tuple[str, int, float, float, bool]]:
    """C behind a slower U; the target lane a queue of CAVs and human drivers at random spacings and speeds."""
    v_c = rng.uniform(8.0, 30.0)
    rows = [("U", 0, 100.0 + rng.uniform(15.0, 80.0), v_c - rng.uniform(0.0, 8.0), False), ("C", 0, 100.0, v_c, True)]
    x, v_t, cav_share = 100.0 + rng.uniform(100.0, 250.0), rng.uniform(8.0, 32.0), rng.uniform(0.3, 1.0)
    while x > -150.0:
        rows.append((f"T{len(rows)}", 1, x, max(0.0, v_t + rng.normal(0.0, 1.0)), bool(rng.random() < cav_share)))
        x -= rng.uniform(10.0, 70.0)
    return rows


def test_branch_and_bound_finds_the_exhaustive_searchs_plan_with_fewer_solves() -> None:
    """The slot search skips a slot whose lower bound on D (`_disruption_bound`: the least D over the end
    states that leave C its safe gap at T) exceeds D_th or the best valid slot's D. On the hand-built
    situations and 40 random ones it must choose exactly what the search without the bound chooses (slot,
    T, D), every valid slot's D must be ≥ its bound, and the three hand-built situations need fewer solves."""
    rng = np.random.default_rng(0)
    situations = [BASIC, LOOSE, SLOW_U] + [random_situation(rng) for _ in range(40)]
    planned = 0
    for i, rows in enumerate(situations):
        outcomes = []
        for exhaustive in (False, True):
            lanes = Lanes(world(rows))
            planner = Planner(CooperativeParams(**PAPER), SETUP)
            if exhaustive:
                planner._disruption_bound = lambda *args: 0.0
            slot_plan, gaps = planner._slot_plan, []

            def recorded(c, u, c_plan, front, rear, *rest, planner=planner, slot_plan=slot_plan, gaps=gaps):
                found, why = slot_plan(c, u, c_plan, front, rear, *rest)
                if found is not None:
                    bound = Planner._disruption_bound(planner, c, c_plan, front, rear, found.duration_s)
                    gaps.append(sum(found.disruption) - bound)
                return found, why

            planner._slot_plan = recorded
            out = planner.plan(lanes, lanes.row_of["C"], lanes.vehicle(lanes.row_of["U"]), 1, set())
            assert min(gaps, default=0.0) >= 0.0, (i, exhaustive, min(gaps))
            chosen = out.plan and (out.plan.front and out.plan.front.vehicle.id,
                                   out.plan.rear and out.plan.rear.vehicle.id, out.plan.duration_s,
                                   sum(out.plan.disruption))  # fmt: skip
            outcomes.append((out.status, chosen, out.numeric_solves))
        (status, chosen, solves), (status_all, chosen_all, solves_all) = outcomes
        assert (status, chosen) == (status_all, chosen_all), i
        planned += chosen is not None
        if i < 3:
            assert chosen is not None and solves < solves_all, (i, solves, solves_all)
    assert planned >= 10  # not vacuous: many of the random situations have a plan


def test_the_solve_budget_ends_the_search() -> None:
    """BASIC needs some 14 QP/NLP solves for its best slot (how many depends on slots that fit to the last
    1e-13 m); with a budget of 2 the search stops there and says so, with a budget above what it needs it
    finds the same plan as without one."""
    full, _ = plan(BASIC)
    assert full.plan is not None and 10 <= full.numeric_solves <= 20
    capped, _ = plan(BASIC, CooperativeParams(**PAPER, max_solves_per_request=2))
    assert capped.plan is None and capped.numeric_solves == 2 and "solve budget spent" in capped.reason
    roomy, _ = plan(BASIC, CooperativeParams(**PAPER, max_solves_per_request=full.numeric_solves + 1))
    assert roomy.plan is not None and sum(roomy.plan.disruption) == sum(full.plan.disruption)


# ----------------------------------------------------------------------------- the zipper at a lane end

# A lane drop: road lane 0 ends at x = 1500 m on edge 0 (lanes 0..2); edge 1 carries lanes 1..2 on.
DROP_SETUP = ControlSetup(step_length_s=0.1, lanes=3, speed_limit_mps=33.33, lane_change_duration_s=3.0, seed=1,
                          lane_ends_m={(0, 0): 1500.0}, edge_lanes=((0, 2), (1, 2)))  # fmt: skip


def test_each_lane_end_merges_into_the_neighbour_that_runs_on() -> None:
    from cavlab.controllers.cooperative.zipper import Merge, merges

    assert merges(DROP_SETUP) == [Merge(1500.0, 0, 1)]
    # an on-ramp: the ramp's own edge (lane -1 only) and the acceleration lane's edge (lanes -1..1)
    ramp = ControlSetup(0.1, 2, 33.33, 3.0, 1, lane_ends_m={(0, -1): 1250.0, (1, -1): 1250.0},
                        edge_lanes=((-1, -1), (-1, 1), (0, 1)))  # fmt: skip
    assert merges(ramp) == [Merge(1250.0, -1, 0)]
    # a left lane that ends, its right neighbour running on; no lane end, no merge
    left = ControlSetup(0.1, 3, 33.33, 3.0, 1, lane_ends_m={(0, 2): 900.0}, edge_lanes=((0, 2), (0, 1)))
    assert merges(left) == [Merge(900.0, 2, 1)] and merges(SETUP) == []


def test_zipper_caps_follow_the_vehicle_ahead_in_either_lane() -> None:
    """Near the end (zone 100 m) the vehicles of both lanes form one sequence by position; each CAV gets
    Krauss' safe speed behind the one ahead of it, with SUMO's tau and minGap of its type (1 s, 2.5 m) and
    b = |u_min| = 4: E (ending lane) behind T1, T2 behind E; the HDV H is a leader but gets no cap, the CAV
    F beyond the zone none either, nor the busy CAV B."""
    from cavlab.controllers.cooperative.zipper import Merge, zipper_caps
    from cavlab.controllers.longitudinal import Headway

    rows = [("T1", 1, 1470.0, 15.0, True), ("E", 0, 1450.0, 14.0, True), ("T2", 1, 1440.0, 16.0, True),
            ("H", 0, 1425.0, 12.0, False), ("B", 1, 1410.0, 12.0, True), ("F", 1, 1380.0, 15.0, True)]  # fmt: skip
    w = world(rows)
    setup = ControlSetup(0.1, 3, 33.33, 3.0, 1, sumo_headways={"car": Headway(1.0, 2.5)})
    free = w.is_cav.copy()
    free[w.index_of("B")] = False
    caps = zipper_caps(Lanes(w), Merge(1500.0, 0, 1), CooperativeParams(zipper_zone_m=100.0), setup, free)

    def krauss(v: float, x_l: float, v_l: float) -> float:
        gap = x_l - 5.0 - 2.5
        return max(v_l + (gap - 1.0 * v_l) / ((v + v_l) / 8.0 + 1.0), 0.0)

    expected = {"E": krauss(14.0, 1470.0 - 1450.0, 15.0), "T2": krauss(16.0, 1450.0 - 1440.0, 14.0)}
    assert {str(w.ids[r]): c for r, c in caps.items()} == pytest.approx(expected)
    assert expected["T2"] < 14.0 < expected["E"]  # T2 opens E's gap; E may close up behind T1


def test_the_zipper_caps_only_free_cavs_and_lifts_the_caps_it_set() -> None:
    from cavlab.controllers.cooperative import CooperativeLaneChange, SelfishLaneChange
    from cavlab.world import CapSpeed

    def near_end(e_x: float) -> WorldState:
        return world([("T1", 1, 1470.0, 15.0, True), ("E", 0, e_x, 14.0, True)])

    params = CooperativeParams(request_patience_s=1e3)  # no request gets planned
    ctrl = CooperativeLaneChange(params, DROP_SETUP)
    commands = ctrl.step(near_end(1450.0))
    assert [type(c) for c in commands] == [CapSpeed] and commands[0].vehicle_id == "E"
    assert ctrl.step(near_end(1350.0)) == [CapSpeed("E", math.inf)]  # out of the zone: lifted once
    assert ctrl.step(near_end(1340.0)) == []
    ctrl.step(near_end(1450.0))
    hidden = near_end(1460.0)
    hidden.is_cav[hidden.index_of("E")] = False  # on a junction of an external network: not the controller's
    assert ctrl.step(hidden) == [CapSpeed("E", math.inf)]  # its cap is lifted all the same
    assert SelfishLaneChange(params, DROP_SETUP).step(near_end(1450.0)) == []  # nobody cooperates
    assert CooperativeLaneChange(params.model_copy(update={"zipper_zone_m": 0.0}), DROP_SETUP).step(
        near_end(1450.0)) == []  # fmt: skip
    on_request = CooperativeLaneChange(params, DROP_SETUP)
    on_request.autonomous = False  # serves requests only (an RL agent's): no zipper either
    assert on_request.step(near_end(1450.0)) == []


def test_a_vehicle_already_beside_goes_first() -> None:
    """A human driver standing at the very end of the dropped lane, a CAV of the target lane already 0.5 m short
    of its minGap behind the driver's rear (g < 0): waiting behind the driver could never open its gap (a
    deadlock seen at the on-ramp), so the CAV follows the vehicle ahead in its own lane; behind a driver that
    still moves it yields as before."""
    from cavlab.controllers.cooperative.zipper import Merge, zipper_caps
    from cavlab.controllers.longitudinal import Headway

    w = world([("A", 1, 1530.0, 10.0, True), ("H", 0, 1500.0, 0.0, False), ("T", 1, 1493.0, 2.0, True)])
    setup = ControlSetup(0.1, 3, 33.33, 3.0, 1, sumo_headways={"car": Headway(1.0, 2.5)})
    caps = zipper_caps(Lanes(w), Merge(1500.0, 0, 1), CooperativeParams(), setup, w.is_cav.copy())
    gap = 1530.0 - 5.0 - 1493.0 - 2.5
    assert caps == {w.index_of("T"): pytest.approx(10.0 + (gap - 10.0) / ((2.0 + 10.0) / 8.0 + 1.0))}
    moving = world([("A", 1, 1530.0, 10.0, True), ("H", 0, 1500.0, 1.0, False), ("T", 1, 1493.0, 2.0, True)])
    caps = zipper_caps(Lanes(moving), Merge(1500.0, 0, 1), CooperativeParams(), setup, moving.is_cav.copy())
    assert caps == {moving.index_of("T"): pytest.approx(max(1.0 + (-0.5 - 1.0) / ((2.0 + 1.0) / 8.0 + 1.0), 0.0))}
