"""Closed forms of the longitudinal maneuver model against their definitions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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

from .conftest import zoh_simulate

LIMITS = Limits(u_min_mps2=-4.0, u_max_mps2=3.0, v_min_mps=5.0, v_max_mps=40.0)


def test_arc_state_matches_integration_and_cruises_after_its_end() -> None:
    arc = Arc(t0_s=2.0, duration_s=4.0, x0_m=10.0, v0_mps=20.0, u0_mps2=1.0, jerk_mps3=-0.3)
    dt = 1e-4
    t = 2.0 + np.arange(0, 4.0, dt)
    x, v = zoh_simulate(arc.state(t + dt / 2)[2], 10.0, 20.0, dt)  # midpoint rule is exact for linear u
    assert x[-1] == pytest.approx(arc.x_end_m, abs=1e-6)
    assert v[-1] == pytest.approx(arc.v_end_mps, abs=1e-9)
    x9, v9, u9 = arc.state(9.0)
    assert (v9, u9) == (pytest.approx(arc.v_end_mps), 0.0)
    assert x9 == pytest.approx(arc.x_end_m + 3.0 * arc.v_end_mps)
    u = arc.state(t)[2]
    assert arc.energy_m2ps3 == pytest.approx(0.5 * np.sum(u * u) * dt, rel=1e-3)


def test_mean_accel_reproduces_the_speed_after_each_step() -> None:
    arc = fixed_state_arc(0.0, 0.0, 25.0, 150.0, 30.0, 5.0)
    x, v = 0.0, 25.0
    for k in range(50):
        u = arc.mean_accel(k * 0.1, 0.1)
        x, v = x + v * 0.1 + u * 0.005, v + u * 0.1
    assert v == pytest.approx(30.0, abs=1e-12)
    assert x == pytest.approx(150.0, abs=0.01)  # ZOH of a linear control: O(j·dt³) per step


@settings(max_examples=200, deadline=None)
@given(
    v0=st.floats(10, 35), vf=st.floats(10, 35), T=st.floats(1, 20), extra=st.floats(-0.3, 0.3),
)  # fmt: skip
def test_fixed_state_arc_meets_both_end_states_and_beats_other_controls(v0, vf, T, extra) -> None:
    xf = (v0 + vf) / 2 * T * (1 + extra)
    arc = fixed_state_arc(0.0, 0.0, v0, xf, vf, T)
    assert arc.x_end_m == pytest.approx(xf, abs=1e-6)
    assert arc.v_end_mps == pytest.approx(vf, abs=1e-9)
    # adding a control w that keeps both end states (∫w = 0, ∫(T − τ)w = 0) costs energy
    tau = np.linspace(0, T, 20001)
    w = np.sin(2 * np.pi * tau / T) * (tau - T / 2)
    basis = np.vstack([np.ones_like(tau), tau])
    moments = np.array([[np.trapezoid(b * m, tau) for b in basis] for m in (np.ones_like(tau), T - tau)])
    w += np.linalg.solve(moments, [-np.trapezoid(w, tau), -np.trapezoid((T - tau) * w, tau)]) @ basis
    u = arc.state(tau)[2]
    assert np.trapezoid(u + 0.2 * w, tau) == pytest.approx(np.trapezoid(u, tau), abs=1e-6)
    assert 0.5 * np.trapezoid((u + 0.2 * w) ** 2, tau) > arc.energy_m2ps3


@settings(max_examples=200, deadline=None)
@given(v0=st.floats(10, 35), vref=st.floats(10, 35), beta=st.floats(0.01, 10), T=st.floats(1, 20))
def test_terminal_speed_arc_is_the_minimum_over_constant_and_linear_controls(v0, vref, beta, T) -> None:
    arc = terminal_speed_arc(0.0, 0.0, v0, vref, beta, T)

    def cost(a: Arc) -> float:
        return a.energy_m2ps3 + beta * (a.v_end_mps - vref) ** 2

    best = cost(arc)
    for du, dj in itertools.product((-0.05, 0.05), (-0.01, 0.0, 0.01)):
        assert cost(Arc(0.0, T, 0.0, v0, arc.u0_mps2 + du, dj)) >= best - 1e-12


@settings(max_examples=200, deadline=None)
@given(
    v0=st.floats(10, 35), vref=st.floats(10, 35), beta=st.floats(0.01, 10), T=st.floats(1, 20), shift=st.floats(-30, 30)
)
def test_terminal_speed_arc_with_fixed_end_position(v0, vref, beta, T, shift) -> None:
    free = terminal_speed_arc(0.0, 0.0, v0, vref, beta, T)
    x_end = free.x_end_m + shift
    arc = terminal_speed_arc(0.0, 0.0, v0, vref, beta, T, x_end_m=x_end)
    assert arc.x_end_m == pytest.approx(x_end, abs=1e-6)

    def cost(a: Arc) -> float:
        return a.energy_m2ps3 + beta * (a.v_end_mps - vref) ** 2

    # moving along the one-parameter family of linear controls with the same x(T) costs more
    for eps in (-0.02, 0.02):
        da = eps
        db = -da * T / 3  # keeps (T³/6)a + (T²/2)b unchanged
        assert cost(Arc(0.0, T, 0.0, v0, arc.u0_mps2 + db, arc.jerk_mps3 + da)) >= cost(arc) - 1e-9


def test_time_energy_duration_is_dv_over_sqrt_2rho_and_saturates() -> None:
    assert time_energy_duration(20.0, 30.0, rho=0.5, limits=LIMITS) == pytest.approx(10.0)
    assert time_energy_duration(30.0, 20.0, rho=2.0, limits=LIMITS) == pytest.approx(5.0)
    assert time_energy_duration(20.0, 32.0, rho=8.0, limits=LIMITS) == pytest.approx(12.0 / 3.0)  # u_max
    assert time_energy_duration(30.0, 18.0, rho=50.0, limits=LIMITS) == pytest.approx(12.0 / 4.0)  # u_min
    assert time_energy_duration(25.0, 25.0, rho=1.0, limits=LIMITS) == 0.0


def test_time_energy_duration_is_the_minimum_of_the_cost() -> None:
    rho, v0, vf = 0.7, 22.0, 29.0
    T = time_energy_duration(v0, vf, rho, LIMITS)
    for other in (0.8 * T, 0.95 * T, 1.05 * T, 1.3 * T):
        # for a given T the best control is constant Δv/T: cost ρT + ½Δv²/T
        assert rho * other + 0.5 * (vf - v0) ** 2 / other > rho * T + 0.5 * (vf - v0) ** 2 / T


def _bang_bang_endpoints(x0: float, v0: float, t: float, limits: Limits, n: int = 60) -> np.ndarray:
    """End states (x, v, side) of two-phase bang-bang controls switching at s: side +1 is full
    acceleration then full braking (the farthest x for that v), −1 the reverse (the nearest)."""
    out = []
    for s in np.linspace(0, t, n):
        for side, (first, second) in (
            (1, (limits.u_max_mps2, limits.u_min_mps2)),
            (-1, (limits.u_min_mps2, limits.u_max_mps2)),
        ):
            v1 = v0 + first * s
            x1 = x0 + v0 * s + first * s * s / 2
            r = t - s
            out.append((x1 + v1 * r + second * r * r / 2, v1 + second * r, side))
    return np.array(out)


def test_reachable_set_agrees_with_bang_bang_simulation() -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        x0, v0, t = 0.0, rng.uniform(10, 30), rng.uniform(0.5, 8)
        edge = _bang_bang_endpoints(x0, v0, t, LIMITS)
        for x, v, side in edge:  # the boundary is reachable, and 1 cm beyond it is not
            assert reachable(x0, v0, t, x, v, LIMITS)
            assert not reachable(x0, v0, t, x + side * 0.01, v, LIMITS)
        # random interior points: reachable iff some mix of accelerations gets there
        for _ in range(20):
            u1, u2 = rng.uniform(LIMITS.u_min_mps2, LIMITS.u_max_mps2, 2)
            switch = int(rng.integers(0, 101))
            x, v = zoh_simulate(np.r_[np.full(switch, u1), np.full(100 - switch, u2)], x0, v0, t / 100)
            assert reachable(x0, v0, t, x[-1], v[-1], LIMITS)
        assert not reachable(x0, v0, t, x0 + v0 * t, v0 + LIMITS.u_max_mps2 * t + 0.1, LIMITS)


def test_position_range_respects_speed_bounds() -> None:
    lo, hi = position_range(0.0, 30.0, 10.0, LIMITS)
    # braking at 4 m/s² from 30 hits v_min = 5 after 6.25 s, then cruises
    assert lo == pytest.approx(30 * 6.25 - 2 * 6.25**2 + 5 * 3.75)
    # accelerating at 3 m/s² from 30 hits v_max = 40 after 3.33 s
    t_sat = 10 / 3
    assert hi == pytest.approx(30 * t_sat + 1.5 * t_sat**2 + 40 * (10 - t_sat))


@settings(max_examples=150, deadline=None)
@given(
    lead_u=st.floats(-2, 2), lead_j=st.floats(-0.5, 0.5), lead_T=st.floats(0, 10),
    fol_u=st.floats(-2, 2), fol_j=st.floats(-0.5, 0.5), fol_T=st.floats(0, 10), gap=st.floats(5, 80),
)  # fmt: skip
def test_min_slack_equals_dense_sampling(lead_u, lead_j, lead_T, fol_u, fol_j, fol_T, gap) -> None:
    leader = Arc(0.0, lead_T, gap, 25.0, lead_u, lead_j)
    follower = Arc(1.0, fol_T, 0.0, 27.0, fol_u, fol_j)
    headway = Headway(0.9, 2.0)
    slack, when = min_slack(leader, follower, 4.5, headway, 1.0, 13.0)
    t = np.union1d(np.linspace(1.0, 13.0, 24001), [t for t in (leader.t_end_s, follower.t_end_s) if 1 < t < 13])
    dense = leader.state(t)[0] - 4.5 - follower.state(t)[0] - headway.gap_m(follower.state(t)[1])
    assert slack == pytest.approx(dense.min(), abs=1e-6)
    assert slack <= dense.min() + 1e-9
    assert 1.0 <= when <= 13.0


def test_within_limits() -> None:
    assert fixed_state_arc(0, 0, 20, 110, 24, 5).within(LIMITS)
    assert not fixed_state_arc(0, 0, 20, 200, 24, 5).within(LIMITS)  # needs more than 3 m/s²
    assert not Arc(0, 10, 0, 38, 0.5, 0).within(LIMITS)  # would exceed v_max
    assert math.isclose(Arc.cruise(0, 0, 20).energy_m2ps3, 0.0)
