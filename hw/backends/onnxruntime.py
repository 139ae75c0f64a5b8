"""The ONNX Runtime backend: the perception model's exported graphs run for a batch of frames.

`OrtPerception` computes what `cavlab.perception.inference.BatchedPerception` computes, with the
graphs `cavlab.hw.export` makes, on the TensorRT or CUDA execution provider when available and
on the CPU otherwise.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from cavlab.hw.export import Component, GateGraph, export_onnx
from cavlab.hw.targets import get_target
from cavlab.perception.fusion import (
    BRANCHES,
    CONFIGURATIONS,
    FEATURES,
    DeepGate,
    FusionModel,
    Selection,
    estimates,
    fuse,
)


class OrtPerception:
    """`BatchedPerception` on ONNX Runtime, from the components `cavlab.hw.export` makes."""

    def __init__(self, model: FusionModel, gate: DeepGate, selection: Selection, energies: np.ndarray,
                 threads: int | None = None) -> None:  # fmt: skip
        """`threads`: ONNX Runtime's intra-op threads (None: its default, one per core)."""
        target = get_target("x86-cpu")
        providers = [
            p
            for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
            if p in ort.get_available_providers()
        ]
        shapes = {"camera": (2, 3, model.stems["camera"].width), "lidar": (2, 3, model.stems["lidar"].width),
                  "radar": (model.stems["radar"].returns, 4)}  # fmt: skip

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads

        def session(name, module, inputs, input_names, output_names):
            graph = export_onnx(Component(name, module, inputs, input_names, output_names), target)
            return ort.InferenceSession(graph.SerializeToString(), options, providers=providers)

        x = {m: torch.rand(2, *shape) for m, shape in shapes.items()}
        self.stems = {m: session(f"stem.{m}", model.stems[m], (x[m],), [m], ["features"]) for m in shapes}
        self.heads = {b: session(f"head.{b}", model.heads[b], (torch.rand(2, FEATURES * len(mods)),), ["features"],
                                 ["slots"]) for b, mods in BRANCHES.items()}  # fmt: skip
        self.gate = session("gate", GateGraph(gate), (torch.rand(2, FEATURES), x["camera"], x["lidar"]),
                            ["radar_features", "camera", "lidar"], ["predicted_losses"])  # fmt: skip
        self.selection = selection
        self.energies = energies

    def estimate(self, frames: dict[str, np.ndarray], configuration: list[str] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """(N, 6, 3) estimates and the configuration of each frame, as `BatchedPerception`."""
        if configuration is None:
            radar = self.stems["radar"].run(None, {"radar": frames["radar"]})[0]
            predicted = self.gate.run(None, {"radar_features": radar, "camera": frames["camera"],
                                             "lidar": frames["lidar"]})[0]  # fmt: skip
            choice = self.selection.choose(predicted, self.energies)
        else:
            choice = np.array([CONFIGURATIONS.index(c) for c in configuration], dtype=np.int64)
        out = np.zeros((len(choice), 6, 3), dtype=np.float32)
        for index in np.unique(choice):
            rows = np.flatnonzero(choice == index)
            config = CONFIGURATIONS[index]
            branches = tuple(BRANCHES) if config == "all branches" else (config,)
            mods = sorted({m for b in branches for m in BRANCHES[b]})
            features = {m: self.stems[m].run(None, {m: frames[m][rows]})[0] for m in mods}
            outputs = [torch.from_numpy(self.heads[b].run(None, {"features": np.concatenate(
                [features[m] for m in BRANCHES[b]], axis=1)})[0]) for b in branches]  # fmt: skip
            out[rows] = estimates(fuse(outputs) if config == "all branches" else outputs[0])
        return out, choice
