"""Baseline drivers to compare trained policies with."""

from __future__ import annotations

import numpy as np

from cavlab.envs.actions import FASTER, IDLE, LANE_LEFT, LANE_RIGHT, SLOWER


def rule_based_action(env) -> int:
    """A gap-acceptance driver on the ego's true surroundings (discrete meta actions): change
    to the target lane (else the left one) when the leader is slower and both gaps there exceed
    the safe distance 0.9·v + 3 m plus the closing over 3 s; brake when closer than that to the
    leader; otherwise aim for the fastest target speed."""
    base = env.unwrapped
    traffic, ego = base.traffic, base.ego
    world, row = traffic.world, ego.row
    x, v, lane = world.x_m[row], world.speed_mps[row], int(world.lane[row])

    def gaps(in_lane: int) -> tuple[float, float, float, float]:
        """(gap ahead, leader speed, gap behind, follower speed) in another lane, as if the ego were there."""
        rows = np.flatnonzero((world.lane == in_lane) & (np.arange(len(world)) != row))
        ahead, behind = rows[world.x_m[rows] > x], rows[world.x_m[rows] <= x]
        front = (np.inf, v)
        if len(ahead):
            r = ahead[np.argmin(world.x_m[ahead])]
            front = (world.x_m[r] - world.length_m[r] - x, world.speed_mps[r])
        rear = (np.inf, v)
        if len(behind):
            r = behind[np.argmax(world.x_m[behind])]
            rear = (x - world.length_m[row] - world.x_m[r], world.speed_mps[r])
        return (*front, *rear)

    def safe(gap: float, follower_v: float, leader_v: float) -> bool:
        return gap >= 0.9 * follower_v + 3.0 + max(0.0, follower_v - leader_v) * 3.0

    lead = int(world.leader_ahead_row[row])  # in its own lane
    gap, v_lead = (world.gap_m(row, lead), world.speed_mps[lead]) if lead >= 0 else (np.inf, v)
    if world.time_s >= ego.lane_change_until_s and v_lead < v - 0.5:
        target = base.config.target_lane if base.config.target_lane is not None else lane + 1
        step = int(np.sign(target - lane)) or 1
        if traffic._lane_exists(row, lane + step):
            g_front, v_front, g_rear, v_rear = gaps(lane + step)
            if safe(g_front, v, v_front) and safe(g_rear, v_rear, v):
                return LANE_LEFT if step > 0 else LANE_RIGHT
    if not safe(gap, v, v_lead):
        return SLOWER
    return FASTER if gap > 2 * (0.9 * v + 3.0) else IDLE
