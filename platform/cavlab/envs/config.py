"""Environment configuration: keyword arguments validated like scenario files.

Every environment class carries defaults (`TrafficEnv.defaults`); keyword arguments given to
the class or to `gymnasium.make` are merged into them block by block, so
`gymnasium.make("cavlab/LaneChange-v0", reward={"collision": 20})` changes one weight and
keeps the others. The options are `InputModel`s: finite, strictly typed numbers (a list is
accepted where a tuple is expected).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from cavlab.config.scenario import InputModel
from cavlab.errors import UserError, validation_message

Speed = Annotated[float, Field(ge=0, le=70)]
Distance = Annotated[float, Field(gt=0, le=1000)]


class EnvConfigError(UserError):
    """Environment keyword arguments that do not validate."""


class EgoSpec(InputModel):
    """Which vehicle the agent drives, chosen after the warm-up.

    `takeover`: the vehicle of `lane` nearest to `x_m` becomes the ego: it keeps its place and
    speed, and takes the ego's vehicle type; the traffic around it stays as it was. With
    `leader_within_m`, only a vehicle with a leader at most that far ahead (bumper to bumper)
    qualifies, for up to 20 s of traffic after the warm-up; then the nearest one. `insert`: a
    new vehicle enters at `x_m` at `speed_mps` (null: 80 % of the speed limit there), or 40 m
    or 80 m farther on. Each falls back on the other: a takeover in an empty lane inserts, an
    insertion that SUMO finds no room for (a queue on the ramp) takes over.

    On an external network (`road.kind: network`) the ego drives from `from_edge` to `to_edge`
    (the route SUMO finds, as for the demand's flows): it is taken over or inserted on
    `from_edge`, `x_m` is the distance from that edge's start and `lane` a road lane of that edge
    (lanes as cavlab numbers them on the network's corridors); `route` is for generated roads.
    """

    route: Literal["mainline", "ramp"] = Field("mainline", description="Generated roads: the route driven")
    from_edge: str | None = Field(None, description="Network: the edge the ego starts on")
    to_edge: str | None = Field(None, description="Network: the edge its route ends on (SUMO finds the route)")
    lane: Annotated[int, Field(ge=-1, le=7)] = Field(
        0, description="Road lane (0 = rightmost mainline lane, −1 = ramp)"
    )
    x_m: Annotated[float, Field(ge=0, le=100_000)] = Field(
        300.0, description="Where the ego starts: global x on a generated road, from from_edge's start on a network"
    )
    placement: Literal["takeover", "insert"] = "takeover"
    leader_within_m: Distance | None = None
    speed_mps: Speed | None = None
    vehicle_type: str | None = Field(None, description="Vehicle type; null uses the scenario's CAV type")


KINEMATIC_FEATURES = ("presence", "x", "y", "vx", "ax", "lane", "cav")
GRID_FEATURES = ("presence", "vx", "cav")


class ObservationSpec(InputModel):
    """What the agent sees: the nearest vehicles' kinematics, an occupancy grid around it, the times
    to collision with its leaders and followers in its own and the adjacent lanes, or its
    neighbours as its own perception estimates them (simulated sensors under the scenario's
    context, then a model from `cavlab perception train` in `model`)."""

    type: Literal["kinematics", "occupancy_grid", "ttc", "perception"] = "kinematics"
    model: str | None = Field(None, description="perception: a model directory from `cavlab perception train`")
    vehicles_count: Annotated[int, Field(ge=1, le=64)] = Field(7, description="Rows, the ego's included")
    features: tuple[str, ...] | None = Field(
        None,
        description=f"kinematics: any of {', '.join(KINEMATIC_FEATURES)}; grid: any of {', '.join(GRID_FEATURES)}",
        strict=False,
    )
    range_m: Distance = Field(150.0, description="Longitudinal half-window around the ego")
    grid_step_m: Distance = 5.0
    ttc_cap_s: Annotated[float, Field(gt=0, le=600)] = Field(10.0, description="ttc: times to collision capped here")
    normalize: bool = True

    @model_validator(mode="after")
    def _check_features(self) -> ObservationSpec:
        if (self.type == "perception") != (self.model is not None):
            raise ValueError("'model' goes with type 'perception', and type 'perception' needs a 'model'")
        if self.type in ("perception", "ttc"):
            if self.features is not None:
                raise ValueError(f"type '{self.type}' has fixed features")
            return self
        allowed = KINEMATIC_FEATURES if self.type == "kinematics" else GRID_FEATURES
        for name in self.features or ():
            if name not in allowed:
                raise ValueError(f"feature '{name}' is not a {self.type} feature (allowed: {', '.join(allowed)})")
        if self.features is not None and not self.features:
            raise ValueError("needs at least one feature")
        if self.type == "occupancy_grid" and (2 * self.range_m / self.grid_step_m) > 400:
            raise ValueError("the grid would have more than 400 cells per lane: raise grid_step_m or lower range_m")
        if self.type == "occupancy_grid" and self.grid_step_m > self.range_m:
            raise ValueError(f"grid_step_m = {self.grid_step_m:g} must be at most range_m = {self.range_m:g}")
        return self

    @property
    def feature_names(self) -> tuple[str, ...]:
        if self.features:
            return self.features
        return ("presence", "x", "y", "vx") if self.type == "kinematics" else ("presence", "vx")


class ActionSpec(InputModel):
    """How actions drive the ego.

    `discrete_meta`: 0 LANE_LEFT, 1 IDLE, 2 LANE_RIGHT, 3 FASTER, 4 SLOWER (highway-env's
    indices); FASTER/SLOWER step through `target_speeds_mps`, which the ego tracks with
    u = clip(k·(v* − v), −b, a). `continuous`: a ∈ [−1, 1]², a₀ scales the acceleration
    (a₀·a if a₀ ≥ 0, else a₀·b) and a₁ > 1/3 asks for the left lane, a₁ < −1/3 for the right.
    `planner` (hybrid): 0 FOLLOW (SUMO's car following in the lane), 1 ASK_LEFT, 2 ASK_RIGHT:
    ask the cooperative planner for a maneuver into that lane; while one runs, the planner
    drives the ego and its cooperators, and actions are ignored.
    """

    type: Literal["discrete_meta", "continuous", "planner"] = "discrete_meta"
    target_speeds_mps: tuple[Speed, ...] = Field((15.0, 20.0, 25.0, 30.0), strict=False)
    speed_gain_per_s: Annotated[float, Field(gt=0, le=100)] = Field(1 / 0.6, description="k in u = k·(v* − v)")

    @model_validator(mode="after")
    def _check_speeds(self) -> ActionSpec:
        speeds = self.target_speeds_mps
        if not speeds or list(speeds) != sorted(set(speeds)):
            raise ValueError("target_speeds_mps must be a non-empty increasing list")
        return self


class RewardSpec(InputModel):
    """Weights of the reward terms (each term is documented in `TrafficEnv`)."""

    speed: float = 1.0
    speed_range_mps: tuple[Speed, Speed] = Field((20.0, 30.0), strict=False)
    target_lane: float = 0.5
    comfort: float = 0.05
    disruption: float = 0.3
    disruption_range_m: Distance = 100.0
    collision: float = 10.0
    completion: float = 10.0
    unsafe: float = 1.0
    unsafe_ttc_s: Annotated[float, Field(gt=0, le=60)] = Field(
        1.5, description="A time to collision with the leader or follower below this is unsafe"
    )
    unsafe_headway_s: Annotated[float, Field(ge=0, le=60)] = Field(
        0.5, description="A bumper gap to the leader or follower below this × the ego's speed is unsafe"
    )

    @model_validator(mode="after")
    def _check_range(self) -> RewardSpec:
        lo, hi = self.speed_range_mps
        if not hi > lo:
            raise ValueError(f"speed_range_mps must be increasing (got {lo:g}, {hi:g})")
        return self


Fraction = Annotated[float, Field(ge=0, le=1)]
Offset = Annotated[float, Field(ge=-1000, le=1000)]


class RandomizeSpec(InputModel):
    """Per-episode randomisation of the warmed traffic and the ego's start, drawn from the episode's
    seed (`cavlab.envs.randomize`). Each `(lo, hi)` is a uniform range; a range with lo = hi is a
    fixed value. Applied after the warm-up, in this order: the ego's placement is shifted; after it
    is placed, a random share of the other vehicles is removed, the rest get new speed factors and
    CAV types; a gap is cleared in the target lane (null: an adjacent one) and a vehicle is put
    beside the ego there (in a cleared stretch of lane) and one farther ahead there is slowed down;
    the ego's leader is made slow, removed or kept (slowed vehicles keep their lane). With a target
    lane equal to the ego's, or none, "there" is an adjacent lane drawn at random."""

    ego_dx_m: tuple[Offset, Offset] = Field((-50.0, 50.0), strict=False, description="Shift of ego.x_m")
    ego_speed_mps: tuple[Speed, Speed] | None = Field(
        None, strict=False, description="insert placement: the ego's start speed (null: ego.speed_mps)"
    )
    keep_fraction: tuple[Fraction, Fraction] = Field(
        (0.7, 1.0), strict=False, description="Share of the other vehicles kept (density)"
    )
    speed_scale: tuple[Annotated[float, Field(gt=0, le=2)], Annotated[float, Field(gt=0, le=2)]] = Field(
        (0.85, 1.1), strict=False, description="The episode's scale of the vehicles' speed factors"
    )
    speed_spread: Annotated[float, Field(ge=0, le=0.5)] = Field(
        0.05, description="Each vehicle's speed factor: scale·(1 + U(−spread, spread))"
    )
    cav_share: tuple[Fraction, Fraction] | None = Field(
        (0.0, 0.5), strict=False, description="Share of the cars (types that flows turn into CAVs) that are CAVs"
    )
    gap_probability: Fraction = Field(0.7, description="Chance of clearing a gap in the target lane")
    gap_length_m: tuple[Distance, Distance] = Field((30.0, 80.0), strict=False)
    gap_offset_m: tuple[Offset, Offset] = Field(
        (-80.0, 120.0), strict=False, description="The gap's centre relative to the ego's front bumper"
    )
    beside_probability: Fraction = Field(0.5, description="Chance of a vehicle beside the ego in the target lane")
    beside_dx_m: tuple[Offset, Offset] = Field(
        (-5.0, 10.0), strict=False, description="Its front bumper relative to the ego's"
    )
    beside_dv_mps: tuple[Offset, Offset] = Field((0.0, 4.0), strict=False, description="Its speed minus the ego's")
    slow_leader_probability: Fraction = Field(0.5, description="Chance that the ego's leader drives slowly")
    slow_ahead_probability: Fraction = Field(
        0.5, description="Chance that the first vehicle 30–200 m ahead in the target lane drives slowly"
    )
    slow_leader_speed_mps: tuple[Speed, Speed] = Field(
        (16.0, 22.0), strict=False, description="The slow vehicles' speed (they keep their lane)"
    )
    no_leader_probability: Fraction = Field(
        0.2, description="Chance that the vehicles ahead of the ego within 100 m are removed"
    )

    @model_validator(mode="after")
    def _check(self) -> RandomizeSpec:
        for name in ("ego_dx_m", "ego_speed_mps", "keep_fraction", "speed_scale", "cav_share", "gap_length_m",
                     "gap_offset_m", "beside_dx_m", "beside_dv_mps",
                     "slow_leader_speed_mps"):  # fmt: skip
            value = getattr(self, name)
            if value is not None and not value[0] <= value[1]:
                raise ValueError(f"{name} must be a range (lo, hi) with lo ≤ hi (got {value[0]:g}, {value[1]:g})")
        if self.slow_leader_probability + self.no_leader_probability > 1:
            raise ValueError("slow_leader_probability + no_leader_probability must be at most 1")
        return self


class EnvConfig(InputModel):
    """Everything an environment is built from."""

    scenario: str = Field("highway-lane-change", description="A shipped scenario name or a YAML path")
    set: tuple[str, ...] = Field((), description="Scenario overrides, key.path=value", strict=False)
    backend: Literal["auto", "libsumo", "traci"] = Field(
        "auto",
        description="auto: libsumo for the first live simulation of the process, TraCI for every further one",
    )
    warm_states: Annotated[int, Field(ge=0, le=1000)] = Field(
        8, description="Saved warm-ups an episode restores instead of simulating warmup_s (0: warm up every episode)"
    )
    decision_period_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    episode_s: Annotated[float, Field(gt=0, le=86_400)] = 40.0
    warmup_s: Annotated[float, Field(ge=0, le=86_400)] = Field(
        20.0, description="Traffic simulated before the ego enters"
    )
    metrics: bool = Field(
        False, description="Read every step and report the episode's run metrics (as `cavlab run`) in the last info"
    )
    target_lane: Annotated[int, Field(ge=-1, le=7)] | None = Field(
        None, description="The lane the ego should reach (rewarded)"
    )
    goal_x_m: Annotated[float, Field(ge=0, le=100_000)] | None = Field(
        None, description="Reaching it ends the episode; null: 50 m before the road end (on a network: the distance "
        "from the start of ego.to_edge; null: 50 m before its end)"
    )
    ego: EgoSpec = Field(default_factory=EgoSpec)
    observation: ObservationSpec = Field(default_factory=ObservationSpec)
    action: ActionSpec = Field(default_factory=ActionSpec)
    reward: RewardSpec = Field(default_factory=RewardSpec)
    randomize: RandomizeSpec | None = Field(
        default_factory=RandomizeSpec, description="Per-episode randomisation (null: the warmed traffic as it is)"
    )


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`base` updated by `update`, nested mappings merged key by key."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def env_config(defaults: dict[str, Any], kwargs: dict[str, Any]) -> EnvConfig:
    """Validate `kwargs` merged into `defaults`; a bad value raises `EnvConfigError` naming it."""
    try:
        return EnvConfig.model_validate(merge(defaults, kwargs))
    except ValidationError as exc:
        message = validation_message(
            exc, EnvConfig, unknown="unknown environment option '{field}' (allowed: {allowed})",
            invalid="environment option '{field}': {msg}",
        )  # fmt: skip
        raise EnvConfigError(message) from None
