"""SUMO's step time on one long edge against the same road built from 1 km segments.

    python benchmarks/bench_segments.py [--runs 5] [--length-m 20000]

`highway-lane-change` stretched to `--length-m`, run to its filled state; then 500 bare
libsumo steps are timed, once with cavlab's segmented network and once with the whole road
as a single edge (SEGMENT_M raised above the road length). Each run in a fresh process,
alternating. Prints a Markdown table for docs/benchmarks.md.
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


def one_run(layout: str, length_m: float, steps: int = 500) -> dict:
    import libsumo

    from cavlab.sim import network
    from cavlab.sim.engine import Engine
    from cavlab.sim.resolve import load_scenario

    if layout == "single-edge":
        network.SEGMENT_M = 10 * length_m
    fill_s = round(length_m / 26.0 * 1.25 / 10) * 10
    scenario = load_scenario(
        "highway-lane-change",
        [f"road.length_m={length_m}", f"road.detectors_m=[{length_m - 100}]",
         f"simulation.duration_s={fill_s + steps / 10}", f"simulation.warmup_s={fill_s}"],
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(scenario, Path(tmp) / "sumo")
        libsumo.start(["sumo", "-c", str(engine.inputs.config)])
        libsumo.simulationStep(fill_s)
        edges = len([e for e in libsumo.edge.getIDList() if not e.startswith(":")])
        started = time.perf_counter()
        for _ in range(steps):
            libsumo.simulationStep()
        wall = time.perf_counter() - started
        vehicles = libsumo.vehicle.getIDCount()
        libsumo.close()
    return {"layout": layout, "edges": edges, "vehicles": vehicles, "step_us": wall / steps * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--length-m", type=float, default=20000.0)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one, args.length_m)))
        return
    samples: dict[str, list[dict]] = {"segments": [], "single-edge": []}
    for _ in range(args.runs):
        for layout in samples:
            out = subprocess.run(
                [sys.executable, __file__, "--one", layout, "--length-m", str(args.length_m)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            samples[layout].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"command: python benchmarks/bench_segments.py --runs {args.runs} --length-m {args.length_m:g}")
    print("| layout | edges | vehicles | µs per step (median) | runs |")
    print("|---|---|---|---|---|")
    for layout, runs in samples.items():
        median = statistics.median(r["step_us"] for r in runs)
        print(f"| {layout} | {runs[0]['edges']} | {runs[0]['vehicles']} | {median:,.0f} | {len(runs)} |")
    ratio = statistics.median(
        s["step_us"] / m["step_us"] for s, m in zip(samples["single-edge"], samples["segments"], strict=True)
    )
    print(f"\nsingle edge / segments, median of paired runs: {ratio:.1f}×")


if __name__ == "__main__":
    main()
