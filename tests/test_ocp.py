"""Numeric OCPs against the closed forms, the constraints they promise, and exact replay."""

from __future__ import annotations

from dataclasses import dataclass

import casadi as ca
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cavlab.controllers.cooperative import CooperativeParams
from cavlab.controllers.longitudinal import (
    Arc,
    Headway,
    Limits,
    min_slack,
    position_range,
    terminal_speed_arc,
    time_energy_duration,
)
from cavlab.controllers.ocp import FixedTimeQP, FreeTimeNLP, Profile

from .conftest import zoh_simulate

LIMITS = Limits(u_min_mps2=-4.0, u_max_mps2=3.0, v_min_mps=10.0, v_max_mps=35.0)
HEADWAY = Headway(reaction_time_s=0.9, standstill_m=3.0)
N = 50


@pytest.fixture(scope="module")
def qp() -> FixedTimeQP:
    return FixedTimeQP(N)


@pytest.fixture(scope="module")
def nlp() -> FreeTimeNLP:
    return FreeTimeNLP(N)


def node_slack(profile: Profile, leader: tuple[float, float, float]) -> np.ndarray:
    """x_L(t_k) − L_L − x_k − (φ·v_k + δ) at every node."""
    t = profile.step_s * np.arange(profile.accel_mps2.size + 1)
    gap = leader[0] + leader[1] * t - leader[2] - profile.x_nodes_m
    return gap - HEADWAY.gap_m(profile.v_nodes_mps)


def solve_qp(qp: FixedTimeQP, **kw):
    args = dict(t0_s=0.0, x0_m=0.0, limits=LIMITS, headway=HEADWAY) | kw
    return qp.solve(**args)


def solve_nlp(nlp: FreeTimeNLP, **kw):
    args = dict(t0_s=0.0, x0_m=0.0, limits=LIMITS, headway=HEADWAY, leader=None, t_min_s=0.5, t_max_s=15.0)
    return nlp.solve(**(args | kw))


# ----------------------------------------------------------------------------- Profile


def test_profile_state_is_exact_zero_order_hold_and_cruises_after_its_end() -> None:
    u = np.random.default_rng(0).uniform(-3, 3, 20)
    profile = Profile(t0_s=2.0, step_s=0.25, x0_m=10.0, v0_mps=20.0, accel_mps2=u)
    x, v = zoh_simulate(u, 10.0, 20.0, 0.25)
    assert np.allclose(profile.x_nodes_m, x, atol=1e-12) and np.allclose(profile.v_nodes_mps, v, atol=1e-12)
    fine_x, fine_v = zoh_simulate(np.repeat(u, 8), 10.0, 20.0, 0.25 / 8)  # ZOH is exact on any sub-grid
    t = 2.0 + 0.25 / 8 * np.arange(fine_x.size)
    px, pv, pu = profile.state(t)
    assert np.allclose(px, fine_x, atol=1e-9) and np.allclose(pv, fine_v, atol=1e-12)
    assert np.array_equal(pu[:-1], np.repeat(u, 8))
    assert profile.t_end_s == pytest.approx(7.0)
    x9, v9, u9 = profile.state(9.0)
    assert (x9, v9, u9) == (pytest.approx(x[-1] + 2.0 * v[-1]), pytest.approx(v[-1]), 0.0)
    assert (profile.x_end_m, profile.v_end_mps) == (pytest.approx(x[-1]), pytest.approx(v[-1]))
    assert profile.energy_m2ps3 == pytest.approx(0.5 * np.sum(u * u) * 0.25)
    assert profile.mean_accel(2.25, 0.5) == pytest.approx((u[1] + u[2]) / 2)
    assert profile.within(Limits(-3.0, 3.0, 0.0, 100.0))
    assert not profile.within(Limits(-3.0, 3.0, v.max() - 0.1, 100.0))
    assert profile.breakpoints(2.3, 3.0) == pytest.approx([2.5, 2.75])


@settings(max_examples=100, deadline=None)
@given(
    lead_u=st.lists(st.floats(-3, 3), min_size=1, max_size=12), lead_h=st.floats(0.2, 1.0),
    fol_u=st.lists(st.floats(-3, 3), min_size=1, max_size=12), fol_h=st.floats(0.2, 1.0),
    gap=st.floats(5, 60), arc_leader=st.booleans(),
)  # fmt: skip
def test_min_slack_on_profiles_equals_dense_sampling(lead_u, lead_h, fol_u, fol_h, gap, arc_leader) -> None:
    leader = Arc(0.0, 4.0, gap, 25.0, 1.0, -0.4) if arc_leader else Profile(0.0, lead_h, gap, 25.0, np.array(lead_u))
    follower = Profile(1.0, fol_h, 0.0, 27.0, np.array(fol_u))
    slack, when = min_slack(leader, follower, 4.5, HEADWAY, 1.0, 13.0)
    # the slack has kinks where u jumps: sample those times too
    t = np.union1d(np.linspace(1.0, 13.0, 24001), [*leader.breakpoints(1, 13), *follower.breakpoints(1, 13)])
    dense = leader.state(t)[0] - 4.5 - follower.state(t)[0] - HEADWAY.gap_m(follower.state(t)[1])
    assert slack == pytest.approx(dense.min(), abs=1e-6)
    assert slack <= dense.min() + 1e-9
    assert 1.0 <= when <= 13.0


# ----------------------------------------------------------------------------- FixedTimeQP


@settings(max_examples=40, deadline=None)
@given(v0=st.floats(20, 33), vref=st.floats(20, 33), beta=st.floats(0.01, 10), T=st.floats(3, 10))
def test_unconstrained_qp_is_the_constant_control_of_terminal_speed_arc(qp, v0, vref, beta, T) -> None:
    arc = terminal_speed_arc(0.0, 0.0, v0, vref, beta, T)
    assume(arc.within(LIMITS))
    profile, status = solve_qp(qp, v0_mps=v0, duration_s=T, v_ref_mps=vref, beta=beta)
    assert status.ok and status.code == "optimal" and status.solver == "daqp"
    assert np.abs(profile.accel_mps2 - arc.u0_mps2).max() < 1e-6
    assert profile.duration_s == pytest.approx(T)


def test_qp_with_active_slot_converges_to_the_closed_form_as_one_over_n_squared() -> None:
    v0, vref, beta, T = 25.0, 27.0, 0.5, 6.0
    x_slot = terminal_speed_arc(0.0, 0.0, v0, vref, beta, T).x_end_m + 12.0
    arc = terminal_speed_arc(0.0, 0.0, v0, vref, beta, T, x_end_m=x_slot)
    assert arc.within(LIMITS)
    errors = []
    for n in (25, 50, 100):
        profile, status = solve_qp(
            FixedTimeQP(n), v0_mps=v0, duration_s=T, v_ref_mps=vref, beta=beta, slot=("front", x_slot)
        )
        assert status.ok and profile.x_end_m == pytest.approx(x_slot, abs=1e-6)
        midpoints = (np.arange(n) + 0.5) * T / n
        errors.append(np.abs(profile.accel_mps2 - arc.state(midpoints)[2]).max())
    assert errors[0] / errors[1] > 3 and errors[1] / errors[2] > 3
    assert errors[2] < 2e-4


@settings(max_examples=40, deadline=None)
@given(
    v0=st.floats(20, 33), T=st.floats(3, 10), reach=st.floats(0.05, 0.9), front=st.booleans(), beta=st.floats(0.1, 10)
)
def test_theorem_1_front_cooperator_never_brakes_and_rear_never_accelerates(qp, v0, T, reach, front, beta) -> None:
    """Theorem 1 (P0: energy only, terminal speed free, β = 0) holds control-wise. With a
    terminal-speed penalty (β > 0, v_ref = v0) it holds for the speed, v_k ≥ v0 (front) or
    v_k ≤ v0 (rear), but not for the control: u(T) = −2β(v(T) − v0) has the opposite sign."""
    lo, hi = position_range(0.0, v0, T, LIMITS)
    x_slot = v0 * T + reach * ((hi if front else lo) - v0 * T)
    side, sign = ("front", 1.0) if front else ("rear", -1.0)
    energy_only, status = solve_qp(qp, v0_mps=v0, duration_s=T, v_ref_mps=v0, beta=0.0, slot=(side, x_slot))
    assert status.ok
    assert (sign * energy_only.accel_mps2).min() >= -1e-6
    penalised, status = solve_qp(qp, v0_mps=v0, duration_s=T, v_ref_mps=v0, beta=beta, slot=(side, x_slot))
    assert status.ok
    assert (sign * (penalised.v_nodes_mps - v0)).min() >= -1e-6
    assert sign * penalised.accel_mps2[0] > 0
    if sign * (penalised.v_end_mps - v0) > 1e-3:
        assert sign * penalised.accel_mps2[-1] < 0


def test_leader_constraint_is_active_and_respected_at_every_node(qp) -> None:
    leader = (40.0, 22.0, 5.0)  # 35 m bumper gap, leader 6 m/s slower
    free, _ = solve_qp(qp, v0_mps=28.0, duration_s=8.0, v_ref_mps=30.0, beta=1.0)
    assert node_slack(free, leader).min() < -1.0  # the unconstrained plan would collide
    profile, status = solve_qp(qp, v0_mps=28.0, duration_s=8.0, v_ref_mps=30.0, beta=1.0, leader=leader)
    assert status.ok and profile.within(LIMITS, tol=1e-6)
    slack = node_slack(profile, leader)
    assert slack.min() >= -1e-6
    assert slack[1:].min() < 1e-6  # active


def test_slot_is_met_on_both_sides(qp) -> None:
    for side, x_slot in (("front", 230.0), ("rear", 180.0)):
        profile, status = solve_qp(qp, v0_mps=25.0, duration_s=8.0, v_ref_mps=25.0, beta=1.0, slot=(side, x_slot))
        assert status.ok and profile.x_end_m == pytest.approx(x_slot, abs=1e-6)
        assert profile.within(LIMITS, tol=1e-9)


def test_infeasible_slot_and_unsafe_start_return_a_status(qp) -> None:
    lo, hi = position_range(0.0, 25.0, 5.0, LIMITS)
    for slot in (("front", hi + 1.0), ("rear", lo - 1.0)):
        profile, status = solve_qp(qp, v0_mps=25.0, duration_s=5.0, v_ref_mps=25.0, beta=1.0, slot=slot)
        assert profile is None and not status.ok and status.code == "infeasible"
    profile, status = solve_qp(qp, v0_mps=25.0, duration_s=5.0, v_ref_mps=25.0, beta=1.0, leader=(30.0, 25.0, 5.0))
    assert profile is None and status.code == "unsafe_start"


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError):
        FixedTimeQP(0)
    with pytest.raises(ValueError):
        FreeTimeNLP(0)
    with pytest.raises(ValueError):
        solve_qp(FixedTimeQP(4), v0_mps=25.0, duration_s=0.0, v_ref_mps=25.0, beta=1.0)


# ----------------------------------------------------------------------------- FreeTimeNLP


@pytest.mark.parametrize(("v0", "vf", "rho"), [(22.0, 30.0, 0.5), (31.0, 24.0, 1.0), (20.0, 33.0, 2.0), (27, 25, 0.1)])
def test_free_time_matches_time_energy_duration(nlp, v0, vf, rho) -> None:
    beta = 1000.0
    profile, status = solve_nlp(nlp, v0_mps=v0, v_f_mps=vf, rho=rho, beta=beta, t_guess_s=5.0)
    assert status.ok and status.solver == "fatrop"
    t_star = time_energy_duration(v0, vf, rho, LIMITS)
    assert profile.duration_s == pytest.approx(t_star, abs=1e-3)
    assert profile.duration_s == pytest.approx(t_star - 1 / (2 * beta), abs=1e-6)  # the exact penalised optimum
    assert np.ptp(profile.accel_mps2) < 1e-6  # constant control


def test_free_time_with_close_slow_leader_keeps_the_gap_at_every_node(nlp) -> None:
    kw = dict(v0_mps=25.0, v_f_mps=32.0, rho=0.5, beta=10.0, t_guess_s=5.0)
    free, _ = solve_nlp(nlp, **kw)
    leader = (45.0, 24.0, 5.0)  # 40 m bumper gap, leader 1 m/s slower
    profile, status = solve_nlp(nlp, leader=leader, **kw)
    assert status.ok and profile.within(LIMITS, tol=1e-6)
    assert node_slack(profile, leader).min() >= -1e-6
    assert abs(profile.duration_s - free.duration_s) > 0.1 or abs(profile.v_end_mps - free.v_end_mps) > 0.1


def test_free_time_infeasible_and_unsafe_start_return_a_status(nlp) -> None:
    kw = dict(v0_mps=25.0, v_f_mps=30.0, rho=1.0, beta=10.0, t_guess_s=5.0)
    # the leader is too slow (5 m/s < v_min) to stay behind for T_min = 8 s
    profile, status = solve_nlp(nlp, leader=(60.0, 5.0, 5.0), t_min_s=8.0, **kw)
    assert profile is None and status.code == "infeasible"
    profile, status = solve_nlp(nlp, leader=(30.0, 25.0, 5.0), **kw)
    assert profile is None and status.code == "unsafe_start"


def test_slot_with_a_speed_term_bounds_the_end_state(qp: FixedTimeQP) -> None:
    """("rear", b, c): x_N + c·v_N ≤ b — a gap that must also last through a constant-speed phase."""
    free, status = qp.solve(
        t0_s=0.0, x0_m=0.0, v0_mps=25.0, duration_s=5.0, v_ref_mps=30.0, beta=10.0, limits=LIMITS, headway=HEADWAY
    )
    assert status.ok
    b = free.x_end_m + 3.9 * free.v_end_mps - 10.0
    bound, status = qp.solve(
        t0_s=0.0, x0_m=0.0, v0_mps=25.0, duration_s=5.0, v_ref_mps=30.0, beta=10.0, limits=LIMITS,
        headway=HEADWAY, slot=("rear", b, 3.9),
    )  # fmt: skip
    assert status.ok
    assert bound.x_end_m + 3.9 * bound.v_end_mps == pytest.approx(b, abs=1e-6)  # active


# ----------------------------------------------------------------------------- Opti oracle
# An independent formulation of both problems with CasADi's Opti stack, written from the
# equations of docs/theory.md ("The numeric QP", "The free-time NLP"): the states stay decision
# variables (multiple shooting, not the eliminated dense QP of FixedTimeQP), the constraints are
# stated as the math reads, and IPOPT solves both to a tight tolerance. The hand-built solvers
# (DAQP, fatrop) must reach the same optimum on hand-built situations, each of which makes the
# constraints named in `binding` active: dropping any one of them from the oracle moves its
# optimum by far more than the tolerance (checked below), so a missing constraint or a wrong
# sign in the hand-built formulation is caught.

# (objective, trajectory) tolerances, relative: the objective to max(1, |J|), each of u_k, v_k, x_k − x0
# and T to max(1, max |·|) of the oracle's. DAQP solves the convex QP exactly (an active-set method),
# so it must agree with IPOPT to IPOPT's own accuracy; fatrop stops at its default tolerance.
QP_TOLERANCE = (1e-9, 1e-7)
NLP_TOLERANCE = (1e-6, 1e-4)


@dataclass(frozen=True)
class OracleSolution:
    cost: float
    duration_s: float
    x_m: np.ndarray  # x_0..x_N
    v_mps: np.ndarray  # v_0..v_N
    u_mps2: np.ndarray  # u_0..u_{N−1}


def opti_ocp(
    n: int,
    *,
    x0_m: float,
    v0_mps: float,
    v_ref_mps: float,
    beta: float,
    duration_s: float | None = None,
    rho: float = 0.0,
    t_bounds_s: tuple[float, float] | None = None,
    t_guess_s: float | None = None,
    leader: tuple[float, float, float] | None = None,
    slot: tuple | None = None,
    more_slots: tuple[tuple, ...] = (),
    limits: Limits = LIMITS,
    headway: Headway = HEADWAY,
    drop: frozenset[str] = frozenset(),
) -> OracleSolution:
    """min [ρ·T] + Σ_k ½u_k²·h + β(v_N − v_ref)²,  h = T/N, T fixed (`duration_s`) or free in `t_bounds_s`,
    s.t. x_{k+1} = x_k + h·v_k + h²/2·u_k, v_{k+1} = v_k + h·u_k, x_0 = x0, v_0 = v0;
         u_min ≤ u_k ≤ u_max ("u");  v_min ≤ v_k ≤ v_max, k ≥ 1 ("v");  T_min ≤ T ≤ T_max ("T");
         x_L0 + v_L·t_k − L_L − x_k ≥ φ·v_k + δ, k ≥ 1 ("leader");  x_N + c·v_N ≥ b (front) or ≤ b (rear) ("slot",
         and each of `more_slots`). `drop` leaves out the constraints of those names."""
    opti = ca.Opti()
    x, v, u = opti.variable(n + 1), opti.variable(n + 1), opti.variable(n)
    T = opti.variable() if duration_s is None else duration_s
    h = T / n
    opti.subject_to([x[0] == x0_m, v[0] == v0_mps])
    for k in range(n):
        opti.subject_to(x[k + 1] == x[k] + h * v[k] + h**2 / 2 * u[k])
        opti.subject_to(v[k + 1] == v[k] + h * u[k])
    if "u" not in drop:
        opti.subject_to(opti.bounded(limits.u_min_mps2, u, limits.u_max_mps2))
    if "v" not in drop:
        opti.subject_to(opti.bounded(limits.v_min_mps, v[1:], limits.v_max_mps))
    if duration_s is None and "T" not in drop:
        opti.subject_to(opti.bounded(t_bounds_s[0], T, t_bounds_s[1]))
    if leader is not None and "leader" not in drop:
        x_lead, v_lead, length = leader
        for k in range(1, n + 1):
            gap = x_lead + v_lead * k * h - length - x[k]
            opti.subject_to(gap >= headway.reaction_time_s * v[k] + headway.standstill_m)
    for line in ((slot,) if slot is not None else ()) + tuple(more_slots):
        if "slot" in drop:
            break
        side, b, *c = line
        end = x[n] + (c[0] if c else 0.0) * v[n]
        opti.subject_to(end >= b if side == "front" else end <= b)
    cost = rho * T + ca.sumsqr(u) * h / 2 + beta * (v[n] - v_ref_mps) ** 2
    opti.minimize(cost)
    # start: constant acceleration toward v_ref over T (or the guess of T)
    t_start = duration_s if duration_s is not None else t_guess_s
    u_start = min(max((v_ref_mps - v0_mps) / t_start, limits.u_min_mps2), limits.u_max_mps2)
    tk = t_start / n * np.arange(n + 1)
    opti.set_initial(u, u_start)
    opti.set_initial(v, v0_mps + u_start * tk)
    opti.set_initial(x, x0_m + v0_mps * tk + u_start * tk**2 / 2)
    if duration_s is None:
        opti.set_initial(T, t_start)
    # bound_relax_factor 0: IPOPT would otherwise relax every inequality by 1e-8·|bound| (3 µm on a
    # 300 m slot), enough to shift the objective by more than the tolerance
    ipopt = {"print_level": 0, "sb": "yes", "tol": 1e-12, "bound_relax_factor": 0.0}
    opti.solver("ipopt", {"print_time": False}, ipopt)
    sol = opti.solve()  # raises unless IPOPT converged
    duration = float(sol.value(T)) if duration_s is None else duration_s
    return OracleSolution(float(sol.value(cost)), duration, *(np.ravel(sol.value(a)) for a in (x, v, u)))


def oracle_mismatch(
    profile: Profile, cost: float, oracle: OracleSolution, tolerance: tuple[float, float]
) -> dict[str, float]:
    """Each quantity's deviation from the oracle over its tolerance (≤ 1 everywhere: the optima agree)."""
    cost_rel, traj_rel = tolerance

    def rel(a, b):
        return float(np.max(np.abs(np.asarray(a) - b)) / (traj_rel * max(1.0, float(np.max(np.abs(b))))))

    x0 = oracle.x_m[0]
    return {
        "cost": abs(cost - oracle.cost) / (cost_rel * max(1.0, abs(oracle.cost))),
        "T": rel(profile.duration_s, oracle.duration_s),
        "u": rel(profile.accel_mps2, oracle.u_mps2),
        "v": rel(profile.v_nodes_mps, oracle.v_mps),
        "x": rel(profile.x_nodes_m - x0, oracle.x_m - x0),
    }


# (hand-built solve's arguments, the constraints active at the optimum); x0 = 100 m, t0 = 3 s throughout
QP_CASES = {
    "unconstrained": (dict(v0_mps=24.0, duration_s=7.0, v_ref_mps=29.0, beta=0.8), ()),
    "leader": (
        dict(v0_mps=28.0, duration_s=8.0, v_ref_mps=30.0, beta=1.0, leader=(140.0, 22.0, 5.0)),
        ("leader", "u"),
    ),
    "slow leader, hard braking": (
        dict(v0_mps=30.0, duration_s=6.0, v_ref_mps=30.0, beta=1.0, leader=(175.0, 12.0, 5.0)),
        ("leader", "u"),
    ),
    "front slot": (dict(v0_mps=25.0, duration_s=8.0, v_ref_mps=25.0, beta=1.0, slot=("front", 330.0)), ("slot",)),
    "far front slot at u_max": (
        dict(v0_mps=20.0, duration_s=5.0, v_ref_mps=20.0, beta=0.5, slot=("front", 232.0)),
        ("slot", "u"),
    ),
    "rear slot with speed term": (
        dict(v0_mps=25.0, duration_s=5.0, v_ref_mps=30.0, beta=10.0, slot=("rear", 300.0, 3.9)),
        ("slot", "u"),
    ),
    "rear slot down to v_min": (
        dict(v0_mps=28.0, duration_s=8.0, v_ref_mps=32.0, beta=10.0, slot=("rear", 300.0, 3.9)),
        ("slot", "u", "v"),
    ),
    "speed cap": (dict(v0_mps=33.0, duration_s=6.0, v_ref_mps=40.0, beta=5.0), ("v",)),
    "leader and front slot": (
        dict(v0_mps=25.0, duration_s=8.0, v_ref_mps=28.0, beta=1.0, leader=(150.0, 22.0, 5.0), slot=("front", 295.0)),
        ("leader", "slot"),
    ),
}

NLP_CASES = {
    "unconstrained, speeding up": (dict(v0_mps=22.0, v_f_mps=30.0, rho=0.5, beta=10.0, t_guess_s=5.0), ()),
    "unconstrained, slowing down": (dict(v0_mps=31.0, v_f_mps=24.0, rho=1.0, beta=5.0, t_guess_s=5.0), ()),
    "close slow leader": (
        dict(v0_mps=25.0, v_f_mps=32.0, rho=0.5, beta=10.0, t_guess_s=5.0, leader=(145.0, 24.0, 5.0)),
        ("leader", "u"),
    ),
    "time-hungry, u_max": (dict(v0_mps=20.0, v_f_mps=30.0, rho=8.0, beta=10.0, t_guess_s=3.0), ("u",)),
    "speed cap": (dict(v0_mps=30.0, v_f_mps=40.0, rho=0.5, beta=10.0, t_guess_s=5.0), ("v",)),
    "T_min": (dict(v0_mps=25.0, v_f_mps=26.0, rho=2.0, beta=10.0, t_guess_s=5.0, t_min_s=4.0), ("T",)),
    "T_max": (dict(v0_mps=22.0, v_f_mps=30.0, rho=0.01, beta=10.0, t_guess_s=10.0), ("T",)),
}


@pytest.mark.parametrize("case", QP_CASES)
def test_fixed_time_qp_reaches_the_opti_optimum(qp: FixedTimeQP, case: str) -> None:
    kw, binding = QP_CASES[case]
    profile, status = qp.solve(t0_s=3.0, x0_m=100.0, limits=LIMITS, headway=HEADWAY, **kw)
    assert status.ok, status
    cost = profile.energy_m2ps3 + kw["beta"] * (profile.v_end_mps - kw["v_ref_mps"]) ** 2
    args = dict(x0_m=100.0, v0_mps=kw["v0_mps"], v_ref_mps=kw["v_ref_mps"], beta=kw["beta"],
                duration_s=kw["duration_s"], leader=kw.get("leader"), slot=kw.get("slot"))  # fmt: skip
    mismatch = oracle_mismatch(profile, cost, opti_ocp(N, **args), QP_TOLERANCE)
    assert max(mismatch.values()) <= 1.0, mismatch
    for name in binding:  # the case exercises the constraint: without it the optimum is another one
        dropped = opti_ocp(N, **args, drop=frozenset({name}))
        assert max(oracle_mismatch(profile, cost, dropped, QP_TOLERANCE).values()) > 100, name


@pytest.mark.parametrize("case", NLP_CASES)
def test_free_time_nlp_reaches_the_opti_optimum(nlp: FreeTimeNLP, case: str) -> None:
    kw, binding = NLP_CASES[case]
    kw = dict(t_min_s=0.5, t_max_s=15.0, leader=None) | kw
    profile, status = nlp.solve(t0_s=3.0, x0_m=100.0, limits=LIMITS, headway=HEADWAY, **kw)
    assert status.ok, status
    cost = kw["rho"] * profile.duration_s + profile.energy_m2ps3 + kw["beta"] * (profile.v_end_mps - kw["v_f_mps"]) ** 2
    args = dict(x0_m=100.0, v0_mps=kw["v0_mps"], v_ref_mps=kw["v_f_mps"], beta=kw["beta"], rho=kw["rho"],
                t_bounds_s=(kw["t_min_s"], kw["t_max_s"]), t_guess_s=kw["t_guess_s"], leader=kw["leader"])  # fmt: skip
    mismatch = oracle_mismatch(profile, cost, opti_ocp(N, **args), NLP_TOLERANCE)
    assert max(mismatch.values()) <= 1.0, mismatch
    for name in binding:
        dropped = opti_ocp(N, **args, drop=frozenset({name}))
        assert max(oracle_mismatch(profile, cost, dropped, NLP_TOLERANCE).values()) > 100, name


def test_free_time_nlp_stops_at_its_iteration_cap_without_a_retry() -> None:
    """A request of the on-ramp benchmark (C at 25.8 m/s, 29 m behind the bumper of a leader at 17.2 m/s,
    v_flow 32.5 m/s): fatrop took 538 iterations (0.15 s, more than a simulation step) to an optimum at
    T = 17.55 s. Capped, a start spends at most `max_iterations`, and running out of them is not followed
    by a second start; where it does converge it must be the optimum."""
    params = CooperativeParams()
    nlp = FreeTimeNLP(50)
    profile, status = nlp.solve(
        t0_s=0.0, x0_m=517.745, v0_mps=25.7637, v_f_mps=32.5005, rho=8.0, beta=10.0, limits=params.limits,
        headway=params.headway, leader=(551.978, 17.2278, 5.0), t_min_s=4.0, t_max_s=20.0, t_guess_s=4.0,
    )  # fmt: skip
    assert nlp._nlp.stats()["iter_count"] <= FreeTimeNLP.max_iterations + 1  # fatrop reports max_iter + 1
    if status.ok:
        assert profile.duration_s == pytest.approx(17.55, abs=0.05)
    else:
        assert status.code == "max_iterations" and "retried" not in status.message, status
