"""Perception: simulated sensors, fusion and spiking models, and the hook the engine calls each step.

`GroundTruth` passes the world state through (controllers plan on SUMO's ground truth);
`cavlab.sim.perception_loop.PerceptionLoop` replaces it with what the CAVs perceive.
"""

from __future__ import annotations

from typing import Protocol

from cavlab.world import WorldState


class Perception(Protocol):
    """Turns the true world state into the estimates controllers plan on."""

    def observe(self, world: WorldState) -> WorldState: ...

    def metrics(self) -> dict: ...


class GroundTruth:
    """Perception switched off: the estimates are the ground truth."""

    def observe(self, world: WorldState) -> WorldState:
        return world

    def metrics(self) -> dict:
        return {}
