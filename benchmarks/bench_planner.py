"""Planning time per lane-change request and per re-plan, candidate selection included.

    python benchmarks/bench_planner.py [--scenario highway-lane-change] [--scale 1] [--cav-share 0.5]
                                       [--seeds 3] [--replan-period 0]

Runs a shipped scenario (`--scenario`, its demand scaled by `--scale`, `--cav-share` of it CAVs)
with the cooperative controller for each seed and times every call of the planner. A call of
`Planner.plan` is one request (all candidate slots, all relaxations, C's plan and the
cooperators' plans): a CAV's, or a running maneuver's whose slot is gone. Requests are split by
path, "analytic" (closed forms only) and "numeric" (at least one QP or NLP solve), and by kind,
mandatory (C's lane ends: the bottleneck) and discretionary. Each request is also timed again
with the solvers switched off (the analytic path: the cases needing a solver are rejected); that
replay is left out of the run's wall time. With `--replan-period S` > 0
(`control.params.replan_period_s`) running maneuvers are planned again every S seconds: those
`Planner.replan` calls (the same slot, from the measured states) are timed separately. Per path:
calls, median, p95, max and how many took longer than one simulation step (wall time), and the
median and p95 of the planning thread's CPU time (without the waits of a loaded machine); the three
slowest requests with their CPU time, numeric solves and candidate slots. Then
the slowdown of the controlled run against the same run with SUMO-only driving (the `sumo`
controller), same seed, each in a fresh process, and planning's share of the controlled run's
wall time.
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


def one_run(controller: str, seed: int, args: argparse.Namespace) -> dict:
    from cavlab.controllers import make_controller
    from cavlab.sim.engine import Engine, control_setup
    from cavlab.sim.resolve import load_scenario

    overrides = [
        f"control.controller={controller}",
        f"simulation.seed={seed}",
        f"demand.cav_share={args.cav_share}",
        f"demand.scale={args.scale}",
    ]
    if controller == "cooperative" and args.replan_period > 0:
        overrides.append(f"control.params.replan_period_s={args.replan_period}")
    scenario = load_scenario(args.scenario, overrides)
    ctrl = make_controller(controller, scenario.control.params, control_setup(scenario))
    plans: list[dict] = []  # per request: s, cpu_s, solves, candidates, mandatory, for_maneuver
    replans: list[dict] = []  # per re-plan: s, cpu_s, solves
    analytic: list[float] = []
    if controller == "cooperative":
        planner, plan, replan, maneuver_replan = ctrl.planner, ctrl.planner.plan, ctrl.planner.replan, ctrl._replan
        numeric, nlp = planner._numeric, planner._nlp
        in_maneuver = False

        def timed(call, *args):
            """`call(*args)` and its wall time, this thread's CPU time and numeric solves."""
            before, started, cpu = planner.numeric_solves, time.perf_counter(), time.thread_time()
            result = call(*args)
            elapsed = {"s": time.perf_counter() - started, "cpu_s": time.thread_time() - cpu}
            return result, elapsed | {"solves": planner.numeric_solves - before}

        def timed_plan(lanes, changer_row, u, target_lane, busy, lane_end_m=None):
            request = (lanes, changer_row, u, target_lane, busy, lane_end_m)
            outcome, record = timed(plan, *request)
            record |= {"candidates": outcome.candidates, "mandatory": lane_end_m is not None}
            plans.append(record | {"for_maneuver": in_maneuver})
            # the same request again with closed forms only (every case needing a solver rejected)
            planner._numeric, planner._nlp = (lambda *a, **k: None), _NoSolver()
            try:
                started = time.perf_counter()
                plan(*request)
                analytic.append(time.perf_counter() - started)
            finally:
                planner._numeric, planner._nlp = numeric, nlp
            return outcome

        def timed_replan(*args):
            result, record = timed(replan, *args)
            replans.append(record)
            return result

        def flagged_replan(*args):  # marks the requests made for a running maneuver
            nonlocal in_maneuver
            in_maneuver = True
            try:
                return maneuver_replan(*args)
            finally:
                in_maneuver = False

        planner.plan, planner.replan, ctrl._replan = timed_plan, timed_replan, flagged_replan
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        Engine(scenario, Path(tmp) / "sumo", controller=ctrl).run()
        wall = time.perf_counter() - started - sum(analytic)
    return {
        "controller": controller,
        "seed": seed,
        "wall_s": wall,
        "planning_s": sum(r["s"] for r in plans + replans),
        "duration_s": scenario.simulation.duration_s,
        "step_s": scenario.simulation.step_length_s,
        "plans": plans,
        "replans": replans,
        "analytic": analytic,
    }


class _NoSolver:
    """Stands in for the free-time NLP: every solve fails, so the planner keeps its closed forms."""

    def solve(self, **kwargs):
        return None, type("Failed", (), {"ok": False})()


def _quantiles(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    return statistics.median(values), values[min(len(values) - 1, int(0.95 * len(values)))]


def _row(label: str, calls: list[dict], step_s: float) -> str:
    """One table row: calls, candidates (median, requests only), wall median, p95, max, calls over a step
    and the CPU time's median and p95 (where measured)."""
    med, p95 = _quantiles([c["s"] * 1e3 for c in calls])
    cands = f"{statistics.median(c['candidates'] for c in calls):g}" if "candidates" in calls[0] else ""
    longest, over = max(c["s"] for c in calls) * 1e3, sum(c["s"] > step_s for c in calls)
    cpu = "{:.2f} | {:.2f}".format(*_quantiles([c["cpu_s"] * 1e3 for c in calls])) if "cpu_s" in calls[0] else "|"
    return f"| {label} | {len(calls)} | {cands} | {med:.2f} | {p95:.2f} | {longest:.2f} | {over} | {cpu} |"


def main() -> None:
    from cavlab.config.scenario import shipped_scenarios

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=sorted(shipped_scenarios()), default="highway-lane-change")
    parser.add_argument("--scale", type=float, default=1.0, help="demand.scale")
    parser.add_argument("--cav-share", type=float, default=0.5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--replan-period", type=float, default=0.0, help="control.params.replan_period_s")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one[0], int(args.one[1]), args)))
        return
    options = ["--scenario", args.scenario, "--scale", f"{args.scale:g}", "--cav-share", f"{args.cav_share:g}"]
    options += ["--seeds", str(args.seeds)]
    if args.replan_period > 0:
        options += ["--replan-period", f"{args.replan_period:g}"]
    runs: dict[str, list[dict]] = {"sumo": [], "cooperative": []}
    for seed in range(args.seeds):
        for controller in runs:
            out = subprocess.run(
                [sys.executable, __file__, "--one", controller, str(seed), *options],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            runs[controller].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"command: python benchmarks/bench_planner.py {' '.join(options)}")
    coop = runs["cooperative"]
    step_s = coop[0]["step_s"]
    plans = [p for r in coop for p in r["plans"]]
    replans = [p for r in coop for p in r["replans"]]
    columns = "calls | candidates (median) | median ms | p95 ms | max ms | > {:g} s | CPU median ms | CPU p95 ms"
    print(f"\n| planning path | {columns.format(step_s)} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, group in (
        ("requests, analytic only", [p for p in plans if p["solves"] == 0]),
        ("requests with numeric (QP/NLP) solves", [p for p in plans if p["solves"] > 0]),
        ("mandatory requests (C's lane ends)", [p for p in plans if p["mandatory"]]),
        ("discretionary requests", [p for p in plans if not p["mandatory"]]),
        ("requests for a running maneuver (slot gone)", [p for p in plans if p["for_maneuver"]]),
        ("all requests (`Planner.plan`)", plans),
        ("the same requests, closed forms only", [{"s": t} for r in coop for t in r["analytic"]]),
        ("re-plans, analytic only", [p for p in replans if p["solves"] == 0]),
        ("re-plans with numeric (QP/NLP) solves", [p for p in replans if p["solves"] > 0]),
        ("all re-plans (`Planner.replan`)", replans),
    ):
        if group:
            print(_row(label, group, step_s))
    if plans:
        slow = sorted(plans, key=lambda p: -p["s"])[:3]
        described = [
            f"{p['s'] * 1e3:.1f} ms (CPU {p['cpu_s'] * 1e3:.1f} ms, {p['solves']} solves, {p['candidates']} candidates)"
            for p in slow
        ]
        print("\nslowest requests: " + "; ".join(described))
    ratio = statistics.median(c["wall_s"] / s["wall_s"] for c, s in zip(coop, runs["sumo"], strict=True))
    share = statistics.median(r["planning_s"] / r["wall_s"] for r in coop)
    walls = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
    planning = statistics.median(r["planning_s"] for r in coop)
    seeds = f"{args.seeds} seed{'s' * (args.seeds > 1)}"
    header = f"run ({coop[0]['duration_s']:g} s simulated, {seeds}, each in a fresh process)"
    print(f"\n| {header} | wall s (median) | planning s (median) |")
    print("|---|---|---|")
    print(f"| sumo (SUMO-only driving) | {walls['sumo']:.2f} | |")
    print(f"| cooperative | {walls['cooperative']:.2f} | {planning:.2f} |")
    print(f"\ncooperative / sumo, median of paired runs: {ratio:.2f}×")
    print(f"planning's share of the cooperative run's wall time, median of runs: {share:.1%}")


if __name__ == "__main__":
    main()
