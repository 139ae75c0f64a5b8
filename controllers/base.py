"""The controller interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cavlab.config.scenario import InputModel
from cavlab.controllers.longitudinal import Headway
from cavlab.world import Command, ControlModes, WorldState


class NoParams(InputModel):
    """A controller without parameters."""


@dataclass(frozen=True)
class ControlSetup:
    """What a controller may know about the run besides the world state."""

    step_length_s: float
    lanes: int
    speed_limit_mps: float
    lane_change_duration_s: float
    seed: int
    lane_ends_m: dict[tuple[int, int], float] = field(default_factory=dict)
    """(edge index, road lane) → x where that lane next stops along the road (an on-ramp's acceleration
    lane, a dropped lane): vehicles in it must change lanes before there; lanes that run on are absent."""
    edge_lanes: tuple[tuple[int, int], ...] = ()
    """per edge index (`WorldState.edge`): its lowest and highest road lane (a lane change is possible
    only into a lane of the vehicle's edge)."""
    sumo_headways: dict[str, Headway] = field(default_factory=dict)
    """per vehicle type name (`WorldState.type_names`): SUMO's own car-following headway, tau·v + minGap."""


@dataclass(frozen=True)
class Table:
    """Rows with named columns (written as CSV)."""

    columns: list[str]
    rows: list[dict[str, Any]]


@dataclass(frozen=True)
class ControllerReport:
    """What a controller reports at the end of a run: tables (written as <name>.csv) and metrics."""

    tables: dict[str, Table] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


class Controller(ABC):
    """Plans for the CAVs from a `WorldState`.

    Subclasses declare their parameters as an `InputModel` `Params` (validated from the
    scenario's `control.params`: finite, strictly typed numbers) and implement `step`. A
    vehicle a controller commands gets the controller's `modes` first; `Release` hands it back
    to SUMO.
    """

    Params: ClassVar[type[InputModel]] = NoParams
    modes: ClassVar[ControlModes] = ControlModes()
    issues_commands: ClassVar[bool] = True
    """False for a controller whose `step` never commands anything: callers may skip it."""

    def __init__(self, params: InputModel, setup: ControlSetup) -> None:
        self.params = params
        self.setup = setup

    @abstractmethod
    def step(self, world: WorldState) -> list[Command]:
        """Commands to apply before the next simulation step."""

    @property
    def safe_gap(self) -> Headway | None:
        """The gap φ·v + δ it keeps behind a leader (the run's `min_safe_gap_slack_controlled_m` is measured
        against it); None where it keeps none of its own."""
        return None

    def report(self) -> ControllerReport:
        """Tables and metrics of the run (none by default)."""
        return ControllerReport()
