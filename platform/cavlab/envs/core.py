"""`AgentTraffic`: the SUMO side shared by the single- and the multi-agent environments.

It runs a scenario's traffic on the engine (`cavlab.sim.engine.Engine.step`, the loop `cavlab run`
uses) and lets agents drive some of its vehicles: every decision period each agent's action
becomes a lane request and an acceleration law, injected into every engine step of the period
while the scenario's controller drives the rest (it sees the agents as human-driven vehicles
and never commands them). With the option `metrics`, every step is read and the episode's run
metrics are gathered as in `cavlab run`.

Backends (option `backend`): libsumo runs one simulation per process, so with `auto` (the
default) the first env of a process to start SUMO gets libsumo and every env that starts
while that one is live gets a SUMO child process over TraCI on 127.0.0.1 (its own connection);
each env decides when it starts SUMO and keeps its SUMO (and backend) from episode to episode.
Both backends run the same SUMO, so an episode is the same on either (tests/test_env_vector.py).

Resets (option `warm_states`): the warm-up is simulated once per warm state k = 0 … K−1 (SUMO
seeded with k) and SUMO's state saved (`saveState`, binary); an episode with seed s loads warm
state s mod K into the running SUMO (TraCI's `load` with `--load-state`, `--seed s`: the network
is read again, SUMO's random number generators are seeded with s) instead of simulating the
warm-up. Same seed, same episode; the traffic at the end of the warm-up is one of K, and what
follows it is drawn from s. The state is saved without its random number states
(`--save-state.rng` is off), so nothing of the warm-up's randomness carries over. A scenario
controller that commands vehicles on its own (its memory is not in SUMO's state) warms up every
episode, as does `warm_states: 0`. With the option `metrics`, an episode that restores a warm
state counts its metrics from the end of the warm-up (as `cavlab run` after its warm-up).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cavlab.config.scenario import Scenario
from cavlab.controllers import Controller, make_controller
from cavlab.controllers.cooperative import CooperativeLaneChange, CooperativeParams
from cavlab.controllers.longitudinal import Headway
from cavlab.envs.actions import ActionType, make_action
from cavlab.envs.config import EgoSpec, EnvConfig, EnvConfigError
from cavlab.envs.observations import PerceivedNeighbours, RoadFrame, lane_ttc, make_observation
from cavlab.errors import SimulationError
from cavlab.sim.backends import SumoBackend, libsumo_in_use
from cavlab.sim.engine import Engine, RunResult, control_setup
from cavlab.sim.network import Edge, Network, build_network
from cavlab.sim.resolve import load_scenario
from cavlab.world import Accelerate, ChangeLane, Command, ControlModes, Release, WorldState

AGENT_MODES = ControlModes(speed_mode=32, lane_change_mode=0)
"""Agents drive without SUMO's safety checks: they can collide, and pay for it."""
FOLLOW_MODES = ControlModes(speed_mode=31, lane_change_mode=0)
"""Agents with planner actions between maneuvers: SUMO's car following, no lane change of its own."""

INSERT_WAIT_S = 1.0  # how long SUMO may take to accept a spot for an inserted vehicle
TAKEOVER_WAIT_S = 20.0  # how long the traffic may take to offer a vehicle with a leader near
FAILURES = ("collision", "lane_end")


@dataclass
class Agent:
    """An agent's vehicle and what the current decision period has accumulated."""

    vehicle_id: str
    action: ActionType
    row: int
    x_m: float
    speed_mps: float = 0.0
    lane_change_until_s: float = -np.inf
    lane0: int = 0  # its lane when the decision period began
    behind: dict[int, tuple[int, float, float]] = field(default_factory=dict)  # slot → (lane, x, v) then
    u2_sum: float = 0.0
    steps: int = 0
    outcome: str | None = None  # collision, lane_end, goal, left_network
    in_maneuver: bool = False  # planner actions: the cooperative planner drives it now
    request: tuple[str, str] | None = None  # planner actions: (status, reason) of this period's request


@dataclass(frozen=True)
class Transition:
    """One agent's result of a decision period."""

    observation: np.ndarray
    reward: float
    terminated: bool
    info: dict[str, Any]


class AgentTraffic:
    """A scenario's traffic in SUMO with agent-driven vehicles (see the module docstring)."""

    def __init__(self, config: EnvConfig) -> None:
        self.config = config
        self.scenario = self._scenario(config)
        road = self.scenario.road
        # an external network is read now: the ego's edges are checked and the spaces sized from its edges
        self._net = build_network(road) if road.kind == "network" else None
        self._edge_corridor = np.asarray(self._net.external.corridor) if self._net is not None else None
        self.step_length_s = self.scenario.simulation.step_length_s
        self.substeps = round(config.decision_period_s / self.step_length_s)
        if self.substeps < 1 or abs(self.substeps * self.step_length_s - config.decision_period_s) > 1e-9:
            raise EnvConfigError(
                f"environment option 'decision_period_s' = {config.decision_period_s:g} must be a multiple of the "
                f"scenario's step length ({self.step_length_s:g} s)"
            )
        ego = config.ego
        self.check_ego(ego)
        types = self.scenario.demand.vehicle_types
        self.agent_type = ego.vehicle_type or self.scenario.demand.cav_type
        if self.agent_type not in types:
            raise EnvConfigError(
                f"environment option 'ego.vehicle_type' = '{self.agent_type}' is not a vehicle type of the scenario "
                f"(known: {', '.join(types)})"
            )
        spec = types[self.agent_type]
        self.accel_mps2, self.decel_mps2, self.length_m = spec.accel_mps2, spec.decel_mps2, spec.length_m
        self.planner_actions = config.action.type == "planner"
        if self._net is None:
            lane_min, lane_max, limit = -1 if road.kind == "on_ramp" else 0, road.lanes - 1, road.speed_limit_mps
        else:
            normal = [e for e in self._net.edges if not e.internal]
            lane_min, lane_max = min(e.lane_offset for e in normal), max(e.lane_offset + e.lanes - 1 for e in normal)
            limit = max(e.speed_limit_mps for e in normal)
        self.frame = RoadFrame(lane_min, lane_max, limit, lane_width_m=road.lane_width_m)
        self.observation_type = make_observation(config.observation, self.frame, self.scenario.context)
        self.set_goal(config)
        self.agents: dict[str, Agent] = {}
        self.engine: Engine | None = None
        self._warm: dict[int, Path] = {}  # warm state k → its saved state
        self._cleanup: weakref.finalize | None = None
        self.substep_hooks: list[Callable[[], None]] = []
        """Called after every engine step of a decision period in `step` (e.g. a renderer grabbing frames)."""

    # ------------------------------------------------------------------ setup

    def check_ego(self, ego: EgoSpec) -> None:
        """Raise an `EnvConfigError` naming the first field of `ego` that does not fit the scenario's road."""
        road = self.scenario.road
        if self._net is None:
            lane_min = -1 if road.kind == "on_ramp" else 0
            if ego.from_edge is not None or ego.to_edge is not None:
                name = "from_edge" if ego.from_edge is not None else "to_edge"
                raise EnvConfigError(
                    f"environment option 'ego.{name}' is for road.kind 'network'; the scenario's road is a generated "
                    f"'{road.kind}' (use ego.route, ego.lane and ego.x_m)"
                )
            if not lane_min <= ego.lane < road.lanes:
                raise EnvConfigError(
                    f"environment option 'ego.lane' = {ego.lane}: the road has lanes {lane_min}..{road.lanes - 1}"
                )
            if ego.route == "ramp" and road.kind != "on_ramp":
                raise EnvConfigError("environment option 'ego.route' = 'ramp': the scenario's road has no on-ramp")
            return
        if ego.route != "mainline":
            raise EnvConfigError(
                f"environment option 'ego.route' = '{ego.route}': on road.kind 'network' the ego's route is "
                "ego.from_edge to ego.to_edge (allowed: mainline, the default)"
            )
        for name in ("from_edge", "to_edge"):
            if getattr(ego, name) is None:
                raise EnvConfigError(f"environment option 'ego.{name}': road.kind 'network' needs it {self._known()}")
        start, end = self._net_edge("from_edge", ego.from_edge), self._net_edge("to_edge", ego.to_edge)
        if not start.lane_offset <= ego.lane < start.lane_offset + start.lanes:
            raise EnvConfigError(
                f"environment option 'ego.lane' = {ego.lane}: edge '{start.id}' has road lanes "
                f"{start.lane_offset}..{start.lane_offset + start.lanes - 1}"
            )
        if ego.x_m > start.length_m:
            raise EnvConfigError(
                f"environment option 'ego.x_m' = {ego.x_m:g}: on a network it is the distance from the start of "
                f"ego.from_edge '{start.id}' (allowed: 0..{start.length_m:g} m)"
            )
        successors = self._net.external.successors
        reached, stack = {start.id}, [start.id]
        while stack and end.id not in reached:
            for b in successors.get(stack.pop(), ()):
                if b not in reached:
                    reached.add(b)
                    stack.append(b)
        if end.id not in reached:
            raise EnvConfigError(
                f"environment option 'ego.to_edge' = '{end.id}': no route from ego.from_edge '{start.id}' to it"
            )

    def _net_edge(self, name: str, edge_id: str) -> Edge:
        """The normal edge of the network named by option `ego.<name>`."""
        edge = self._net.edge(edge_id) if edge_id in self._net.edge_names else None
        if edge is None or edge.internal:
            raise EnvConfigError(f"environment option 'ego.{name}': unknown edge '{edge_id}' {self._known()}")
        return edge

    def _known(self) -> str:
        names = sorted(e.id for e in self._net.edges if not e.internal)
        more = f", … ({len(names)} in all)" if len(names) > 8 else ""
        return f"(edges of the network: {', '.join(names[:8])}{more})"

    def set_goal(self, config: EnvConfig) -> None:
        """The goal of an episode of `config`: `goal_x_m`, else 50 m before the road's end; on a network,
        `goal_x_m` is the distance from the start of ego.to_edge, by default 50 m before its end (its middle
        on an edge shorter than 100 m), and the goal counts only on that edge's corridor."""
        if self._net is None:
            self._goal_corridor = None
            self.goal_x_m = config.goal_x_m if config.goal_x_m is not None else self.scenario.road.length_m - 50.0
            return
        end = self._net_edge("to_edge", config.ego.to_edge)
        if config.goal_x_m is not None and config.goal_x_m > end.length_m:
            raise EnvConfigError(
                f"environment option 'goal_x_m' = {config.goal_x_m:g}: on a network it is the distance from the start "
                f"of ego.to_edge '{end.id}' (allowed: 0..{end.length_m:g} m)"
            )
        along = end.length_m - min(50.0, end.length_m / 2) if config.goal_x_m is None else config.goal_x_m
        self.goal_x_m = end.start_m + along
        self._goal_corridor = self._corridor_of(self._net.edge_names.index(end.id))

    @staticmethod
    def _scenario(cfg: EnvConfig) -> Scenario:
        """The scenario, run long enough for one episode, on the chosen backend."""
        scenario = load_scenario(cfg.scenario, cfg.set)
        if scenario.perception.enabled:
            raise EnvConfigError(
                "perception.enabled: the environments' controllers plan on the ground truth (perception in "
                "the loop runs in `cavlab run` and sweeps); for the agent's own view use observation.type=perception"
            )
        step = scenario.simulation.step_length_s
        waits = max(3 * INSERT_WAIT_S, TAKEOVER_WAIT_S)
        duration = np.ceil((cfg.warmup_s + waits + cfg.episode_s + cfg.decision_period_s) / step) * step
        backend = "libsumo" if cfg.backend == "auto" else cfg.backend  # auto: decided at each start of SUMO
        sim = scenario.simulation.model_copy(update={"duration_s": float(duration), "warmup_s": 0.0,
                                                     "backend": backend})  # fmt: skip
        # an episode ends at any step: with metrics, the loops' counts must cover it to its last step
        outputs = scenario.outputs.model_copy(update={"detector_period_s": step if cfg.metrics else None})
        return scenario.model_copy(update={"simulation": sim, "outputs": outputs})

    def _prepare(self) -> None:
        """Build the engine (network, SUMO's inputs), once (lazily: constructing an env stays cheap)."""
        if self.engine is not None:
            return
        workdir = Path(tempfile.mkdtemp(prefix="cavlab-env-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, workdir, True)
        self._control_setup = control_setup(self.scenario)
        self.controller = self._controller(self.scenario.simulation.seed)
        self.engine = Engine(self.scenario, workdir, _TrafficController(self), collect_metrics=self.config.metrics)
        self._warm = {}
        self._restorable = round(self.config.warmup_s / self.step_length_s) > 0 and (
            not self.controller.issues_commands
            or (isinstance(self.controller, CooperativeLaneChange) and not self.controller.autonomous)
        )
        self._edge_lanes = np.array([e.lanes for e in self.network.edges])
        self._edge_offset = np.array([e.lane_offset for e in self.network.edges])
        self._lane_end_x = self.network.lane_ends()

    @property
    def network(self) -> Network | None:
        """The network (an external one from construction on, a generated one once SUMO's inputs are built)."""
        return self.engine.network if self.engine is not None else self._net

    @property
    def backend(self) -> SumoBackend | None:
        """The running SUMO (None before `start` and after `close`)."""
        return self.engine.backend if self.engine is not None else None

    def make_action(self) -> ActionType:
        return make_action(self.config.action, self.accel_mps2, self.decel_mps2)

    # ------------------------------------------------------------------ lifecycle

    def start(self, sumo_seed: int) -> WorldState:
        """A fresh simulation with `sumo_seed`, after the warm-up (restored from a warm state where
        there are any: see the module docstring); no agents yet."""
        self._prepare()
        self.agents = {}
        warm = self._warm_state(sumo_seed) if self._restorable and self.config.warm_states else None
        self.controller = self._controller(sumo_seed)
        self.engine.controller = _TrafficController(self)
        if isinstance(self.observation_type, PerceivedNeighbours):  # the sensor noise follows the seed
            self.observation_type.reset(np.random.default_rng([sumo_seed, 1]))
        if warm is None:
            self._launch(("--seed", str(sumo_seed)))
            self._warm_up()
        else:
            # no --begin: SUMO takes the state's time (and warns in its log); over TraCI, a `load` with
            # --begin leaves the next steps of a SUMO that had run on standing still
            self._launch(("--seed", str(sumo_seed), "--load-state", str(warm)))
            self.world, self.events = self.engine.world, self.engine.events
            self._world_fresh = True
        return self.world

    def build_warm_states(self) -> None:
        """Simulate and save every warm state not saved yet (else each is made by the first episode
        that needs it); SUMO is left closed, the episode under way (if any) is over."""
        self._prepare()
        self.agents = {}
        if self._restorable:
            for k in range(self.config.warm_states):
                self._warm_state(k)
        self.close()

    def _warm_state(self, sumo_seed: int) -> Path:
        """The saved warm-up of warm state `sumo_seed` mod `warm_states` (simulated and saved the first time)."""
        k = sumo_seed % self.config.warm_states
        if k not in self._warm:
            self.controller = self._controller(k)
            self.engine.controller = _TrafficController(self)
            self.close()  # a fresh SUMO: over TraCI, a `load` after one with --load-state keeps its begin time
            self._launch(("--seed", str(k), "--save-state.precision", "8"))  # the state as simulated (default: cm)
            self._warm_up()
            path = self.engine.workdir / f"warm-{k}.sbx"
            self.backend.save_state(str(path))
            self._warm[k] = path
        return self._warm[k]

    def _warm_up(self) -> None:
        """Simulate the first step and `warmup_s` of traffic; the world at its end."""
        self.world, self.events = self.engine.step()
        self._world_fresh = True
        for _ in range(round(self.config.warmup_s / self.step_length_s)):
            self._advance([], read_world=False)
        self._refresh()

    def _launch(self, args: tuple[str, ...]) -> None:
        """(Re)start SUMO with `args`: a SUMO this env still runs loads the new simulation; else one
        starts on the backend the option `backend` gives (see the module docstring)."""
        engine = self.engine
        if engine.backend is None:
            kind = self.config.backend
            if libsumo_in_use() and kind != "traci":
                if kind == "libsumo":
                    raise EnvConfigError(
                        "environment option 'backend' = 'libsumo': another libsumo simulation is live in this "
                        "process and libsumo runs one per process; use backend 'auto' (the default: further envs "
                        "of a process run on TraCI) or 'traci', or close the other env first"
                    )
                kind = "traci"
            elif kind == "auto":
                kind = "libsumo"
            if engine.scenario.simulation.backend != kind:
                sim = engine.scenario.simulation.model_copy(update={"backend": kind})
                engine.scenario = engine.scenario.model_copy(update={"simulation": sim})
        engine.start(extra_args=args, reload=engine.backend is not None)

    def _controller(self, seed: int) -> Controller:
        """A fresh scenario controller, seeded with the episode's SUMO seed; with planner actions, the
        cooperative controller that serves the agents' requests: the scenario's own if it is one, else
        one that starts maneuvers only on request and leaves the CAVs' idle driving as it was (a
        controller that issues commands of its own would conflict with it: `sumo` issues none)."""
        setup = dataclasses.replace(self._control_setup, seed=seed)
        controller = make_controller(self.scenario.control.controller, self.scenario.control.params, setup)
        if not self.planner_actions or isinstance(controller, CooperativeLaneChange):
            return controller
        planner = CooperativeLaneChange(CooperativeParams(), setup)
        planner.autonomous = False
        planner.modes = dataclasses.replace(planner.modes, idle_speed_mode=controller.modes.idle_speed_mode,
                                            idle_lane_change_mode=controller.modes.idle_lane_change_mode)  # fmt: skip
        return planner

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()

    def episode_result(self) -> RunResult:
        """The run metrics of the episode so far, as `cavlab run` computes them (option `metrics`);
        closes SUMO (its detector output is complete only then)."""
        return self.engine.result()

    def dispose(self) -> None:
        """Close SUMO and delete the SUMO inputs and warm states (a later `start` builds them again)."""
        self.close()
        if self._cleanup is not None:
            self._cleanup()
        self.engine = None
        self._warm = {}

    # ------------------------------------------------------------------ agents

    def adopt(self, vehicle_id: str) -> Agent:
        """Hand a vehicle in the network to an agent."""
        row = self.world.index_of(vehicle_id)
        self.backend.take_control(vehicle_id, FOLLOW_MODES if self.planner_actions else AGENT_MODES)
        action = self.make_action()
        action.reset(float(self.world.speed_mps[row]))
        agent = Agent(vehicle_id, action, row, float(self.world.x_m[row]), float(self.world.speed_mps[row]))
        self.agents[vehicle_id] = agent
        return agent

    def place_ego(self, spec: EgoSpec, name: str) -> Agent:
        """Hand the vehicle `spec` describes to an agent (a new one, called `name`, if inserted);
        each placement falls back on the other."""
        order = [self._take_over, self._insert]
        if spec.placement == "insert":
            order.reverse()
        agent = order[0](spec, name) or order[1](spec, name)
        if agent is None:
            raise SimulationError(
                f"no place for the ego in lane {spec.lane} near x = {spec.x_m:g} m after {self.config.warmup_s:g} s "
                f"of traffic: no vehicle to take over and no room to insert one; change ego.x_m, warmup_s or the "
                f"demand"
            )
        return agent

    def _take_over(self, spec: EgoSpec, name: str) -> Agent | None:
        """The vehicle of the lane nearest `x_m` (with a leader close enough, for a while) becomes the ego."""
        waits = round(TAKEOVER_WAIT_S / self.step_length_s)
        for k in range(waits + 1):
            row = self._takeover_row(spec, with_leader=k < waits)
            if row is not None:
                vehicle_id = str(self.world.ids[row])
                self.backend.set_vehicle_type(vehicle_id, self.agent_type)
                if spec.to_edge is not None:  # on a network: SUMO routes it on to the ego's destination
                    self.backend.change_target(vehicle_id, spec.to_edge)
                self._advance([])  # a world state with the new type
                return self.adopt(vehicle_id)
            if k < waits and spec.leader_within_m is not None:
                self._advance([])
        return None

    def _insert(self, spec: EgoSpec, name: str) -> Agent | None:
        """A new vehicle enters at `x_m` (or 40 m, 80 m farther on) if SUMO finds room within a second."""
        road = self.scenario.road
        if self._net is None:
            limit = road.ramp.speed_limit_mps if spec.route == "ramp" and road.ramp else road.speed_limit_mps
            route, spots = spec.route, [spec.x_m + 40.0 * k for k in range(3)]
        else:  # on ego.from_edge (its last metre at most), on the route SUMO finds to ego.to_edge
            start = self._net.edge(spec.from_edge)
            limit, route = start.speed_limit_mps, self._route(spec.from_edge, spec.to_edge)
            spots = sorted({start.start_m + min(spec.x_m + 40.0 * k, start.length_m - 1.0) for k in range(3)})
        speed = 0.8 * limit if spec.speed_mps is None else spec.speed_mps
        for x in spots:
            self._refresh()
            self.backend.add_vehicle(name, route, self.agent_type, spec.lane, x, speed)
            for _ in range(round(INSERT_WAIT_S / self.step_length_s)):
                self._advance([], read_world=False)
                if any(d.vehicle_id == name for d in self.events.departures):
                    self._refresh()
                    return self.adopt(name)
            self.backend.remove_vehicle(name)
        self._refresh()
        return None

    def _takeover_row(self, spec: EgoSpec, with_leader: bool) -> int | None:
        """The row of the vehicle `spec` describes for a takeover, if there is one now (with a
        leader within `leader_within_m` only if `with_leader`)."""
        world = self.world
        x, origin = spec.x_m, 0.0
        ok = world.lane == spec.lane
        if self._net is not None:  # on the named edge only (x measured from its start)
            start = self._net.edge(spec.from_edge)
            x, origin = start.start_m + min(spec.x_m, start.length_m), start.start_m
            ok &= world.edge == self._net.edge_names.index(start.id)
        rows = np.flatnonzero(ok & (world.x_m > origin + self.length_m + 1.0))
        if with_leader and spec.leader_within_m is not None:
            lead = world.leader_ahead_row[rows]  # the next vehicle strictly ahead in the lane
            rows = rows[(lead >= 0) & (world.gap_m(rows, lead) <= spec.leader_within_m)]
        return int(rows[np.argmin(np.abs(world.x_m[rows] - x))]) if len(rows) else None

    def _route(self, from_edge: str, to_edge: str) -> tuple[str, ...]:
        """The edges SUMO routes a vehicle of the ego's type on from `from_edge` to `to_edge`, asked every time:
        with the answer cached, the first episode of an env differed from later ones with the same seed (SUMO's
        first route query after a load changes what follows)."""
        return self.backend.find_route(from_edge, to_edge, self.agent_type)

    # ------------------------------------------------------------------ stepping

    def step(self, actions: dict[str, Any]) -> None:
        """One decision period: `actions` for the live agents (missing ones keep their last intent).

        Stops early when every agent is done."""
        world = self.world
        commands: list[Command] = []
        live = [a for a in self.agents.values() if a.outcome is None]
        hold = self.scenario.simulation.lane_change_duration_s + self.step_length_s
        for agent in live:
            request = agent.action.decide(actions[agent.vehicle_id]) if agent.vehicle_id in actions else 0
            row = agent.row
            target = int(world.lane[row]) + request
            agent.request = None
            if self.planner_actions:
                if request:
                    commands += self._ask_planner(agent, target)
            elif request and world.time_s >= agent.lane_change_until_s and self._lane_exists(row, target):
                commands.append(ChangeLane(agent.vehicle_id, target, hold_s=hold))
                agent.lane_change_until_s = world.time_s + hold
            agent.lane0, agent.behind = int(world.lane[row]), self._behind(row)
            agent.u2_sum, agent.steps = 0.0, 0
        self.period_start_s = world.time_s
        for agent in live:
            agent.speed_mps = float(world.speed_mps[agent.row])
        for k in range(self.substeps):
            for agent in live:
                if agent.outcome is None and agent.action.drives:
                    u = agent.action.accel(agent.speed_mps)
                    commands.append(Accelerate(agent.vehicle_id, u))
                    agent.u2_sum += (u / self.decel_mps2) ** 2
                    agent.steps += 1
            self._advance(commands, read_world=k == self.substeps - 1)
            commands = self._settle(live)
            for hook in self.substep_hooks:
                hook()
            if all(a.outcome is not None for a in live):
                break
        self._refresh()
        for agent in live:
            agent.row = self.world.index_of(agent.vehicle_id)

    def _settle(self, live: list[Agent]) -> list[Command]:
        """Update the agents' states and outcomes after a SUMO step; release finished vehicles."""
        world = self.world if self._world_fresh else None
        release: list[Command] = []
        crashed = {v for c in self.events.collisions for v in (c.collider, c.victim)}
        for agent in live:
            if agent.outcome is not None:
                continue
            vid = agent.vehicle_id
            if vid in crashed:
                agent.outcome = "collision"
            elif not self.backend.has_vehicle(vid):
                agent.outcome = "left_network"
            else:
                if world is not None:
                    row = agent.row = world.index_of(vid)
                    edge, lane = int(world.edge[row]), int(world.lane[row])
                    agent.x_m, agent.speed_mps = float(world.x_m[row]), float(world.speed_mps[row])
                    if not agent.action.drives:  # comfort from the measured acceleration
                        agent.u2_sum += (float(world.accel_mps2[row]) / self.decel_mps2) ** 2
                        agent.steps += 1
                else:
                    edge, lane, agent.x_m, agent.speed_mps = self.backend.vehicle_state(vid)
                end = self._lane_end_x.get((edge, lane))
                if end is not None and agent.x_m >= end - 1.0 and self.backend.time_s >= agent.lane_change_until_s:
                    agent.outcome = "lane_end"
                elif agent.x_m >= self.goal_x_m and self._goal_corridor in (None, self._corridor_of(edge)):
                    agent.outcome = "goal"
            if agent.outcome is not None and self.backend.has_vehicle(vid):
                release.append(Release(vid))
        return release

    def _advance(self, agent_commands: list[Command], read_world: bool = True) -> None:
        """One engine step with the agents' commands after the scenario controller's. The world is
        read only when `read_world`, unless the engine needs every step (a controller that issues
        commands, or metrics); the events always."""
        world, self.events = self.engine.step(agent_commands, read_world)
        self._world_fresh = world is not None
        if world is not None:
            self.world = world

    def _seen(self, world: WorldState) -> WorldState:
        """The world as the scenario's controller sees it: the agents as human-driven vehicles (never
        asked to cooperate, never served on their own)."""
        rows = [a.row for a in self.agents.values() if a.outcome is None and a.row >= 0]
        if not rows or not world.is_cav[rows].any():
            return world
        is_cav = world.is_cav.copy()
        is_cav[rows] = False
        return dataclasses.replace(world, is_cav=is_cav)

    def _from_controller(self, command: Command) -> bool:
        """Whether to apply a command of the scenario's controller: never for agents, except those the
        planner drives in a maneuver (and never their release: they go back to their agent)."""
        agent = self.agents.get(command.vehicle_id)
        if agent is None:
            return True
        return agent.in_maneuver and not isinstance(command, Release) and self.controller.maneuvering(agent.vehicle_id)

    def _end_maneuvers(self) -> None:
        """Hand agents whose maneuver is over back to following, under their agent."""
        for agent in self.agents.values():
            if agent.in_maneuver and not self.controller.maneuvering(agent.vehicle_id):
                agent.in_maneuver = False
                if self.backend.has_vehicle(agent.vehicle_id):
                    self.backend.take_control(agent.vehicle_id, FOLLOW_MODES)

    def _ask_planner(self, agent: Agent, target: int) -> list[Command]:
        """Ask the cooperative planner for a lane change of an agent; its maneuver's first commands."""
        if agent.in_maneuver:
            agent.request = ("ignored", "a maneuver is running")
            return []
        if not self._lane_exists(agent.row, target):
            agent.request = ("infeasible", f"no lane {target} here")
            return []
        record, commands = self.controller.request(self._seen(self.world), agent.vehicle_id, target)
        agent.request = (record.status, record.reason)
        if record.status == "planned":
            agent.in_maneuver = True
            self.backend.take_control(agent.vehicle_id, self.controller.modes)
        return commands

    def _refresh(self) -> None:
        """Read the world if the last step was not read."""
        if not self._world_fresh:
            self.world = self.engine.read()
            self._world_fresh = True

    # ------------------------------------------------------------------ results

    def transition(self, agent: Agent, truncated: bool = False) -> Transition:
        """Observation, reward and info of an agent after `step` (or after it was adopted); `truncated`: its
        episode ends now on the time limit."""
        world, row = self.world, agent.row
        terms = self.reward_terms(agent, truncated) if agent.steps else {}
        reward = float(sum(getattr(self.config.reward, k) * v for k, v in terms.items()))
        if row >= 0:
            obs = self.observation_type.observe(*self._corridor_view(world, row))
        else:
            obs = np.zeros(self.observation_type.space.shape, dtype=np.float32)
        info: dict[str, Any] = {"time_s": world.time_s, "x_m": agent.x_m}
        if row >= 0:
            info.update(speed_mps=float(world.speed_mps[row]), lane=int(world.lane[row]))
        if terms:
            info["reward_terms"] = terms
        if agent.outcome:
            info["outcome"] = agent.outcome
        if self.planner_actions:
            info["in_maneuver"] = agent.in_maneuver
            if agent.request is not None:
                info["request"] = {"status": agent.request[0], "reason": agent.request[1]}
        return Transition(obs, reward, agent.outcome is not None, info)

    def reward_terms(self, agent: Agent, truncated: bool = False) -> dict[str, float]:
        """The unweighted reward terms of the last decision period (see `TrafficEnv`)."""
        world, row, r = self.world, agent.row, self.config.reward
        lane = int(world.lane[row]) if row >= 0 else None
        target = self.config.target_lane
        safe_end = agent.outcome == "goal" or (truncated and agent.outcome not in FAILURES)
        terms = {"speed": 0.0, "target_lane": 0.0, "comfort": -agent.u2_sum / agent.steps,
                 "disruption": -self._disruption(agent, lane), "collision": -1.0 if agent.outcome in FAILURES else 0.0,
                 "completion": float(safe_end and (target is None or lane == target)),
                 "unsafe": -float(self._unsafe(row)) if row >= 0 else 0.0}  # fmt: skip
        if row >= 0:
            lo, hi = r.speed_range_mps
            terms["speed"] = float(np.clip((world.speed_mps[row] - lo) / (hi - lo), 0.0, 1.0))
            terms["target_lane"] = float(target is not None and lane == target)
        return terms

    def _unsafe(self, row: int) -> bool:
        """Whether the time to collision with the leader or follower of `row` in its lane is below `unsafe_ttc_s`,
        or the bumper gap to either is below `unsafe_headway_s` × its speed."""
        r, (world, row) = self.config.reward, self._corridor_view(self.world, row)
        ttc_ahead, ttc_behind, gap_ahead, gap_behind = lane_ttc(world, row, int(world.lane[row]), r.unsafe_ttc_s, 1e4)
        short = r.unsafe_headway_s * float(world.speed_mps[row])
        return min(ttc_ahead, ttc_behind) < r.unsafe_ttc_s or min(gap_ahead, gap_behind) < short

    def _behind(self, row: int) -> dict[int, tuple[int, float, float]]:
        """slot → (lane, x, v) of the vehicles behind `row` within `disruption_range_m` in its lane and the
        adjacent ones, at the start of a period."""
        world = self.world
        dx = world.x_m[row] - world.x_m
        near = (np.abs(world.lane - world.lane[row]) <= 1) & (dx > 0) & (dx <= self.config.reward.disruption_range_m)
        return {int(world.slot[k]): (int(world.lane[k]), float(world.x_m[k]), float(world.speed_mps[k]))
                for k in np.flatnonzero(near)}  # fmt: skip

    def _disruption(self, agent: Agent, lane_now: int | None) -> float:
        """Σ_j ½((x_j(T) − x_j(0))/T − v_j(0))² + ½(v_j(T) − v_j(0))² over the vehicles behind the agent at
        the start of the period, in the lane it started in or the one it ended in."""
        world = self.world
        period = world.time_s - self.period_start_s
        lanes = {agent.lane0, agent.lane0 if lane_now is None else lane_now}
        slots = [s for s, (lane, _, _) in agent.behind.items() if lane in lanes]
        rows = np.flatnonzero(np.isin(world.slot, slots))
        if not len(rows) or period <= 0:
            return 0.0
        _, x0, v0 = np.array([agent.behind[int(s)] for s in world.slot[rows]]).T
        drift = (world.x_m[rows] - x0) / period - v0
        dv = world.speed_mps[rows] - v0
        return float(0.5 * (drift @ drift) + 0.5 * (dv @ dv))

    def _corridor_of(self, edge: int) -> int | None:
        """The corridor of an edge (index) on a network; None on a generated road (one x line)."""
        return None if self._net is None else int(self._edge_corridor[edge])

    def _corridor_view(self, world: WorldState, row: int) -> tuple[WorldState, int]:
        """The world of the vehicles on the corridor of `row` (all of them on a generated road), and the
        row's index in it: on a network, x and road lanes compare only within a corridor."""
        if self._net is None:
            return world, row
        corridor = self._edge_corridor[world.edge]
        keep = np.flatnonzero(corridor == corridor[row])
        if len(keep) == len(world):
            return world, row
        per_row = ("ids", "slot", "type_index", "is_cav", "controlled", "edge", "lane", "x_m", "speed_mps",
                   "accel_mps2", "length_m")  # fmt: skip
        view = dataclasses.replace(world, **{name: getattr(world, name)[keep] for name in per_row})
        return view, int(np.searchsorted(keep, row))

    def _lane_exists(self, row: int, lane: int) -> bool:
        edge = int(self.world.edge[row])
        return bool(self._edge_offset[edge] <= lane < self._edge_offset[edge] + self._edge_lanes[edge])


class _TrafficController(Controller):
    """The scenario's controller as the engine runs it beside the agents: it sees them as human-driven
    vehicles, its commands for them are dropped (but for a planner maneuver's), and agents whose
    maneuver is over go back to following."""

    def __init__(self, traffic: AgentTraffic) -> None:
        self.traffic = traffic
        self.inner = traffic.controller
        self.modes = self.inner.modes
        self.issues_commands = self.inner.issues_commands

    def step(self, world: WorldState) -> list[Command]:
        traffic = self.traffic
        if not self.issues_commands:
            return []
        commands = [c for c in self.inner.step(traffic._seen(world)) if traffic._from_controller(c)]
        if traffic.planner_actions:
            traffic._end_maneuvers()
        return commands

    @property
    def safe_gap(self) -> Headway | None:
        return self.inner.safe_gap

    def report(self):
        return self.inner.report()
