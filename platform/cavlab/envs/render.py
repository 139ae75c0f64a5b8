"""A top-down view drawn from the world state with numpy (no display, no SUMO GUI needed)."""

from __future__ import annotations

import numpy as np

from cavlab.sim.network import Network
from cavlab.world import WorldState

ROAD = np.array([60, 60, 60], dtype=np.uint8)
GRASS = np.array([90, 140, 80], dtype=np.uint8)
MARKING = np.array([220, 220, 220], dtype=np.uint8)
EGO = np.array([40, 200, 60], dtype=np.uint8)
CAV = np.array([40, 140, 240], dtype=np.uint8)
HDV = np.array([240, 200, 40], dtype=np.uint8)


class TopDownRenderer:
    """RGB frames (H, W, 3) of ±half_window_m around the ego; the highest lane on top. On an external
    network only the ego's corridor is drawn (its road and its vehicles; the last one drawn once the
    ego has left)."""

    def __init__(self, network: Network, lane_min: int, lane_max: int, half_window_m: float = 100.0,
                 px_per_m: float = 3.0, lane_px: int = 18) -> None:  # fmt: skip
        self.lane_min, self.lane_max = lane_min, lane_max
        self.half_window_m = half_window_m
        self.px_per_m = px_per_m
        self.lane_px = lane_px
        self.width = round(2 * half_window_m * px_per_m)
        self.height = (lane_max - lane_min + 1) * lane_px + 2 * lane_px
        # per corridor (one on a generated road), where each road lane exists: x intervals of the edges that carry it
        self.edge_corridor = np.asarray(network.external.corridor if network.external else [0] * len(network.edges))
        self.lane_extent: dict[int, dict[int, list[tuple[float, float]]]] = {
            c: {lane: [(e.start_m, e.start_m + e.length_m) for k, e in enumerate(network.edges)
                       if self.edge_corridor[k] == c and e.lane_offset <= lane < e.lane_offset + e.lanes]
                for lane in range(lane_min, lane_max + 1)}
            for c in np.unique(self.edge_corridor).tolist()
        }  # fmt: skip
        self.corridor = int(self.edge_corridor[0])

    def _row(self, lane: int) -> int:
        return self.lane_px + (self.lane_max - lane) * self.lane_px

    def _col(self, x_rel_m: np.ndarray | float) -> np.ndarray:
        return np.round((np.asarray(x_rel_m) + self.half_window_m) * self.px_per_m).astype(int)

    def frame(self, world: WorldState, ego: int | None, center_x_m: float) -> np.ndarray:
        img = np.empty((self.height, self.width, 3), dtype=np.uint8)
        img[:] = GRASS
        if ego is not None:
            self.corridor = int(self.edge_corridor[world.edge[ego]])
        for lane, extents in self.lane_extent[self.corridor].items():
            top = self._row(lane)
            for a, b in extents:
                c0, c1 = np.clip(self._col([a - center_x_m, b - center_x_m]), 0, self.width)
                img[top : top + self.lane_px, c0:c1] = ROAD
                img[top, c0:c1:12] = MARKING
        near = np.flatnonzero((np.abs(world.x_m - center_x_m) <= self.half_window_m + 20)
                              & (self.edge_corridor[world.edge] == self.corridor))  # fmt: skip
        margin = self.lane_px // 5
        for row in near.tolist():
            color = EGO if row == ego else (CAV if world.is_cav[row] else HDV)
            top = self._row(int(world.lane[row]))
            c1 = int(self._col(world.x_m[row] - center_x_m))
            c0 = int(self._col(world.x_m[row] - world.length_m[row] - center_x_m))
            c0, c1 = max(c0, 0), min(c1, self.width)
            if c1 > c0:
                img[top + margin : top + self.lane_px - margin, c0:c1] = color
        return img
