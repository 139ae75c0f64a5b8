"""Perception: simulated sensors, fusion and spiking models (see issue 5).

For now only the hook the engine calls each step: `GroundTruth` passes the world state
through, so controllers plan on SUMO's ground truth.
"""

from __future__ import annotations

from typing import Protocol

from cavlab.world import WorldState


class Perception(Protocol):
    """Turns the true world state into the estimates controllers plan on."""

    def observe(self, world: WorldState) -> WorldState: ...


class GroundTruth:
    """Perception switched off: the estimates are the ground truth."""

    def observe(self, world: WorldState) -> WorldState:
        return world
