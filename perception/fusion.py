"""Context-gated sensor fusion (HydraFusion / EcoFusion style) for the neighbour task.

A stem per modality turns its frame into 64 features; seven branches (each sensor alone, the
three pairs and all three) each map the concatenated features of their stems to the six
neighbour slots. A *configuration* is what runs for a frame: one branch, or all seven with
their outputs averaged (late fusion). Only the stems the chosen branches need are run.

Gates choose a configuration per frame:
- knowledge: a table from the context label (`fog-night`, …) to a configuration;
- deep: a small network on cheap features (the radar stem and a few frame statistics)
  predicts every configuration's loss;
- oracle: every configuration's true loss (needs the ground truth: an upper bound).
With predicted (or true) losses L(φ) and energies E(φ) the choice is EcoFusion's:
Φ* = {φ : L(φ) − min L ≤ γ}, φ* = argmin over Φ* of (1 − λ)·L(φ) + λ·E(φ)/E_all.

Energy per frame is estimated from MAC counts at 4.6 pJ per MAC (`spiking.ENERGY_PJ`) until
the edge-deployment cost model provides measured tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from cavlab.perception.spiking import ENERGY_PJ
from cavlab.perception.task import RANGE_M, SLOTS

MODALITIES = ("camera", "lidar", "radar")
BRANCHES: dict[str, tuple[str, ...]] = {
    "camera": ("camera",),
    "lidar": ("lidar",),
    "radar": ("radar",),
    "camera+lidar": ("camera", "lidar"),
    "camera+radar": ("camera", "radar"),
    "lidar+radar": ("lidar", "radar"),
    "camera+lidar+radar": ("camera", "lidar", "radar"),
}
CONFIGURATIONS = (*BRANCHES, "all branches")
FEATURES = 64
SPEED_SCALE_MPS = 30.0
OUTPUTS = len(SLOTS) * 3  # per slot: presence logit, gap / RANGE_M, relative speed / 30 m/s
BATCH = 256  # frames per training batch
HIDDEN = 512  # the branch heads' default width


def frames_of(arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, Tensor]:
    """The frames of dataset rows `rows` as the model's input tensors."""
    return {m: torch.from_numpy(arrays[m][rows]) for m in MODALITIES}


def conv_macs(conv: nn.Conv2d, out_h: int, out_w: int) -> int:
    kh, kw = conv.kernel_size
    return conv.out_channels * conv.in_channels // conv.groups * kh * kw * out_h * out_w


class GridStem(nn.Module):
    """Two 3×3 convolutions (16 channels, the second followed by 1×2 max pooling) and a linear
    layer to 64 features, for the camera image and the lidar grid (2 channels, 3 lanes, W cells)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.conv1 = nn.Conv2d(2, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.pool = nn.MaxPool2d((1, 2))
        self.linear = nn.Linear(16 * 3 * (width // 2), FEATURES)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))
        return torch.relu(self.linear(x.flatten(1)))

    def macs(self) -> int:
        return (conv_macs(self.conv1, 3, self.width) + conv_macs(self.conv2, 3, self.width)
                + self.linear.in_features * self.linear.out_features)  # fmt: skip


class RadarStem(nn.Module):
    """A shared MLP per radar return (4 → 32 → 64), max-pooled over the returns present."""

    def __init__(self, returns: int) -> None:
        super().__init__()
        self.returns = returns
        self.point = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, FEATURES), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        features = self.point(x) * x[..., :1]  # absent returns contribute zeros
        return features.max(dim=1).values

    def macs(self) -> int:
        return self.returns * (4 * 32 + 32 * FEATURES)


class BranchHead(nn.Module):
    """64·k stem features → hidden → hidden (512 by default) → the six slots (the expensive part, like
    HydraFusion's branches)."""

    def __init__(self, stems: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(FEATURES * stems, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, OUTPUTS),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).view(-1, len(SLOTS), 3)

    def macs(self) -> int:
        return sum(m.in_features * m.out_features for m in self.net if isinstance(m, nn.Linear))


class FusionModel(nn.Module):
    """Stems and branches (heads `hidden` wide); `forward` runs the branches asked for (and only their stems)."""

    def __init__(self, shapes: dict[str, list[int]], hidden: int = HIDDEN) -> None:
        super().__init__()
        self.hidden = hidden
        self.stems = nn.ModuleDict({
            "camera": GridStem(shapes["camera"][-1]),
            "lidar": GridStem(shapes["lidar"][-1]),
            "radar": RadarStem(shapes["radar"][0]),
        })  # fmt: skip
        self.heads = nn.ModuleDict({name: BranchHead(len(mods), hidden) for name, mods in BRANCHES.items()})

    def forward(self, frames: dict[str, Tensor], branches: tuple[str, ...] = tuple(BRANCHES)) -> dict[str, Tensor]:
        needed = {m for b in branches for m in BRANCHES[b]}
        features = {m: self.stems[m](frames[m]) for m in MODALITIES if m in needed}
        return {b: self.heads[b](torch.cat([features[m] for m in BRANCHES[b]], dim=1)) for b in branches}

    def configuration_macs(self) -> dict[str, int]:
        """MACs per frame of each configuration (its stems once, its branches)."""
        out = {}
        for config in CONFIGURATIONS:
            branches = tuple(BRANCHES) if config == "all branches" else (config,)
            stems = {m for b in branches for m in BRANCHES[b]}
            out[config] = sum(self.stems[m].macs() for m in stems) + sum(self.heads[b].macs() for b in branches)
        return out


def fuse(outputs: list[Tensor]) -> Tensor:
    """Late fusion: presence probabilities and regressions averaged (returned as a logit again)."""
    probs = torch.stack([torch.sigmoid(o[..., 0]) for o in outputs]).mean(0).clamp(1e-6, 1 - 1e-6)
    rest = torch.stack([o[..., 1:] for o in outputs]).mean(0)
    return torch.cat([torch.logit(probs).unsqueeze(-1), rest], dim=-1)


def slot_loss(output: Tensor, target: Tensor) -> Tensor:
    """Per frame: BCE on presence + smooth-L1 on gap/60 m and Δv/30 m/s where a neighbour is present."""
    present = target[..., 0]
    bce = nn.functional.binary_cross_entropy_with_logits(output[..., 0], present, reduction="none")
    scaled = torch.stack([target[..., 1] / RANGE_M, target[..., 2] / SPEED_SCALE_MPS], dim=-1)
    reg = nn.functional.smooth_l1_loss(output[..., 1:], scaled, reduction="none", beta=0.05).sum(-1)
    return (bce + present * reg * 10.0).mean(-1)


def estimates(output: Tensor) -> np.ndarray:
    """(N, 6, 3): presence probability, gap [m], relative speed [m/s]."""
    out = output.detach().cpu().numpy().copy()
    out[..., 0] = 1 / (1 + np.exp(-out[..., 0]))
    out[..., 1] *= RANGE_M
    out[..., 2] *= SPEED_SCALE_MPS
    return out


def energy_pj(macs: int) -> float:
    return macs * ENERGY_PJ["mac"]


@dataclass(frozen=True)
class Selection:
    """EcoFusion's choice: the loss margin γ and the energy weight λ."""

    gamma: float = 0.05
    energy_weight: float = 0.5

    def choose(self, losses: np.ndarray, energies: np.ndarray) -> np.ndarray:
        """Per frame (row of `losses`, one column per configuration): the chosen configuration."""
        feasible = losses - losses.min(axis=1, keepdims=True) <= self.gamma
        joint = (1 - self.energy_weight) * losses + self.energy_weight * energies / energies.max()
        return np.where(feasible, joint, np.inf).argmin(axis=1)


class DeepGate(nn.Module):
    """Predicts every configuration's loss from the radar stem's features and frame statistics
    (per camera and lidar channel: mean, std, fraction above 0.5)."""

    STATS = 12

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES + self.STATS, 64), nn.ReLU(), nn.Linear(64, len(CONFIGURATIONS)))

    @staticmethod
    def statistics(frames: dict[str, Tensor]) -> Tensor:
        parts = []
        for m in ("camera", "lidar"):
            x = frames[m].flatten(2)  # (N, 2 channels, cells)
            parts += [x.mean(-1), x.std(-1), (x > 0.5).float().mean(-1)]
        return torch.cat(parts, dim=1)

    def forward(self, radar_features: Tensor, frames: dict[str, Tensor]) -> Tensor:
        return self.net(torch.cat([radar_features, self.statistics(frames)], dim=1))

    def macs(self, radar_stem: RadarStem, grid_cells: int) -> int:
        """The radar stem, the statistics (three operations per camera and lidar cell, counted as
        MACs) and the network."""
        net = sum(m.in_features * m.out_features for m in self.net if isinstance(m, nn.Linear))
        return radar_stem.macs() + 3 * grid_cells + net


@torch.no_grad()
def gated_estimates(
    model: FusionModel, gate: DeepGate, frames: dict[str, Tensor], selection: Selection, energies: np.ndarray,
    configuration: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Estimates (N, 6, 3) and the configuration index chosen for each frame, running for each
    configuration only its branches (and their stems) on only its frames. The deep gate chooses,
    unless `configuration` gives the choice per frame (e.g. from the knowledge table)."""
    if configuration is None:
        predicted = gate(model.stems["radar"](frames["radar"]), frames).cpu().numpy()
        choice = selection.choose(predicted, energies)
    else:
        choice = np.array([CONFIGURATIONS.index(c) for c in configuration])
    out = np.zeros((len(choice), len(SLOTS), 3), dtype=np.float32)
    for index in np.unique(choice):
        rows = torch.from_numpy(np.flatnonzero(choice == index))
        config = CONFIGURATIONS[index]
        branches = tuple(BRANCHES) if config == "all branches" else (config,)
        outputs = model({m: frames[m][rows] for m in MODALITIES}, branches)
        result = fuse(list(outputs.values())) if config == "all branches" else outputs[config]
        out[rows.numpy()] = estimates(result)
    return out, choice
