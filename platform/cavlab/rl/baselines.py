"""Baseline drivers to compare trained policies with: random, constant and open-loop action
sequences (`search_open_loop` finds the best short one), a rule-based driver (IDM car following
with MOBIL gap acceptance) and the cooperative planner (planner actions).

Each is a `Baseline`: `reset()` at the start of an episode, then `act(obs)` once per step; the
drivers read the ego's true surroundings from the environment (`env.unwrapped`)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

from cavlab.envs.actions import ASK_LEFT, ASK_RIGHT, FASTER, FOLLOW, IDLE, LANE_LEFT, LANE_RIGHT, META_ACTIONS, SLOWER

# the rule-based driver: IDM (Treiber) along the lane, MOBIL (Kesting) across lanes
IDM_S0_M, IDM_HEADWAY_S, IDM_COMFORT_MPS2 = 2.0, 1.2, 2.0
MOBIL_SAFE_DECEL_MPS2 = 4.0  # no lane change that makes anyone (the ego included) brake harder
SAFE_HEADWAY_S = 0.4  # the headway a lane change must leave to the new leader and the new follower
MOBIL_POLITENESS = 0.3
MOBIL_THRESHOLD_MPS2 = 0.2
TARGET_BIAS_MPS2 = 3.0  # the pull towards the target lane; never out of it
LOOKAHEAD_S = 3.0  # speeding up: the target speed nearest where IDM heads over this time
GAP_SEEK_MPS = 3.0  # no safe gap in the target lane: drive this much slower than its vehicles there
DEADBAND_MPS2 = 0.3  # |a| below this keeps the target speed
DESIRED_ABOVE_MPS = 3.0  # IDM's desired speed: this much above the fastest target speed


class Baseline:
    """A policy of the evaluation: `reset()` before each episode, `act(obs)` at each step."""

    def reset(self) -> None:
        pass

    def act(self, obs):
        raise NotImplementedError


class RandomPolicy(Baseline):
    def __init__(self, env) -> None:
        self.env = env

    def act(self, obs):
        return self.env.action_space.sample()


class OpenLoop(Baseline):
    """`sequence[t]` at step t, then its last action for ever (blind: the observation is ignored)."""

    def __init__(self, sequence: Sequence[int]) -> None:
        self.sequence = tuple(int(a) for a in sequence)
        self.t = 0

    def reset(self) -> None:
        self.t = 0

    def act(self, obs) -> int:
        a = self.sequence[min(self.t, len(self.sequence) - 1)]
        self.t += 1
        return a

    @property
    def name(self) -> str:
        return "→".join(META_ACTIONS[a] for a in self.sequence)


class RuleBased(Baseline):
    """`rule_based_action` at every step."""

    def __init__(self, env) -> None:
        self.env = env

    def act(self, obs) -> int:
        return rule_based_action(self.env)


class Planner(Baseline):
    """`planner_action` at every step (an environment with `action.type` planner)."""

    def __init__(self, env) -> None:
        self.env = env

    def act(self, obs) -> int:
        return planner_action(self.env)


def run_episode(env, policy: Baseline, seed: int) -> dict:
    """One episode of `policy` from `reset(seed=seed)`: its return, outcome, mean speed, steps, whether it
    completed, and each reward term summed over the episode (unweighted)."""
    obs, info = env.reset(seed=seed)
    env.action_space.seed(seed)
    policy.reset()
    total, speeds, terms, done = 0.0, [], {}, False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy.act(obs))
        total += float(reward)
        speeds.append(info.get("speed_mps", np.nan))
        for name, value in info.get("reward_terms", {}).items():
            terms[name] = terms.get(name, 0.0) + value
        done = terminated or truncated
    return {"return": total, "outcome": info.get("outcome"), "mean_speed_mps": float(np.nanmean(speeds)),
            "steps": len(speeds), "completed": bool(info.get("reward_terms", {}).get("completion", 0.0)),
            "terms": terms}  # fmt: skip


def open_loop_sequences(max_length: int, actions: int = 5) -> list[tuple[int, ...]]:
    """Every action sequence of length ≤ `max_length` that differs from the shorter ones (its last
    action is repeated after it, so a sequence ending in a repeat is the shorter one)."""
    out: list[tuple[int, ...]] = []
    for n in range(1, max_length + 1):
        out += [s for s in itertools.product(range(actions), repeat=n) if n == 1 or s[-1] != s[-2]]
    return out


def search_open_loop(
    env, seeds: Sequence[int], max_length: int, progress: Callable[[], None] | None = None
) -> tuple[tuple[int, ...], dict[tuple[int, ...], float]]:
    """The open-loop sequence (`open_loop_sequences`) with the best mean return over the episodes
    of `seeds`, and every sequence's mean return."""
    scores: dict[tuple[int, ...], float] = {}
    for sequence in open_loop_sequences(max_length, int(env.action_space.n)):
        policy = OpenLoop(sequence)
        scores[sequence] = float(np.mean([run_episode(env, policy, s)["return"] for s in seeds]))
        if progress is not None:
            progress()
    return max(scores, key=scores.get), scores


def idm_accel(v: float, v0: float, gap: float, v_lead: float, a_max: float) -> float:
    """IDM acceleration of a vehicle at `v` wanting `v0`, `gap` (bumper to bumper) behind a leader at `v_lead`."""
    s_star = IDM_S0_M + max(0.0, v * IDM_HEADWAY_S + v * (v - v_lead) / (2.0 * np.sqrt(a_max * IDM_COMFORT_MPS2)))
    free = 1.0 - (v / max(v0, 0.1)) ** 4
    return a_max * (free - (s_star / max(gap, 0.1)) ** 2) if np.isfinite(gap) else a_max * free


def _neighbours(world, row: int, lane: int) -> tuple[int, int]:
    """(leader row, follower row) of the ego in `lane` as if it were there (−1: none)."""
    rows = np.flatnonzero((world.lane == lane) & (np.arange(len(world)) != row))
    x = world.x_m[row]
    ahead, behind = rows[world.x_m[rows] > x], rows[world.x_m[rows] <= x]
    lead = int(ahead[np.argmin(world.x_m[ahead])]) if len(ahead) else -1
    follow = int(behind[np.argmax(world.x_m[behind])]) if len(behind) else -1
    return lead, follow


def _safe_gap(gap: float, v_behind: float, v_ahead: float) -> bool:
    """Whether a gap lets the one behind keep SAFE_HEADWAY_S (plus s₀) after braking off its closing
    speed at MOBIL_SAFE_DECEL_MPS2."""
    closing = max(0.0, v_behind - v_ahead)
    return gap >= IDM_S0_M + SAFE_HEADWAY_S * v_behind + closing**2 / (2.0 * MOBIL_SAFE_DECEL_MPS2)


def rule_based_action(env) -> int:
    """A competent driver on the ego's true surroundings (discrete meta actions).

    Along the lane, IDM (s₀ 2 m, headway 1.2 s, comfortable deceleration 2 m/s², desired speed 3 m/s
    above the fastest target speed; the end of the ego's lane is a stopped leader) gives an
    acceleration a, and the driver steps the target speed towards the highest one at most
    v + a·period (a < −0.3 m/s²) or the one nearest v + a·3 s (a > 0.3 m/s²; never down).
    Across lanes, MOBIL: change to an adjacent lane when both gaps there are safe (`_safe_gap`: 2 m
    + 0.4 s headway + the closing speed braked off at 4 m/s²) and the ego's IDM gain plus 0.3 × its
    old and new followers' gains (their IDM accelerations, at least −4 m/s²) exceeds 0.2 m/s², with
    a pull of 3 m/s² towards the target lane (an ending lane pulls up to 15 m/s² more over its last
    200 m) and never out of it; with no safe gap towards the target lane, it falls back to 3 m/s
    below the vehicles there until a gap comes. While a lane change is under way, the leaders of
    the lanes on both sides count too.
    """
    base = env.unwrapped
    traffic, ego, cfg = base.traffic, base.ego, base.config
    world, row = traffic.world, ego.row
    x, v, lane, length = world.x_m[row], world.speed_mps[row], int(world.lane[row]), world.length_m[row]
    speeds = cfg.action.target_speeds_mps
    v0, a_max, limit = speeds[-1] + DESIRED_ABOVE_MPS, traffic.accel_mps2, traffic.scenario.road.speed_limit_mps

    def front(lead: int) -> tuple[float, float]:
        return (world.x_m[lead] - world.length_m[lead] - x, world.speed_mps[lead]) if lead >= 0 else (np.inf, v)

    def accel_behind(lead: int, extra: tuple[float, float] | None = None) -> float:
        gap, v_lead = front(lead)
        if extra is not None and extra[0] < gap:
            gap, v_lead = extra
        return idm_accel(v, v0, gap, v_lead, a_max)

    def follower_accel(f: int, leader_x: float, leader_len: float, leader_v: float) -> float:
        if f < 0:
            return 0.0
        gap = leader_x - leader_len - world.x_m[f]
        a = idm_accel(world.speed_mps[f], max(world.speed_mps[f], limit), gap, leader_v, 2.0)
        return max(a, -MOBIL_SAFE_DECEL_MPS2)  # IDM overstates how hard SUMO's drivers brake; safety is `_safe_gap`'s

    ends = traffic.network.lane_ends_ahead()
    edge = int(world.edge[row])
    end = ends.get((edge, lane))
    wall = (end - x, 0.0) if end is not None else None  # the lane's end, a stopped leader
    lead, follow = _neighbours(world, row, lane)
    a_here = accel_behind(lead, wall)
    target = cfg.target_lane
    best, best_gain, blocked = 0, MOBIL_THRESHOLD_MPS2, None
    if world.time_s >= ego.lane_change_until_s and not (target is not None and lane == target):
        for step in (1, -1):
            new = lane + step
            if not traffic._lane_exists(row, new):
                continue
            n_lead, n_follow = _neighbours(world, row, new)
            gap_front, _ = front(n_lead)
            gap_rear = x - length - world.x_m[n_follow] if n_follow >= 0 else np.inf
            n_end = ends.get((edge, new))
            a_new = accel_behind(n_lead, (n_end - x, 0.0) if n_end is not None else None)
            nf_after = follower_accel(n_follow, x, length, v)
            v_rear = world.speed_mps[n_follow] if n_follow >= 0 else v
            v_front = world.speed_mps[n_lead] if n_lead >= 0 else v
            if not (_safe_gap(gap_front, v, v_front) and _safe_gap(gap_rear, v_rear, v)):
                if target is not None and (target - lane) * step > 0:
                    blocked = min(v_rear, v_front) - GAP_SEEK_MPS  # fall back behind the target lane's traffic
                continue
            nf_before = 0.0
            if n_follow >= 0 and n_lead >= 0:
                nf_before = follower_accel(n_follow, world.x_m[n_lead], world.length_m[n_lead], world.speed_mps[n_lead])
            of_before = follower_accel(follow, x, length, v)
            of_after = 0.0
            if follow >= 0 and lead >= 0:
                of_after = follower_accel(follow, world.x_m[lead], world.length_m[lead], world.speed_mps[lead])
            gain = a_new - a_here + MOBIL_POLITENESS * (nf_after - nf_before + of_after - of_before)
            if target is not None:
                gain += TARGET_BIAS_MPS2 * (1 if (target - lane) * step > 0 else -100)
            if wall is not None:
                gain += TARGET_BIAS_MPS2 * max(0.0, 1.0 - wall[0] / 200.0) * 5.0
            if gain > best_gain:
                best, best_gain = step, gain
    if best:
        return LANE_LEFT if best > 0 else LANE_RIGHT
    if blocked is not None:  # a gap comes from ahead at GAP_SEEK_MPS
        a_here = min(a_here, (blocked - v) / cfg.decision_period_s)
    if world.time_s < ego.lane_change_until_s:  # changing lanes: mind the leaders of both lanes it may be between
        for side in (lane - 1, lane + 1):
            if traffic._lane_exists(row, side):
                a_here = min(a_here, accel_behind(_neighbours(world, row, side)[0]))
    index = ego.action.index
    if a_here < -DEADBAND_MPS2:  # the highest target speed at or below v + a·period
        wanted = v + a_here * cfg.decision_period_s
        j = max([k for k, s in enumerate(speeds) if s <= wanted], default=0)
    elif a_here > DEADBAND_MPS2:  # the target speed nearest the speed IDM heads for over the next 3 s
        j = max(index, int(np.argmin(np.abs(np.asarray(speeds) - (v + a_here * LOOKAHEAD_S)))))
    else:
        j = index
    return FASTER if j > index else SLOWER if j < index else IDLE


def planner_action(env) -> int:
    """Planner actions: ask the cooperative planner for the target lane until a maneuver runs (with
    no target lane: the left lane, when the leader within 60 m is slower than 80 % of the limit)."""
    base = env.unwrapped
    traffic, ego, cfg = base.traffic, base.ego, base.config
    if ego.in_maneuver:
        return FOLLOW
    world, row = traffic.world, ego.row
    lane, target = int(world.lane[row]), cfg.target_lane
    if target is None:
        lead = int(world.leader_ahead_row[row])
        slow = (
            lead >= 0
            and world.gap_m(row, lead) < 60
            and world.speed_mps[lead] < 0.8 * traffic.scenario.road.speed_limit_mps
        )
        target = lane + 1 if slow else lane
    if target == lane:
        return FOLLOW
    return ASK_LEFT if target > lane else ASK_RIGHT
