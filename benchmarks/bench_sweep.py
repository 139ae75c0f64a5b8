"""Sweep throughput: runs per minute against the number of workers, local pool and Ray.

    pip install -e ".[distributed]"
    python benchmarks/bench_sweep.py [--runs 12] [--repeats 3]

The same sweep (`lane-drop`, 120 s simulated per run, `--runs` seeds) runs into a fresh folder
each time: the local process pool with 1 and 2 workers, and a local Ray instance with 2
workers (its start and shutdown included, as a user pays them). Medians over `--repeats`;
prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from cavlab.experiments.sweep import SweepSpec, execute, execute_ray, plan


def timed(mode: str, workers: int, spec: SweepSpec) -> float:
    runs = plan(spec)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        if mode == "pool":
            execute(runs, Path(tmp), workers)
        else:
            execute_ray(runs, Path(tmp), None, workers)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    spec = SweepSpec(scenario="lane-drop", set=["simulation.duration_s=120", "simulation.warmup_s=30"],
                     seeds=args.runs)  # fmt: skip
    modes = [("pool", 1), ("pool", 2), ("ray", 2)]
    walls: dict[tuple[str, int], list[float]] = {m: [] for m in modes}
    for _ in range(args.repeats):
        for mode in modes:
            walls[mode].append(timed(*mode, spec))
    base = statistics.median(walls[("pool", 1)])
    print(f"command: python benchmarks/bench_sweep.py --runs {args.runs} --repeats {args.repeats}")
    print("\n| executor | workers | wall s (median) | runs per minute | speed-up vs pool × 1 |")
    print("|---|---|---|---|---|")
    for (mode, workers), values in walls.items():
        wall = statistics.median(values)
        print(f"| {'local pool' if mode == 'pool' else 'Ray (local)'} | {workers} | {wall:.1f} | "
              f"{60 * args.runs / wall:.1f} | {base / wall:.2f}× |")  # fmt: skip
    pool2, ray2 = statistics.median(walls[("pool", 2)]), statistics.median(walls[("ray", 2)])
    print(f"\nRay's overhead against the pool at 2 workers: {(ray2 - pool2) / args.runs:.2f} s per run "
          f"({ray2 - pool2:.1f} s per sweep of {args.runs} runs)")  # fmt: skip


if __name__ == "__main__":
    main()
