"""Shared fixtures: a private network cache and small scenarios for fast SUMO runs."""

from __future__ import annotations

import numpy as np
import pytest

from cavlab.scenario import Scenario, load_scenario


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
