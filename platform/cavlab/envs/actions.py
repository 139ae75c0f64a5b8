"""Action types: how an agent's action becomes the ego's acceleration and lane requests.

An action type turns one action into a lane request (−1 right, 0 keep, +1 left) and an
acceleration law u(v) that the environment applies at every SUMO step of the decision
period. The environment checks the lane request (the lane must exist, no lane change may
be under way) and clips u to the ego's limits [−b, a].
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
from gymnasium import spaces

from cavlab.envs.config import ActionSpec

LANE_LEFT, IDLE, LANE_RIGHT, FASTER, SLOWER = range(5)
META_ACTIONS = {LANE_LEFT: "LANE_LEFT", IDLE: "IDLE", LANE_RIGHT: "LANE_RIGHT", FASTER: "FASTER", SLOWER: "SLOWER"}


class ActionType(ABC):
    space: spaces.Space
    drives = True  # the env applies `accel` at every step; False: something else drives the ego

    def __init__(self, spec: ActionSpec, accel_mps2: float, decel_mps2: float) -> None:
        self.spec = spec
        self.accel_mps2 = accel_mps2
        self.decel_mps2 = decel_mps2
        self.space = self.make_space()

    @staticmethod
    @abstractmethod
    def make_space() -> spaces.Space:
        """The action space (one per instance: spaces carry their own RNG)."""

    @abstractmethod
    def reset(self, speed_mps: float) -> None:
        """A new episode; the ego drives at `speed_mps`."""

    @abstractmethod
    def decide(self, action) -> int:
        """Take the agent's action; the lane request it carries (−1, 0, +1)."""

    def accel(self, speed_mps: float) -> float:
        """The acceleration for the next SUMO step, within [−b, a] (action types that drive)."""
        raise NotImplementedError(f"{type(self).__name__} does not drive the ego")


class DiscreteMetaAction(ActionType):
    """0 LANE_LEFT, 1 IDLE, 2 LANE_RIGHT, 3 FASTER, 4 SLOWER; the ego tracks the current target
    speed v* with u = clip(k·(v* − v), −b, a)."""

    @staticmethod
    def make_space() -> spaces.Space:
        return spaces.Discrete(5)

    def reset(self, speed_mps: float) -> None:
        self.index = int(np.argmin(np.abs(np.asarray(self.spec.target_speeds_mps) - speed_mps)))

    @property
    def target_speed_mps(self) -> float:
        return self.spec.target_speeds_mps[self.index]

    def decide(self, action) -> int:
        a = int(action)
        if a == FASTER:
            self.index = min(self.index + 1, len(self.spec.target_speeds_mps) - 1)
        elif a == SLOWER:
            self.index = max(self.index - 1, 0)
        return {LANE_LEFT: 1, LANE_RIGHT: -1}.get(a, 0)

    def accel(self, speed_mps: float) -> float:
        u = self.spec.speed_gain_per_s * (self.target_speed_mps - speed_mps)
        return min(max(u, -self.decel_mps2), self.accel_mps2)


class ContinuousAction(ActionType):
    """a ∈ [−1, 1]²: u = a₀·a (a₀ ≥ 0) or a₀·b (a₀ < 0), held over the decision period;
    a₁ > 1/3 asks for the left lane, a₁ < −1/3 for the right one."""

    @staticmethod
    def make_space() -> spaces.Space:
        return spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

    def reset(self, speed_mps: float) -> None:
        self.u = 0.0

    def decide(self, action) -> int:
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        self.u = float(a[0] * (self.accel_mps2 if a[0] >= 0 else self.decel_mps2))
        return 1 if a[1] > 1 / 3 else (-1 if a[1] < -1 / 3 else 0)

    def accel(self, speed_mps: float) -> float:
        return self.u


FOLLOW, ASK_LEFT, ASK_RIGHT = range(3)


class PlannerAction(ActionType):
    """0 FOLLOW, 1 ASK_LEFT, 2 ASK_RIGHT: the agent decides when to ask the cooperative planner
    for a lane change; SUMO's car following drives the ego in its lane, the planner during a
    maneuver."""

    drives = False

    @staticmethod
    def make_space() -> spaces.Space:
        return spaces.Discrete(3)

    def reset(self, speed_mps: float) -> None:
        pass

    def decide(self, action) -> int:
        return {ASK_LEFT: 1, ASK_RIGHT: -1}.get(int(action), 0)


ACTION_TYPES: dict[str, type[ActionType]] = {
    "discrete_meta": DiscreteMetaAction,
    "continuous": ContinuousAction,
    "planner": PlannerAction,
}


def make_action(spec: ActionSpec, accel_mps2: float, decel_mps2: float) -> ActionType:
    return ACTION_TYPES[spec.type](spec, accel_mps2, decel_mps2)
