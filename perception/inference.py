"""Batched perception for every CAV of a step, with per-vehicle state.

`StateTable` keeps recurrent or spiking state rows keyed by vehicle id: `gather` returns the
rows of this step's vehicles in order (zeros for a vehicle seen for the first time), `scatter`
stores them back, and vehicles absent from a step are dropped (they left the network).

`BatchedPerception` runs the gated fusion model on all CAVs of a step at once: one gate call,
then for every configuration the gate chose, one call of its branches on the vehicles that
chose it (`fusion.gated_estimates`). The torch backend runs on CUDA when it is available
(pinned host memory, non-blocking copies) and on the CPU otherwise. `OrtPerception` does the
same with the exported graphs in ONNX Runtime (the TensorRT or CUDA execution provider when
available, else the CPU).
"""

from __future__ import annotations

import numpy as np
import torch

from cavlab.perception.fusion import (
    BRANCHES,
    CONFIGURATIONS,
    FEATURES,
    DeepGate,
    FusionModel,
    Selection,
    estimates,
    fuse,
    gated_estimates,
)


class StateTable:
    """State rows per vehicle id, one tensor per state name (see the module docstring)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        self.shapes = shapes
        self.rows: dict[str, dict[str, torch.Tensor]] = {}

    def gather(self, ids: list[str]) -> dict[str, torch.Tensor]:
        """(len(ids), *shape) per state name, in the order of `ids`; drops vehicles not in `ids`."""
        present = set(ids)
        for gone in [vid for vid in self.rows if vid not in present]:
            del self.rows[gone]
        return {
            name: torch.stack([self.rows[vid][name] if vid in self.rows else torch.zeros(shape) for vid in ids])
            if ids else torch.zeros((0, *shape))
            for name, shape in self.shapes.items()
        }  # fmt: skip

    def scatter(self, ids: list[str], states: dict[str, torch.Tensor]) -> None:
        """Store the rows of `states` (in the order of `ids`)."""
        for k, vid in enumerate(ids):
            self.rows[vid] = {name: states[name][k].detach().clone() for name in self.shapes}

    def __len__(self) -> int:
        return len(self.rows)


class BatchedPerception:
    """The gated fusion model over a batch of CAVs (see the module docstring)."""

    def __init__(self, model: FusionModel, gate: DeepGate, selection: Selection, energies: np.ndarray,
                 device: str = "auto") -> None:  # fmt: skip
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))  # fmt: skip
        self.model = model.to(self.device).eval()
        self.gate = gate.to(self.device).eval()
        self.selection = selection
        self.energies = energies

    def estimate(self, frames: dict[str, np.ndarray], configuration: list[str] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """(N, 6, 3) estimates and the configuration of each of the N frames: the gate's choice, or
        `configuration` (one name per frame) when given."""
        cuda = self.device.type == "cuda"
        tensors = {}
        for name, array in frames.items():
            t = torch.from_numpy(array)
            tensors[name] = t.pin_memory().to(self.device, non_blocking=True) if cuda else t
        return gated_estimates(self.model, self.gate, tensors, self.selection, self.energies, configuration)


class OrtPerception:
    """`BatchedPerception` on ONNX Runtime, from the components `cavlab.hw.export` makes."""

    def __init__(self, model: FusionModel, gate: DeepGate, selection: Selection, energies: np.ndarray,
                 threads: int | None = None) -> None:  # fmt: skip
        """`threads`: ONNX Runtime's intra-op threads (None: its default, one per core)."""
        import onnxruntime as ort

        from cavlab.hw.export import Component, GateGraph, export_onnx
        from cavlab.hw.targets import get_target

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
