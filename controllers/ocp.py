"""Numeric optimal control of one vehicle on a uniform grid, for when the closed forms of
`longitudinal` do not apply (active safety or slot constraints).

The control is piecewise constant, u_k on [t_k, t_k + h), and the double integrator is
discretised exactly (zero-order hold):

    x_{k+1} = x_k + h·v_k + h²/2·u_k,      v_{k+1} = v_k + h·u_k.

A leader cruises: x_L(t) = x_L0 + v_L·(t − t0), and safety x_L − L_L − x_k ≥ φ·v_k + δ is
imposed at every node. Both problems are built once per grid size N and re-solved with new
data; a solve never raises on an infeasible or failed problem, it returns a `SolveStatus`.
The data enter by name: `QPParameters` and `NLPParameters` hold CasADi symbols (named after
their fields) while a problem is built and numbers when it is solved.

- `FixedTimeQP`: fixed T, energy + terminal-speed penalty (convex QP). The states are
  eliminated, x_k and v_k are linear in u, and the dense QP in N unknowns is solved by DAQP
  (a dense active-set method: exact active set, reliable infeasibility detection; 0.4 ms
  median at N = 50, against 0.6 ms for qpOASES, 3.5 ms for OSQP and 13 ms for IPOPT).
- `FreeTimeNLP`: T free, time + energy + terminal-speed penalty (nonconvex through h = T/N).
  Multiple shooting with T as a constant state, solved by fatrop (structure-exploiting
  interior point; 1.7 ms median at N = 50, against 4.6 ms for IPOPT).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import casadi as ca
import numpy as np

from cavlab.controllers.longitudinal import Headway, Limits

Leader = tuple[float, float, float]
"""(x_L0 at t0 [m], v_L [m/s], L_L [m]) of a cruising leader."""

Slot = tuple[str, float] | tuple[str, float, float]
"""("front", b[, c]): x_N + c·v_N ≥ b;  ("rear", b[, c]): x_N + c·v_N ≤ b  (c = 0 if left out)."""

Scalar = Any
"""A parameter's value: a scalar CasADi symbol while a problem is built, a float when it is solved."""

_P = TypeVar("_P", bound="_Parameters")


@dataclass(frozen=True)
class _Parameters:
    """A named parameter set of an OCP: `symbols()` while building, numbers by name when solving."""

    @classmethod
    def symbols(cls: type[_P], kind: type = ca.SX) -> _P:
        """Every field a scalar symbol of its own name, `ca.SX` (scalar graphs: fast to evaluate) or
        `ca.MX` (matrix graphs: fast to build where the problem is dense)."""
        return cls(**{f.name: kind.sym(f.name) for f in fields(cls)})

    def vector(self) -> Any:
        """The fields in declaration order, the problem's parameter vector: a column of the symbols,
        or a list of the numbers."""
        values = [getattr(self, name) for name in _field_names(type(self))]
        return ca.vertcat(*values) if isinstance(values[0], (ca.SX, ca.MX)) else values


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _model(limits: Limits, headway: Headway) -> dict[str, float]:
    """The vehicle-model fields shared by both parameter sets, by name."""
    return {
        "u_min": limits.u_min_mps2, "u_max": limits.u_max_mps2, "v_min": limits.v_min_mps, "v_max": limits.v_max_mps,
        "phi": headway.reaction_time_s, "delta": headway.standstill_m,
    }  # fmt: skip


@dataclass(frozen=True)
class QPParameters(_Parameters):
    """The data of one `FixedTimeQP` solve; positions are relative to x0 (ξ = x − x0)."""

    h: Scalar  # interval length T/N [s]
    v0: Scalar  # initial speed [m/s]
    v_ref: Scalar  # reference of the terminal-speed penalty [m/s]
    beta: Scalar  # β, its weight
    u_min: Scalar
    u_max: Scalar
    v_min: Scalar
    v_max: Scalar
    phi: Scalar  # φ, reaction time [s]
    delta: Scalar  # δ, standstill gap [m]
    gap0: Scalar  # leader bumper gap at t0, x_L0 − L_L − x0 [m]
    v_lead: Scalar  # v_L, the leader's (cruising) speed
    lead_on: Scalar  # 1 with a leader, 0 without
    slot_b: Scalar  # b − x0 of the slot x_N + c·v_N ≷ b [m]
    slot_side: Scalar  # +1 "front" (≥), −1 "rear" (≤), 0 no slot
    slot_c: Scalar  # c [s]
    line2_b: Scalar  # two more lines of the same form (`more_slots`), each off with side 0
    line2_side: Scalar
    line2_c: Scalar
    line3_b: Scalar
    line3_side: Scalar
    line3_c: Scalar


@dataclass(frozen=True)
class NLPParameters(_Parameters):
    """The data of one `FreeTimeNLP` solve; positions are relative to x0 (ξ = x − x0)."""

    v0: Scalar  # initial speed [m/s]
    v_f: Scalar  # reference of the terminal-speed penalty [m/s]
    rho: Scalar  # ρ, the weight of time
    beta: Scalar  # β, the weight of the terminal-speed penalty
    u_min: Scalar
    u_max: Scalar
    v_min: Scalar
    v_max: Scalar
    phi: Scalar  # φ, reaction time [s]
    delta: Scalar  # δ, standstill gap [m]
    gap0: Scalar  # leader bumper gap at t0, x_L0 − L_L − x0 [m]
    v_lead: Scalar  # v_L, the leader's (cruising) speed
    lead_on: Scalar  # 1 with a leader, 0 without
    t_min: Scalar  # bounds on T [s]
    t_max: Scalar


@dataclass(frozen=True)
class SolveStatus:
    """Outcome of a solve. `code` is "optimal", "acceptable", "infeasible", "unsafe_start",
    "max_iterations" or "solver_error"."""

    ok: bool
    code: str
    message: str
    solve_time_s: float
    solver: str


@dataclass(frozen=True, eq=False)
class Profile:
    """Piecewise-constant control u_k on [t0 + k·h, t0 + (k + 1)·h), k < N, under exact
    zero-order hold; after t0 + N·h the vehicle cruises at v_N (u = 0).

    `x_nodes_m` and `v_nodes_mps` hold the N + 1 node states."""

    t0_s: float
    step_s: float
    x0_m: float
    v0_mps: float
    accel_mps2: np.ndarray
    x_nodes_m: np.ndarray = field(init=False, repr=False)
    v_nodes_mps: np.ndarray = field(init=False, repr=False)
    _nodes: tuple[list[float], list[float], list[float]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        u = np.array(self.accel_mps2, dtype=float)
        if u.ndim != 1 or u.size == 0 or not self.step_s > 0:
            raise ValueError("a Profile needs at least one control value and a positive step")
        h = self.step_s
        v = self.v0_mps + h * np.concatenate(([0.0], np.cumsum(u)))
        x = self.x0_m + np.concatenate(([0.0], np.cumsum(h * v[:-1] + h * h / 2 * u)))
        for name, array in (("accel_mps2", u), ("x_nodes_m", x), ("v_nodes_mps", v)):
            array.setflags(write=False)
            object.__setattr__(self, name, array)
        object.__setattr__(self, "_nodes", (u.tolist(), x.tolist(), v.tolist()))  # for scalar access

    @property
    def duration_s(self) -> float:
        return self.step_s * self.accel_mps2.size

    @property
    def t_end_s(self) -> float:
        return self.t0_s + self.duration_s

    def state(self, t_s: float | np.ndarray) -> tuple:
        """(x, v, u) at absolute time(s) t ≥ t0."""
        if isinstance(t_s, (float, int)):  # the planner's hot path: plain floats
            tau = min(t_s - self.t0_s, self.duration_s)
            us, xs, vs = self._nodes
            k = min(max(int(tau // self.step_s), 0), len(us) - 1)
            s = tau - k * self.step_s
            u, vk = us[k], vs[k]
            v = vk + u * s
            x = xs[k] + vk * s + u * s * s / 2 + v * (t_s - self.t0_s - tau)
            return x, v, (0.0 if t_s > self.t_end_s else u)
        t = np.asarray(t_s, dtype=float)
        tau = np.minimum(t - self.t0_s, self.duration_s)
        k = np.clip(np.floor(tau / self.step_s).astype(int), 0, self.accel_mps2.size - 1)
        s = tau - k * self.step_s
        u = self.accel_mps2[k]
        v = self.v_nodes_mps[k] + u * s
        x = self.x_nodes_m[k] + self.v_nodes_mps[k] * s + u * s * s / 2 + v * (t - self.t0_s - tau)
        u = np.where(t > self.t_end_s, 0.0, u)
        if np.ndim(t_s) == 0:
            return float(x), float(v), float(u)
        return x, v, u

    @property
    def x_end_m(self) -> float:
        return float(self.x_nodes_m[-1])

    @property
    def v_end_mps(self) -> float:
        return float(self.v_nodes_mps[-1])

    @property
    def energy_m2ps3(self) -> float:
        """Σ ½u_k²·h."""
        return 0.5 * float(self.accel_mps2 @ self.accel_mps2) * self.step_s

    def mean_accel(self, t_s: float, dt_s: float) -> float:
        """(v(t + dt) − v(t))/dt."""
        return (self.state(t_s + dt_s)[1] - self.state(t_s)[1]) / dt_s

    def within(self, limits: Limits, tol: float = 1e-9) -> bool:
        """Whether u and v stay inside the limits (v is piecewise linear: nodes suffice)."""
        u, v = self.accel_mps2, self.v_nodes_mps
        return bool(
            limits.u_min_mps2 - tol <= u.min()
            and u.max() <= limits.u_max_mps2 + tol
            and limits.v_min_mps - tol <= v.min()
            and v.max() <= limits.v_max_mps + tol
        )

    def local_poly(self, t_start_s: float, t_stop_s: float) -> tuple[float, float, float, float]:
        """Position as cubic coefficients (c0, c1, c2, c3) in s = t − t_start on [t_start, t_stop],
        a piece that crosses no grid point nor the end (c3 = 0)."""
        mid = (t_start_s + t_stop_s) / 2
        if mid >= self.t_end_s:
            x, v, _ = self.state(t_start_s)
            return x, v, 0.0, 0.0
        us, xs, vs = self._nodes
        k = min(max(int((mid - self.t0_s) // self.step_s), 0), len(us) - 1)
        s = t_start_s - self.t0_s - k * self.step_s
        u, v = us[k], vs[k]
        return xs[k] + v * s + u * s * s / 2, v + u * s, u / 2, 0.0

    def breakpoints(self, t_from_s: float, t_to_s: float) -> list[float]:
        """Grid times t0 + k·h, k = 1..N, inside (t_from, t_to)."""
        t0, h = self.t0_s, self.step_s
        return [t for t in (t0 + h * k for k in range(1, self.accel_mps2.size + 1)) if t_from_s < t < t_to_s]


def _leader_slack_m(gap_m: float, v_mps: float, headway: Headway) -> float:
    """x_L − L_L − x − (φ·v + δ) for a bumper gap x_L − L_L − x."""
    return gap_m - headway.gap_m(v_mps)


def _unsafe_start(x0_m: float, v0_mps: float, leader: Leader | None, headway: Headway) -> bool:
    return leader is not None and _leader_slack_m(leader[0] - leader[2] - x0_m, v0_mps, headway) < -1e-9


def _status(ok: bool, code: str, message: str, started_s: float, solver: str) -> SolveStatus:
    return SolveStatus(ok, code, message, time.perf_counter() - started_s, solver)


# ----------------------------------------------------------------------------- fixed final time

_DAQP_EXIT = {
    1: ("optimal", "optimal"),
    2: ("optimal", "optimal (soft constraints relaxed)"),
    -1: ("infeasible", "primal infeasible"),
    -2: ("solver_error", "cycling in the active set"),
    -3: ("solver_error", "unbounded"),
    -4: ("max_iterations", "iteration limit reached"),
    -5: ("solver_error", "nonconvex problem"),
    -6: ("solver_error", "initial working set overdetermined"),
}


class FixedTimeQP:
    """min  Σ ½u_k²·h + β(v_N − v_ref)²   over u_0..u_{N−1}, with h = T/N,

    s.t. u_min ≤ u_k ≤ u_max;  v_min ≤ v_k ≤ v_max (k = 1..N);  optional cruising leader:
    x_L(t_k) − L_L − x_k ≥ φ·v_k + δ (k = 1..N; k = 0 must already hold);  optional slot:
    x_N + c·v_N ≥ b ("front") or ≤ b ("rear") — c > 0 keeps a gap that changes during a
    following phase at constant speed — and up to two more such lines (`more_slots`).

    With ξ_k = x_k − x0, the states are linear in u:  v_k = v0 + h·Σ_{i<k} u_i,
    ξ_k = k·h·v0 + h²·Σ_{i<k} (k − i − ½)·u_i, so the QP is dense in N unknowns.
    """

    solver = "daqp"
    solver_options: ClassVar[dict] = {}

    def __init__(self, n_intervals: int) -> None:
        if n_intervals < 1:
            raise ValueError(f"need at least one interval, got {n_intervals}")
        self.n_intervals = n = n_intervals
        k = np.arange(1, n + 1)[:, None]
        i = np.arange(n)[None, :]
        speed = ca.DM((i < k).astype(float))  # v_k − v0 = h·(speed @ u)
        position = ca.DM(np.where(i < k, k - i - 0.5, 0.0))  # ξ_k − k·h·v0 = h²·(position @ u)
        p = QPParameters.symbols(ca.MX)  # dense matrices: an MX graph builds faster than an SX one
        h = p.h
        ones = np.ones(n)
        hess = h * ca.DM.eye(n) + 2 * p.beta * h * h * ca.DM.ones(n, n)
        grad = 2 * p.beta * h * (p.v0 - p.v_ref) * ca.DM(ones)
        kh = h * ca.DM(np.arange(1, n + 1))
        lines = [(p.slot_b, p.slot_side, p.slot_c), (p.line2_b, p.line2_side, p.line2_c),
                 (p.line3_b, p.line3_side, p.line3_c)]  # fmt: skip
        line_rows = [h * h * position[n - 1, :] + c * h * speed[n - 1, :] for _, _, c in lines]
        rows = ca.vertcat(h * speed, h * h * position + p.phi * h * speed, *line_rows)
        # gap_k = gap0 + (v_L − v0)·t_k − h²·(position @ u) must cover φ·(v0 + h·(speed @ u)) + δ
        lead_gap = p.gap0 + (p.v_lead - p.v0) * kh - p.phi * p.v0 - p.delta
        lead_bound = ca.if_else(p.lead_on > 0, lead_gap, ca.inf * ones)
        line_rel = [(b - n * h * p.v0 - c * p.v0, side) for b, side, c in lines]  # bounds on the line rows
        lba = ca.vertcat((p.v_min - p.v0) * ones, -ca.inf * ones,
                         *(ca.if_else(side > 0, rel, -ca.inf) for rel, side in line_rel))
        uba = ca.vertcat((p.v_max - p.v0) * ones, lead_bound,
                         *(ca.if_else(side < 0, rel, ca.inf) for rel, side in line_rel))
        outputs = [hess, grad, rows, lba, uba, p.u_min * ones, p.u_max * ones]
        self._data = ca.Function("qp_data", [p.vector()], outputs)
        self._qp = ca.conic(
            "fixed_time_qp",
            self.solver,
            {"h": hess.sparsity(), "a": rows.sparsity()},
            {"error_on_fail": False, "print_time": False, **self.solver_options},
        )

    def solve(
        self,
        *,
        t0_s: float,
        x0_m: float,
        v0_mps: float,
        duration_s: float,
        v_ref_mps: float,
        beta: float,
        limits: Limits,
        headway: Headway,
        leader: Leader | None = None,
        slot: Slot | None = None,
        more_slots: tuple[Slot, ...] = (),
    ) -> tuple[Profile | None, SolveStatus]:
        """The optimal profile from (x0, v0) at t0 over T = `duration_s`, or None and why not."""
        started = time.perf_counter()
        if not duration_s > 0:
            raise ValueError(f"duration must be positive, got {duration_s}")
        if beta < 0:
            raise ValueError(f"beta must be non-negative, got {beta}")
        lines = ([slot] if slot is not None else []) + list(more_slots)
        if len(lines) > 3:
            raise ValueError(f"at most 3 slot lines, got {len(lines)}")
        for line in lines:
            if line[0] not in ("front", "rear"):
                raise ValueError(f"slot side must be 'front' or 'rear', got {line[0]!r}")
        if _unsafe_start(x0_m, v0_mps, leader, headway):
            return None, _status(False, "unsafe_start", "leader gap below φ·v0 + δ at t0", started, self.solver)
        n = self.n_intervals
        gap0, v_lead = (leader[0] - leader[2] - x0_m, leader[1]) if leader else (0.0, 0.0)
        named: dict[str, float] = {}
        for k, name in enumerate(("slot", "line2", "line3")):
            line = lines[k] if k < len(lines) else None
            named[f"{name}_b"] = line[1] - x0_m if line else 0.0
            named[f"{name}_side"] = (1.0 if line[0] == "front" else -1.0) if line else 0.0
            named[f"{name}_c"] = float(line[2]) if line is not None and len(line) == 3 else 0.0
        p = QPParameters(
            h=duration_s / n, v0=v0_mps, v_ref=v_ref_mps, beta=beta, **_model(limits, headway),
            gap0=gap0, v_lead=v_lead, lead_on=float(leader is not None), **named,
        )  # fmt: skip
        hess, grad, rows, lba, uba, lbx, ubx = self._data(p.vector())
        sol = self._qp(h=hess, g=grad, a=rows, lba=lba, uba=uba, lbx=lbx, ubx=ubx)
        code, message = self._outcome(self._qp.stats())
        status = _status(code == "optimal", code, message, started, self.solver)
        if not status.ok:
            return None, status
        return Profile(t0_s, duration_s / n, x0_m, v0_mps, sol["x"].full().ravel()), status

    @staticmethod
    def _outcome(stats: dict) -> tuple[str, str]:
        """(code, message) from the solver's statistics (DAQP's exit flag)."""
        flag = int(stats["return_status"])
        return _DAQP_EXIT.get(flag, ("solver_error", f"exit flag {flag}"))


# ----------------------------------------------------------------------------- free final time

_FATROP_EXIT = {  # fatrop's IpSolverReturnFlag
    0: ("optimal", "optimal"),
    1: ("max_iterations", "maximum number of iterations exceeded"),
    2: ("acceptable", "stopped at an acceptable point"),
    3: ("infeasible", "locally infeasible"),
    4: ("solver_error", "line search failed"),
    5: ("solver_error", "error in step computation"),
}


class FreeTimeNLP:
    """min  ρ·T + Σ ½u_k²·h + β(v_N − v_f)²   over u_0..u_{N−1} and T ∈ [T_min, T_max], h = T/N,

    s.t. the bounds on u and v and safety behind a cruising leader at every node (as in
    `FixedTimeQP`). Without active constraints u = √(2ρ)·sign(Δv) is constant and
    T = |Δv|/√(2ρ) − 1/(2β), which tends to `time_energy_duration` as β → ∞.

    Stage k holds the state (ξ_k, v_k, T) and the control u_k; fatrop receives the OCP
    structure (per stage: the dynamics, then the stage's path constraints).
    """

    solver = "fatrop"
    max_iterations = 150  # per start; at the bottlenecks all solves but one took ≤ 132 (that one 538: 0.15 s)

    def __init__(self, n_intervals: int) -> None:
        if n_intervals < 1:
            raise ValueError(f"need at least one interval, got {n_intervals}")
        self.n_intervals = n = n_intervals
        p = NLPParameters.symbols()
        states = [ca.SX.sym(f"s{k}", 3) for k in range(n + 1)]
        controls = [ca.SX.sym(f"u{k}") for k in range(n)]
        lead_lower = ca.if_else(p.lead_on > 0, 0.0, -ca.inf)  # no leader: row inactive
        w, g, lbg, ubg, equality, ng = [], [], [], [], [], []
        cost = p.rho * states[n][2] + p.beta * (states[n][1] - p.v_f) ** 2
        for k in range(n + 1):
            xi, v, duration = ca.vertsplit(states[k])
            w.append(states[k])
            rows = []  # the stage's path constraints: (expression, lower, upper, is equality)
            if k < n:
                u, h = controls[k], duration / n
                w.append(u)
                step = ca.vertcat(xi + h * v + h * h / 2 * u, v + h * u, duration)
                g.append(states[k + 1] - step)
                lbg += [0.0] * 3
                ubg += [0.0] * 3
                equality += [True] * 3
                cost += u * u * h / 2
            if k == 0:
                rows += [(xi, 0.0, 0.0, True), (v, p.v0, p.v0, True), (duration, p.t_min, p.t_max, False)]
            else:
                slack = p.gap0 + p.v_lead * k * duration / n - xi - p.phi * v - p.delta
                rows += [(v, p.v_min, p.v_max, False), (slack, lead_lower, ca.inf, False)]
            if k < n:
                rows.append((controls[k], p.u_min, p.u_max, False))
            for expr, lo, hi, eq in rows:
                g.append(expr)
                lbg.append(lo)
                ubg.append(hi)
                equality.append(eq)
            ng.append(len(rows))
        self._bounds = ca.Function("nlp_bounds", [p.vector()], [ca.vertcat(*lbg), ca.vertcat(*ubg)])
        nlp = {"x": ca.vertcat(*w), "p": p.vector(), "f": cost, "g": ca.vertcat(*g)}
        options = {
            "structure_detection": "manual",
            "N": n,
            "nx": [3] * (n + 1),
            "nu": [1] * n + [0],
            "ng": ng,
            "equality": equality,
            "expand": True,
            "error_on_fail": False,
            "print_time": False,
            "fatrop": {"print_level": 0, "max_iter": self.max_iterations},
        }
        self._nlp = ca.nlpsol("free_time_nlp", self.solver, nlp, options)

    def solve(
        self,
        *,
        t0_s: float,
        x0_m: float,
        v0_mps: float,
        v_f_mps: float,
        rho: float,
        beta: float,
        limits: Limits,
        headway: Headway,
        leader: Leader | None,
        t_min_s: float,
        t_max_s: float,
        t_guess_s: float,
    ) -> tuple[Profile | None, SolveStatus]:
        """The optimal profile and duration from (x0, v0) at t0, or None and why not.

        Infeasibility is decided before solving: the hardest-braking plan on the T_min grid
        minimises every v_k, hence every x_k + φ·v_k; if it breaks a constraint, no plan of
        duration T_min is feasible (and, up to the grid, none longer). The start is constant
        acceleration toward v_f over `t_guess_s`; should fatrop fail from there (seen on ~0.05 %
        of random instances, all with a close slow leader), it is retried once from the
        feasible braking plan, unless it ran out of iterations (`max_iterations`: a retry would
        double a time already spent)."""
        started = time.perf_counter()
        if not 0 < t_min_s <= t_max_s:
            raise ValueError(f"need 0 < t_min ≤ t_max, got {t_min_s}, {t_max_s}")
        if rho < 0 or beta < 0:
            raise ValueError(f"rho and beta must be non-negative, got {rho}, {beta}")
        if _unsafe_start(x0_m, v0_mps, leader, headway):
            return None, _status(False, "unsafe_start", "leader gap below φ·v0 + δ at t0", started, self.solver)
        n = self.n_intervals
        gap0, v_lead = (leader[0] - leader[2] - x0_m, leader[1]) if leader else (0.0, 0.0)
        braking = _hardest_braking(v0_mps, t_min_s / n, n, limits)
        reason = _infeasibility(braking, limits, headway, (gap0, v_lead) if leader else None)
        if reason:
            return None, _status(False, "infeasible", reason, started, self.solver)
        duration = min(max(t_guess_s, t_min_s), t_max_s)
        u = min(max((v_f_mps - v0_mps) / duration, limits.u_min_mps2), limits.u_max_mps2)
        guess = Profile(0.0, duration / n, 0.0, v0_mps, np.full(n, u))
        p = NLPParameters(
            v0=v0_mps, v_f=v_f_mps, rho=rho, beta=beta, **_model(limits, headway),
            gap0=gap0, v_lead=v_lead, lead_on=float(leader is not None), t_min=t_min_s, t_max=t_max_s,
        ).vector()  # fmt: skip
        lbg, ubg = self._bounds(p)
        retried = ""
        for start, start_duration in ((guess, duration), (braking, t_min_s)):
            sol = self._nlp(x0=_stack(start, start_duration), p=p, lbg=lbg, ubg=ubg)
            flag = int(self._nlp.stats()["fatrop"]["return_flag"])
            code, message = _FATROP_EXIT.get(flag, ("solver_error", f"return flag {flag}"))
            if code in ("optimal", "acceptable"):
                w = sol["x"].full().ravel()
                profile = Profile(t0_s, w[2] / n, x0_m, v0_mps, w[3::4])
                return profile, _status(True, code, message + retried, started, self.solver)
            if code == "max_iterations":
                break
            retried = f" (after '{message}' from the guess, retried from the hardest-braking plan)"
        return None, _status(False, code, message + retried, started, self.solver)


def _stack(start: Profile, duration_s: float) -> np.ndarray:
    """The decision vector [ξ_0, v_0, T, u_0, ξ_1, v_1, T, u_1, ..., ξ_N, v_N, T] of a plan from x = 0."""
    w = np.empty(4 * start.accel_mps2.size + 3)
    w[0::4], w[1::4], w[2::4], w[3::4] = start.x_nodes_m, start.v_nodes_mps, duration_s, start.accel_mps2
    return w


def _hardest_braking(v0_mps: float, step_s: float, n: int, limits: Limits) -> Profile:
    """v_k = max(v0 + u_min·k·h, v_min) from x = 0: the plan that minimises every v_k, hence
    every x_k + φ·v_k (x_k is the trapezoidal sum of the speeds)."""
    v = np.maximum(v0_mps + limits.u_min_mps2 * step_s * np.arange(1, n + 1), limits.v_min_mps)
    return Profile(0.0, step_s, 0.0, v0_mps, np.diff(v, prepend=v0_mps) / step_s)


def _infeasibility(braking: Profile, limits: Limits, headway: Headway, leader: tuple[float, float] | None) -> str:
    """Why the hardest-braking plan breaks a constraint ("" if it does not); `leader` is
    (x_L0 − L_L − x0, v_L)."""
    if braking.accel_mps2[0] > limits.u_max_mps2 + 1e-9:
        return "v0 below v_min and v_min not reachable in one step"
    if braking.v_nodes_mps[1] > limits.v_max_mps + 1e-9:
        return "v0 above v_max and v_max not reachable in one step"
    if leader is not None:
        t = braking.step_s * np.arange(braking.accel_mps2.size + 1)
        slack = leader[0] + leader[1] * t - braking.x_nodes_m - headway.gap_m(braking.v_nodes_mps)
        if slack[1:].min() < -1e-9:
            return f"leader gap violated at t0 + {t[slack[1:].argmin() + 1]:.2f} s even when braking hardest"
    return ""
