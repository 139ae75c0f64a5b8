"""`TrafficEnv`: one ego CAV driven by an agent in a scenario's real SUMO traffic.

The rest of the traffic is the scenario's: its flows, its vehicle types and its controller
(which sees the ego as a human-driven vehicle and never commands it).
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from cavlab.envs.config import EnvConfig, EnvConfigError, env_config
from cavlab.envs.core import Agent, AgentTraffic
from cavlab.envs.render import TopDownRenderer

EGO_ID = "ego"


class TrafficEnv(gym.Env):
    """An ego CAV in a scenario's SUMO traffic, one decision every `decision_period_s`.

    Episode: SUMO starts with a seed drawn from the env's RNG, simulates `warmup_s` of
    traffic, then the ego enters (see `EgoSpec`). Each step applies the action for one
    decision period (period / step length SUMO steps, the scenario's controller driving the
    others at every step).

    Observation: `observation.type` (see `Kinematics`, `OccupancyGrid`). Action:
    `action.type` (see `DiscreteMetaAction`, `ContinuousAction`).

    Reward, the weighted sum of these terms (weights in `reward`):
      speed        clip((v − v_lo)/(v_hi − v_lo), 0, 1) at the end of the period
      target_lane  1 while the ego is in `target_lane`
      comfort      −mean over the period of (u/b)², b the ego's comfortable deceleration
      disruption   −Σ_j ½(x_j(T) − x_j(0) − v_j(0)·T)² + ½(v_j(T) − v_j(0))² over the vehicles
                   behind the ego in its lane within `disruption_range_m` when the period
                   starts: how far they were pushed off constant-speed motion (the cooperative
                   controller's disruption metric over one period)
      collision    −1 on a collision or on running out of lane (an acceleration lane's end)
    `terminated` on a collision, running out of lane, or reaching `goal_x_m`; `truncated`
    after `episode_s`. `info`: time, the ego's x, speed and lane, the unweighted reward
    terms, and `outcome` (collision, lane_end, goal) when the episode ends; with the option
    `metrics`, the last info also holds `metrics`: the episode's run metrics, as `cavlab run`'s
    summary.json has them (every step is then read: slower).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array", "human"], "render_fps": 10}
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise EnvConfigError(f"render_mode '{render_mode}' is not supported (allowed: rgb_array, human)")
        self.render_mode = render_mode
        self.config: EnvConfig = env_config(self.defaults, kwargs)
        self.traffic = AgentTraffic(self.config)
        self.observation_space = self.traffic.observation_type.space
        self.action_space = self.traffic.make_action().space
        self.ego: Agent | None = None
        self._renderer: TopDownRenderer | None = None
        self._figure = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        traffic = self.traffic
        traffic.start(int(self.np_random.integers(2**31 - 1)))
        self.ego = traffic.place_ego(self.config.ego, EGO_ID)
        self.start_time_s = traffic.world.time_s
        result = traffic.transition(self.ego)
        if self.render_mode == "human":
            self.render()
        return result.observation, result.info

    def step(self, action):
        if self.ego is None or self.traffic.backend is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        if self.ego.outcome is not None:
            raise gym.error.ResetNeeded("the episode has ended: call reset()")
        self.traffic.step({self.ego.vehicle_id: action})
        result = self.traffic.transition(self.ego)
        elapsed = self.traffic.world.time_s - self.start_time_s
        truncated = not result.terminated and elapsed >= self.config.episode_s - 1e-9
        if self.config.metrics and (result.terminated or truncated):
            result.info["metrics"] = self.traffic.episode_result().metrics
        if self.render_mode == "human":
            self.render()
        return result.observation, result.reward, result.terminated, truncated, result.info

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() without a render_mode: pass render_mode='rgb_array' or 'human' to the env")
            return None
        if self.ego is None:
            raise gym.error.ResetNeeded("call reset() before render()")
        traffic = self.traffic
        if self._renderer is None:
            self._renderer = TopDownRenderer(traffic.network, traffic.frame.lane_min, traffic.frame.lane_max)
        row = self.ego.row if self.ego.row >= 0 else None
        frame = self._renderer.frame(traffic.world, row, self.ego.x_m)
        if self.render_mode == "rgb_array":
            return frame
        self._show(frame)
        return None

    def close(self) -> None:
        self.traffic.dispose()
        if self._figure is not None:
            import matplotlib.pyplot as plt

            plt.close(self._figure)
            self._figure = None
        super().close()

    def _show(self, frame: np.ndarray) -> None:
        import matplotlib.pyplot as plt

        if self._figure is None:
            self._figure, ax = plt.subplots(figsize=(frame.shape[1] / 100, frame.shape[0] / 100 + 0.3))
            ax.set_axis_off()
            self._image = ax.imshow(frame)
            plt.show(block=False)
        else:
            self._image.set_data(frame)
        plt.pause(1 / self.metadata["render_fps"])


class LaneChangeEnv(TrafficEnv):
    """`cavlab/LaneChange-v0`: the ego is a vehicle of the slow right lane of
    `highway-lane-change`, at most 60 m behind a slower vehicle, and must get into the busy
    fast lane (lane 1) to go faster."""

    defaults: ClassVar[dict[str, Any]] = {
        "scenario": "highway-lane-change",
        "warmup_s": 15.0,
        "episode_s": 40.0,
        "target_lane": 1,
        "ego": {"route": "mainline", "lane": 0, "x_m": 150.0, "placement": "takeover", "leader_within_m": 60.0},
    }


class MergeEnv(TrafficEnv):
    """`cavlab/Merge-v0`: the ego starts on the on-ramp of `on-ramp-merge` and must merge into
    the mainline's right lane before the acceleration lane ends."""

    defaults: ClassVar[dict[str, Any]] = {
        "scenario": "on-ramp-merge",
        "warmup_s": 20.0,
        "episode_s": 30.0,
        "target_lane": 0,
        "ego": {"route": "ramp", "lane": -1, "x_m": 720.0, "placement": "insert"},
    }


class HighwayEnv(TrafficEnv):
    """`cavlab/Highway-v0`: general driving in the middle lane of the three-lane `highway`
    scenario (cars and trucks, 20 % CAVs): go fast without hitting anyone."""

    defaults: ClassVar[dict[str, Any]] = {
        "scenario": "highway",
        "warmup_s": 12.0,
        "episode_s": 40.0,
        "ego": {"route": "mainline", "lane": 1, "x_m": 150.0, "placement": "takeover"},
    }
