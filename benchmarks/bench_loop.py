"""Perception in the loop against ground truth: the whole run's slowdown, and where the time goes.

    python benchmarks/bench_loop.py [--model DIR] [--repeats 3] [--duration 120] [--lengths 3000 10000]

highway-lane-change with the cooperative controller and every vehicle of the CAV flows a CAV
(demand.cav_share = 1.0), one process, torch and ONNX Runtime on one thread, the road `--lengths`
long (3 km: about 30 CAVs, 10 km: about 100); per configuration the median wall time of
`--repeats` runs (the same seeds), the ratio to the ground-truth runs of the same length, and the
perception loop's own per-step times (sensors, inference). The model defaults to the shipped one
(perception/models/highway-fusion-h64). Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path

import torch

import cavlab.perception
from cavlab.sim.engine import Engine
from cavlab.sim.resolve import load_scenario

CONFIGURATIONS = {
    "ground truth": ["perception.enabled=false"],
    "perception, deep gate, ONNX Runtime": ["perception.enabled=true", "perception.backend=onnxruntime"],
    "perception, deep gate, torch": ["perception.enabled=true", "perception.gate=deep", "perception.backend=torch"],
    "perception, all branches, ONNX Runtime": [
        "perception.enabled=true",
        "perception.gate=all",
        "perception.backend=onnxruntime",
    ],
}
SHIPPED_MODEL = Path(cavlab.perception.__file__).parent / "models" / "highway-fusion-h64"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL, help="A model from `cavlab perception train`")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--lengths", type=float, nargs="+", default=[3000.0], help="Road lengths [m]")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = ["demand.cav_share=1.0", "control.controller=cooperative", f"simulation.duration_s={args.duration}",
            "simulation.warmup_s=20", "outputs.trajectories=false",
            f"perception.model={args.model.resolve()}"]  # fmt: skip
    lengths = " ".join(f"{x:g}" for x in args.lengths)
    print(f"command: python benchmarks/bench_loop.py --model {args.model} --repeats {args.repeats} "
          f"--duration {args.duration:g} --lengths {lengths}")  # fmt: skip
    print("\n| road | configuration | CAVs per step | wall s (median) | × ground truth (median of paired runs) "
          "| sensors ms/step | inference ms/step |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for length in args.lengths:
        walls: dict[str, list[float]] = {name: [] for name in CONFIGURATIONS}
        metrics: dict[str, dict] = {}
        for seed in range(args.repeats):  # the configurations alternate: machine-load drift hits them alike
            for name, sets in CONFIGURATIONS.items():
                scenario = load_scenario("highway-lane-change", [*base, *sets, f"road.length_m={length}",
                                                                 f"simulation.seed={seed}"])  # fmt: skip
                with tempfile.TemporaryDirectory() as tmp:
                    result = Engine(scenario, Path(tmp)).run()
                walls[name].append(result.wall_time_s)
                metrics[name] = result.metrics
        steps = round((args.duration - 20) / scenario.simulation.step_length_s)
        for name in CONFIGURATIONS:
            ratio = statistics.median(w / g for w, g in zip(walls[name], walls["ground truth"], strict=True))
            m = metrics[name]
            cells = [f"{length / 1000:g} km", name, shown(m.get("perception_cav_frames", math.nan) / steps, "{:.0f}"),
                     f"{statistics.median(walls[name]):.2f}", f"{ratio:.1f}",
                     shown(m.get("perception_sensors_ms_per_step", math.nan), "{:.2f}"),
                     shown(m.get("perception_inference_ms_per_step", math.nan), "{:.2f}")]  # fmt: skip
            print("| " + " | ".join(cells) + " |", flush=True)


def shown(value: float, fmt: str) -> str:
    return "—" if math.isnan(value) else fmt.format(value)


if __name__ == "__main__":
    main()
