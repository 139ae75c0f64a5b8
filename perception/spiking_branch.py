"""A spiking version of a fusion branch, next to its non-spiking original, and its run on a stream.

The branch's stems (trained with the fusion model, frozen) give analog features f; the head
runs T time steps with direct encoding (Datta et al.'s setting):

    z = W₁·f                           computed once per frame (MACs)
    s¹_t = LIF(z)                      t = 1..T, β = 0.9, ϑ = 1
    s²_t = LIF(W₂·s¹_t)                accumulates only (SOPs = rate(s¹)·T·MACs₂)
    y = Σ_t m_t·W₃·s²_t / Σ_t m_t      readout of the spikes (SOPs = rate(s²)·T·MACs₃)

with a learned time-step mask m_t ∈ {0, 1} (`TimeStepMask`). A step with m_t = 0 is skipped:
the membranes keep their values (v_t = m_t·v'_t + (1 − m_t)·v_{t−1}, exact for m_t ∈ {0, 1}, with
the mask's gradient in training) and it adds nothing to y, exactly as the deployed host loop, which
runs the exported step (`cavlab.hw.export.SpikingStep`) on the active steps only.

The membranes (v¹, v²) are the head's state (`SpikingHead.run`): training starts every frame
from zero; on a stream (`SpikingStream`) each vehicle's membranes carry over from one frame to the
next, kept per vehicle id in a `StateTable`. Energy per frame: 4.6 pJ per MAC (stems and W₁), 0.9 pJ
per SOP (`spiking.ENERGY_PJ`).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cavlab.perception.fusion import BATCH, BRANCHES, FEATURES, OUTPUTS, FusionModel, estimates, frames_of, slot_loss
from cavlab.perception.inference import StateTable
from cavlab.perception.spiking import LIF, TimeStepMask, energy_pj, linear_macs, synaptic_ops
from cavlab.perception.task import SLOTS, slot_correct

TIME_STEPS = 4
STATE_NAMES = ("lif1.v", "lif2.v")  # the membranes of the two LIF layers
MASK_WEIGHT = 0.01  # weight of the active-step count in the loss


class SpikingHead(nn.Module):
    """stem features → T steps of two LIF layers → a spike readout (see the module docstring)."""

    def __init__(self, stems: int, hidden: int = 512, time_steps: int = TIME_STEPS) -> None:
        super().__init__()
        self.time_steps = time_steps
        self.w1 = nn.Linear(FEATURES * stems, hidden)
        self.w2 = nn.Linear(hidden, hidden)
        self.w3 = nn.Linear(hidden, OUTPUTS)
        self.lif1 = LIF(0.9, 1.0)
        self.lif2 = LIF(0.9, 1.0)
        self.mask = TimeStepMask(time_steps)

    def initial_state(self, batch: int) -> dict[str, Tensor]:
        """Zero membranes for `batch` frames: {"lif1.v", "lif2.v"}, each [batch, hidden]."""
        zeros = self.w1.weight.new_zeros
        return {name: zeros(batch, self.w1.out_features) for name in STATE_NAMES}

    def run(self, features: Tensor, state: dict[str, Tensor] | None = None
            ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:  # fmt: skip
        """One frame from `state` (zero if None): the slots [batch, 6, 3], the spikes {"s1", "s2"}
        [T, batch, hidden] (zero on skipped steps) and the membranes after the frame."""
        z = self.w1(features)
        state = self.initial_state(len(z)) if state is None else state
        v1, v2 = state["lif1.v"], state["lif2.v"]
        mask = self.mask.mask()
        s1_all, s2_all, out = [], [], 0.0
        for t in range(self.time_steps):
            m = mask[t]
            s1, v1_next = self.lif1(z, v1)
            s2, v2_next = self.lif2(self.w2(s1), v2)
            v1, v2 = m * v1_next + (1 - m) * v1, m * v2_next + (1 - m) * v2  # m = 0: the step is skipped
            out = out + self.w3(s2) * m
            s1_all.append(s1 * m)
            s2_all.append(s2 * m)
        out = out / mask.sum().clamp(min=1.0)
        spikes = {"s1": torch.stack(s1_all), "s2": torch.stack(s2_all)}
        return out.view(-1, len(SLOTS), 3), spikes, {"lif1.v": v1, "lif2.v": v2}

    def forward(self, features: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """One frame from zero membranes (training): the slots and the spikes of `run`."""
        out, spikes, _ = self.run(features)
        return out, spikes

    def energy_pj(self, rate1: float, rate2: float, active_steps: int) -> float:
        """W₁ as MACs; W₂ and W₃ as SOPs of their input spikes over the active steps."""
        sops = synaptic_ops(rate1, active_steps, linear_macs(self.w2.in_features, self.w2.out_features))
        sops += synaptic_ops(rate2, active_steps, linear_macs(self.w3.in_features, self.w3.out_features))
        return energy_pj(linear_macs(self.w1.in_features, self.w1.out_features), sops)


def train_spiking_branch(
    model: FusionModel, arrays: dict[str, np.ndarray], train: np.ndarray, test: np.ndarray, labels: list[str],
    branch: str = "lidar+radar", epochs: int = 4, seed: int = 0,
) -> tuple[SpikingHead, dict[str, Any]]:  # fmt: skip
    """Train a spiking head on the frozen stems of `branch`; the head, and per context its accuracy,
    firing rates, active steps and energy next to the non-spiking branch's."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mods = BRANCHES[branch]
    head = SpikingHead(len(mods))
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    targets = torch.from_numpy(arrays["targets"])

    def features(rows: np.ndarray) -> Tensor:
        frames = frames_of(arrays, rows)
        with torch.no_grad():
            return torch.cat([model.stems[m](frames[m]) for m in mods], dim=1)

    head.train()
    for _ in range(epochs):
        order = train[rng.permutation(len(train))]
        for start in range(0, len(order), BATCH):
            batch = order[start : start + BATCH]
            out, _ = head(features(batch))
            loss = slot_loss(out, targets[batch]).mean() + MASK_WEIGHT * head.mask.regularizer()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    head.eval()
    stem_macs = sum(model.stems[m].macs() for m in mods)
    ann_pj = energy_pj(stem_macs + model.heads[branch].macs(), 0.0)
    context = arrays["context"][test]
    results: dict[str, Any] = {"branch": branch, "time_steps": head.time_steps,
                               "active_steps": head.mask.active_steps(), "contexts": {}}  # fmt: skip
    with torch.no_grad():
        spiking_out, ann_out, rates1, rates2 = [], [], [], []
        for start in range(0, len(test), 4 * BATCH):
            rows = test[start : start + 4 * BATCH]
            f = features(rows)
            out, spikes = head(f)
            spiking_out.append(estimates(out))
            ann_out.append(estimates(model.heads[branch](f)))
            rates1.append(spikes["s1"].mean(dim=(0, 2)).numpy())
            rates2.append(spikes["s2"].mean(dim=(0, 2)).numpy())
    spiking_est, ann_est = np.concatenate(spiking_out), np.concatenate(ann_out)
    rate1, rate2 = np.concatenate(rates1), np.concatenate(rates2)  # per frame
    active = head.mask.active_steps()
    # rates per frame are averaged over all T steps; per active step they are T/active times higher
    scale = head.time_steps / max(active, 1)
    for k, label in enumerate([*labels, "all"]):
        sel = np.arange(len(test)) if label == "all" else np.flatnonzero(context == k)
        if not len(sel):
            continue
        r1, r2 = float(rate1[sel].mean() * scale), float(rate2[sel].mean() * scale)
        results["contexts"][label] = {
            "spiking_accuracy": float(slot_correct(spiking_est[sel], arrays["targets"][test][sel]).mean()),
            "ann_accuracy": float(slot_correct(ann_est[sel], arrays["targets"][test][sel]).mean()),
            "rate_layer1": r1,
            "rate_layer2": r2,
            "spiking_energy_pj": energy_pj(stem_macs, 0.0) + head.energy_pj(r1, r2, active),
            "ann_energy_pj": ann_pj,
        }
    return head, results


class SpikingStream:
    """The spiking branch over a stream of frames: each vehicle's membranes carry over from one frame to
    the next (a `StateTable` keyed by vehicle id; a vehicle seen for the first time starts at zero, one
    absent from a frame is dropped)."""

    def __init__(self, model: FusionModel, head: SpikingHead, branch: str) -> None:
        # a CPU copy of the branch's stems: the fusion model may have moved to CUDA for the gated branches
        self.stems = nn.ModuleDict({m: copy.deepcopy(model.stems[m]) for m in BRANCHES[branch]}).cpu().eval()
        self.head = head.cpu().eval()
        self.table = StateTable({name: (head.w1.out_features,) for name in STATE_NAMES})

    @torch.no_grad()
    def estimate(self, ids: list[str], frames: dict[str, np.ndarray]) -> np.ndarray:
        """(N, 6, 3) estimates of the frames of vehicles `ids` (one frame each, in that order)."""
        features = torch.cat([stem(torch.from_numpy(frames[m])) for m, stem in self.stems.items()], dim=1)
        out, _, state = self.head.run(features, self.table.gather(ids))
        self.table.scatter(ids, state)
        return estimates(out)
