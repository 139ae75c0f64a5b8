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
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

import numpy as np
import yaml

from cavlab.config.scenario import ContextSpec
from cavlab.errors import UserError
from cavlab.world import WorldState

SPEED_SCALE_MPS = 30.0  # relative speeds are divided by this in the frames
SENSORS = ("camera", "lidar", "radar")
ROWS = 3  # right, own, left lane


@dataclass(frozen=True)
class SensorParams:
    """One sensor's parameters in one context."""

    range_m: float
    noise: float
    dropout: float
    clutter: float
    blackout: float = 0.0  # probability that a whole frame is lost (a fault)
    speed_noise_mps: float = 0.0


@cache
def sensor_table() -> dict[str, Any]:
    """The shipped sensor and context table (`sensors.yaml`)."""
    return yaml.safe_load(files("cavlab.perception").joinpath("sensors.yaml").read_text())


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
            effect = effects.get(name, {})
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


def check_table(table: dict[str, Any]) -> None:
    """Raise `UserError` naming the first missing or invalid entry of a sensor table."""
    for name in SENSORS:
        if name not in table:
            raise UserError(f"sensor table: missing sensor '{name}'")
        for key in ("range_m", "noise", "dropout", "clutter"):
            value = table[name].get(key)
            if not isinstance(value, (int, float)) or value < 0:
                raise UserError(f"sensor table: {name}.{key} must be a number ≥ 0 (got {value!r})")
    for block, names in (("weather", ("clear", "rain", "fog", "snow")), ("light", ("day", "dusk", "night"))):
        for key in names:
            if key not in table.get(block, {}):
                raise UserError(f"sensor table: missing {block}.{key}")
