"""Perception in the loop against ground truth: the whole run's slowdown, and where the time goes.

    python benchmarks/bench_loop.py [--model DIR] [--repeats 3] [--duration 120] [--scales 1 3]

highway-lane-change with the cooperative controller and every vehicle of the CAV flows a CAV
(demand.cav_share = 1.0), one process, torch and ONNX Runtime on one thread, the demand scaled by
`--scales` (1: about 30 CAVs, 3: about 90); per configuration the median wall time of
`--repeats` runs (the same seeds), the ratio to the ground-truth runs of the same demand, and the
perception loop's own per-step times (sensors, inference). The model defaults to the shipped one
(perception/models/highway-fusion-h64). Prints a Markdown table for docs/benchmarks.md.

    python benchmarks/bench_loop.py --sensors 30 100 [--repeats 7]

times the simulated sensors alone instead: one step's frames for that many observers on synthetic
three-lane traffic (about 3 vehicles per observer), sensor version 1 (the draws observer by
observer) against version 2 (all observers at once), medians of `--repeats` × 20 calls.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import cavlab.perception
from cavlab.config.scenario import ContextSpec
from cavlab.perception.sensors import SENSOR_VERSIONS, SensorSuite, _synthetic_world
from cavlab.sim.engine import Engine
from cavlab.sim.resolve import load_scenario
from cavlab.world import WorldState

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
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0], help="Demand scales (demand.scale)")
    parser.add_argument("--sensors", type=int, nargs="+", help="Time the sensors alone for these observer counts")
    args = parser.parse_args()
    if args.sensors:
        return sensors_only(args.sensors, args.repeats)
    torch.set_num_threads(1)
    base = ["demand.cav_share=1.0", "control.controller=cooperative", f"simulation.duration_s={args.duration}",
            "simulation.warmup_s=20", "outputs.trajectories=false",
            f"perception.model={args.model.resolve()}"]  # fmt: skip
    scales = " ".join(f"{x:g}" for x in args.scales)
    print(f"command: python benchmarks/bench_loop.py --model {args.model} --repeats {args.repeats} "
          f"--duration {args.duration:g} --scales {scales}")  # fmt: skip
    print("\n| demand | configuration | CAVs per step | wall s (median) | × ground truth (median of paired runs) "
          "| sensors ms/step | inference ms/step |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for scale in args.scales:
        walls: dict[str, list[float]] = {name: [] for name in CONFIGURATIONS}
        metrics: dict[str, dict] = {}
        for seed in range(args.repeats):  # the configurations alternate: machine-load drift hits them alike
            for name, sets in CONFIGURATIONS.items():
                scenario = load_scenario("highway-lane-change", [*base, *sets, f"demand.scale={scale}",
                                                                 f"simulation.seed={seed}"])  # fmt: skip
                with tempfile.TemporaryDirectory() as tmp:
                    result = Engine(scenario, Path(tmp)).run()
                walls[name].append(result.wall_time_s)
                metrics[name] = result.metrics
        steps = round((args.duration - 20) / scenario.simulation.step_length_s)
        for name in CONFIGURATIONS:
            ratio = statistics.median(w / g for w, g in zip(walls[name], walls["ground truth"], strict=True))
            m = metrics[name]
            cells = [f"×{scale:g}", name, shown(m.get("perception_cav_frames", math.nan) / steps, "{:.0f}"),
                     f"{statistics.median(walls[name]):.2f}", f"{ratio:.1f}",
                     shown(m.get("perception_sensors_ms_per_step", math.nan), "{:.2f}"),
                     shown(m.get("perception_inference_ms_per_step", math.nan), "{:.2f}")]  # fmt: skip
            print("| " + " | ".join(cells) + " |", flush=True)


def sensors_only(counts: list[int], repeats: int) -> None:
    """Median ms per step of `SensorSuite.observe` for each observer count, version 1 against version 2."""
    rng = np.random.default_rng(0)
    print(f"command: python benchmarks/bench_loop.py --sensors {' '.join(map(str, counts))} --repeats {repeats}")
    print("\n| observers | vehicles | version 1 ms/step | version 2 ms/step | v1 / v2 |\n|---|---|---|---|---|")
    for count in counts:
        worlds = []
        while sum(int(w.is_cav.sum()) for w in worlds) < count:
            worlds.append(_synthetic_world(rng))
        world = _joined(worlds)
        observers = np.flatnonzero(world.is_cav)[:count]
        times = {}
        for version in SENSOR_VERSIONS:
            suite = SensorSuite(ContextSpec(weather="rain", light="night"), lane_width_m=3.2, version=version)
            runs = []
            for _ in range(repeats):
                started = time.perf_counter()
                for _ in range(20):
                    suite.observe(world, observers, rng)
                runs.append((time.perf_counter() - started) / 20 * 1e3)
            times[version] = statistics.median(runs)
        print(f"| {count} | {len(world)} | {times[1]:.2f} | {times[2]:.2f} | {times[1] / times[2]:.1f}× |", flush=True)


def _joined(worlds: list[WorldState]) -> WorldState:
    """Synthetic worlds one after another along the road (600 m each)."""
    n = sum(len(w) for w in worlds)

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(w, name) for w in worlds])

    return WorldState(
        time_s=0.0, ids=np.array([f"v{i}" for i in range(n)], dtype=object), slot=np.arange(n),
        type_index=cat("type_index"), is_cav=cat("is_cav"), controlled=np.zeros(n, dtype=bool), edge=cat("edge"),
        lane=cat("lane"), x_m=np.concatenate([w.x_m + 600.0 * k for k, w in enumerate(worlds)]),
        speed_mps=cat("speed_mps"), accel_mps2=cat("accel_mps2"), length_m=cat("length_m"),
        type_names=worlds[0].type_names, edge_names=worlds[0].edge_names,
    )  # fmt: skip


def shown(value: float, fmt: str) -> str:
    return "—" if math.isnan(value) else fmt.format(value)


if __name__ == "__main__":
    main()
