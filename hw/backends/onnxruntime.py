"""The ONNX Runtime backend: the perception model's exported graphs run for a batch of frames.

`OrtPerception` computes what `cavlab.perception.inference.BatchedPerception` computes, with the
graphs `cavlab.hw.export` makes, on the TensorRT or CUDA execution provider when available and
on the CPU otherwise.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from cavlab.hw.export import Component, export_onnx
from cavlab.hw.targets import get_target
from cavlab.perception.fusion import (
    BRANCHES,
    CONFIGURATIONS,
    MODALITIES,
    DeepGate,
    FusionModel,
    Selection,
    estimates,
    fuse,
)


class GatedGraph(nn.Module):
    """(camera, lidar, radar) → the deep gate's predicted losses (the radar stem inside)."""

    def __init__(self, model: FusionModel, gate: DeepGate) -> None:
        super().__init__()
        self.radar, self.gate = model.stems["radar"], gate

    def forward(self, camera: Tensor, lidar: Tensor, radar: Tensor) -> Tensor:
        return self.gate(self.radar(radar), {"camera": camera, "lidar": lidar})


class ConfigurationGraph(nn.Module):
    """A configuration's frames (its modalities, in `MODALITIES` order) → its branches' outputs, stacked: its
    stems, then one branch, or all seven for "all branches" (the host fuses them, `fuse`)."""

    def __init__(self, model: FusionModel, configuration: str) -> None:
        super().__init__()
        self.model = model
        self.branches = tuple(BRANCHES) if configuration == "all branches" else (configuration,)
        self.modalities = configuration_modalities(configuration)

    def forward(self, *frames: Tensor) -> Tensor:
        outputs = self.model(dict(zip(self.modalities, frames, strict=True)), self.branches)
        return torch.stack([outputs[b] for b in self.branches])


def configuration_modalities(configuration: str) -> tuple[str, ...]:
    """The modalities whose stems a configuration runs, in `MODALITIES` order."""
    branches = tuple(BRANCHES) if configuration == "all branches" else (configuration,)
    return tuple(m for m in MODALITIES if any(m in BRANCHES[b] for b in branches))


class OrtPerception:
    """`BatchedPerception` on ONNX Runtime: per step one call of the deep gate (unless the configurations are
    given), then one call per configuration chosen, on the frames that chose it."""

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

        frames = {m: torch.rand(2, *shapes[m]) for m in MODALITIES}
        self.gate = session("gate", GatedGraph(model, gate), tuple(frames.values()), list(MODALITIES),
                            ["predicted_losses"])  # fmt: skip
        self.configurations = []
        for config in CONFIGURATIONS:
            mods = configuration_modalities(config)
            self.configurations.append(session(f"configuration.{config}", ConfigurationGraph(model, config),
                                               tuple(frames[m] for m in mods), list(mods), ["slots"]))  # fmt: skip
        self.selection = selection
        self.energies = energies

    def estimate(self, frames: dict[str, np.ndarray], configuration: list[str] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """(N, 6, 3) estimates and the configuration of each frame, as `BatchedPerception`."""
        if configuration is None:
            predicted = self.gate.run(None, {m: frames[m] for m in MODALITIES})[0]
            choice = self.selection.choose(predicted, self.energies)
        else:
            choice = np.array([CONFIGURATIONS.index(c) for c in configuration], dtype=np.int64)
        out = np.zeros((len(choice), 6, 3), dtype=np.float32)
        for index in np.unique(choice).tolist():
            rows = np.flatnonzero(choice == index)
            feed = {m: frames[m][rows] for m in configuration_modalities(CONFIGURATIONS[index])}
            outputs = torch.from_numpy(self.configurations[index].run(None, feed)[0])
            out[rows] = estimates(fuse(list(outputs)) if len(outputs) > 1 else outputs[0])
        return out, choice
