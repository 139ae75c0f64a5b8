"""The longitudinal maneuver model and its closed-form solutions.

Every vehicle is a double integrator, x' = v, v' = u, with u ∈ [u_min, u_max] and
v ∈ [v_min, v_max]. Positions are front bumpers (as in SUMO), so the bumper-to-bumper gap
to a leader is x_lead − L_lead − x, and the safe-distance rule is

    x_lead − L_lead − x ≥ φ·v + δ          (φ reaction time, δ standstill gap)

On an unconstrained arc the energy-optimal control is linear in time, u(τ) = u0 + j·τ
(Pontryagin: λ_x constant, u = −λ_v), so every plan here is an `Arc`: a cubic in position
followed by cruising at its final speed.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Limits:
    """Control and speed bounds."""

    u_min_mps2: float = -4.0
    u_max_mps2: float = 3.0
    v_min_mps: float = 10.0
    v_max_mps: float = 35.0


@dataclass(frozen=True)
class Headway:
    """The safe bumper-to-bumper gap φ·v + δ."""

    reaction_time_s: float = 0.9
    standstill_m: float = 3.0

    def gap_m(self, speed_mps: float | np.ndarray) -> float | np.ndarray:
        return self.reaction_time_s * speed_mps + self.standstill_m


@dataclass(frozen=True)
class Arc:
    """u(τ) = u0 + j·τ for τ = t − t0 ∈ [0, T], then cruising at v(T) (u = 0).

    v(τ) = v0 + u0·τ + j·τ²/2,   x(τ) = x0 + v0·τ + u0·τ²/2 + j·τ³/6.
    """

    t0_s: float
    duration_s: float
    x0_m: float
    v0_mps: float
    u0_mps2: float = 0.0
    jerk_mps3: float = 0.0

    @staticmethod
    def cruise(t0_s: float, x0_m: float, v0_mps: float) -> Arc:
        """Constant speed from t0 on."""
        return Arc(t0_s, 0.0, x0_m, v0_mps)

    @property
    def t_end_s(self) -> float:
        return self.t0_s + self.duration_s

    def state(self, t_s: float | np.ndarray) -> tuple:
        """(x, v, u) at absolute time(s) t ≥ t0."""
        if isinstance(t_s, (float, int)):  # the planner's hot path: plain floats
            tau = min(t_s - self.t0_s, self.duration_s)
            after = t_s - self.t0_s - tau
            u0, j = self.u0_mps2, self.jerk_mps3
            v = self.v0_mps + u0 * tau + j * tau * tau / 2
            x = self.x0_m + self.v0_mps * tau + u0 * tau * tau / 2 + j * tau**3 / 6 + v * after
            return x, v, (0.0 if after > 0 else u0 + j * tau)
        tau = np.minimum(np.asarray(t_s, dtype=float) - self.t0_s, self.duration_s)
        after = np.asarray(t_s, dtype=float) - self.t0_s - tau
        u0, j = self.u0_mps2, self.jerk_mps3
        v = self.v0_mps + u0 * tau + j * tau**2 / 2
        x = self.x0_m + self.v0_mps * tau + u0 * tau**2 / 2 + j * tau**3 / 6 + v * after
        u = np.where(after > 0, 0.0, u0 + j * tau)
        if np.ndim(t_s) == 0:
            return float(x), float(v), float(u)
        return x, v, u

    @property
    def x_end_m(self) -> float:
        return self.state(self.t_end_s)[0]

    @property
    def v_end_mps(self) -> float:
        return self.state(self.t_end_s)[1]

    @property
    def energy_m2ps3(self) -> float:
        """∫ ½u² dt = ½(u0²T + u0·j·T² + j²T³/3)."""
        T, u0, j = self.duration_s, self.u0_mps2, self.jerk_mps3
        return 0.5 * (u0 * u0 * T + u0 * j * T * T + j * j * T**3 / 3)

    def mean_accel(self, t_s: float, dt_s: float) -> float:
        """The constant acceleration over [t, t + dt] that reproduces the arc's speed at t + dt."""
        return (self.state(t_s + dt_s)[1] - self.state(t_s)[1]) / dt_s

    def within(self, limits: Limits, tol: float = 1e-9) -> bool:
        """Whether u and v stay inside the limits (u is linear and v quadratic: ends and vertex suffice)."""
        T, u0, j = self.duration_s, self.u0_mps2, self.jerk_mps3
        u_ends = (u0, u0 + j * T)
        if min(u_ends) < limits.u_min_mps2 - tol or max(u_ends) > limits.u_max_mps2 + tol:
            return False
        times = [0.0, T]
        if j != 0 and 0 < -u0 / j < T:
            times.append(-u0 / j)
        speeds = [self.state(self.t0_s + t)[1] for t in times]
        return limits.v_min_mps - tol <= min(speeds) and max(speeds) <= limits.v_max_mps + tol

    def local_poly(self, t_start_s: float, t_stop_s: float) -> tuple[float, float, float, float]:
        """Position as cubic coefficients (c0, c1, c2, c3) in s = t − t_start on [t_start, t_stop],
        a piece on which the arc does not switch from accelerating to cruising."""
        x, v, u = self.state(t_start_s)
        if t_start_s < self.t_end_s - 1e-12 and t_stop_s <= self.t_end_s + 1e-9:
            return x, v, u / 2, self.jerk_mps3 / 6
        return x, v, 0.0, 0.0

    def breakpoints(self, t_from_s: float, t_to_s: float) -> list[float]:
        """Times in (t_from, t_to) where the control switches: the end of the arc."""
        return [self.t_end_s] if t_from_s < self.t_end_s < t_to_s else []


class Plan(Protocol):
    """What `min_slack` needs of a plan (an `Arc` or an `ocp.Profile`)."""

    def local_poly(self, t_start_s: float, t_stop_s: float) -> tuple[float, float, float, float]: ...

    def breakpoints(self, t_from_s: float, t_to_s: float) -> list[float]: ...


# ----------------------------------------------------------------------------- closed forms


def fixed_state_arc(t0_s: float, x0_m: float, v0_mps: float, xf_m: float, vf_mps: float, T_s: float) -> Arc:
    """Energy-optimal arc with both end states fixed:
    u = aτ + b,  a = 6Δv/T² − 12Δx/T³,  b = −2Δv/T + 6Δx/T²,  Δx = x_f − x0 − v0T, Δv = v_f − v0."""
    dx, dv = xf_m - x0_m - v0_mps * T_s, vf_mps - v0_mps
    a = 6 * dv / T_s**2 - 12 * dx / T_s**3
    b = -2 * dv / T_s + 6 * dx / T_s**2
    return Arc(t0_s, T_s, x0_m, v0_mps, b, a)


def terminal_speed_arc(
    t0_s: float, x0_m: float, v0_mps: float, v_ref_mps: float, beta: float, T_s: float,
    x_end_m: float | None = None, speed_coeff_s: float = 0.0,
) -> Arc:  # fmt: skip
    """Minimum of ∫½u² + β(v(T) − v_ref)², with x(T) free, or on the line x(T) + c·v(T) = x_end_m
    (c = `speed_coeff_s`; c = 0 fixes x(T)).

    x(T) free: u = 2β(v_ref − v0)/(1 + 2βT), constant.
    On the line (multiplier ν): λ_x = ν, λ_v(T) = 2β(v(T) − v_ref) + νc, so u = aτ + b (a = ν) with
    (T³/6 + cT²/2)a + (T²/2 + cT)b = x_end − x0 − v0T − c·v0   (the line)
    (T + c + βT²)a + (1 + 2βT)b = 2β(v_ref − v0)                 (transversality).
    """
    if x_end_m is None:
        return Arc(t0_s, T_s, x0_m, v0_mps, 2 * beta * (v_ref_mps - v0_mps) / (1 + 2 * beta * T_s), 0.0)
    c = speed_coeff_s
    m = np.array([[T_s**3 / 6 + c * T_s**2 / 2, T_s**2 / 2 + c * T_s], [T_s + c + beta * T_s**2, 1 + 2 * beta * T_s]])
    rhs = np.array([x_end_m - x0_m - v0_mps * T_s - c * v0_mps, 2 * beta * (v_ref_mps - v0_mps)])
    a, b = np.linalg.solve(m, rhs)
    return Arc(t0_s, T_s, x0_m, v0_mps, float(b), float(a))


def time_energy_duration(v0_mps: float, vf_mps: float, rho: float, limits: Limits) -> float:
    """Free final time of min ρT + ∫½u² with v(T) = v_f, x(T) free: u = ±√(2ρ) constant
    (H ≡ 0), so T* = |v_f − v0|/√(2ρ); with u saturated at its bound, T* = |Δv|/|u_bound|."""
    dv = vf_mps - v0_mps
    bound = limits.u_max_mps2 if dv > 0 else -limits.u_min_mps2
    return abs(dv) / min(math.sqrt(2 * rho), bound)


def reachable(x0_m: float, v0_mps: float, t_s: float, x_m: float, v_mps: float, limits: Limits) -> bool:
    """Whether (x, v) can be reached at time t under u ∈ [u_min, u_max] (speed bounds ignored).

    With ν = (u_max + u_min)/2, μ = (u_max − u_min)/2, y = x − x0 − v0t − νt²/2, w = v − v0 − νt:
    reachable ⇔ |w| ≤ μt and −μ[t²/2 − (t + w/μ)²/4] ≤ y ≤ μ[t²/2 − (t − w/μ)²/4]
    (the bounds are bang-bang: full acceleration then full braking, or the reverse).
    """
    nu = (limits.u_max_mps2 + limits.u_min_mps2) / 2
    mu = (limits.u_max_mps2 - limits.u_min_mps2) / 2
    t = t_s
    y = x_m - x0_m - v0_mps * t - nu * t * t / 2
    w = v_mps - v0_mps - nu * t
    tol = 1e-9 * max(1.0, abs(x_m))
    if abs(w) > mu * t + 1e-12:
        return False
    upper = mu * (t * t / 2 - (t - w / mu) ** 2 / 4)
    lower = -mu * (t * t / 2 - (t + w / mu) ** 2 / 4)
    return lower - tol <= y <= upper + tol


def position_range(x0_m: float, v0_mps: float, t_s: float, limits: Limits) -> tuple[float, float]:
    """Least and greatest position at time t with both control and speed bounds: brake (or
    accelerate) fully until v_min (or v_max), then cruise."""

    def travel(u: float, v_bound: float) -> float:
        if u == 0 or (v_bound - v0_mps) / u <= 0:
            return v0_mps * t_s
        t_sat = min(t_s, (v_bound - v0_mps) / u)
        return v0_mps * t_sat + u * t_sat**2 / 2 + (v0_mps + u * t_sat) * (t_s - t_sat)

    lo = x0_m + travel(limits.u_min_mps2, limits.v_min_mps)
    hi = x0_m + travel(limits.u_max_mps2, limits.v_max_mps)
    return lo, hi


def min_slack(
    leader: Plan, follower: Plan, leader_length_m: float, headway: Headway, t_from_s: float, t_to_s: float
) -> tuple[float, float]:
    """min over t ∈ [t_from, t_to] of  x_lead − L_lead − x − (φ·v + δ);  returns (slack, time).

    The slack is a cubic between the plans' switching times: its minimum is at an end of a
    piece or at a root of its derivative."""
    switches = (*leader.breakpoints(t_from_s, t_to_s), *follower.breakpoints(t_from_s, t_to_s))
    cuts = sorted({t_from_s, t_to_s, *switches})
    phi, offset = headway.reaction_time_s, leader_length_m + headway.standstill_m
    best = (math.inf, t_from_s)
    for a, b in itertools.pairwise(cuts):  # plain floats: a few pieces, called very often
        l0, l1, l2, l3 = leader.local_poly(a, b)
        f0, f1, f2, f3 = follower.local_poly(a, b)
        # slack(s) = c0 + c1·s + c2·s² + c3·s³, with φ·v_f(s) = φ(f1 + 2f2·s + 3f3·s²) taken off
        c0, c1, c2, c3 = l0 - f0 - offset - phi * f1, l1 - f1 - 2 * phi * f2, l2 - f2 - 3 * phi * f3, l3 - f3
        length = b - a
        candidates = [0.0, length]
        d0, d1, d2 = c1, 2 * c2, 3 * c3  # derivative
        if abs(d2) > 1e-12:
            disc = d1 * d1 - 4 * d2 * d0
            if disc >= 0:
                root = math.sqrt(disc)
                candidates += [(-d1 - root) / (2 * d2), (-d1 + root) / (2 * d2)]
        elif abs(d1) > 1e-12:
            candidates.append(-d0 / d1)
        for s in candidates:
            if 0 <= s <= length:
                value = c0 + s * (c1 + s * (c2 + s * c3))
                if value < best[0]:
                    best = (value, a + s)
    return best
