"""Observation types: the nearest vehicles' kinematics, an occupancy grid around the ego, times to
collision, or the ego's own perception.

The first three read only a `WorldState` and the ego's row, so they serve the single-agent env and
every agent of the multi-agent env alike.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from cavlab.envs.config import ObservationSpec
from cavlab.world import WorldState

ACCEL_SCALE_MPS2 = 10.0  # accelerations are normalised by this


class RoadFrame:
    """The road's lanes, their width (the scenario's `road.lane_width_m`) and the speed that normalises speeds."""

    def __init__(self, lane_min: int, lane_max: int, speed_ref_mps: float, *, lane_width_m: float) -> None:
        self.lane_min = lane_min
        self.lane_max = lane_max
        self.lanes = lane_max - lane_min + 1
        self.speed_ref_mps = speed_ref_mps
        self.lane_width_m = float(lane_width_m)


class Kinematics:
    """A (vehicles_count, features) array: the ego's row first, then the nearest vehicles within
    ±range_m ordered by longitudinal distance; absent rows are zeros (presence 0).

    Features (others relative to the ego; the ego's row absolute):
    presence; x = Δx [m] (ego 0); y = Δlane·w [m], w the road's lane width (ego: its lane's offset
    from the lowest lane); vx = Δv [m/s] (ego: v); ax [m/s²]; lane (road lane index); cav (1 for
    CAVs). Normalised: x/range, y/(lanes·w), vx/v_ref, ax/10, (lane − lane_min)/(lanes − 1), all
    clipped to [−1, 1] (highway-env's layout: its policies port with the same features).
    """

    def __init__(self, spec: ObservationSpec, frame: RoadFrame) -> None:
        self.spec = spec
        self.frame = frame
        self.features = spec.feature_names
        shape = (spec.vehicles_count, len(self.features))
        bound = 1.0 if spec.normalize else np.inf
        self.space = spaces.Box(-bound, bound, shape=shape, dtype=np.float32)
        f = frame
        self._scale = {
            "presence": 1.0,
            "x": spec.range_m,
            "y": f.lanes * f.lane_width_m,
            "vx": f.speed_ref_mps,
            "ax": ACCEL_SCALE_MPS2,
            "lane": max(1, f.lanes - 1),
            "cav": 1.0,
        }

    def observe(self, world: WorldState, ego: int) -> np.ndarray:
        spec, f = self.spec, self.frame
        x0, v0, lane0 = world.x_m[ego], world.speed_mps[ego], int(world.lane[ego])
        dx = world.x_m - x0
        near = np.flatnonzero(np.abs(dx) <= spec.range_m)
        near = near[near != ego]
        near = near[np.argsort(np.abs(dx[near]), kind="stable")][: spec.vehicles_count - 1]
        rows = np.concatenate(([ego], near)).astype(np.int64)
        n = len(rows)
        out = np.zeros(self.space.shape, dtype=np.float32)
        lane = world.lane[rows].astype(np.float64)
        for j, name in enumerate(self.features):
            if name == "presence":
                col = np.ones(n)
            elif name == "x":
                col = dx[rows]
            elif name == "y":
                col = (lane - lane0) * f.lane_width_m
                col[0] = (lane0 - f.lane_min) * f.lane_width_m
            elif name == "vx":
                col = world.speed_mps[rows] - v0
                col[0] = v0
            elif name == "ax":
                col = world.accel_mps2[rows]
            elif name == "lane":
                col = lane - f.lane_min if spec.normalize else lane
            else:  # cav
                col = world.is_cav[rows].astype(np.float64)
                col[0] = 1.0
            out[:n, j] = col / self._scale[name] if spec.normalize else col
        if spec.normalize:
            np.clip(out, -1.0, 1.0, out=out)
        return out


class OccupancyGrid:
    """A (features, lanes, cells) grid over ±range_m around the ego's front bumper, one row per
    road lane (lowest lane first), cells of grid_step_m; a vehicle fills every cell its body
    [x − length, x] overlaps, the ego included.

    Features: presence; vx = Δv (normalised by v_ref, clipped); cav.
    """

    def __init__(self, spec: ObservationSpec, frame: RoadFrame) -> None:
        self.spec = spec
        self.frame = frame
        self.features = spec.feature_names
        self.cells = round(2 * spec.range_m / spec.grid_step_m)
        bound = 1.0 if spec.normalize else np.inf
        self.space = spaces.Box(-bound, bound, shape=(len(self.features), frame.lanes, self.cells), dtype=np.float32)

    def observe(self, world: WorldState, ego: int) -> np.ndarray:
        spec, f = self.spec, self.frame
        out = np.zeros(self.space.shape, dtype=np.float32)
        dx = world.x_m - world.x_m[ego]
        rear = dx - world.length_m
        near = np.flatnonzero((dx >= -spec.range_m) & (rear < spec.range_m))
        first = np.clip(np.floor((rear[near] + spec.range_m) / spec.grid_step_m), 0, self.cells - 1).astype(int)
        last = np.clip(np.floor((dx[near] + spec.range_m) / spec.grid_step_m), 0, self.cells - 1).astype(int)
        dv = world.speed_mps[near] - world.speed_mps[ego]
        if spec.normalize:
            dv = np.clip(dv / f.speed_ref_mps, -1.0, 1.0)
        values = {"presence": np.ones(len(near)), "vx": dv, "cav": world.is_cav[near].astype(np.float64)}
        lanes = world.lane[near].astype(int) - f.lane_min
        for j, name in enumerate(self.features):
            col = values[name]
            for k in range(len(near)):
                out[j, lanes[k], first[k] : last[k] + 1] = col[k]
        return out


class TimeToCollision:
    """A (3, 5) array, one row per lane: left, own, right. Columns: the lane exists (within the
    road's lanes); the time to collision with the leader and with the follower there; the gap to
    each. The leader is the nearest vehicle whose front bumper is ahead of the ego's within
    ±range_m, the follower the nearest one at or behind it (in an adjacent lane as if the ego were
    there); gaps are bumper to bumper, at least 0. TTC = gap / closing speed (ego faster than its
    leader, follower faster than the ego), else — and with no vehicle, or no lane — `ttc_cap_s`,
    capped there; a missing vehicle's gap is range_m. Normalised: TTC / ttc_cap_s, gap / range_m."""

    def __init__(self, spec: ObservationSpec, frame: RoadFrame) -> None:
        self.spec = spec
        self.frame = frame
        bound = 1.0 if spec.normalize else np.inf
        self.space = spaces.Box(0.0, bound, shape=(3, 5), dtype=np.float32)

    def observe(self, world: WorldState, ego: int) -> np.ndarray:
        spec, f = self.spec, self.frame
        cap, rng = spec.ttc_cap_s, spec.range_m
        lane0 = int(world.lane[ego])
        out = np.empty((3, 5))
        out[:] = (0.0, cap, cap, rng, rng)
        for k, lane in enumerate((lane0 + 1, lane0, lane0 - 1)):
            if f.lane_min <= lane <= f.lane_max:
                out[k] = (1.0, *lane_ttc(world, ego, lane, cap, rng))
        if spec.normalize:
            out /= (1.0, cap, cap, rng, rng)
        return out.astype(np.float32)


def lane_ttc(world: WorldState, ego: int, lane: int, cap_s: float, range_m: float) -> tuple[float, float, float, float]:
    """(TTC ahead, TTC behind, gap ahead, gap behind) of the ego's leader and follower in `lane` (see
    `TimeToCollision`): capped at `cap_s` and `range_m`."""
    x0, v0 = world.x_m[ego], world.speed_mps[ego]
    dx = world.x_m - x0
    rows = np.flatnonzero((np.abs(dx) <= range_m) & (world.lane == lane) & (np.arange(len(world)) != ego))
    ahead, behind = rows[dx[rows] > 0], rows[dx[rows] <= 0]
    out = [cap_s, cap_s, range_m, range_m]
    if len(ahead):
        r = ahead[np.argmin(dx[ahead])]
        gap = max(0.0, dx[r] - world.length_m[r])
        out[0], out[2] = _ttc(gap, v0 - world.speed_mps[r], cap_s), min(gap, range_m)
    if len(behind):
        r = behind[np.argmax(dx[behind])]
        gap = max(0.0, -dx[r] - world.length_m[ego])
        out[1], out[3] = _ttc(gap, world.speed_mps[r] - v0, cap_s), min(gap, range_m)
    return out[0], out[1], out[2], out[3]


def _ttc(gap_m: float, closing_mps: float, cap_s: float) -> float:
    return float(min(cap_s, gap_m / closing_mps)) if closing_mps > 0 else cap_s


class PerceivedNeighbours:
    """A (6, 3) array: the ego's neighbour slots (own lane, left, right; ahead and behind) as its
    perception estimates them — its simulated camera, lidar and radar frames under the scenario's
    context, through the deep-gated fusion model — each slot presence probability, gap / 60 m and
    relative speed / 30 m/s, clipped to [−1, 1]. The sensor noise is drawn from the generator
    `reset` gets (the env's RNG), so episodes stay reproducible."""

    def __init__(self, spec: ObservationSpec, frame: RoadFrame, context) -> None:
        import torch

        from cavlab.perception.fusion import SPEED_SCALE_MPS, Selection, gated_estimates
        from cavlab.perception.sensors import SensorSuite
        from cavlab.perception.task import RANGE_M, SLOTS
        from cavlab.perception.training import configuration_energies, load_checkpoint

        self.model, self.gate, checkpoint = load_checkpoint(spec.model)
        self.selection = Selection(**checkpoint["selection"])
        self.energies = configuration_energies(self.model)
        self.suite = SensorSuite(context, lane_width_m=frame.lane_width_m)
        self.space = spaces.Box(-1.0, 1.0, shape=(len(SLOTS), 3), dtype=np.float32)
        self.rng = np.random.default_rng(0)
        self._torch, self._gated_estimates = torch, gated_estimates  # imported here: envs stay light without it
        self._scale = np.array([1.0, RANGE_M, SPEED_SCALE_MPS], dtype=np.float32)

    def reset(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def observe(self, world: WorldState, ego: int) -> np.ndarray:
        frames = self.suite.observe(world, np.array([ego]), self.rng)
        tensors = {m: self._torch.from_numpy(getattr(frames, m)) for m in ("camera", "lidar", "radar")}
        estimate, _ = self._gated_estimates(self.model, self.gate, tensors, self.selection, self.energies)
        return np.clip(estimate[0] / self._scale, -1.0, 1.0).astype(np.float32)


def make_observation(spec: ObservationSpec, frame: RoadFrame, context=None):
    """The observation type `spec` asks for (`context`: the scenario's, for perception)."""
    if spec.type == "perception":
        return PerceivedNeighbours(spec, frame, context)
    types = {"kinematics": Kinematics, "occupancy_grid": OccupancyGrid, "ttc": TimeToCollision}
    return types[spec.type](spec, frame)
