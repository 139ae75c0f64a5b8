"""Perception in the loop against ground truth: the whole run's slowdown, and where the time goes.

    python benchmarks/bench_loop.py --model runs/perception-model [--repeats 3] [--duration 120]

highway-lane-change with the cooperative controller and every vehicle of the CAV flows a CAV
(demand.cav_share = 1.0), one process, torch on one thread; per configuration the median
wall time of `--repeats` runs (the same seeds), the ratio to the ground-truth run, and the
perception loop's own per-step times (sensors, inference). Prints a Markdown table for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path

import torch

from cavlab.sim.engine import Engine
from cavlab.sim.resolve import load_scenario

CONFIGURATIONS = {
    "ground truth": ["perception.enabled=false"],
    "perception, deep gate, torch": ["perception.enabled=true", "perception.gate=deep"],
    "perception, all branches, torch": ["perception.enabled=true", "perception.gate=all"],
    "perception, deep gate, ONNX Runtime": ["perception.enabled=true", "perception.backend=onnxruntime"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="A model directory from `cavlab perception train`")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=120.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = ["demand.cav_share=1.0", "control.controller=cooperative", f"simulation.duration_s={args.duration}",
            "simulation.warmup_s=20", "outputs.trajectories=false",
            f"perception.model={args.model.resolve()}"]  # fmt: skip
    print(f"command: python benchmarks/bench_loop.py --model {args.model} --repeats {args.repeats} "
          f"--duration {args.duration:g}")  # fmt: skip
    print("\n| configuration | CAVs per step | wall s (median) | × ground truth | sensors ms/step "
          "| inference ms/step |\n|---|---|---|---|---|---|")  # fmt: skip
    baseline = None
    for name, sets in CONFIGURATIONS.items():
        walls, metrics = [], {}
        for seed in range(args.repeats):
            scenario = load_scenario("highway-lane-change", [*base, *sets, f"simulation.seed={seed}"])
            with tempfile.TemporaryDirectory() as tmp:
                result = Engine(scenario, Path(tmp)).run()
            walls.append(result.wall_time_s)
            metrics = result.metrics
        wall = statistics.median(walls)
        baseline = baseline or wall
        steps = round((args.duration - 20) / scenario.simulation.step_length_s)
        cavs = metrics.get("perception_cav_frames", math.nan) / steps
        sensors = metrics.get("perception_sensors_ms_per_step", math.nan)
        inference = metrics.get("perception_inference_ms_per_step", math.nan)
        cells = [name, shown(cavs, "{:.0f}"), f"{wall:.2f}", f"{wall / baseline:.1f}", shown(sensors, "{:.2f}"),
                 shown(inference, "{:.2f}")]  # fmt: skip
        print("| " + " | ".join(cells) + " |", flush=True)


def shown(value: float, fmt: str) -> str:
    return "—" if math.isnan(value) else fmt.format(value)


if __name__ == "__main__":
    main()
