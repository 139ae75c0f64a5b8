"""Simulated camera, lidar and radar for every CAV, from the world state.

SUMO renders no sensor data, so each sensor is a model of what it would report about the
vehicles around a CAV, degraded by the context (weather, light, sensor faults) with the
parameters of `sensors.yaml`:

- camera: forward-looking (±fov), an image over the CAV's lane and the adjacent ones
  (rows: right, own, left) with bins that widen with range (2 m … range, geometric, like a
  perspective image); channels: intensity (occupancy + noise) and flow (relative speed);
- lidar: 360°, a bird's-eye grid over the same three lanes, cells of `cell_m` within
  ±`half_window_m`; channels: occupancy and relative speed (scan matching);
- radar: front and rear, the `returns` nearest returns (present, range, azimuth, range rate),
  coarse but barely affected by weather.

A vehicle is detected with probability p(r)·(1 − dropout), p(r) = 1/(1 + (r/range)⁸), r the
centre-to-centre distance; camera and lidar do not see a vehicle hidden behind the nearest
one in the same lane and direction (the camera never, the lidar with probability 0.1), the
radar sees it with probability 0.5. Geometry: longitudinal offsets along the road, lateral
offset one lane width per lane (the scenario's `road.lane_width_m`, 3.2 m by default).

A sensor table (the shipped one, or a user's file) is checked against `SensorTable`: finite
numbers in range and frame sizes within bounds (`frame_shapes` holds datasets and models to the
same bounds). `sample_frames` gives frames of these sensors on synthetic traffic, without SUMO.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cavlab.config.files import load_yaml, read_yaml
from cavlab.config.scenario import ContextSpec
from cavlab.errors import UserError, block_fields, field_path, validation_message
from cavlab.perception.task import neighbour_targets
from cavlab.world import WorldState

SPEED_SCALE_MPS = 30.0  # relative speeds are divided by this in the frames
SENSORS = ("camera", "lidar", "radar")
ROWS = 3  # right, own, left lane
MAX_CAMERA_CELLS = 512  # bounds of the frame sizes a sensor table, a dataset or a model may have
MAX_LIDAR_CELLS = 1024
MAX_RADAR_RETURNS = 64
SENSOR_VERSION = 2
"""How the sensors draw their noise: 2 draws for all observers of a step at once (and leaves out vehicles beyond
`PAIR_REACH` sensor ranges); 1 (datasets written before version 2) observer by observer. Both give the same
distributions (but for detections of probability < 1.6·10⁻⁵); a version replays its own seeds exactly."""
SENSOR_VERSIONS = (1, 2)
PAIR_REACH = 4.0
"""Version 2 pairs an observer only with vehicles within this many times its longest sensor range along the road:
farther, p(r) = 1/(1 + (r/range)⁸) < 1.6·10⁻⁵ (version 1 pairs every vehicle of the three lanes)."""


@dataclass(frozen=True)
class SensorParams:
    """One sensor's parameters in one context."""

    range_m: float
    noise: float
    dropout: float
    clutter: float
    blackout: float = 0.0  # probability that a whole frame is lost (a fault)
    speed_noise_mps: float = 0.0


# ----------------------------------------------------------------------------- the sensor table

Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class _Sensor(_Table):
    range_m: Positive
    noise: NonNegative
    dropout: Probability
    clutter: Probability
    speed_noise_mps: NonNegative = 0.0


class CameraTable(_Sensor):
    fov_deg: Annotated[float, Field(gt=0, le=180)]
    cells: Annotated[int, Field(ge=2, le=MAX_CAMERA_CELLS)]


class LidarTable(_Sensor):
    cell_m: Positive
    half_window_m: Positive

    @model_validator(mode="after")
    def _grid(self) -> LidarTable:
        cells = round(2 * self.half_window_m / self.cell_m)
        if not 2 <= cells <= MAX_LIDAR_CELLS:
            raise ValueError(f"2·half_window_m / cell_m = {cells} cells; 2 to {MAX_LIDAR_CELLS} are allowed")
        return self


class RadarTable(_Sensor):
    returns: Annotated[int, Field(ge=1, le=MAX_RADAR_RETURNS)]


class Effect(_Table):
    """How a weather or light changes one sensor: ranges and noises multiply, probabilities add."""

    range_m: Positive = 1.0
    noise: NonNegative = 1.0
    dropout: Probability = 0.0
    clutter: Probability = 0.0


class Effects(_Table):
    camera: Effect | None = None
    lidar: Effect | None = None
    radar: Effect | None = None


class Weathers(_Table):
    clear: Effects | None
    rain: Effects | None
    fog: Effects | None
    snow: Effects | None


class Lights(_Table):
    day: Effects | None
    dusk: Effects | None
    night: Effects | None


class SensorTable(_Table):
    """The schema of a sensor table (`sensors.yaml`, or a file given to `cavlab perception dataset --sensors`)."""

    camera: CameraTable
    lidar: LidarTable
    radar: RadarTable
    weather: Weathers
    light: Lights


def parse_sensor_table(raw: Any, source: str) -> dict[str, Any]:
    """`raw` checked against `SensorTable` (a one-line `UserError` naming the field and what is allowed)."""
    try:
        SensorTable.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "model_type":  # a number or a list where a block belongs
            where = field_path(first["loc"]) or "the sensor table"
            fields = ", ".join(block_fields(SensorTable, first["loc"]))
            line = f"{where} must be a mapping of {fields} (got {first['input']!r:.40})"
        else:
            line = validation_message(exc, SensorTable, missing="missing field '{field}'", show_input=True)
        raise UserError(f"{source}: {line}") from None
    return raw


SHAPES_ALLOWED = (
    f"camera [2, {ROWS}, cells] (2 ≤ cells ≤ {MAX_CAMERA_CELLS}), lidar [2, {ROWS}, cells] "
    f"(2 ≤ cells ≤ {MAX_LIDAR_CELLS}) and radar [returns, 4] (1 ≤ returns ≤ {MAX_RADAR_RETURNS})"
)


def frame_shapes(raw: Any) -> dict[str, list[int]]:
    """`raw` as per-observer frame shapes (what `SensorSuite.shapes` makes: `SHAPES_ALLOWED`), else a
    `ValueError` saying what is allowed. The sizes are bounded: a model is built from them."""
    if not isinstance(raw, dict) or sorted(raw) != sorted(SENSORS):
        raise ValueError(f"must give {SHAPES_ALLOWED} (got {raw!r:.60})")
    out = {name: list(raw[name]) if isinstance(raw[name], (list, tuple)) else raw[name] for name in SENSORS}
    ok = {
        "camera": _grid_shape(out["camera"], MAX_CAMERA_CELLS),
        "lidar": _grid_shape(out["lidar"], MAX_LIDAR_CELLS),
        "radar": _ints(out["radar"], 2) and 1 <= out["radar"][0] <= MAX_RADAR_RETURNS and out["radar"][1] == 4,
    }
    for name in SENSORS:
        if not ok[name]:
            raise ValueError(f"{name} is {raw[name]!r:.40}; allowed: {SHAPES_ALLOWED}")
    return out


def _ints(value: Any, n: int) -> bool:
    return isinstance(value, list) and len(value) == n and all(type(v) is int for v in value)


def _grid_shape(value: Any, max_cells: int) -> bool:
    return _ints(value, 3) and value[:2] == [2, ROWS] and 2 <= value[2] <= max_cells


def read_sensor_table(path: str | Path) -> dict[str, Any]:
    """A user's sensor table file, read with `cavlab.config.files` and checked."""
    return parse_sensor_table(read_yaml(path, "sensor table"), str(path))


@cache
def sensor_table() -> dict[str, Any]:
    """The shipped sensor and context table (`sensors.yaml`)."""
    text = files("cavlab.perception").joinpath("sensors.yaml").read_text()
    return parse_sensor_table(load_yaml(text, "sensors.yaml"), "sensors.yaml")


def context_label(context: ContextSpec) -> str:
    """`weather-light`, e.g. `fog-night`: the label knowledge gates key on."""
    return f"{context.weather}-{context.light}"


def sensor_params(context: ContextSpec, table: dict[str, Any] | None = None) -> dict[str, SensorParams]:
    """Every sensor's parameters under `context` (weather and light effects, then faults)."""
    table = table or sensor_table()
    out = {}
    for name in SENSORS:
        base = table[name]
        rng, noise = float(base["range_m"]), float(base["noise"])
        dropout, clutter = float(base["dropout"]), float(base["clutter"])
        speed_noise = float(base.get("speed_noise_mps", 0.0))
        for effects in (table["weather"][context.weather] or {}, table["light"][context.light] or {}):
            effect = effects.get(name) or {}
            rng *= effect.get("range_m", 1.0)
            noise *= effect.get("noise", 1.0)
            speed_noise *= effect.get("noise", 1.0)
            dropout += effect.get("dropout", 0.0)
            clutter += effect.get("clutter", 0.0)
        blackout = 0.0
        for fault in context.sensor_faults:
            if fault.sensor != name:
                continue
            if fault.kind == "dropout":
                dropout += fault.severity * (1 - dropout)
            elif fault.kind == "blackout":
                blackout = max(blackout, fault.severity)
            else:
                noise *= 1 + 4 * fault.severity
                speed_noise *= 1 + 4 * fault.severity
        out[name] = SensorParams(rng, noise, min(dropout, 1.0), min(clutter, 1.0), blackout, speed_noise)
    return out


def detection_probability(r_m: np.ndarray, range_m: float) -> np.ndarray:
    """p(r) = 1 / (1 + (r/range)⁸)."""
    return 1.0 / (1.0 + (np.asarray(r_m) / range_m) ** 8)


def camera_bin_edges(cells: int, range_m: float) -> np.ndarray:
    """cells + 1 edges from 2 m to `range_m` (nominal), geometric."""
    return 2.0 * (range_m / 2.0) ** (np.arange(cells + 1) / cells)


@dataclass(frozen=True)
class Frames:
    """One frame per observer: camera (N, 2, 3, cells), lidar (N, 2, 3, cells), radar (N, returns, 4)."""

    camera: np.ndarray
    lidar: np.ndarray
    radar: np.ndarray


class SensorSuite:
    """The three sensors of every CAV under one context, on a road with lanes `lane_width_m` wide (the
    scenario's `road.lane_width_m`), drawing their noise as `version` does (`SENSOR_VERSION`)."""

    def __init__(self, context: ContextSpec, table: dict[str, Any] | None = None, *, lane_width_m: float,
                 version: int = SENSOR_VERSION) -> None:  # fmt: skip
        if version not in SENSOR_VERSIONS:
            raise UserError(f"sensor version {version} is not known (allowed: {', '.join(map(str, SENSOR_VERSIONS))})")
        self.version = version
        self.lane_width_m = float(lane_width_m)
        self.table = table or sensor_table()
        self.params = sensor_params(context, self.table)
        self.label = context_label(context)
        cam, lid, rad = self.table["camera"], self.table["lidar"], self.table["radar"]
        self.camera_edges = camera_bin_edges(int(cam["cells"]), float(cam["range_m"]))
        self.camera_fov_rad = np.deg2rad(float(cam["fov_deg"]))
        self.lidar_cell_m = float(lid["cell_m"])
        self.lidar_half_m = float(lid["half_window_m"])
        self.lidar_cells = round(2 * self.lidar_half_m / self.lidar_cell_m)
        self.radar_returns = int(rad["returns"])
        self.radar_range_m = float(rad["range_m"])

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The per-observer frame shapes."""
        return {
            "camera": (2, ROWS, len(self.camera_edges) - 1),
            "lidar": (2, ROWS, self.lidar_cells),
            "radar": (self.radar_returns, 4),
        }

    def observe(self, world: WorldState, observers: np.ndarray, rng: np.random.Generator) -> Frames:
        """Frames of the vehicles at rows `observers` (all sensors, one draw of the noise): version 2 draws
        for every observer at once, version 1 observer by observer (other numbers, the same distribution)."""
        observers = np.asarray(observers, dtype=np.int64)
        shapes = self.shapes()
        n = len(observers)
        camera = np.zeros((n, *shapes["camera"]), dtype=np.float32)
        lidar = np.zeros((n, *shapes["lidar"]), dtype=np.float32)
        radar = np.zeros((n, *shapes["radar"]), dtype=np.float32)
        reach = PAIR_REACH * max(p.range_m for p in self.params.values()) if self.version == 2 else None
        pairs = _pairs(world, observers, self.lane_width_m, reach)
        if self.version == SENSOR_VERSION:
            self._sense(pairs, camera, lidar, radar, rng)
        else:
            bounds = np.searchsorted(pairs["k"], np.arange(n + 1))
            for k in range(n):
                own = {key: value[bounds[k] : bounds[k + 1]] for key, value in pairs.items()}
                own["k"] = np.zeros_like(own["k"])
                self._sense(own, camera[k : k + 1], lidar[k : k + 1], radar[k : k + 1], rng)
        for name, frame in (("camera", camera), ("lidar", lidar), ("radar", radar)):
            lost = rng.random(n) < self.params[name].blackout
            frame[lost] = 0.0
        return Frames(camera, lidar, radar)

    # ------------------------------------------------------------------ the sensors

    def _sense(self, pairs: dict[str, np.ndarray], camera: np.ndarray, lidar: np.ndarray, radar: np.ndarray,
               rng: np.random.Generator) -> None:  # fmt: skip
        """The three sensors' frames of the observers `pairs["k"]` indexes in the frames."""
        self._camera(pairs, camera, rng)
        self._lidar(pairs, lidar, rng)
        self._radar(pairs, radar, rng)

    def _camera(self, pairs: dict[str, np.ndarray], out: np.ndarray, rng: np.random.Generator) -> None:
        p = self.params["camera"]
        ahead = (pairs["centre_m"] > 0) & (np.abs(pairs["azimuth_rad"]) <= self.camera_fov_rad) & ~pairs["occluded"]
        detected = rng.random(len(ahead)) < detection_probability(pairs["r_m"], p.range_m) * (1 - p.dropout)
        seen = np.flatnonzero(ahead & detected)
        edges = self.camera_edges
        near, far = np.maximum(pairs["rear_m"][seen], 0.0)[:, None], pairs["front_m"][seen][:, None]
        _paint(out, pairs, seen, (edges[None, 1:] > near) & (edges[None, :-1] < far))
        self._clutter_and_noise(out, p, rng)

    def _lidar(self, pairs: dict[str, np.ndarray], out: np.ndarray, rng: np.random.Generator) -> None:
        p = self.params["lidar"]
        visible = ~pairs["occluded"] | (rng.random(len(pairs["occluded"])) < 0.1)
        seen = np.flatnonzero(visible & (rng.random(len(visible)) < detection_probability(pairs["r_m"], p.range_m)))
        half, cell = self.lidar_half_m, self.lidar_cell_m
        lo = np.maximum(np.floor((pairs["rear_m"][seen] + half) / cell), 0)[:, None]
        hi = np.minimum(np.floor((pairs["front_m"][seen] + half) / cell), self.lidar_cells - 1)[:, None]
        cells = np.arange(self.lidar_cells)[None, :]
        covered = (cells >= lo) & (cells <= hi)
        covered[covered] = rng.random(int(covered.sum())) >= p.dropout  # points lost cell by cell
        _paint(out, pairs, seen, covered)
        self._clutter_and_noise(out, p, rng)

    def _radar(self, pairs: dict[str, np.ndarray], out: np.ndarray, rng: np.random.Generator) -> None:
        p = self.params["radar"]
        azimuth_true = pairs["azimuth_rad"]
        prob = detection_probability(pairs["r_m"], p.range_m) * (1 - p.dropout) * np.where(pairs["occluded"], 0.5, 1.0)
        seen = np.flatnonzero(rng.random(len(prob)) < prob)
        r = pairs["r_m"][seen] + rng.normal(0.0, p.noise, len(seen))
        azimuth = azimuth_true[seen] + rng.normal(0.0, 0.02 * p.noise, len(seen))
        rate = pairs["dv_mps"][seen] * np.cos(azimuth_true[seen]) + rng.normal(0.0, 0.3 * p.noise, len(seen))
        k = pairs["k"][seen]
        order = np.lexsort((np.abs(r), k))  # per observer, nearest first (stable)
        k = k[order]
        rank = np.arange(len(k)) - np.searchsorted(k, k)
        keep = rank < self.radar_returns
        k, rank, order = k[keep], rank[keep], order[keep]
        out[k, rank, 0] = 1.0
        out[k, rank, 1] = r[order] / self.radar_range_m
        out[k, rank, 2] = azimuth[order] / np.pi
        out[k, rank, 3] = rate[order] / SPEED_SCALE_MPS

    @staticmethod
    def _clutter_and_noise(out: np.ndarray, p: SensorParams, rng: np.random.Generator) -> None:
        """False returns in empty cells, then measurement noise on every cell (frames (N, 2, 3, cells))."""
        occupancy, speed = out[:, 0], out[:, 1]
        ghost = (occupancy == 0) & (rng.random(occupancy.shape) < p.clutter)
        occupancy[ghost] = 1.0
        speed[ghost] = rng.normal(0.0, 0.3, int(ghost.sum()))
        if p.noise:
            occupancy += rng.normal(0.0, p.noise, occupancy.shape)
        occupied = occupancy > 0.5
        speed[occupied] += rng.normal(0.0, p.speed_noise_mps / SPEED_SCALE_MPS, int(occupied.sum()))


def _paint(out: np.ndarray, pairs: dict[str, np.ndarray], seen: np.ndarray, covered: np.ndarray) -> None:
    """Occupancy 1 and the relative speed in the cells `covered` (seen pairs × cells) of each seen pair's
    observer and lane row; a cell two vehicles cover shows the later one in row order."""
    i, cell = np.nonzero(covered)
    j = seen[i]
    k, row = pairs["k"][j], pairs["row"][j]
    key = (k * ROWS + row) * out.shape[-1] + cell
    last = len(key) - 1 - np.unique(key[::-1], return_index=True)[1]
    out[k[last], 0, row[last], cell[last]] = 1.0
    out[k[last], 1, row[last], cell[last]] = pairs["dv_mps"][j[last]] / SPEED_SCALE_MPS


def _pairs(world: WorldState, observers: np.ndarray, lane_width_m: float, reach_m: float | None = None
           ) -> dict[str, np.ndarray]:  # fmt: skip
    """Every (observer, vehicle) pair of an observer and another vehicle of its own or an adjacent lane (within
    `reach_m` along the road, if given), as seen
    from the observer's front bumper (lanes `lane_width_m` apart), in (observer, row) order: `k` the observer's
    index in `observers`, `row` the lane row (0 right, 1 own, 2 left), the vehicle's front, rear and centre
    offsets, range, azimuth, relative speed, and `occluded`: a nearer vehicle (centre to centre) in its lane and
    direction hides it."""
    o = observers[:, None]
    lane_offset = (world.lane[None, :] - world.lane[o]).astype(int)
    near = (np.abs(lane_offset) <= 1) & (np.arange(len(world))[None, :] != o)
    if reach_m is not None:
        near &= np.abs(world.x_m[None, :] - world.x_m[o]) <= reach_m
    k, j = np.nonzero(near)
    me, dl = observers[k], lane_offset[k, j]
    front = world.x_m[j] - world.x_m[me]  # their front bumpers, relative
    rear = front - world.length_m[j]
    centre = (front + rear) / 2 + world.length_m[me] / 2
    lateral = dl * lane_width_m
    side = np.sign(centre)
    group = (k * 3 + dl + 1) * 2 + (side > 0)  # observer, lane, direction
    order = np.lexsort((np.abs(centre), group))  # nearest first in each group (ties: row order)
    first = np.r_[True, group[order][1:] != group[order][:-1]]
    occluded = np.empty(len(k), dtype=bool)
    occluded[order] = ~first
    return {
        "k": k, "row": dl + 1, "front_m": front, "rear_m": rear, "centre_m": centre,
        "r_m": np.hypot(centre, lateral), "azimuth_rad": np.arctan2(lateral, centre),
        "dv_mps": world.speed_mps[j] - world.speed_mps[me], "occluded": occluded & (side != 0),
    }  # fmt: skip


def sample_frames(shapes: dict[str, list[int]], frames: int, seed: int) -> dict[str, np.ndarray]:
    """`frames` frames of each sensor, with their neighbour targets, on seeded synthetic traffic: what the
    sensors make of a three-lane road without running SUMO (INT8 calibration and its check use it; the
    keys are those of a dataset shard's frames and `targets`). Each world is 600 m of three
    lanes of cars (4.5 m) and trucks (12 m, one in seven) at time headways of 0.8–5 s and lane speeds
    of 20–31 m/s; a third of them are CAVs, and those in the middle 300 m observe it. The contexts (every
    weather × light) take turns world by world; the shipped sensor table, its sizes set to `shapes`."""
    rng = np.random.default_rng(seed)
    table = {name: dict(block) for name, block in sensor_table().items()}
    table["camera"]["cells"] = shapes["camera"][2]
    table["lidar"]["half_window_m"] = shapes["lidar"][2] * table["lidar"]["cell_m"] / 2
    table["radar"]["returns"] = shapes["radar"][0]
    contexts = [ContextSpec(weather=w, light=li) for w in table["weather"] for li in table["light"]]
    out: dict[str, list[np.ndarray]] = {name: [] for name in (*SENSORS, "targets")}
    made, k = 0, 0
    while made < frames:
        world = _synthetic_world(rng)
        observers = np.flatnonzero(world.is_cav & (world.x_m > 150) & (world.x_m < 450))[: frames - made]
        suite = SensorSuite(contexts[k % len(contexts)], table, lane_width_m=3.2)  # road.lane_width_m's default
        observed = suite.observe(world, observers, rng)
        for name in SENSORS:
            out[name].append(getattr(observed, name))
        out["targets"].append(neighbour_targets(world, observers))
        made, k = made + len(observers), k + 1
    return {name: np.concatenate(parts) for name, parts in out.items()}


def _synthetic_world(rng: np.random.Generator) -> WorldState:
    """600 m of three lanes of traffic (see `sample_frames`)."""
    x, lane, speed, length = [], [], [], []
    for k in range(ROWS):
        mean = 20.0 + 5.5 * k + rng.normal(0.0, 1.5)
        position = rng.uniform(0.0, 30.0)
        while position < 600.0:
            long = rng.random() < 1 / 7
            v = max(mean + rng.normal(0.0, 1.5), 5.0)
            x.append(position)
            lane.append(k)
            speed.append(v)
            length.append(12.0 if long else 4.5)
            position += length[-1] + 2.0 + v * rng.uniform(0.8, 5.0)
    n = len(x)
    return WorldState(
        time_s=0.0, ids=np.array([f"v{i}" for i in range(n)], dtype=object), slot=np.arange(n),
        type_index=np.zeros(n, dtype=np.int16), is_cav=rng.random(n) < 1 / 3, controlled=np.zeros(n, dtype=bool),
        edge=np.zeros(n, dtype=np.int16), lane=np.array(lane, dtype=np.int16), x_m=np.array(x),
        speed_mps=np.array(speed), accel_mps2=np.zeros(n), length_m=np.array(length), type_names=("vehicle",),
        edge_names=("road",),
    )  # fmt: skip
