"""Shared fixtures: a private network cache and small scenarios for fast SUMO runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cavlab.config.scenario import Scenario
from cavlab.sim.resolve import load_scenario


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Built networks go to a cache of this test session, never the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CAVLAB_CACHE_DIR", str(tmp_path_factory.mktemp("cavlab-cache")))
    yield
    mp.undo()


def short(name: str, *overrides: str, duration_s: float = 120, warmup_s: float = 30) -> Scenario:
    """A shipped scenario cut to `duration_s`, with extra `key=value` overrides."""
    return load_scenario(name, [f"simulation.duration_s={duration_s}", f"simulation.warmup_s={warmup_s}", *overrides])


def zoh_simulate(u: np.ndarray, x0: float, v0: float, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """The double integrator stepped with zero-order hold (exact for piecewise-constant u)."""
    x, v = [x0], [v0]
    for uk in u:
        x.append(x[-1] + v[-1] * dt + uk * dt * dt / 2)
        v.append(v[-1] + uk * dt)
    return np.array(x), np.array(v)


PERCEPTION_SHAPES = {"camera": [2, 3, 24], "lidar": [2, 3, 60], "radar": [8, 4]}


@pytest.fixture(scope="session")
def perception_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint as `cavlab perception train` writes it, with random weights (seed 0)."""
    import torch

    from cavlab.perception.fusion import DeepGate, FusionModel
    from cavlab.perception.spiking_branch import SpikingHead

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    head = SpikingHead(2)
    checkpoint = {
        "model": FusionModel(PERCEPTION_SHAPES).state_dict(), "gate": DeepGate().state_dict(),
        "shapes": PERCEPTION_SHAPES, "knowledge_table": {"fog-day": "lidar+radar"},
        "selection": {"gamma": 0.05, "energy_weight": 0.5},
        "spiking": {"branch": "lidar+radar", "state": head.state_dict()},
    }  # fmt: skip
    torch.save(checkpoint, folder / "checkpoint.pt")
    return folder
