"""SUMO backends: `libsumo` (in process, the default), `traci` (a child process over a socket, also
sumo-gui); `make_backend` picks the one a scenario names."""

from __future__ import annotations

from cavlab.config.scenario import Scenario
from cavlab.sim.backends.base import SumoBackend
from cavlab.sim.backends.libsumo import LibsumoBackend, libsumo_in_use
from cavlab.sim.backends.traci import TraciBackend
from cavlab.sim.network import Network, SumoInputs


def make_backend(scenario: Scenario, network: Network, inputs: SumoInputs) -> SumoBackend:
    """The backend the scenario asks for (not started)."""
    kind = scenario.simulation.backend
    if kind == "libsumo":
        return LibsumoBackend(scenario, network, inputs)
    return TraciBackend(scenario, network, inputs, gui=kind == "gui")


__all__ = ["LibsumoBackend", "SumoBackend", "TraciBackend", "libsumo_in_use", "make_backend"]
