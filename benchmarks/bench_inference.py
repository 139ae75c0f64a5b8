"""Per-step perception cost: one batched call for all CAVs against one call per vehicle, and
torch against ONNX Runtime.

    python benchmarks/bench_inference.py [--repeats 5]

The gated fusion model (random weights: the cost does not depend on them; the deep gate's
choices do, so each measurement uses the same frames for both ways) on N CAVs' random frames,
torch and ONNX Runtime on the CPU (one thread each), N = 10, 100, 500. Medians of
`--repeats`; prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from cavlab.hw.backends.onnxruntime import OrtPerception
from cavlab.perception.fusion import DeepGate, FusionModel, Selection
from cavlab.perception.inference import BatchedPerception

SHAPES = {"camera": [2, 3, 24], "lidar": [2, 3, 60], "radar": [8, 4]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, gate = FusionModel(SHAPES), DeepGate()
    energies = np.array([float(v) for v in model.configuration_macs().values()])
    perception = BatchedPerception(model, gate, Selection(), energies, device="cpu")
    ort_perception = OrtPerception(model, gate, Selection(), energies, threads=1)
    rng = np.random.default_rng(0)
    print(f"command: python benchmarks/bench_inference.py --repeats {args.repeats}")
    print(
        "\n| CAVs | batched ms per step | one call per vehicle ms per step | batched speed-up "
        "| ONNX Runtime batched ms | ORT vs torch |"
    )
    print("|---|---|---|---|---|---|")
    for n in (10, 100, 500):
        frames = {k: rng.random((n, *v), dtype=np.float32) for k, v in SHAPES.items()}
        batched, single, ort_batched = [], [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            ort_perception.estimate(frames)
            ort_batched.append(time.perf_counter() - started)
            started = time.perf_counter()
            perception.estimate(frames)
            batched.append(time.perf_counter() - started)
            started = time.perf_counter()
            for i in range(n):
                perception.estimate({k: v[i : i + 1] for k, v in frames.items()})
            single.append(time.perf_counter() - started)
        b, s, o = statistics.median(batched), statistics.median(single), statistics.median(ort_batched)
        print(f"| {n} | {b * 1e3:.2f} | {s * 1e3:.1f} | {s / b:.1f}× | {o * 1e3:.2f} | {b / o:.2f}× |")


if __name__ == "__main__":
    main()
