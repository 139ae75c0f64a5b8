"""Gated fusion: EcoFusion's selection, energy accounting, late fusion, the loss, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cavlab.cli import app
from cavlab.perception.fusion import (
    BRANCHES,
    CONFIGURATIONS,
    DeepGate,
    FusionModel,
    Selection,
    estimates,
    fuse,
    gated_estimates,
    slot_loss,
)
from cavlab.perception.training import load_checkpoint

SHAPES = {"camera": [2, 3, 24], "lidar": [2, 3, 60], "radar": [8, 4]}
runner = CliRunner()


def test_selection_keeps_configurations_within_gamma_then_trades_loss_for_energy() -> None:
    losses = np.array([[0.10, 0.12, 0.30], [0.10, 0.20, 0.30]])
    energies = np.array([10.0, 2.0, 1.0])
    # row 0: {0, 1} within γ = 0.05; joint 0.5·0.10 + 0.5·1.0 = 0.55 vs 0.5·0.12 + 0.5·0.2 = 0.16 → 1
    # row 1: only 0 is within γ
    assert Selection(gamma=0.05, energy_weight=0.5).choose(losses, energies).tolist() == [1, 0]
    assert Selection(gamma=1.0, energy_weight=1.0).choose(losses, energies).tolist() == [2, 2]  # energy only
    assert Selection(gamma=1.0, energy_weight=0.0).choose(losses, energies).tolist() == [0, 0]  # loss only


def test_mac_counts_match_a_count_of_the_layers_that_actually_run() -> None:
    model = FusionModel(SHAPES)
    macs = model.configuration_macs()
    # by hand: camera stem 16·2·9·72 + 16·16·9·72 + (16·3·12)·64 = 223,488; a one-stem branch head
    # 64·512 + 512·512 + 512·18 = 304,128
    assert macs["camera"] == 223_488 + 304_128
    counted = {"n": 0}

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Linear):
            counted["n"] += module.in_features * module.out_features * inputs[0].shape[:-1].numel()
        elif isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            counted["n"] += module.out_channels * module.in_channels * kh * kw * output.shape[-2:].numel()

    for m in model.modules():
        m.register_forward_hook(hook)
    frames = {k: torch.zeros(1, *v) for k, v in SHAPES.items()}
    for config in CONFIGURATIONS:
        counted["n"] = 0
        branches = None if config == "all branches" else (config,)
        with torch.no_grad():
            model(frames, *(() if branches is None else (branches,)))
        assert counted["n"] == macs[config], config


def test_late_fusion_averages_probabilities_and_regressions() -> None:
    a = torch.tensor([[[0.0, 0.2, -0.1]]])  # p = 0.5
    b = torch.tensor([[[np.log(3.0), 0.4, 0.1]]])  # p = 0.75
    fused = fuse([a, b])
    assert torch.sigmoid(fused[0, 0, 0]).item() == pytest.approx(0.625)
    assert fused[0, 0, 1:].tolist() == pytest.approx([0.3, 0.0], abs=1e-6)


def test_slot_loss_ignores_regression_of_absent_slots() -> None:
    target = torch.zeros(1, 6, 3)
    target[0, 0] = torch.tensor([1.0, 30.0, -3.0])
    perfect = torch.zeros(1, 6, 3)
    perfect[..., 0] = -20.0
    perfect[0, 0] = torch.tensor([20.0, 0.5, -0.1])  # gap 30/60, Δv −3/30
    assert slot_loss(perfect, target).item() < 1e-6
    absent_wrong = perfect.clone()
    absent_wrong[0, 3, 1:] = 5.0  # regression of an absent slot: no cost
    assert slot_loss(absent_wrong, target).item() < 1e-6
    present_wrong = perfect.clone()
    present_wrong[0, 0, 1] = 0.9
    assert slot_loss(present_wrong, target).item() > 0.05


def test_spiking_head_energy_and_masked_steps() -> None:
    from cavlab.perception.spiking_branch import SpikingHead

    head = SpikingHead(stems=2, time_steps=4)
    # W1 128·512 MACs at 4.6 pJ; W2 0.1·4·512·512 and W3 0.2·4·512·18 SOPs at 0.9 pJ
    expected = 128 * 512 * 4.6 + 0.9 * (0.1 * 4 * 512 * 512 + 0.2 * 4 * 512 * 18)
    assert head.energy_pj(0.1, 0.2, 4) == pytest.approx(expected)
    with torch.no_grad():
        head.mask.scores[3] = -1.0
        out, spikes = head(torch.rand(5, 128) * 5)
    assert head.mask.active_steps() == 3
    assert not spikes["s1"][3].any() and spikes["s1"][:3].any()
    assert out.shape == (5, 6, 3)


@pytest.mark.sumo
def test_dataset_train_eval_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = runner.invoke(app, ["perception", "dataset", "--weather", "clear", "--weather", "fog", "--light", "day",
                               "--seeds", "2", "--duration", "50", "--warmup", "20", "--out", str(data)])  # fmt: skip
    assert done.exit_code == 0, done.output
    model = tmp_path / "model"
    done = runner.invoke(app, ["perception", "train", str(data), "--epochs", "1", "--out", str(model)])
    assert done.exit_code == 0, done.output
    results = json.loads((model / "results.json").read_text())
    assert set(results["contexts"]) == {"clear-day", "fog-day", "all"}
    row = results["contexts"]["all"]
    assert row["all branches"]["energy_pj"] == max(row[c]["energy_pj"] for c in CONFIGURATIONS)
    assert all(0 <= row[g]["accuracy"] <= 1 for g in ("knowledge gate", "deep gate", "oracle gate"))
    assert set(results["knowledge_table"]) == {"clear-day", "fog-day"}
    spiking = results["spiking"]["contexts"]["all"]
    assert 0 < spiking["rate_layer1"] < 1 and 0 <= spiking["rate_layer2"] < 1
    assert 0 <= spiking["spiking_accuracy"] <= 1 and spiking["ann_energy_pj"] > 0
    assert (model / "results.md").read_text().count("\n") > 10 and (model / "accuracy_energy.png").exists()
    assert (model / "spiking.png").exists()
    done = runner.invoke(app, ["perception", "eval", str(model), str(data), "--out", str(tmp_path / "eval")])
    assert done.exit_code == 0, done.output
    assert not (tmp_path / "eval" / "checkpoint.pt").exists()
    small = tmp_path / "small"  # narrower heads, no spiking branch: what the shipped model is made with
    done = runner.invoke(app, ["perception", "train", str(data), "--epochs", "1", "--hidden", "16", "--no-spiking",
                               "--out", str(small)])  # fmt: skip
    assert done.exit_code == 0, done.output
    fusion, _, ckpt = load_checkpoint(small)
    assert ckpt["hidden"] == 16 and ckpt["spiking"] is None and fusion.heads["radar"].net[0].out_features == 16
    assert "spiking" not in json.loads((small / "results.json").read_text()) and not (small / "spiking.png").exists()
    for args, message in [
        (["perception", "train", str(tmp_path / "nothing")], "no manifest.json"),
        (["perception", "eval", str(data), str(data)], "no checkpoint.pt"),
        (["perception", "train", str(data), "--energy-weight", "2"], "0 ≤ --energy-weight ≤ 1"),
        (["perception", "train", str(data), "--hidden", "0"], "1 ≤ --hidden ≤ 4096"),
    ]:
        done = runner.invoke(app, [*args, "--out", str(tmp_path / "bad")])
        assert done.exit_code == 2 and message in " ".join(done.output.split()), done.output
        assert not (tmp_path / "bad").exists()


def test_gated_estimates_run_only_the_chosen_branches_and_match_them() -> None:
    torch.manual_seed(0)
    model, gate = FusionModel(SHAPES).eval(), DeepGate().eval()
    frames = {k: torch.rand(6, *v) for k, v in SHAPES.items()}
    energies = np.array([float(v) for v in model.configuration_macs().values()])
    chosen = ["radar", "lidar", "radar", "all branches", "camera+lidar", "radar"]
    ran: list[str] = []
    for name, head in model.heads.items():
        head.register_forward_hook(lambda m, i, o, name=name: ran.append(name))
    out, choice = gated_estimates(model, gate, frames, Selection(), energies, configuration=chosen)
    assert [CONFIGURATIONS[c] for c in choice] == chosen
    assert sorted(set(ran)) == sorted(BRANCHES)  # "all branches" needs them all here, once per group
    assert ran.count("radar") == 2 and ran.count("lidar") == 2  # its own group and the "all branches" one
    with torch.no_grad():
        full = model(frames)
    np.testing.assert_allclose(out[0], estimates(full["radar"][:1])[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[3], estimates(fuse([o[3:4] for o in full.values()]))[0], rtol=1e-5, atol=1e-6)
    deep, deep_choice = gated_estimates(model, gate, frames, Selection(), energies)
    assert deep.shape == (6, 6, 3) and len(deep_choice) == 6
