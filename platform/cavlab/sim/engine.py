"""The step loop: SUMO → world state → metrics → perception → controller → commands → SUMO.

The engine owns the loop and nothing else; `cavlab run`, sweeps and the Gymnasium environments
all step through `Engine.step`. SUMO is closed on every exit path (exception, Ctrl-C).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from cavlab.config.scenario import Scenario
from cavlab.controllers import Controller, ControllerReport, ControlSetup, make_controller
from cavlab.controllers.longitudinal import Headway
from cavlab.perception import GroundTruth, Perception
from cavlab.sim.backends import SumoBackend, make_backend
from cavlab.sim.metrics import LaneChange, MetricsCollector
from cavlab.sim.network import Network, SumoInputs, build_network, write_sumo_inputs
from cavlab.sim.recorder import TrajectoryRecorder
from cavlab.sim.sumo_outputs import sumo_measures
from cavlab.world import CapSpeed, Collision, Command, Release, StepEvents, WorldState

ProgressCallback = Callable[[WorldState, int], None]
CORRIDOR_END_GUARD_M = 100.0
CORRIDOR_END_DECEL_MPS2 = 2.0
"""On an external network, a vehicle closer to its corridor's end (or to where its lane leads off the
corridor, to an off-ramp) than CORRIDOR_END_GUARD_M plus its braking distance at CORRIDOR_END_DECEL_MPS2,
v²/(2·2 m/s²), is left to SUMO: the controller sees no leader beyond the end (past a junction x jumps to
another corridor) and no traffic light or queue at the junction; SUMO's car following does."""


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
    """What the scenario tells a controller about the run (its network built, or taken from the cache).

    On an external network: the most road lanes of any edge, the highest speed limit, the lanes of
    every edge, and the lanes that end inside their corridor without a connection (an acceleration
    lane: `Network.lane_ends_ahead`); lanes that lead off the corridor are left to SUMO's routes."""
    sim = scenario.simulation
    network = build_network(scenario.road)
    external = network.external is not None
    return ControlSetup(
        step_length_s=sim.step_length_s,
        lanes=max(e.lane_offset + e.lanes for e in network.edges) if external else scenario.road.lanes,
        speed_limit_mps=max(e.speed_limit_mps for e in network.edges) if external else scenario.road.speed_limit_mps,
        lane_change_duration_s=sim.lane_change_duration_s,
        seed=sim.seed,
        lane_ends_m=network.lane_ends_ahead(),
        edge_lanes=tuple((e.lane_offset, e.lane_offset + e.lanes - 1) for e in network.edges),
        sumo_headways={name: Headway(t.tau_s, t.min_gap_m) for name, t in scenario.demand.vehicle_types.items()},
    )


def make_perception(scenario: Scenario, network: Network) -> Perception:
    """The scenario's perception on its built network: the ground truth, or the perception loop when it is
    enabled."""
    if not scenario.perception.enabled:
        return GroundTruth()
    from cavlab.sim.perception_loop import PerceptionLoop

    external = network.external
    return PerceptionLoop(scenario.perception, scenario.context, scenario.simulation,
                          lane_width_m=scenario.road.lane_width_m,
                          corridor=None if external is None else np.array(external.corridor))  # fmt: skip


class Engine:
    """Runs one scenario in SUMO with a controller and a perception hook: `step()` is one simulation
    step, `run()` the whole scenario; the Gymnasium environments drive the same `step()` with their
    agents' commands injected.

    `workdir` receives the SUMO inputs (network copy, routes, detectors, .sumocfg) and SUMO's
    own outputs (log, detector readings). With `collect_metrics=False` (the environments' default)
    no metrics or trajectories are gathered, and steps may go unread when the controller issues no
    commands.
    """

    def __init__(
        self,
        scenario: Scenario,
        workdir: Path,
        controller: Controller | None = None,
        perception: Perception | None = None,
        collect_metrics: bool = True,
    ) -> None:
        self.scenario = scenario
        self.workdir = Path(workdir)
        self.controller = controller or make_controller(
            scenario.control.controller, scenario.control.params, control_setup(scenario)
        )
        self.network: Network = build_network(scenario.road)
        self.perception = perception or make_perception(scenario, self.network)
        self.collect_metrics = collect_metrics
        self.inputs = write_sumo_inputs(scenario, self.network, self.workdir)
        external = self.network.external
        self._control_edges = None  # on an external network: per edge, whether the controller plans there
        self._exit_m = None  # ... and per (edge, SUMO lane) the x where a vehicle there leaves its corridor
        if external is not None:
            edges = self.network.edges
            self._control_edges = np.zeros(len(edges), dtype=bool)
            self._control_edges[list(external.control_edges)] = True
            ends: dict[int, float] = {}
            for c, e in zip(external.corridor, edges, strict=True):
                ends[c] = max(ends.get(c, -np.inf), e.start_m + e.length_m)
            self._exit_m = np.repeat([[ends[c]] for c in external.corridor], max(e.lanes for e in edges), axis=1)
            for (k, lane), x in self.network.lane_ends_ahead(leaving=True).items():  # lanes to an off-ramp
                self._exit_m[k, lane - edges[k].lane_offset] = x
            self._lane_offset = self.network.edge_lane_offset
        self.backend: SumoBackend | None = None
        self.world: WorldState | None = None
        self.events: StepEvents | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, extra_args: tuple[str, ...] = (), reload: bool = False) -> None:
        """Start SUMO (closing a simulation this engine still holds); `extra_args` override the
        .sumocfg (e.g. `("--seed", "7")`). With `reload`, a SUMO this engine still runs loads the new
        simulation instead (`SumoBackend.restart`: no new process). A simulation that begins from a
        saved state (`--load-state`) has its vehicles read into `world` at once, and its metrics count
        from the state's time, as after a warm-up."""
        if not reload:
            self.close()
        sim, out = self.scenario.simulation, self.scenario.outputs
        every = round((out.trajectory_period_s or sim.step_length_s) / sim.step_length_s)
        self.recorder = TrajectoryRecorder(every) if out.trajectories and self.collect_metrics else None
        self._reads_every_step = self.collect_metrics or self.controller.issues_commands
        self._plan = False  # whether self.world is this simulation's last step, read
        self.world = None
        self.steps = 0
        self.vehicle_steps = 0
        self._started = time.perf_counter()
        if self.backend is not None:
            backend, self.backend = self.backend, None  # restart closes it if it fails
            backend.restart(extra_args)
        else:
            backend = make_backend(self.scenario, self.network, self.inputs)
            backend.start(self.controller.modes, extra_args)
        self.backend = backend
        scenario = self.scenario
        if backend.time_s > sim.warmup_s:
            scenario = scenario.model_copy(update={"simulation": sim.model_copy(update={"warmup_s": backend.time_s})})
        self.metrics = None
        if self.collect_metrics:
            self.metrics = MetricsCollector(scenario, self.network, self.controller.safe_gap)
        if "--load-state" in extra_args:
            self.world, self.events = self.read(), StepEvents(backend.present, (), ())
            if self.metrics is not None:
                self.metrics.observe(self.world, self.events)
                if self.recorder is not None:
                    self.recorder.observe(self.world)

    def close(self) -> None:
        """Stop SUMO; safe to call twice."""
        if self.backend is not None:
            backend, self.backend = self.backend, None
            self._vehicle_ids, self._vehicle_types = list(backend.vehicle_ids), backend.vehicle_types
            self._wall_s = time.perf_counter() - self._started
            self._end_s = backend.time_s
            backend.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ stepping

    def step(self, commands: Sequence[Command] = (), read_world: bool = True) -> tuple[WorldState | None, StepEvents]:
        """One simulation step: read, perceive, control, apply, observe. The controller plans on what
        perception makes of the last world read, its commands and then `commands` (an agent's) go to
        SUMO, SUMO advances, and the new world is read and observed (metrics, trajectories).

        Returns the new world (None when the step went unread) and the step's events. A step goes
        unread only when `read_world` is false and nothing needs every step: no metrics, and a
        controller that issues no commands."""
        backend = self.backend
        planned: list[Command] = []
        if self._plan:
            perceived = self.perception.observe(self._controlled_view(self.world))
            planned = self._guarded(self.perception.guard(self.controller.step(perceived)))
        backend.apply([*planned, *commands] if commands else planned)
        world, events = backend.step(read_world or self._reads_every_step)
        self.steps += 1
        self.events = events
        self._plan = world is not None
        if self.metrics is not None and self.network.external is not None:
            v = backend.api.vehicle
            for d in events.departures:  # routes SUMO found (flows from edge to edge) or the route files gave
                self.metrics.route_edges[d.slot] = (tuple(v.getRoute(d.vehicle_id)), v.getLanePosition(d.vehicle_id))
        if world is not None:
            self.world = world
            self.vehicle_steps += len(world)
            if self.metrics is not None:
                self.metrics.observe(world, events)
                if self.recorder is not None:
                    self.recorder.observe(world)
        return world, events

    def _controlled_view(self, world: WorldState) -> WorldState:
        """The world as the controller sees it: on an external network, CAVs off `lane_change_edges`
        (junctions, single-lane edges, edges left out) count as human-driven, so they are left to SUMO."""
        if self._control_edges is None:
            return world
        return dataclasses.replace(world, is_cav=world.is_cav & self._control_edges[world.edge])

    def _guarded(self, commands: list[Command]) -> list[Command]:
        """On an external network, the controller's commands without those for vehicles that near their
        corridor's end, or the end of a lane that leads off the corridor (CORRIDOR_END_GUARD_M), which are
        handed back to SUMO (`Release`; a `CapSpeed` that lifts a cap passes)."""
        world = self.world
        if self._exit_m is None or not (commands or world.controlled.any()):
            return commands
        reach = CORRIDOR_END_GUARD_M + world.speed_mps**2 / (2 * CORRIDOR_END_DECEL_MPS2)
        lane = world.lane - self._lane_offset[world.edge]
        near = self._exit_m[world.edge, lane] - world.x_m < reach
        if not near.any():
            return commands
        ids = set(world.ids[near].tolist())
        kept = [c for c in commands if c.vehicle_id not in ids or (isinstance(c, CapSpeed) and c.speed_mps == math.inf)]
        return kept + [Release(vid) for vid in world.ids[near & world.controlled].tolist()]

    def read(self) -> WorldState:
        """The world now, read afresh (after unread steps)."""
        self.world = self.backend.read()
        self._plan = True
        return self.world

    def result(self) -> RunResult:
        """What the run produced up to now; closes SUMO (its detector output, and the outputs of
        `outputs.sumo`, are complete only then). SUMO's own measures go under `metrics["sumo"]`."""
        self.close()
        metrics = {**self.metrics.finish(self.inputs.detector_output, self._end_s), **self.perception.metrics()}
        if self.inputs.sumo_outputs:
            measured = {d.edge for d in self.network.detectors} if self.network.external is not None else None
            metrics["sumo"] = sumo_measures(self.scenario, self.inputs.sumo_outputs, measured)
        return RunResult(
            metrics=metrics,
            lane_changes=self.metrics.lane_changes,
            collisions=self.metrics.collisions,
            trajectories=self.recorder.table(self._vehicle_ids, self._vehicle_types) if self.recorder else None,
            controller_report=self.controller.report(),
            steps=self.steps,
            vehicle_steps=self.vehicle_steps,
            wall_time_s=self._wall_s,
            inputs=self.inputs,
        )

    def run(self, progress: ProgressCallback | None = None, progress_every: int = 50) -> RunResult:
        """Run the scenario to its end; `progress(world, step)` is called every `progress_every` steps."""
        steps = self.scenario.simulation.steps
        self.start()
        try:
            for k in range(1, steps + 1):
                self.step()
                if progress is not None and (k % progress_every == 0 or k == steps):
                    progress(self.world, k)
            return self.result()
        finally:
            self.close()
