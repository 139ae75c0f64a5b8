"""`TrafficEnv`: one ego CAV driven by an agent in a scenario's real SUMO traffic.

The rest of the traffic is the scenario's: its flows, its vehicle types and its controller
(which sees the ego as a human-driven vehicle and never commands it).
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from cavlab.envs import randomize
from cavlab.envs.config import EnvConfig, EnvConfigError, env_config, merge
from cavlab.envs.core import Agent, AgentTraffic
from cavlab.envs.render import TopDownRenderer

EGO_ID = "ego"
EPISODE_OPTIONS = ("ego", "randomize", "reward", "episode_s", "target_lane", "goal_x_m")
"""What `reset(options={"config": ...})` may change for one episode (the rest needs a new environment)."""


class TrafficEnv(gym.Env):
    """An ego CAV in a scenario's SUMO traffic, one decision every `decision_period_s`.

    Episode: SUMO starts with a seed drawn from the env's RNG, simulates `warmup_s` of
    traffic, then the ego enters (see `EgoSpec`) and, with `randomize` (on by default), the
    traffic around it is perturbed from the same seed (`cavlab.envs.randomize`: density, speed
    factors, CAV share, a gap in the target lane, a slow or no leader, the ego's start). Each
    step applies the action for one decision period (period / step length SUMO steps, the
    scenario's controller driving the others at every step).

    `reset(options={"config": {...}})` changes, for that episode only, any of `EPISODE_OPTIONS`
    (merged into the env's configuration, validated like keyword arguments); later resets
    without it go back to the env's own configuration. `episode_s` may not exceed the env's.

    Observation: `observation.type` (see `Kinematics`, `OccupancyGrid`, `TimeToCollision`).
    Action: `action.type` (see `DiscreteMetaAction`, `ContinuousAction`, `PlannerAction`).

    Reward, the weighted sum of these terms (weights in `reward`):
      speed        clip((v − v_lo)/(v_hi − v_lo), 0, 1) at the end of the period
      target_lane  1 while the ego is in `target_lane`
      comfort      −mean over the period of (u/b)², b the ego's comfortable deceleration
      disruption   −Σ_j ½((x_j(T) − x_j(0))/T − v_j(0))² + ½(v_j(T) − v_j(0))² [m²/s²] over the
                   vehicles within `disruption_range_m` behind the ego when the period starts,
                   in the lane it started in and in the one it ended in (a cut-in's new
                   followers count from the period of the change): how far they were pushed off
                   constant-speed motion, in speed units so the weight does not depend on T
      collision    −1 on a collision or on running out of lane (an acceleration lane's end)
      completion   +1 at a safe end: reaching `goal_x_m`, or the time limit without a failure,
                   in both cases in `target_lane` (when there is one)
      unsafe       −1 when the period ends with a time to collision below `unsafe_ttc_s` (1.5 s)
                   or a bumper gap below `unsafe_headway_s` (0.5 s) × the ego's speed to its
                   leader or follower in its lane: SUMO's drivers brake hard for a cut-in
                   rather than collide, so this is what a reckless lane change costs
    `terminated` on a collision, running out of lane, or reaching `goal_x_m`; `truncated`
    after `episode_s`. `info`: time, the ego's x, speed and lane, the unweighted reward
    terms, and `outcome` (collision, lane_end, goal) when the episode ends; with the option
    `metrics`, the last info also holds `metrics`: the episode's run metrics, as `cavlab run`'s
    summary.json has them (every step is then read: slower).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array", "rgb_array_list", "human"], "render_fps": 10}
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            allowed = ", ".join(self.metadata["render_modes"])
            raise EnvConfigError(f"render_mode '{render_mode}' is not supported (allowed: {allowed})")
        self.render_mode = render_mode
        self.config: EnvConfig = env_config(self.defaults, kwargs)
        self._env_config = self.config
        self._kwargs = kwargs
        self.traffic = AgentTraffic(self.config)
        self.observation_space = self.traffic.observation_type.space
        self.action_space = self.traffic.make_action().space
        self.ego: Agent | None = None
        self._renderer: TopDownRenderer | None = None
        # rgb_array_list: a frame after every SUMO step (render_fps plays them in real time), handed out by render()
        self.metadata = {**self.metadata, "render_fps": round(1 / self.traffic.step_length_s)}
        self._frames: list[np.ndarray] = []
        if render_mode == "rgb_array_list":
            self.traffic.substep_hooks.append(lambda: self._frames.append(self._draw(self.traffic.engine.read())))
        self._figure = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._configure(options)
        traffic, cfg = self.traffic, self.config
        sumo_seed = int(self.np_random.integers(2**31 - 1))
        traffic.start(sumo_seed)
        rng = randomize.episode_rng(sumo_seed)
        spec = randomize.ego_spec(cfg.randomize, cfg.ego, rng) if cfg.randomize is not None else cfg.ego
        self.ego = traffic.place_ego(spec, EGO_ID)
        self.perturbation = None
        if cfg.randomize is not None:
            vid = self.ego.vehicle_id
            self.perturbation = randomize.perturb(cfg.randomize, traffic, vid, cfg.target_lane, rng)
            traffic._advance([])  # a world without the removed vehicles, with the inserted ones
            self.perturbation = randomize.settle(traffic, self.perturbation)
            row = self.ego.row = traffic.world.index_of(vid)
            self.ego.x_m, self.ego.speed_mps = float(traffic.world.x_m[row]), float(traffic.world.speed_mps[row])
        self.start_time_s = traffic.world.time_s
        result = traffic.transition(self.ego)
        if self.perturbation is not None:
            result.info["randomize"] = self.perturbation.as_info()
        if self.render_mode == "human":
            self.render()
        self._frames = [self._draw(traffic.world)] if self.render_mode == "rgb_array_list" else []
        return result.observation, result.info

    def step(self, action):
        if self.ego is None or self.traffic.backend is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        if self.ego.outcome is not None:
            raise gym.error.ResetNeeded("the episode has ended: call reset()")
        self.traffic.step({self.ego.vehicle_id: action})
        elapsed = self.traffic.world.time_s - self.start_time_s
        truncated = self.ego.outcome is None and elapsed >= self.config.episode_s - 1e-9
        result = self.traffic.transition(self.ego, truncated)
        reward = result.reward
        if self.config.metrics and (result.terminated or truncated):
            result.info["metrics"] = self.traffic.episode_result().metrics
        if self.render_mode == "human":
            self.render()
        return result.observation, reward, result.terminated, truncated, result.info

    def _configure(self, options: dict[str, Any] | None) -> None:
        """This episode's configuration: the env's, with `options["config"]` merged in."""
        options = options or {}
        unknown = sorted(set(options) - {"config"})
        if unknown:
            raise EnvConfigError(f"unknown reset option '{unknown[0]}' (allowed: config)")
        update = options.get("config") or {}
        if not isinstance(update, dict):
            raise EnvConfigError("reset option 'config' must be a mapping of environment options")
        fixed = sorted(set(update) - set(EPISODE_OPTIONS))
        if fixed:
            raise EnvConfigError(
                f"reset option config.{fixed[0]} cannot change per episode (make a new environment with it); "
                f"per episode: {', '.join(EPISODE_OPTIONS)}"
            )
        base = self._env_config
        cfg = env_config(self.defaults, merge(self._kwargs, update)) if update else base
        if cfg.episode_s > base.episode_s:
            raise EnvConfigError(
                f"reset option config.episode_s = {cfg.episode_s:g} exceeds the environment's episode_s = "
                f"{base.episode_s:g} (its simulation is sized for that): make the environment with the longer one"
            )
        self.traffic.check_ego(cfg.ego)
        self.traffic.set_goal(cfg)
        self.config = self.traffic.config = cfg

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() without a render_mode: pass render_mode='rgb_array' or 'human' to the env")
            return None
        if self.ego is None:
            raise gym.error.ResetNeeded("call reset() before render()")
        if self.render_mode == "rgb_array_list":  # the frames since the last reset() or render()
            frames, self._frames = self._frames, []
            return frames
        frame = self._draw(self.traffic.world)
        if self.render_mode == "rgb_array":
            return frame
        self._show(frame)
        return None

    def _draw(self, world) -> np.ndarray:
        """The top-down frame of `world` around the ego (where it was last, once it has left)."""
        traffic = self.traffic
        if self._renderer is None:
            self._renderer = TopDownRenderer(traffic.network, traffic.frame.lane_min, traffic.frame.lane_max)
        row = world.index_of(self.ego.vehicle_id)
        if row < 0:
            return self._renderer.frame(world, None, self.ego.x_m)
        return self._renderer.frame(world, row, float(world.x_m[row]))

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
    the mainline's right lane before the acceleration lane ends (its target speeds go down to 0:
    a queue at the ramp's end must be stopped for)."""

    defaults: ClassVar[dict[str, Any]] = {
        "scenario": "on-ramp-merge",
        "warmup_s": 20.0,
        "episode_s": 30.0,
        "target_lane": 0,
        "ego": {"route": "ramp", "lane": -1, "x_m": 720.0, "placement": "insert"},
        "randomize": {"ego_dx_m": [0.0, 60.0], "ego_speed_mps": [14.0, 20.0]},
        "action": {"target_speeds_mps": [0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0]},  # a queue on the ramp: stop
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
