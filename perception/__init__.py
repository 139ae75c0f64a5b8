"""Perception: simulated sensors, fusion and spiking models, and the hook the engine calls each step.

`GroundTruth` passes the world state through (controllers plan on SUMO's ground truth);
`cavlab.sim.perception_loop.PerceptionLoop` replaces it with what the CAVs perceive.
"""

from __future__ import annotations

from typing import Protocol

from cavlab.world import Command, WorldState


class Perception(Protocol):
    """Turns the true world state into the estimates controllers plan on; `guard` may override the
    controller's commands (a last line of defence such as emergency braking)."""

    def observe(self, world: WorldState) -> WorldState: ...

    def guard(self, commands: list[Command]) -> list[Command]: ...

    def metrics(self) -> dict: ...


class GroundTruth:
    """Perception switched off: the estimates are the ground truth."""

    def observe(self, world: WorldState) -> WorldState:
        return world

    def guard(self, commands: list[Command]) -> list[Command]:
        return commands

    def metrics(self) -> dict:
        return {}
