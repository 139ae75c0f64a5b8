"""Scenario files: the schema, reading, overrides and error messages.

A scenario is one YAML file with the blocks `road`, `demand`, `control`, `simulation`,
`outputs`, `context` and `perception`; docs/scenarios.md describes every field. The schema is
pure: it imports nothing of cavlab outside `config` but `errors`, and reads no file but the
scenario. What needs the layers above (the controller's own parameters, the perception model
directory, the edge target) is checked by `cavlab.sim.resolve`, whose `load_scenario` is what
runs use. Every way a file can be wrong ends in a `ScenarioError` whose one-line message names
the file, the field and what is allowed. Files and `--set` values are read with
`cavlab.config.files`.

`InputModel` is the base of every pydantic model a user's values go into (these blocks, the
environment options, controller parameters, edge targets): unknown fields are errors, numbers
are finite and strict (`true` or `"2"` is not a number; an integer is a float), values are frozen.
"""

from __future__ import annotations

import math
import os
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cavlab.config.files import YAMLSyntaxError, check_regular_file, load_yaml, read_text
from cavlab.errors import ScenarioError, UserError, validation_message

NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Acceleration = Annotated[float, Field(gt=0, le=15)]
"""A magnitude of acceleration or deceleration [m/s²], at most 15 (1.5 g)."""

SUMO_ID_PATTERN = r"[A-Za-z0-9_.:-]{1,64}"
SUMO_ID_ALLOWED = "1 to 64 letters, digits, '_', '-', '.' or ':'"


class InputModel(BaseModel):
    """Values from a user: unknown fields are errors; numbers finite and strict (no bool or string
    for a number, no float for an integer); values never change after validation. Tuples accept
    lists only where a field says `strict=False`."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# ----------------------------------------------------------------------------- road


class RampSpec(InputModel):
    """An on-ramp: a one-lane ramp that joins the mainline through an acceleration lane."""

    merge_position_m: Positive = Field(description="Mainline position where the acceleration lane starts")
    length_m: Annotated[float, Field(gt=0, le=10_000)] = Field(
        300.0, description="Length of the ramp before the acceleration lane"
    )
    acceleration_lane_m: Positive = Field(250.0, description="Length of the acceleration lane")
    speed_limit_mps: Annotated[float, Field(gt=0, le=70)] = Field(22.22, description="Ramp speed limit")


class LaneDropSpec(InputModel):
    """Lanes that end at a point of the mainline; their vehicles must change lanes before it."""

    position_m: Positive = Field(description="Mainline position where the lanes end")
    lanes_dropped: Annotated[int, Field(ge=1)] = Field(1, description="How many lanes end")
    side: Literal["right", "left"] = Field("right", description="Which side the ending lanes are on")


NETWORK_SUFFIXES = (".net.xml", ".net.xml.gz", ".sumocfg", ".osm", ".osm.xml", ".osm.gz")


class NetworkDetectorSpec(InputModel):
    """A measurement point on an edge of an external network: one E1 loop per lane of the edge."""

    edge: str = Field(description="Edge id")
    position_m: NonNegative | None = Field(
        None, description="Position on the edge; null = max(length − 100 m, length / 2)"
    )


class NetworkSpec(InputModel):
    """An existing SUMO network: a .net.xml (or .net.xml.gz), a .sumocfg, or an OpenStreetMap file converted
    by netconvert. Paths are relative to the scenario file (`sumo:` paths to the installed SUMO's home);
    the files are checked when the scenario is resolved (`cavlab.sim.network`)."""

    file: str = Field(description="A .net.xml[.gz], .sumocfg or .osm[.xml|.gz] file")
    route_files: list[str] = Field(default_factory=list, description="SUMO route files used as they are")
    additional_files: list[str] = Field(default_factory=list, description="SUMO additional files (TLS programs, ...)")
    detectors: list[NetworkDetectorSpec] | None = Field(
        None, description="Measurement points; null = one on every exit edge (an edge with no successor)"
    )
    lane_change_edges: list[str] | None = Field(
        None, description="Edges where the controller plans for CAVs; null = every edge with two or more lanes"
    )

    @field_validator("file")
    @classmethod
    def _suffix(cls, value: str) -> str:
        if not value.lower().endswith(NETWORK_SUFFIXES):
            raise ValueError(f"must be a file ending in {', '.join(NETWORK_SUFFIXES)} (got {value!r})")
        return value


class RoadSpec(InputModel):
    """A straight multi-lane road, optionally with an on-ramp or a lane drop; or an existing SUMO network."""

    kind: Literal["highway", "on_ramp", "lane_drop", "network"] = Field(description="Road layout")
    length_m: Annotated[float, Field(gt=0, le=100_000)] | None = Field(
        None, description="Mainline length (generated roads)"
    )
    lanes: Annotated[int, Field(ge=1, le=8)] | None = Field(
        None, description="Mainline lanes (upstream of a drop; generated roads)"
    )
    lane_width_m: Annotated[float, Field(ge=2.5, le=5.0)] = 3.2
    speed_limit_mps: Annotated[float, Field(gt=0, le=70)] = Field(33.33, description="Mainline limit")
    ramp: RampSpec | None = Field(None, description="Required when kind is on_ramp")
    lane_drop: LaneDropSpec | None = Field(None, description="Required when kind is lane_drop")
    detectors_m: list[Positive] | None = Field(
        None,
        description="Mainline positions of the induction loops (one per lane); default max(length − 100 m, length / 2)",
    )
    network: NetworkSpec | None = Field(None, description="Required when kind is network")

    @model_validator(mode="after")
    def _check_layout(self) -> RoadSpec:
        if self.kind == "network":
            if self.network is None:
                raise ValueError("kind 'network' needs a 'network' block (file, route_files, ...)")
            given = [name for name in ("length_m", "lanes", "ramp", "lane_drop", "detectors_m")
                     if getattr(self, name) is not None]  # fmt: skip
            if given:
                raise ValueError(
                    f"'{given[0]}' is not allowed with kind 'network' (the network gives its edges; "
                    f"measurement points are network.detectors)"
                )
            return self
        if self.network is not None:
            raise ValueError(f"'network' is only allowed with kind 'network', not '{self.kind}'")
        for name in ("length_m", "lanes"):
            if getattr(self, name) is None:
                raise ValueError(f"kind '{self.kind}' needs '{name}'")
        if self.kind == "on_ramp":
            if self.ramp is None:
                raise ValueError("kind 'on_ramp' needs a 'ramp' block (merge_position_m, ...)")
            end = self.ramp.merge_position_m + self.ramp.acceleration_lane_m
            if end >= self.length_m:
                raise ValueError(
                    f"ramp.merge_position_m + ramp.acceleration_lane_m = {end:g} m must be less than "
                    f"length_m = {self.length_m:g} m"
                )
        elif self.ramp is not None:
            raise ValueError(f"'ramp' is only allowed with kind 'on_ramp', not '{self.kind}'")
        if self.kind == "lane_drop":
            if self.lane_drop is None:
                raise ValueError("kind 'lane_drop' needs a 'lane_drop' block (position_m, ...)")
            if self.lane_drop.lanes_dropped >= self.lanes:
                raise ValueError(
                    f"lane_drop.lanes_dropped = {self.lane_drop.lanes_dropped} must be less than lanes = {self.lanes}"
                )
            if self.lane_drop.position_m >= self.length_m:
                raise ValueError(
                    f"lane_drop.position_m = {self.lane_drop.position_m:g} m must be less than "
                    f"length_m = {self.length_m:g} m"
                )
        elif self.lane_drop is not None:
            raise ValueError(f"'lane_drop' is only allowed with kind 'lane_drop', not '{self.kind}'")
        for x in self.detectors_m or []:
            if x >= self.length_m:
                raise ValueError(f"detector at {x:g} m lies beyond the road end ({self.length_m:g} m)")
        return self

    @property
    def detector_positions_m(self) -> list[float]:
        """The induction-loop positions, with the default filled in."""
        return sorted(self.detectors_m) if self.detectors_m else [max(self.length_m - 100.0, self.length_m / 2)]


# ----------------------------------------------------------------------------- demand


class LaneChangeParams(InputModel):
    """SUMO's LC2013 lane-change model parameters (`lcStrategic`, `lcCooperative`, ...)."""

    strategic: Annotated[float, Field(ge=0)] = 1.0
    cooperative: Fraction = 1.0
    speed_gain: NonNegative = 1.0
    keep_right: NonNegative = 1.0
    assertive: Positive = 1.0
    sigma: Fraction = 0.0


class VehicleTypeSpec(InputModel):
    """A vehicle type: Krauss or IDM car following, LC2013 lane changing."""

    kind: Literal["hdv", "cav"] = Field("hdv", description="Human-driven or connected automated")
    vehicle_class: Literal["passenger", "truck", "bus"] = "passenger"
    length_m: Annotated[float, Field(gt=0, le=50)] = 5.0
    min_gap_m: Annotated[float, Field(ge=0, le=20)] = 2.5
    max_speed_mps: Annotated[float, Field(gt=0, le=70)] = 55.0
    accel_mps2: Acceleration = 2.6
    decel_mps2: Acceleration = 4.5
    emergency_decel_mps2: Acceleration = 9.0
    tau_s: Annotated[float, Field(gt=0, le=10)] = Field(1.0, description="Desired time headway (reaction time)")
    sigma: Fraction = Field(0.5, description="Driver imperfection (Krauss)")
    speed_factor_mean: Annotated[float, Field(gt=0, le=2)] = Field(
        1.0, description="Desired speed as a multiple of the speed limit (mean)"
    )
    speed_factor_dev: Annotated[float, Field(ge=0, le=1)] = 0.1
    car_following: Literal["Krauss", "IDM"] = "Krauss"
    lane_change: LaneChangeParams = Field(default_factory=LaneChangeParams)

    @model_validator(mode="after")
    def _check_decel(self) -> VehicleTypeSpec:
        if self.emergency_decel_mps2 < self.decel_mps2:
            raise ValueError(
                f"emergency_decel_mps2 = {self.emergency_decel_mps2:g} must be at least "
                f"decel_mps2 = {self.decel_mps2:g}"
            )
        return self


DEFAULT_VEHICLE_TYPES = {
    "car": VehicleTypeSpec(),
    "cav": VehicleTypeSpec(kind="cav", sigma=0.0, speed_factor_dev=0.05),
}


class FlowSpec(InputModel):
    """A stream of vehicles entering on one route (and optionally one lane); on an external network, from
    one edge to another (SUMO finds the route)."""

    route: Literal["mainline", "ramp"] = "mainline"
    from_edge: str | None = Field(None, description="Origin edge (road.kind network)")
    to_edge: str | None = Field(None, description="Destination edge (road.kind network)")
    lane: Annotated[int, Field(ge=0)] | None = Field(None, description="Depart lane; null lets SUMO choose")
    vehicles_per_hour: Annotated[float, Field(ge=0, le=10_000)] = Field(description="Mean arrival rate")
    vehicle_types: dict[str, Annotated[float, Field(gt=0, le=1e6)]] = Field(
        default_factory=lambda: {"car": 1.0}, description="Human-driven type mix (weights, normalised)"
    )
    cav_share: Fraction | None = Field(None, description="Share of CAVs; null uses demand.cav_share")
    depart_speed: str | float = Field("max", description="'max', 'desired', 'avg' or a speed in m/s")
    arrivals: Literal["poisson", "uniform"] = "poisson"

    @field_validator("depart_speed", mode="before")
    @classmethod
    def _depart_speed(cls, value: Any) -> str | float:
        if value in ("max", "desired", "avg"):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 70:
            return float(value)
        raise ValueError(f"must be 'max', 'desired', 'avg' or a speed in [0, 70] m/s (got {value!r})")

    @field_validator("vehicle_types")
    @classmethod
    def _non_empty(cls, mix: dict[str, float]) -> dict[str, float]:
        if not mix:
            raise ValueError("needs at least one vehicle type")
        return mix


class DemandSpec(InputModel):
    """Traffic demand: vehicle types, flows and the CAV share.

    The built-in types `car` (human-driven) and `cav` always exist; a scenario's
    `vehicle_types` adds types and changes fields of the built-in ones.
    """

    vehicle_types: dict[str, VehicleTypeSpec] = Field(
        default_factory=lambda: dict(DEFAULT_VEHICLE_TYPES), description="Built-in car and cav, plus these"
    )
    cav_type: str = Field("cav", description="Vehicle type used for the CAV share of every flow")
    cav_share: Fraction = Field(0.0, description="Share of CAVs in flows that do not set their own")
    scale: Annotated[float, Field(ge=0, le=10)] = Field(1.0, description="Multiplies every flow's rate")
    flows: list[FlowSpec] = Field(
        default_factory=list, description="At least one, unless an external network's route files give the vehicles"
    )

    @field_validator("vehicle_types", mode="before")
    @classmethod
    def _merge_builtin_types(cls, given: Any) -> Any:
        if not isinstance(given, dict):
            return given
        merged: dict[str, Any] = {name: spec.model_dump() for name, spec in DEFAULT_VEHICLE_TYPES.items()}
        for name, spec in given.items():
            builtin = merged.get(name)
            if isinstance(builtin, dict) and isinstance(spec, dict):
                lane_change = spec.get("lane_change")
                if isinstance(lane_change, dict):
                    spec = {**spec, "lane_change": {**builtin["lane_change"], **lane_change}}
                merged[name] = {**builtin, **spec}
            else:
                merged[name] = spec
        return merged

    @field_validator("vehicle_types")
    @classmethod
    def _sumo_ids(cls, types: dict[str, VehicleTypeSpec]) -> dict[str, VehicleTypeSpec]:
        for name in types:
            if not re.fullmatch(SUMO_ID_PATTERN, name):
                raise ValueError(f"type name {name!r} is not allowed; a type name (a SUMO id) is {SUMO_ID_ALLOWED}")
        return types

    @model_validator(mode="after")
    def _check_types(self) -> DemandSpec:
        known = ", ".join(sorted(self.vehicle_types))
        cav = self.vehicle_types.get(self.cav_type)
        if cav is None:
            raise ValueError(f"cav_type '{self.cav_type}' is not a vehicle type (known: {known})")
        if cav.kind != "cav":
            raise ValueError(f"cav_type '{self.cav_type}' has kind '{cav.kind}', expected 'cav'")
        for i, flow in enumerate(self.flows):
            for name in flow.vehicle_types:
                if name not in self.vehicle_types:
                    raise ValueError(f"flows.{i}: vehicle type '{name}' is not defined (known: {known})")
                if self.vehicle_types[name].kind != "hdv":
                    raise ValueError(f"flows.{i}: vehicle type '{name}' is a CAV type; CAVs enter through cav_share")
        return self


# ----------------------------------------------------------------------------- control etc.


class ControlSpec(InputModel):
    """Which controller drives the CAVs, and its parameters (checked by the controller when the
    scenario is resolved for a run: `cavlab.sim.resolve`)."""

    controller: str = Field("sumo", description="Controller name; `sumo` leaves driving to SUMO")
    params: dict[str, Any] = Field(default_factory=dict)


class SimulationSpec(InputModel):
    """Time, randomness and the SUMO options cavlab exposes."""

    step_length_s: Annotated[float, Field(gt=0, le=1)] = 0.1
    duration_s: Annotated[float, Field(gt=0, le=86_400)] = Field(600.0, description="Total simulated time")
    warmup_s: NonNegative = Field(120.0, description="Metrics ignore the time before this")
    seed: Annotated[int, Field(ge=0, lt=2**31)] = 42
    backend: Literal["libsumo", "traci", "gui"] = "libsumo"
    lane_change_duration_s: Annotated[float, Field(ge=0, le=60)] = Field(
        3.0, description="Lateral maneuver time; 0 = instantaneous"
    )
    collision_action: Literal["remove", "warn"] = Field(
        "remove", description="What SUMO does with colliding vehicles (collisions are counted either way)"
    )

    @model_validator(mode="after")
    def _check_times(self) -> SimulationSpec:
        if self.duration_s < self.step_length_s:
            raise ValueError(
                f"duration_s = {self.duration_s:g} must be at least one step (step_length_s = {self.step_length_s:g})"
            )
        if self.warmup_s >= self.duration_s:
            raise ValueError(f"warmup_s = {self.warmup_s:g} must be less than duration_s = {self.duration_s:g}")
        if 0 < self.lane_change_duration_s < self.step_length_s:
            raise ValueError(
                f"lane_change_duration_s = {self.lane_change_duration_s:g} must be 0 or at least "
                f"step_length_s = {self.step_length_s:g}"
            )
        for name in ("duration_s", "warmup_s"):
            if not _is_multiple(getattr(self, name), self.step_length_s):
                raise ValueError(f"{name} = {getattr(self, name):g} must be a multiple of step_length_s")
        return self

    @property
    def steps(self) -> int:
        """Number of simulation steps."""
        return round(self.duration_s / self.step_length_s)


SUMO_OUTPUTS = ("tripinfo", "lanechange", "ssm")


class OutputsSpec(InputModel):
    """What goes into the run directory besides summary.json, lane_changes.csv and the SUMO log."""

    trajectories: bool = True
    trajectory_period_s: Positive | None = Field(None, description="Sampling period; null = every step")
    detector_period_s: Positive | None = Field(
        None, description="Induction-loop aggregation period; null = the largest divisor of warm-up and duration ≤ 60 s"
    )
    sumo: list[Literal["tripinfo", "lanechange", "ssm"]] = Field(
        default_factory=list,
        description="SUMO's own outputs to write into sumo/ and summarise under metrics.sumo (cavlab.sim.sumo_outputs)",
    )

    @field_validator("sumo", mode="before")
    @classmethod
    def _sumo_is_a_list(cls, value: Any) -> Any:
        if not isinstance(value, list):
            raise ValueError(f"must be a list of {', '.join(SUMO_OUTPUTS)} (got {value!r})")
        return value

    @field_validator("sumo")
    @classmethod
    def _sumo_once_each(cls, value: list[str]) -> list[str]:
        for name in SUMO_OUTPUTS:
            if value.count(name) > 1:
                raise ValueError(f"'{name}' is listed more than once; allowed: {', '.join(SUMO_OUTPUTS)}, each once")
        return value


class SensorFault(InputModel):
    """A sensor fault that perception applies."""

    sensor: Literal["camera", "lidar", "radar"]
    kind: Literal["dropout", "blackout", "noise"]
    severity: Fraction = Field(1.0, description="0 = no effect, 1 = full effect")


class ContextSpec(InputModel):
    """Operating context for perception: weather, light and sensor faults."""

    weather: Literal["clear", "rain", "fog", "snow"] = "clear"
    light: Literal["day", "dusk", "night"] = "day"
    sensor_faults: list[SensorFault] = Field(default_factory=list)


PERCEPTION_SLOTS = ("own_front", "own_rear", "left_front", "left_rear", "right_front", "right_rear")


class PerceptionFault(InputModel):
    """A perception fault injected into every CAV's estimates while it is active (from `start_s` for
    `duration_s`, again every `every_s` if set): `miss` drops the slot's detection, `ghost` reports a vehicle
    in the slot at `gap_m` with relative speed `speed_mps`."""

    kind: Literal["miss", "ghost"]
    slot: Literal[PERCEPTION_SLOTS] = "own_front"  # type: ignore[valid-type]
    start_s: Annotated[float, Field(ge=0, le=86_400)] = 0.0
    duration_s: Annotated[float, Field(gt=0, le=86_400)] = 2.0
    every_s: Annotated[float, Field(gt=0, le=86_400)] | None = None
    gap_m: Annotated[float, Field(ge=0, le=60)] = 8.0
    speed_mps: Annotated[float, Field(ge=-30, le=30)] = 0.0

    @model_validator(mode="after")
    def _check_period(self) -> PerceptionFault:
        if self.every_s is not None and self.every_s < self.duration_s:
            raise ValueError(f"every_s = {self.every_s:g} must be at least duration_s = {self.duration_s:g}")
        return self

    def active(self, time_s: float) -> bool:
        since = time_s - self.start_s
        if since < 0:
            return False
        return (since % self.every_s if self.every_s is not None else since) < self.duration_s


class PerceptionSpec(InputModel):
    """Perception in the loop: controllers plan on what the CAVs' sensors and a trained fusion model
    estimate instead of SUMO's ground truth (cavlab.sim.perception_loop), with its defences: footprints
    widened by the estimates' uncertainty, own-lane leaders held through short misses, and emergency
    braking on the raw radar."""

    enabled: bool = Field(False, description="Off: controllers see the ground truth")
    model: str | None = Field(None, description="A model directory from `cavlab perception train`")
    gate: Literal["deep", "knowledge", "all"] = Field(
        "deep", description="deep or knowledge gate (branches switched off), or all branches fused"
    )
    backend: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto", description="auto: torch on CUDA when the device resolves to it, else ONNX Runtime (faster on CPUs)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="torch: CUDA when available, else CPU")
    target: str = Field("jetson-orin-nano", description="Edge target (hw/targets): latency and energy per frame")
    latency_s: Annotated[float, Field(ge=0, le=10)] | None = Field(
        None, description="Measured inference latency per frame; null = the target's cost model"
    )
    extra_latency_s: Annotated[float, Field(ge=0, le=10)] = Field(
        0.0, description="Added pipeline latency (capture, transfer)"
    )
    track_hold_s: Annotated[float, Field(ge=0, le=60)] = Field(
        0.5, description="A vehicle no sensor sees is predicted this long"
    )
    leader_hold_s: Annotated[float, Field(ge=0, le=60)] = Field(
        2.5, description="… and this long if it was some CAV's own-lane leader"
    )
    uncertainty_k: Annotated[float, Field(ge=0, le=10)] = Field(
        2.0, description="A perceived vehicle's footprint is widened by k·σ at both ends (0: off)"
    )
    gap_sigma_m: Annotated[float, Field(ge=0, le=50)] = Field(
        1.5, description="σ of a detection's position at full confidence"
    )
    speed_sigma_mps: Annotated[float, Field(ge=0, le=30)] = Field(
        1.0, description="σ of a detection's speed: σ grows by this per second of the estimate's age"
    )
    radar_leader_speed: bool = Field(
        True, description="The own-lane leader's relative speed from the raw radar where its return fits the estimate"
    )
    emergency_braking: bool = Field(True, description="Brake on the raw radar when it and the fused estimate disagree")
    emergency_ttc_s: Annotated[float, Field(gt=0, le=10)] = 1.5
    emergency_decel_mps2: Annotated[float, Field(gt=0, le=12)] = 6.0
    emergency_disagreement_m: Annotated[float, Field(ge=0, le=100)] = 5.0
    faults: list[PerceptionFault] = Field(default_factory=list, description="Injected perception faults")

    @model_validator(mode="after")
    def _check(self) -> PerceptionSpec:
        if self.enabled and self.model is None:
            raise ValueError("model: needed when enabled is true (a directory from `cavlab perception train`)")
        return self


class Scenario(InputModel):
    """A complete, validated scenario."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=64)]
    description: str = ""
    road: RoadSpec
    demand: DemandSpec
    control: ControlSpec = Field(default_factory=ControlSpec)
    simulation: SimulationSpec = Field(default_factory=SimulationSpec)
    outputs: OutputsSpec = Field(default_factory=OutputsSpec)
    context: ContextSpec = Field(default_factory=ContextSpec)
    perception: PerceptionSpec = Field(default_factory=PerceptionSpec)

    @model_validator(mode="after")
    def _check_cross_references(self) -> Scenario:
        network = self.road.network
        if not self.demand.flows and network is None:
            raise ValueError("demand.flows: needs at least 1 item (a flow)")
        for i, flow in enumerate(self.demand.flows):
            if network is not None:
                if flow.from_edge is None or flow.to_edge is None:
                    raise ValueError(f"demand.flows.{i}: on road.kind 'network' a flow needs from_edge and to_edge")
                if flow.route != "mainline":
                    raise ValueError(f"demand.flows.{i}: route '{flow.route}' needs road.kind 'on_ramp'")
                continue
            if flow.from_edge is not None or flow.to_edge is not None:
                raise ValueError(f"demand.flows.{i}: from_edge and to_edge need road.kind 'network'")
            if flow.route == "ramp":
                if self.road.kind != "on_ramp":
                    raise ValueError(f"demand.flows.{i}: route 'ramp' needs road.kind 'on_ramp'")
                if flow.lane not in (None, 0):
                    raise ValueError(f"demand.flows.{i}: lane {flow.lane} does not exist; the ramp has lane 0")
            elif flow.lane is not None and flow.lane >= self.road.lanes:
                raise ValueError(
                    f"demand.flows.{i}: lane {flow.lane} does not exist; the mainline has lanes "
                    f"0..{self.road.lanes - 1}"
                )
        for name in ("trajectory_period_s", "detector_period_s"):
            period = getattr(self.outputs, name)
            if period is not None and period > self.simulation.duration_s:
                raise ValueError(
                    f"outputs.{name} = {period:g} must be at most simulation.duration_s = "
                    f"{self.simulation.duration_s:g}"
                )
            if period is not None and not _is_multiple(period, self.simulation.step_length_s):
                raise ValueError(f"outputs.{name} = {period:g} must be a multiple of step_length_s")
        return self

    def to_yaml(self) -> str:
        """The scenario with every default filled in, as YAML that `read_scenario` reads back."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _is_multiple(value: float, step: float) -> bool:
    ratio = value / step
    return math.isclose(ratio, round(ratio), rel_tol=0, abs_tol=1e-6)


# ----------------------------------------------------------------------------- loading


def shipped_scenarios() -> dict[str, Path]:
    """Names and files of the scenarios shipped with cavlab."""
    root = resources.files("cavlab.scenarios")
    return {p.name.removesuffix(".yaml"): Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}


def resolve_scenario_path(name_or_path: str) -> Path:
    """A shipped scenario's file, or the given path if it is a regular file within the size limit of
    `cavlab.config.files` (a directory, FIFO or device is named as such)."""
    shipped = shipped_scenarios()
    if name_or_path in shipped:
        return shipped[name_or_path]
    path = Path(name_or_path)
    if os.path.lexists(path):
        try:
            return check_regular_file(path, "scenario")
        except UserError as exc:
            raise ScenarioError(str(exc)) from None
    if path.suffix in (".yaml", ".yml") or "/" in name_or_path:
        raise ScenarioError(f"{name_or_path}: no such file")
    raise ScenarioError(
        f"unknown scenario '{name_or_path}' (shipped: {', '.join(sorted(shipped))}; or give a YAML file path)"
    )


def read_scenario(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Scenario:
    """Read, override and validate a scenario; every failure is a `ScenarioError`."""
    path = resolve_scenario_path(str(name_or_path))
    try:
        text = read_text(path, "scenario")
    except UserError as exc:
        raise ScenarioError(str(exc)) from None
    return parse_scenario(text, source=str(path), overrides=overrides)


def parse_scenario(text: str, source: str = "<scenario>", overrides: list[str] | tuple[str, ...] = ()) -> Scenario:
    """Validate scenario YAML text; `source` names it in error messages."""
    try:
        raw = load_yaml(text, source)
    except UserError as exc:
        raise ScenarioError(str(exc)) from None
    if not isinstance(raw, dict):
        raise ScenarioError(f"{source}: expected a mapping of blocks (road, demand, ...), got {_kind(raw)}")
    for override in overrides:
        apply_override(raw, override)
    return validate_scenario(raw, source)


def validate_scenario(raw: dict[str, Any], source: str = "<scenario>") -> Scenario:
    """Validate an already-parsed scenario mapping."""
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        message = validation_message(
            exc, Scenario, unknown_none_allowed="unknown field '{field}'", missing="missing field '{field}'",
            invalid_at_root="{msg}", show_input=True, count_more=True,
        )  # fmt: skip
        raise ScenarioError(f"{source}: {message}") from None


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one `key.path=value` override in place; the value is parsed as YAML (`load_yaml`)."""
    key, sep, text = override.partition("=")
    shown = override.replace("\r", "\\r").replace("\n", "\\n")  # messages stay on one line
    if len(shown) > 100:  # ... and short
        shown = shown[:99] + "…"
    if not sep or not key.strip():
        raise ScenarioError(f"override '{shown}' must look like key.path=value (e.g. simulation.seed=7)")
    try:
        value = load_yaml(text, f"override '{shown}'")
    except YAMLSyntaxError:
        raise ScenarioError(f"override '{shown}': the value is not valid YAML") from None
    except UserError as exc:
        raise ScenarioError(str(exc)) from None
    parts = key.strip().split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not node:
                raise ScenarioError(f"override '{shown}': '{here}' indexes an empty list")
            if not part.isdigit() or int(part) >= len(node):
                raise ScenarioError(f"override '{shown}': '{here}' needs a list index 0..{len(node) - 1}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            parent = ".".join(parts[:depth])
            raise ScenarioError(f"override '{shown}': '{parent}' is {_kind(node)}, not a block")


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "empty"}.get(
        type(value), f"a {type(value).__name__}"
    )
