"""Batched perception: the per-vehicle state table, and batched outputs equal to per-vehicle ones."""

from __future__ import annotations

import numpy as np
import torch

from cavlab.perception.fusion import CONFIGURATIONS, DeepGate, FusionModel, Selection
from cavlab.perception.inference import BatchedPerception, StateTable

SHAPES = {"camera": [2, 3, 24], "lidar": [2, 3, 60], "radar": [8, 4]}


def test_state_table_follows_vehicles_joining_and_leaving() -> None:
    table = StateTable({"v": (3,)})
    first = table.gather(["a", "b"])
    assert first["v"].shape == (2, 3) and not first["v"].any()  # new vehicles start at zero
    table.scatter(["a", "b"], {"v": torch.tensor([[1.0, 1, 1], [2.0, 2, 2]])})
    second = table.gather(["c", "b"])  # a left, c joined, order changed
    assert second["v"].tolist() == [[0, 0, 0], [2, 2, 2]]
    assert len(table) == 1  # a is gone; c has no row until it is scattered
    table.scatter(["c", "b"], {"v": second["v"] + 10})
    assert table.gather(["b", "c"])["v"].tolist() == [[12, 12, 12], [10, 10, 10]]
    assert table.gather([])["v"].shape == (0, 3) and len(table) == 0


def test_batched_estimates_equal_per_vehicle_ones_on_the_cpu_fallback() -> None:
    torch.manual_seed(0)
    model, gate = FusionModel(SHAPES), DeepGate()
    energies = np.array([float(v) for v in model.configuration_macs().values()])
    perception = BatchedPerception(model, gate, Selection(), energies)
    assert perception.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng(0)
    frames = {k: rng.random((9, *v), dtype=np.float32) for k, v in SHAPES.items()}
    batched, choice = perception.estimate(frames)
    for i in range(9):
        alone, alone_choice = perception.estimate({k: v[i : i + 1] for k, v in frames.items()})
        assert alone_choice[0] == choice[i]
        np.testing.assert_allclose(alone[0], batched[i], rtol=1e-5, atol=1e-5)


def test_onnx_runtime_backend_matches_torch() -> None:
    from cavlab.hw.backends.onnxruntime import OrtPerception

    torch.manual_seed(1)
    model, gate = FusionModel(SHAPES).eval(), DeepGate().eval()
    energies = np.array([float(v) for v in model.configuration_macs().values()])
    rng = np.random.default_rng(1)
    frames = {k: rng.random((40, *v), dtype=np.float32) for k, v in SHAPES.items()}
    expected, choice = BatchedPerception(model, gate, Selection(gamma=1.0), energies, device="cpu").estimate(frames)
    ort_perception = OrtPerception(model, gate, Selection(gamma=1.0), energies)
    got, got_choice = ort_perception.estimate(frames)
    np.testing.assert_array_equal(got_choice, choice)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    given = [CONFIGURATIONS[k % len(CONFIGURATIONS)] for k in range(40)]  # every configuration, chosen per frame
    expected, choice = BatchedPerception(model, gate, Selection(), energies, device="cpu").estimate(frames, given)
    got, got_choice = ort_perception.estimate(frames, given)
    np.testing.assert_array_equal(got_choice, choice)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
