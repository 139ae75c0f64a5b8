"""A spiking version of a fusion branch, next to its non-spiking original.

The branch's stems (trained with the fusion model, frozen) give analog features f; the head
runs T time steps with direct encoding (Datta et al.'s setting):

    z = W₁·f                           computed once (MACs)
    s¹_t = LIF(z)                      t = 1..T, β = 0.9, ϑ = 1
    s²_t = LIF(W₂·s¹_t)                accumulates only (SOPs = rate(s¹)·T·MACs₂)
    y = Σ_t m_t·W₃·s²_t / Σ_t m_t      readout of the spikes (SOPs = rate(s²)·T·MACs₃)

with a learned time-step mask m_t (`TimeStepMask`) that can switch steps off. Energy per
frame: 4.6 pJ per MAC (stems and W₁), 0.9 pJ per SOP (`spiking.ENERGY_PJ`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cavlab.perception.fusion import BATCH, BRANCHES, FEATURES, OUTPUTS, FusionModel, estimates, frames_of, slot_loss
from cavlab.perception.spiking import LIF, TimeStepMask, energy_pj, linear_macs, synaptic_ops
from cavlab.perception.task import SLOTS, slot_correct

TIME_STEPS = 4
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

    def forward(self, features: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        z = self.w1(features)
        v1 = v2 = None
        mask = self.mask.mask()
        s1_all, s2_all, out = [], [], 0.0
        for t in range(self.time_steps):
            s1, v1 = self.lif1(z, v1)
            s1 = s1 * mask[t]
            s2, v2 = self.lif2(self.w2(s1), v2)
            out = out + self.w3(s2) * mask[t]
            s1_all.append(s1)
            s2_all.append(s2)
        out = out / mask.sum().clamp(min=1.0)
        return out.view(-1, len(SLOTS), 3), {"s1": torch.stack(s1_all), "s2": torch.stack(s2_all)}

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
