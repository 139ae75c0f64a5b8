"""The `sumo` controller: CAVs drive with SUMO's own models, like human drivers."""

from __future__ import annotations

from cavlab.controllers.base import Controller
from cavlab.world import Command, WorldState


class SumoDriver(Controller):
    """Issues no commands: SUMO's car-following and LC2013 models drive every vehicle."""

    issues_commands = False

    def step(self, world: WorldState) -> list[Command]:
        return []
