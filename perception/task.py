"""The perception task that closes the loop: a CAV's neighbours, as the lane-change planner needs them.

Six slots per CAV — the nearest vehicle ahead and behind in its own lane, the left lane and
the right lane, within `RANGE_M` bumper to bumper — each with presence (0/1), gap [m]
(bumper to bumper, ≥ 0) and relative speed v_j − v [m/s]. A slot whose lane does not exist
or holds nobody in range is absent (presence 0, gap and speed 0).
"""

from __future__ import annotations

import numpy as np

from cavlab.world import WorldState

SLOTS = ("own_front", "own_rear", "left_front", "left_rear", "right_front", "right_rear")
SLOT_LANE = (0, 0, 1, 1, -1, -1)  # lane offset of each slot
SLOT_AHEAD = (True, False, True, False, True, False)
RANGE_M = 60.0
GAP_TOLERANCE_M = 5.0  # a slot estimate counts as correct within these
SPEED_TOLERANCE_MPS = 2.0


def neighbour_targets(world: WorldState, observers: np.ndarray) -> np.ndarray:
    """(N, 6, 3) float32: presence, gap [m], relative speed [m/s] of each slot of each observer."""
    out = np.zeros((len(observers), len(SLOTS), 3), dtype=np.float32)
    for k, row in enumerate(np.asarray(observers).tolist()):
        x, v, length, lane = world.x_m[row], world.speed_mps[row], world.length_m[row], world.lane[row]
        for s, (offset, ahead) in enumerate(zip(SLOT_LANE, SLOT_AHEAD, strict=True)):
            rows = np.flatnonzero((world.lane == lane + offset) & (np.arange(len(world)) != row))
            if ahead:
                rows = rows[world.x_m[rows] > x]
                gaps = world.x_m[rows] - world.length_m[rows] - x
            else:
                rows = rows[world.x_m[rows] <= x]
                gaps = x - length - world.x_m[rows]
            if not len(rows):
                continue
            j = int(np.argmin(gaps))
            if gaps[j] > RANGE_M:
                continue
            out[k, s] = (1.0, max(float(gaps[j]), 0.0), float(world.speed_mps[rows[j]] - v))
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
