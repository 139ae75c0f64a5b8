"""What every SUMO backend shares: the vehicle table, the world-state assembly, commands.

A backend owns one running SUMO. Each `step()` advances SUMO by one step and reads every
vehicle's lane, position and speed once, by the fastest method of that backend; the rest
of the `WorldState` (type, length, acceleration, controlled flag) comes from tables kept
here, so both backends build identical states from identical SUMO runs.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from cavlab.config.scenario import Scenario
from cavlab.errors import SimulationError
from cavlab.sim.network import Network, SumoInputs
from cavlab.world import (
    SUMO_DEFAULT_MODES,
    Accelerate,
    Arrival,
    CapSpeed,
    ChangeLane,
    Collision,
    Command,
    ControlModes,
    Departure,
    HoldLane,
    Release,
    SetSpeed,
    StepEvents,
    WorldState,
)

_CONTROLLER_MODES = ControlModes()
RELEASE_DECEL_MPS2 = 1.5  # how a released vehicle sheds speed above its desired speed


@dataclass(frozen=True)
class RawEvents:
    """What a backend reads from SUMO right after a step."""

    time_s: float
    departed: tuple[str, ...]
    arrived: tuple[str, ...]
    collisions: tuple[Any, ...]  # SUMO collision records


@dataclass(frozen=True)
class RawVehicles:
    """Every vehicle's lane, lane position and speed, as a backend reads them."""

    slot: np.ndarray  # each vehicle's slot (`SumoBackend._slot_of`), grouped by lane in `Network.lane_ids` order
    lane_row: np.ndarray  # each vehicle's lane, as its row in `Network.lane_ids`
    lane_pos_m: np.ndarray
    speed_mps: np.ndarray


class SumoBackend(ABC):
    """One SUMO simulation, started from a run's .sumocfg.

    Use as a context manager (or call `close()`): SUMO is closed on every exit path.
    """

    name = "abstract"

    def __init__(self, scenario: Scenario, network: Network, inputs: SumoInputs) -> None:
        self.scenario = scenario
        self.network = network
        self.inputs = inputs
        self.step_length_s = scenario.simulation.step_length_s
        types = scenario.demand.vehicle_types
        self._type_names = tuple(types)
        self._type_index = {name: i for i, name in enumerate(types)}
        self._type_is_cav = np.array([t.kind == "cav" for t in types.values()])
        self._type_length = np.array([t.length_m for t in types.values()])
        # index arrays are intp: numpy's fancy indexing with int16 indices is several times slower
        self._lane_edge = network.lane_edge_index.astype(np.intp)
        self._lane_road = network.lane_road_index
        self._edge_start = network.edge_start_m
        self._edge_offset = network.edge_lane_offset
        self._edge_lanes = np.array([e.lanes for e in network.edges])
        self._edge_names = network.edge_names
        self._edge_index = {name: k for k, name in enumerate(network.edge_names)}
        self._lane_rows = np.arange(len(network.lane_ids))
        self._inv_dt = 1.0 / self.step_length_s
        self._modes = ControlModes()
        self._modes_idle_differ = False
        self._clear_tables()
        self._open = False

    def _clear_tables(self) -> None:
        """Forget every vehicle (a new simulation, or one loaded from a saved state, begins)."""
        self._slot_of: dict[str, int] = {}
        self._slots = 0  # vehicles registered so far: slots 0 … _slots − 1
        capacity = 1024
        self._id_of_slot = np.empty(capacity, dtype=object)
        self._prev_speed = np.zeros(capacity)
        self._fresh_accel: dict[int, float] = {}  # vehicles that entered in the last step
        self._slot_type = np.zeros(capacity, dtype=np.intp)
        self._slot_is_cav = np.zeros(capacity, dtype=bool)
        self._slot_length = np.zeros(capacity)
        self._slot_edge = np.zeros(capacity, dtype=np.intp)
        self._controlled = np.zeros(capacity, dtype=bool)
        self._held = np.zeros(capacity, dtype=bool)  # kept in lane by `HoldLane`, speed SUMO's
        self._capped = np.zeros(capacity, dtype=bool)  # driven by SUMO under a `CapSpeed`
        self._routes_added: set[str] = set()
        self._removed: set[str] = set()  # removed since the last step (still registered until it reports them)
        self._speeds_stale = False
        self._time_s = 0.0
        self.present: tuple[Departure, ...] = ()
        """The vehicles already in the network when the simulation (re)started: those of a loaded state."""

    # -------------------------------------------------------------- lifecycle

    def start(self, modes: ControlModes = _CONTROLLER_MODES, extra_args: tuple[str, ...] = ()) -> None:
        """Start SUMO; `modes` are set on a vehicle when a controller first commands it;
        `extra_args` are SUMO options that override the .sumocfg (e.g. `("--seed", "7")`)."""
        self._modes = modes
        self._modes_idle_differ = (modes.idle_speed_mode, modes.idle_lane_change_mode) != (
            SUMO_DEFAULT_MODES.speed_mode,
            SUMO_DEFAULT_MODES.lane_change_mode,
        )
        cmd = ["-c", str(self.inputs.config), *extra_args]
        try:
            self._launch(cmd)
        except SimulationError:
            raise
        except Exception as exc:
            raise SimulationError(f"SUMO did not start: {exc}{self._log_tail()}") from exc
        self._open = True
        self._take_present()

    def restart(self, extra_args: tuple[str, ...] = ()) -> None:
        """Load a new simulation into the running SUMO (TraCI's `load`: no new process, the network read
        again), with the .sumocfg and `extra_args` as `start` takes them (e.g. `("--seed", "7",
        "--load-state", "warm.sbx")`: SUMO's random number generators seeded anew, the simulation at the
        state's time); the vehicles of a loaded state are in `present`."""
        if not self._open:
            raise SimulationError("restart() needs a running SUMO: call start() first")
        try:
            self._reload(["-c", str(self.inputs.config), *extra_args])
        except Exception as exc:
            self.close()
            raise SimulationError(f"SUMO could not load the simulation: {exc}{self._log_tail()}") from exc
        self._clear_tables()
        self._take_present()

    def save_state(self, path: str) -> None:
        """Save SUMO's state now (binary with the suffix .sbx, else XML): `restart` with `--load-state` loads it."""
        self.api.simulation.saveState(path)

    def _take_present(self) -> None:
        """Register the vehicles in the network now (none after a plain start), with their departure times."""
        self._time_s = self.api.simulation.getTime()
        ids = self.api.vehicle.getIDList()
        if not ids:
            return
        depart = self.api.vehicle.getDeparture
        self.present = tuple(self._register(vid, depart(vid)) for vid in ids)

    def close(self) -> None:
        """Stop SUMO; safe to call twice."""
        if self._open:
            self._open = False
            self._shutdown()

    def __enter__(self) -> SumoBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def vehicle_ids(self) -> list[str]:
        """Every vehicle id that has entered so far, indexed by slot."""
        return self._id_of_slot[: self._slots].tolist()

    @property
    def vehicle_types(self) -> list[str]:
        """The type name of every vehicle that has entered so far, indexed by slot."""
        return [self._type_names[i] for i in self._slot_type[: self._slots]]

    # -------------------------------------------------------------- subclass hooks

    @property
    @abstractmethod
    def api(self) -> Any:
        """The TraCI-like API object (`libsumo` or a `traci.Connection`)."""

    @abstractmethod
    def _launch(self, args: list[str]) -> None: ...

    @abstractmethod
    def _shutdown(self) -> None: ...

    @abstractmethod
    def _reload(self, args: list[str]) -> None:
        """Load a new simulation into the running SUMO with these options."""

    @abstractmethod
    def _step_sumo(self) -> RawEvents:
        """Do one SUMO step; its time, departures, arrivals and collisions."""

    @abstractmethod
    def _read_vehicles(self) -> RawVehicles:
        """Every vehicle's lane, lane position and speed after the last step."""

    @abstractmethod
    def _accelerations(self, ids: list[str]) -> np.ndarray:
        """SUMO's own accelerations of these vehicles over the last step."""

    # -------------------------------------------------------------- stepping

    def step(self, read_world: bool = True) -> tuple[WorldState | None, StepEvents]:
        """Advance one step; the new world state (None with `read_world=False`: then only what
        happened is read, for callers that do not look at every step) and the step's events."""
        try:
            raw = self._step_sumo()
        except SimulationError:
            raise
        except Exception as exc:
            raise SimulationError(f"SUMO failed during the step: {exc}{self._log_tail()}") from exc
        self._time_s = raw.time_s
        self._removed.clear()
        departures = tuple(self._register(vid, raw.time_s) for vid in raw.departed)
        pop = self._slot_of.pop
        arrivals = tuple(Arrival(vid, pop(vid), raw.time_s) for vid in raw.arrived if vid in self._slot_of)
        collisions: tuple[Collision, ...] = ()
        if raw.collisions:
            collisions = tuple(
                Collision(raw.time_s, c.collider, c.victim, c.type, c.lane, c.pos) for c in raw.collisions
            )
            if self.scenario.simulation.collision_action == "remove":  # SUMO removed both, unannounced
                removed = {c.collider for c in collisions} | {c.victim for c in collisions}
                arrivals += tuple(Arrival(vid, pop(vid), raw.time_s) for vid in removed if vid in self._slot_of)
        world = None
        if read_world:  # after the registrations: the read maps every vehicle to its slot
            world = self.read()
        else:
            self._speeds_stale = True
        return world, StepEvents(departures, arrivals, collisions)

    def read(self) -> WorldState:
        """The world state now, without stepping (after steps taken with `read_world=False`)."""
        try:
            vehicles = self._read_vehicles()
        except Exception as exc:
            raise SimulationError(f"SUMO failed during a read: {exc}{self._log_tail()}") from exc
        return self._assemble(vehicles)

    def _register(self, vid: str, time_s: float) -> Departure:
        v = self.api.vehicle
        slot = self._slots
        if slot == len(self._prev_speed):
            self._grow()
        self._slots += 1
        self._slot_of[vid] = slot
        self._id_of_slot[slot] = vid
        type_name = v.getTypeID(vid)
        self._set_type(slot, type_name)
        if self._slot_is_cav[slot] and self._modes_idle_differ:
            v.setSpeedMode(vid, self._modes.idle_speed_mode)
            v.setLaneChangeMode(vid, self._modes.idle_lane_change_mode)
        self._fresh_accel[slot] = v.getAcceleration(vid)
        return Departure(vid, slot, type_name, v.getRouteID(vid), v.getSpeedFactor(vid), time_s)

    def _set_type(self, slot: int, type_name: str) -> None:
        k = self._slot_type[slot] = self._type_index[type_name]
        self._slot_is_cav[slot] = self._type_is_cav[k]
        self._slot_length[slot] = self._type_length[k]

    def _grow(self) -> None:
        for name in ("_id_of_slot", "_prev_speed", "_slot_type", "_slot_is_cav", "_slot_length", "_slot_edge",
                     "_controlled", "_held", "_capped"):
            old = getattr(self, name)
            new = np.zeros(2 * len(old), old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def _assemble(self, raw: RawVehicles) -> WorldState:
        slot = raw.slot
        ids = self._id_of_slot[slot]
        lane_row = raw.lane_row
        edge = self._lane_edge[lane_row]
        if self._speeds_stale:  # the last step was not read: take SUMO's values
            accel = self._accelerations(ids.tolist())
            self._speeds_stale = False
            self._fresh_accel.clear()
        else:
            accel = (raw.speed_mps - self._prev_speed[slot]) * self._inv_dt
        if self._fresh_accel:  # no previous speed: take SUMO's value
            for s, a in self._fresh_accel.items():
                accel[slot == s] = a
            self._fresh_accel.clear()
        self._prev_speed[slot] = raw.speed_mps
        self._slot_edge[slot] = edge
        return WorldState(
            time_s=self._time_s,
            ids=ids,
            slot=slot,
            type_index=self._slot_type[slot],
            is_cav=self._slot_is_cav[slot],
            controlled=self._controlled[slot],
            edge=edge,
            lane=self._lane_road[lane_row],
            x_m=raw.lane_pos_m + self._edge_start[edge],
            speed_mps=raw.speed_mps,
            accel_mps2=accel,
            length_m=self._slot_length[slot],
            type_names=self._type_names,
            edge_names=self._edge_names,
        )

    # -------------------------------------------------------------- commands

    def apply(self, commands: list[Command]) -> None:
        """Send controller commands to SUMO; commands for vehicles that left are dropped."""
        v = self.api.vehicle
        removed = self._removed
        for cmd in commands:
            vid = cmd.vehicle_id
            slot = self._slot_of.get(vid)
            if slot is None or (removed and vid in removed):
                continue
            idle = self._modes if self._slot_is_cav[slot] else SUMO_DEFAULT_MODES
            if isinstance(cmd, Release):
                if self._controlled[slot]:
                    v.setSpeed(vid, -1)
                    v.setSpeedMode(vid, idle.idle_speed_mode)
                    v.setLaneChangeMode(vid, idle.idle_lane_change_mode)
                    self._controlled[slot] = False
                    self._ease_back(vid)
                else:
                    if self._held[slot]:
                        v.setLaneChangeMode(vid, idle.idle_lane_change_mode)
                    if self._capped[slot]:
                        v.setSpeed(vid, -1)
                self._held[slot] = self._capped[slot] = False
                continue
            if isinstance(cmd, CapSpeed):
                if self._controlled[slot]:
                    continue  # driven by the controller's own commands
                if math.isfinite(cmd.speed_mps):
                    v.setSpeed(vid, min(float(cmd.speed_mps), v.getAllowedSpeed(vid)))
                    self._capped[slot] = True
                elif self._capped[slot]:
                    v.setSpeed(vid, -1)
                    self._capped[slot] = False
                continue
            if isinstance(cmd, HoldLane):
                if not self._controlled[slot] and not self._held[slot]:
                    v.setLaneChangeMode(vid, self._modes.lane_change_mode)
                    self._held[slot] = True
                continue
            if not self._controlled[slot]:
                if self._capped[slot]:
                    v.setSpeed(vid, -1)
                    self._capped[slot] = False
                v.setSpeedMode(vid, self._modes.speed_mode)
                v.setLaneChangeMode(vid, self._modes.lane_change_mode)
                self._controlled[slot] = True
            if isinstance(cmd, Accelerate):
                v.setAcceleration(vid, float(cmd.accel_mps2), self.step_length_s)
            elif isinstance(cmd, SetSpeed):
                v.setSpeed(vid, float(cmd.speed_mps))
            elif isinstance(cmd, ChangeLane):
                edge = int(self._slot_edge[slot])
                index = cmd.lane - int(self._edge_offset[edge])
                if not 0 <= index < self._edge_lanes[edge]:
                    raise ValueError(
                        f"ChangeLane({vid!r}, lane={cmd.lane}): edge '{self._edge_names[edge]}' has road lanes "
                        f"{self._edge_offset[edge]}..{self._edge_offset[edge] + self._edge_lanes[edge] - 1}"
                    )
                v.changeLane(vid, index, float(cmd.hold_s))
            else:
                raise TypeError(f"not a command: {cmd!r}")

    def _ease_back(self, vehicle_id: str) -> None:
        """A vehicle handed back faster than it wants to drive (a cooperator that sped up to open a gap)
        would be cut to its desired speed min(vType max, lane limit × speed factor) in one step by
        SUMO's car following: it slows down to it at RELEASE_DECEL_MPS2 instead."""
        v = self.api.vehicle
        speed = v.getSpeed(vehicle_id)
        desired = min(v.getMaxSpeed(vehicle_id), v.getAllowedSpeed(vehicle_id))
        if speed > desired + 0.1:
            v.slowDown(vehicle_id, desired, (speed - desired) / RELEASE_DECEL_MPS2)

    @property
    def time_s(self) -> float:
        """Simulated time after the last step."""
        return self._time_s

    def has_vehicle(self, vehicle_id: str) -> bool:
        """Whether the vehicle is in the network (after the last step)."""
        return vehicle_id in self._slot_of

    def vehicle_state(self, vehicle_id: str) -> tuple[int, int, float, float]:
        """(edge index, road lane, global x of the front bumper, speed) of one vehicle now."""
        v = self.api.vehicle
        edge = self._edge_index[v.getRoadID(vehicle_id)]
        lane = v.getLaneIndex(vehicle_id) + int(self._edge_offset[edge])
        return edge, lane, v.getLanePosition(vehicle_id) + float(self._edge_start[edge]), v.getSpeed(vehicle_id)

    def take_control(self, vehicle_id: str, modes: ControlModes) -> None:
        """Set `modes` on a vehicle now and count it as controlled (later commands keep these modes)."""
        v = self.api.vehicle
        v.setSpeedMode(vehicle_id, modes.speed_mode)
        v.setLaneChangeMode(vehicle_id, modes.lane_change_mode)
        self._controlled[self._slot_of[vehicle_id]] = True

    def set_vehicle_type(self, vehicle_id: str, type_name: str) -> None:
        """Give a vehicle in the network another of the scenario's vehicle types."""
        self.api.vehicle.setType(vehicle_id, type_name)
        self._set_type(self._slot_of[vehicle_id], type_name)

    def set_speed_factor(self, vehicle_id: str, factor: float) -> None:
        """Set a vehicle's speed factor (its desired speed is factor × the lane's speed limit)."""
        self.api.vehicle.setSpeedFactor(vehicle_id, factor)

    def set_max_speed(self, vehicle_id: str, speed_mps: float) -> None:
        """Cap a vehicle's speed (as its vehicle type's maximum speed would)."""
        self.api.vehicle.setMaxSpeed(vehicle_id, speed_mps)

    def keep_lane(self, vehicle_id: str) -> None:
        """Stop a vehicle from changing lanes on its own (SUMO lane-change mode 0)."""
        self.api.vehicle.setLaneChangeMode(vehicle_id, 0)

    # -------------------------------------------------------------- inserting vehicles

    def add_vehicle(self, vehicle_id: str, route: str | tuple[str, ...], type_name: str, lane: int, x_m: float,
                    speed_mps: float) -> None:  # fmt: skip
        """Ask SUMO to insert a vehicle with its front bumper at global `x_m` on road lane `lane` of
        `route` (a name of the network's routes, or its edges, e.g. from `find_route`); it enters at the
        next step if SUMO finds the spot safe, and waits otherwise. A spot off the route, and a vehicle
        SUMO refuses at once (a departure speed above its type's maximum, say), raise ValueError."""
        named = isinstance(route, str)
        if named and route not in self.network.routes:
            raise ValueError(f"the network has no route '{route}' (routes: {', '.join(self.network.routes) or 'none'})")
        edges = [self.network.edge(e) for e in (self.network.routes[route] if named else route)]
        k = next((i for i, e in enumerate(edges) if e.start_m <= x_m < e.start_m + e.length_m), None)
        if k is None:
            raise ValueError(f"x = {x_m:g} m is not on route {route!r}")
        edge = edges[k]
        if not edge.lane_offset <= lane < edge.lane_offset + edge.lanes:
            raise ValueError(f"edge '{edge.id}' at x = {x_m:g} m has no road lane {lane}")
        route_id = f"{route if named else 'to:' + edges[-1].id}@{edge.id}"
        if route_id not in self._routes_added:
            self.api.route.add(route_id, [e.id for e in edges[k:]])
            self._routes_added.add(route_id)
        try:
            self.api.vehicle.add(
                vehicle_id, route_id, type_name, depart="now", departLane=str(lane - edge.lane_offset),
                departPos=f"{x_m - edge.start_m:.3f}", departSpeed=f"{speed_mps:.3f}",
            )  # fmt: skip
        except Exception as exc:  # libsumo's and traci's TraCIException
            raise ValueError(f"SUMO refused vehicle '{vehicle_id}': {exc}") from exc

    def find_route(self, from_edge: str, to_edge: str, type_name: str) -> tuple[str, ...]:
        """The edges SUMO routes a vehicle of `type_name` on from `from_edge` to `to_edge` (its fastest route
        at free flow); ValueError if there is none."""
        edges = tuple(self.api.simulation.findRoute(from_edge, to_edge, vType=type_name).edges)
        if not edges:
            raise ValueError(f"SUMO finds no route from edge '{from_edge}' to edge '{to_edge}' for '{type_name}'")
        return edges

    def change_target(self, vehicle_id: str, edge_id: str) -> None:
        """Send a vehicle on to `edge_id`: SUMO routes it there from where it is."""
        self.api.vehicle.changeTarget(vehicle_id, edge_id)

    def remove_vehicle(self, vehicle_id: str) -> None:
        """Remove a vehicle, in the network or still waiting to be inserted (commands for it are dropped)."""
        self.api.vehicle.remove(vehicle_id)
        self._removed.add(vehicle_id)

    # -------------------------------------------------------------- helpers

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.inputs.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        errors = [ln for ln in text if ln.startswith("Error")] or text[-lines:]
        return (" — SUMO log: " + " | ".join(errors[-lines:])) if errors else ""
