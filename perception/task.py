"""The perception task that closes the loop: a CAV's neighbours, as the lane-change planner needs them.

Six slots per CAV — the nearest vehicle ahead and behind in its own lane, the left lane and
the right lane, within `RANGE_M` bumper to bumper — each with presence (0/1), gap [m]
(bumper to bumper, ≥ 0) and relative speed v_j − v [m/s]. A slot whose lane does not exist
or holds nobody in range is absent (presence 0, gap and speed 0).
"""

from __future__ import annotations

import numpy as np

from cavlab.config.scenario import PERCEPTION_SLOTS as SLOTS
from cavlab.world import WorldState

SLOT_LANE = (0, 0, 1, 1, -1, -1)  # lane offset of each slot
SLOT_AHEAD = (True, False, True, False, True, False)
RANGE_M = 60.0
GAP_TOLERANCE_M = 5.0  # a slot estimate counts as correct within these
SPEED_TOLERANCE_MPS = 2.0


def neighbour_rows(world: WorldState, observers: np.ndarray) -> np.ndarray:
    """(N, 6) int64: the world row of each slot's vehicle for each observer, −1 where the slot is absent
    (ties: the lowest row)."""
    o = np.asarray(observers, dtype=np.int64)[:, None]
    others = np.arange(len(world))[None, :] != o
    x, length = world.x_m[None, :], world.length_m[None, :]
    x_o, length_o, lane_o = world.x_m[o], world.length_m[o], world.lane[o].astype(np.int64)
    out = np.full((len(o), len(SLOTS)), -1, dtype=np.int64)
    for s, (offset, ahead) in enumerate(zip(SLOT_LANE, SLOT_AHEAD, strict=True)):
        candidates = others & (world.lane[None, :] == lane_o + offset) & ((x > x_o) if ahead else (x <= x_o))
        gaps = np.where(candidates, (x - length - x_o) if ahead else (x_o - length_o - x), np.inf)
        if gaps.shape[1]:
            nearest = gaps.argmin(axis=1)
            out[:, s] = np.where(gaps[np.arange(len(o)), nearest] <= RANGE_M, nearest, -1)
    return out


def neighbour_targets(world: WorldState, observers: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """(N, 6, 3) float32: presence, gap [m], relative speed [m/s] of each slot of each observer
    (`rows`: their `neighbour_rows`, if already known)."""
    observers = np.asarray(observers)
    rows = neighbour_rows(world, observers) if rows is None else rows
    out = np.zeros((len(observers), len(SLOTS), 3), dtype=np.float32)
    k, s = np.nonzero(rows >= 0)
    j, me = rows[k, s], observers[k]
    ahead = np.array(SLOT_AHEAD)[s]
    gap = np.where(
        ahead, world.x_m[j] - world.length_m[j] - world.x_m[me], world.x_m[me] - world.length_m[me] - world.x_m[j]
    )
    out[k, s, 0] = 1.0
    out[k, s, 1] = np.maximum(gap, 0.0)
    out[k, s, 2] = world.speed_mps[j] - world.speed_mps[me]
    return out


def slot_correct(estimate: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per slot: the presence is right and, if present, the gap within 5 m and the relative speed
    within 2 m/s. `estimate` holds presence probabilities (> 0.5 = present)."""
    present = estimate[..., 0] > 0.5
    truth = target[..., 0] > 0.5
    close = (np.abs(estimate[..., 1] - target[..., 1]) <= GAP_TOLERANCE_M) & (
        np.abs(estimate[..., 2] - target[..., 2]) <= SPEED_TOLERANCE_MPS
    )
    return (present == truth) & (~truth | close)
