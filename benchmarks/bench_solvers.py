"""Solve times of the numeric problems: the fixed-time QP with several CasADi QP solvers, and
the free-time NLP.

    python benchmarks/bench_solvers.py [--instances 50] [--intervals 50]

Random realistic instances (speeds 20–33 m/s, T 3–10 s, a cruising leader 30–80 m ahead,
a rear slot on half of them); the same instances for every solver. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from cavlab.controllers.longitudinal import Headway, Limits
from cavlab.controllers.ocp import FixedTimeQP, FreeTimeNLP

LIMITS = Limits(-4.0, 3.0, 10.0, 35.0)
HEADWAY = Headway(0.9, 3.0)
SOLVERS = {  # CasADi conic plugins, quiet
    "daqp": {},
    "qpoases": {"printLevel": "none"},
    "osqp": {"osqp": {"verbose": False}},
    "highs": {"highs": {"output_flag": False}},
    "proxqp": {},
    "qrqp": {"print_iter": False, "print_header": False, "print_info": False},
}


class OtherQP(FixedTimeQP):
    """The same QP with another solver, its outcome read from CasADi's `success` flag."""

    @staticmethod
    def _outcome(stats: dict) -> tuple[str, str]:
        return ("optimal", "optimal") if stats["success"] else ("solver_error", str(stats.get("return_status")))


def instances(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        v0, T = rng.uniform(20, 33), rng.uniform(3, 10)
        lead = (rng.uniform(30, 80), rng.uniform(20, 33), 5.0)
        slot = ("rear", v0 * T + rng.uniform(-15, 5), 0.0) if k % 2 else None
        out.append({"x0_m": 0.0, "v0_mps": v0, "duration_s": T, "v_ref_mps": rng.uniform(20, 33), "leader": lead,
                    "slot": slot})  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--intervals", type=int, default=50)
    args = parser.parse_args()
    cases = instances(args.instances)
    print(f"command: python benchmarks/bench_solvers.py --instances {args.instances} --intervals {args.intervals}")
    print("\n| problem | solver | solved | median ms | p95 ms |")
    print("|---|---|---|---|---|")
    for solver, options in SOLVERS.items():
        qp_class = (
            FixedTimeQP
            if solver == "daqp"
            else type(f"QP_{solver}", (OtherQP,), {"solver": solver, "solver_options": options})
        )
        try:
            qp = qp_class(args.intervals)
        except RuntimeError as exc:  # plugin not in this casadi build
            print(f"| fixed-time QP | {solver} | not available: {str(exc).splitlines()[0][:60]} | | |")
            continue
        times, solved = [], 0
        for case in cases:
            _, status = qp.solve(t0_s=0.0, beta=1.0, limits=LIMITS, headway=HEADWAY, **case)
            times.append(status.solve_time_s * 1e3)
            solved += status.ok
        times.sort()
        p95 = times[int(0.95 * (len(times) - 1))]
        print(f"| fixed-time QP | {solver} | {solved}/{len(cases)} | {statistics.median(times):.2f} | {p95:.2f} |")
    nlp = FreeTimeNLP(args.intervals)
    times, solved = [], 0
    for case in cases:
        _, status = nlp.solve(
            t0_s=0.0, x0_m=0.0, v0_mps=case["v0_mps"], v_f_mps=case["v_ref_mps"], rho=2.0, beta=10.0,
            limits=LIMITS, headway=HEADWAY, leader=case["leader"], t_min_s=1.0, t_max_s=15.0,
            t_guess_s=case["duration_s"],
        )  # fmt: skip
        times.append(status.solve_time_s * 1e3)
        solved += status.ok
    times.sort()
    print(
        f"| free-time NLP | {nlp.solver} | {solved}/{len(cases)} | "
        f"{statistics.median(times):.2f} | {times[int(0.95 * (len(times) - 1))]:.2f} |"
    )


if __name__ == "__main__":
    main()
