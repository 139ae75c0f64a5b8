"""Planning time per lane-change request, candidate selection included.

    python benchmarks/bench_planner.py [--seeds 3] [--cav-share 0.5]

Runs `highway-lane-change` with the cooperative controller for each seed and times every
call of the planner (all candidate slots, all relaxations, C's plan and the cooperators'
plans). Requests are split by path: "analytic" (closed forms only) and "constrained" (at
least one QP solve). Each request is also timed again with the solvers switched off (the
analytic path: the cases needing a solver are rejected); that replay is left out of the run's
wall time. Then the slowdown of the controlled run against the same run with SUMO-only
driving (the `sumo` controller), same seed, each in a fresh process.
Prints Markdown tables for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(controller: str, seed: int, cav_share: float) -> dict:
    from cavlab.controllers import make_controller
    from cavlab.sim.engine import Engine, control_setup
    from cavlab.sim.resolve import load_scenario

    scenario = load_scenario(
        "highway-lane-change",
        [f"control.controller={controller}", f"simulation.seed={seed}", f"demand.cav_share={cav_share}"],
    )
    ctrl = make_controller(controller, scenario.control.params, control_setup(scenario))
    samples: list[tuple[float, int, int]] = []
    analytic: list[float] = []
    if controller == "cooperative":
        planner, plan = ctrl.planner, ctrl.planner.plan
        numeric, nlp = planner._numeric, planner._nlp

        def timed(*args, **kwargs):
            before = planner.numeric_solves
            started = time.perf_counter()
            outcome = plan(*args, **kwargs)
            samples.append((time.perf_counter() - started, planner.numeric_solves - before, outcome.candidates))
            # the same request again with closed forms only (every case needing a solver rejected)
            planner._numeric, planner._nlp = (lambda *a, **k: None), _NoSolver()
            try:
                started = time.perf_counter()
                plan(*args, **kwargs)
                analytic.append(time.perf_counter() - started)
            finally:
                planner._numeric, planner._nlp = numeric, nlp
            return outcome

        planner.plan = timed
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        Engine(scenario, Path(tmp) / "sumo", controller=ctrl).run()
        wall = time.perf_counter() - started - sum(analytic)
    return {"controller": controller, "seed": seed, "wall_s": wall, "plans": samples, "analytic": analytic}


class _NoSolver:
    """Stands in for the free-time NLP: every solve fails, so the planner keeps its closed forms."""

    def solve(self, **kwargs):
        return None, type("Failed", (), {"ok": False})()


def _quantiles(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    return statistics.median(values), values[min(len(values) - 1, int(0.95 * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cav-share", type=float, default=0.5)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one[0], int(args.one[1]), args.cav_share)))
        return
    runs: dict[str, list[dict]] = {"sumo": [], "cooperative": []}
    for seed in range(args.seeds):
        for controller in runs:
            out = subprocess.run(
                [sys.executable, __file__, "--one", controller, str(seed), "--cav-share", str(args.cav_share)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            runs[controller].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"command: python benchmarks/bench_planner.py --seeds {args.seeds} --cav-share {args.cav_share:g}")
    plans = [p for r in runs["cooperative"] for p in r["plans"]]
    print("\n| planning path | requests | candidates per request (median) | median ms | p95 ms | max ms |")
    print("|---|---|---|---|---|---|")
    for label, group in (
        ("analytic only", [p for p in plans if p[1] == 0]),
        ("with constrained (QP) solves", [p for p in plans if p[1] > 0]),
        ("all requests", plans),
    ):
        if group:
            med, p95 = _quantiles([p[0] * 1e3 for p in group])
            cands = statistics.median(p[2] for p in group)
            print(
                f"| {label} | {len(group)} | {cands:g} | {med:.2f} | {p95:.2f} | {max(p[0] for p in group) * 1e3:.2f} |"
            )
    analytic = [t * 1e3 for r in runs["cooperative"] for t in r["analytic"]]
    if analytic:
        med, p95 = _quantiles(analytic)
        label = "the same requests, closed forms only"
        print(f"| {label} | {len(analytic)} | | {med:.2f} | {p95:.2f} | {max(analytic):.2f} |")
    ratio = statistics.median(c["wall_s"] / s["wall_s"] for c, s in zip(runs["cooperative"], runs["sumo"], strict=True))
    walls = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
    print(f"\n| run (600 s simulated, {args.seeds} seeds) | wall s (median) |")
    print("|---|---|")
    print(f"| sumo (SUMO-only driving) | {walls['sumo']:.2f} |")
    print(f"| cooperative | {walls['cooperative']:.2f} |")
    print(f"\ncooperative / sumo, median of paired runs: {ratio:.2f}×")


if __name__ == "__main__":
    main()
