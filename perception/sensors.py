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

from collections.abc import Iterator
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
    scenario's `road.lane_width_m`)."""

    def __init__(self, context: ContextSpec, table: dict[str, Any] | None = None, *, lane_width_m: float) -> None:
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
        """Frames of the vehicles at rows `observers` (all sensors, one draw of the noise)."""
        shapes = self.shapes()
        n = len(observers)
        camera = np.zeros((n, *shapes["camera"]), dtype=np.float32)
        lidar = np.zeros((n, *shapes["lidar"]), dtype=np.float32)
        radar = np.zeros((n, *shapes["radar"]), dtype=np.float32)
        for k, rel in enumerate(_relative(world, np.asarray(observers, dtype=np.int64), self.lane_width_m)):
            self._camera(rel, camera[k], rng)
            self._lidar(rel, lidar[k], rng)
            self._radar(rel, radar[k], rng)
        for name, frame in (("camera", camera), ("lidar", lidar), ("radar", radar)):
            lost = rng.random(n) < self.params[name].blackout
            frame[lost] = 0.0
        return Frames(camera, lidar, radar)

    # ------------------------------------------------------------------ the sensors

    def _camera(self, rel: dict[str, np.ndarray], out: np.ndarray, rng: np.random.Generator) -> None:
        p = self.params["camera"]
        ahead = (rel["centre_m"] > 0) & (np.abs(rel["azimuth_rad"]) <= self.camera_fov_rad) & ~rel["occluded"]
        seen = ahead & (rng.random(len(ahead)) < detection_probability(rel["r_m"], p.range_m) * (1 - p.dropout))
        edges = self.camera_edges
        for j in np.flatnonzero(seen).tolist():
            near, far = max(rel["rear_m"][j], 0.0), rel["front_m"][j]
            bins = np.flatnonzero((edges[1:] > near) & (edges[:-1] < far))
            out[0, rel["row"][j], bins] = 1.0
            out[1, rel["row"][j], bins] = rel["dv_mps"][j] / SPEED_SCALE_MPS
        self._clutter_and_noise(out, p, rng)

    def _lidar(self, rel: dict[str, np.ndarray], out: np.ndarray, rng: np.random.Generator) -> None:
        p = self.params["lidar"]
        visible = ~rel["occluded"] | (rng.random(len(rel["occluded"])) < 0.1)
        seen = visible & (rng.random(len(visible)) < detection_probability(rel["r_m"], p.range_m))
        half, cell = self.lidar_half_m, self.lidar_cell_m
        for j in np.flatnonzero(seen).tolist():
            lo = int(np.floor((rel["rear_m"][j] + half) / cell))
            hi = int(np.floor((rel["front_m"][j] + half) / cell))
            cells = np.arange(max(lo, 0), min(hi, self.lidar_cells - 1) + 1)
            cells = cells[rng.random(len(cells)) >= p.dropout]  # points lost cell by cell
            out[0, rel["row"][j], cells] = 1.0
            out[1, rel["row"][j], cells] = rel["dv_mps"][j] / SPEED_SCALE_MPS
        self._clutter_and_noise(out, p, rng)

    def _radar(self, rel: dict[str, np.ndarray], out: np.ndarray, rng: np.random.Generator) -> None:
        p = self.params["radar"]
        prob = detection_probability(rel["r_m"], p.range_m) * (1 - p.dropout) * np.where(rel["occluded"], 0.5, 1.0)
        seen = np.flatnonzero(rng.random(len(prob)) < prob)
        r = rel["r_m"][seen] + rng.normal(0.0, p.noise, len(seen))
        azimuth = rel["azimuth_rad"][seen] + rng.normal(0.0, 0.02 * p.noise, len(seen))
        rate = rel["dv_mps"][seen] * np.cos(rel["azimuth_rad"][seen]) + rng.normal(0.0, 0.3 * p.noise, len(seen))
        keep = np.argsort(np.abs(r), kind="stable")[: self.radar_returns]
        m = len(keep)
        out[:m, 0] = 1.0
        out[:m, 1] = r[keep] / self.radar_range_m
        out[:m, 2] = azimuth[keep] / np.pi
        out[:m, 3] = rate[keep] / SPEED_SCALE_MPS

    @staticmethod
    def _clutter_and_noise(out: np.ndarray, p: SensorParams, rng: np.random.Generator) -> None:
        """False returns in empty cells, then measurement noise on every cell."""
        empty = out[0] == 0
        ghost = empty & (rng.random(empty.shape) < p.clutter)
        out[0][ghost] = 1.0
        out[1][ghost] = rng.normal(0.0, 0.3, int(ghost.sum()))
        if p.noise:
            out[0] += rng.normal(0.0, p.noise, out[0].shape)
        occupied = out[0] > 0.5
        out[1][occupied] += rng.normal(0.0, p.speed_noise_mps / SPEED_SCALE_MPS, int(occupied.sum()))


def _relative(world: WorldState, observers: np.ndarray, lane_width_m: float, chunk: int = 256
              ) -> Iterator[dict[str, np.ndarray]]:  # fmt: skip
    """Per observer: the other vehicles of its own and adjacent lanes (in row order) as seen from its
    front bumper, lanes `lane_width_m` apart; computed for `chunk` observers at a time as (observers ×
    vehicles) arrays."""
    n = len(world)
    for start in range(0, len(observers), chunk):
        o = observers[start : start + chunk, None]
        near = (np.abs(world.lane[None, :] - world.lane[o]) <= 1) & (np.arange(n)[None, :] != o)
        dl = (world.lane[None, :] - world.lane[o]).astype(int)
        front = world.x_m[None, :] - world.x_m[o]  # their front bumpers, relative
        rear = front - world.length_m[None, :]
        centre = (front + rear) / 2 + world.length_m[o] / 2
        lateral = dl * lane_width_m
        # occlusion: per lane and direction, everything beyond the nearest vehicle
        occluded = np.zeros(near.shape, dtype=bool)
        distance, side = np.abs(centre), np.sign(centre)
        for lane_offset in (-1, 0, 1):
            for sign in (1, -1):
                group = near & (dl == lane_offset) & (side == sign)
                nearest = np.where(group, distance, np.inf).argmin(axis=1)
                group[np.arange(len(o)), nearest] = False
                occluded |= group
        azimuth = np.arctan2(lateral, centre)
        r = np.hypot(centre, lateral)
        dv = world.speed_mps[None, :] - world.speed_mps[o]
        for k in range(len(o)):
            cols = np.flatnonzero(near[k])
            yield {
                "row": dl[k, cols] + 1,
                "front_m": front[k, cols],
                "rear_m": rear[k, cols],
                "centre_m": centre[k, cols],
                "r_m": r[k, cols],
                "azimuth_rad": azimuth[k, cols],
                "dv_mps": dv[k, cols],
                "occluded": occluded[k, cols],
            }


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
