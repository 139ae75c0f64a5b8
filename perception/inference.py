"""Batched perception for every CAV of a step, with per-vehicle state.

`StateTable` keeps recurrent or spiking state rows keyed by vehicle id: `gather` returns the
rows of this step's vehicles in order (zeros for a vehicle seen for the first time), `scatter`
stores them back, and vehicles absent from a step are dropped (they left the network).

`BatchedPerception` runs the gated fusion model on all CAVs of a step at once: one gate call,
then for every configuration the gate chose, one call of its branches on the vehicles that
chose it (`fusion.gated_estimates`). The torch backend runs on CUDA when it is available
(pinned host memory, non-blocking copies) and on the CPU otherwise
(`cavlab.hw.backends.onnxruntime.OrtPerception` does the same on ONNX Runtime).
"""

from __future__ import annotations

import numpy as np
import torch

from cavlab.perception.fusion import (
    DeepGate,
    FusionModel,
    Selection,
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
