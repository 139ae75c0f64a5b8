"""The step loop: SUMO → world state → perception → controller → commands → SUMO.

The engine owns the loop and nothing else; the CLI and the Gymnasium environments are thin
faces on it. SUMO is closed on every exit path (exception, Ctrl-C).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from cavlab.config.scenario import Scenario
from cavlab.controllers import Controller, ControllerReport, ControlSetup, make_controller
from cavlab.perception import GroundTruth, Perception
from cavlab.sim.backends.base import SumoBackend, make_backend
from cavlab.sim.metrics import LaneChange, MetricsCollector
from cavlab.sim.network import Network, SumoInputs, build_network, write_sumo_inputs
from cavlab.sim.recorder import TrajectoryRecorder
from cavlab.world import Collision, WorldState

ProgressCallback = Callable[[WorldState, int], None]


@dataclass
class RunResult:
    """Everything a finished run produced."""

    metrics: dict
    lane_changes: list[LaneChange]
    collisions: list[Collision]
    trajectories: pa.Table | None
    controller_report: ControllerReport
    steps: int
    vehicle_steps: int
    wall_time_s: float
    inputs: SumoInputs


def control_setup(scenario: Scenario) -> ControlSetup:
    """What the scenario tells a controller about the run."""
    sim = scenario.simulation
    return ControlSetup(
        step_length_s=sim.step_length_s,
        lanes=scenario.road.lanes,
        speed_limit_mps=scenario.road.speed_limit_mps,
        lane_change_duration_s=sim.lane_change_duration_s,
        seed=sim.seed,
    )


def make_perception(scenario: Scenario) -> Perception:
    """The scenario's perception: the ground truth, or the perception loop when it is enabled."""
    if not scenario.perception.enabled:
        return GroundTruth()
    from cavlab.sim.perception_loop import PerceptionLoop

    return PerceptionLoop(scenario.perception, scenario.context, scenario.simulation)


class Engine:
    """Runs one scenario in SUMO with a controller and a perception hook.

    `workdir` receives the SUMO inputs (network copy, routes, detectors, .sumocfg) and SUMO's
    own outputs (log, detector readings).
    """

    def __init__(
        self,
        scenario: Scenario,
        workdir: Path,
        controller: Controller | None = None,
        perception: Perception | None = None,
    ) -> None:
        self.scenario = scenario
        self.workdir = Path(workdir)
        self.controller = controller or make_controller(
            scenario.control.controller, scenario.control.params, control_setup(scenario)
        )
        self.perception = perception or make_perception(scenario)
        self.network: Network = build_network(scenario.road)
        self.inputs = write_sumo_inputs(scenario, self.network, self.workdir)

    def open_backend(self) -> SumoBackend:
        """A started backend (the caller closes it)."""
        backend = make_backend(self.scenario, self.network, self.inputs)
        backend.start(self.controller.modes)
        return backend

    def run(self, progress: ProgressCallback | None = None, progress_every: int = 50) -> RunResult:
        """Run the scenario to its end; `progress(world, step)` is called every `progress_every` steps."""
        sim, out = self.scenario.simulation, self.scenario.outputs
        steps = sim.steps
        metrics = MetricsCollector(self.scenario, self.network)
        every = round((out.trajectory_period_s or sim.step_length_s) / sim.step_length_s)
        recorder = TrajectoryRecorder(every) if out.trajectories else None
        vehicle_steps = 0
        started = time.perf_counter()
        with self.open_backend() as backend:
            for k in range(1, steps + 1):
                world, events = backend.step()
                vehicle_steps += len(world)
                metrics.observe(world, events)
                if recorder is not None:
                    recorder.observe(world)
                backend.apply(self.controller.step(self.perception.observe(world)))
                if progress is not None and (k % progress_every == 0 or k == steps):
                    progress(world, k)
            vehicle_ids, vehicle_types = list(backend.vehicle_ids), backend.vehicle_types
        wall = time.perf_counter() - started
        return RunResult(
            metrics={**metrics.finish(self.inputs.detector_output), **self.perception.metrics()},
            lane_changes=metrics.lane_changes,
            collisions=metrics.collisions,
            trajectories=recorder.table(vehicle_ids, vehicle_types) if recorder else None,
            controller_report=self.controller.report(),
            steps=steps,
            vehicle_steps=vehicle_steps,
            wall_time_s=wall,
            inputs=self.inputs,
        )
