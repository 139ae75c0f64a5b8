"""`TrafficParallelEnv`: a PettingZoo ParallelEnv in which every CAV of the traffic is an agent.

    from cavlab.envs.multi_agent import TrafficParallelEnv
    env = TrafficParallelEnv(scenario="highway")
    observations, infos = env.reset(seed=0)
    while env.agents:
        actions = {a: env.action_space(a).sample() for a in env.agents}
        observations, rewards, terminations, truncations, infos = env.step(actions)

Agents enter and leave with the traffic: at reset every CAV in the network becomes an agent
(if there is none after the warm-up, the traffic runs on until one enters), every CAV that
enters later too, named `cav_0`, `cav_1`, … in the order they are adopted (names are never
reused within an episode); CAVs beyond `max_agents` stay with the scenario's controller.
`possible_agents` lists all `max_agents` names, and every one of them has its spaces from the
start. An agent's episode ends (terminated) on a collision, on running out of lane or on
reaching the goal; everyone is truncated after `episode_s`; the episode is over when no agent
is left. Observations, actions and rewards are those of `TrafficEnv`, per agent;
`flatten_observations=True` makes each observation 1-D (row after row). `task` takes the
options of a single-agent environment (its scenario, warm-up, episode length, target lane, …;
its `ego` is not used): `TrafficParallelEnv(task="cavlab/Merge-v0")`.

`state()`, for centralised critics: a fixed-size float32 vector in [−1, 1] (`state_space`),
one row of `STATE_AGENT_FEATURES` per possible agent (`cav_k` in row k; zeros while the agent
is not in `agents`, before it enters and after it is done), then `STATE_TRAFFIC_FEATURES`:

    presence    1 while the agent is live
    x           x / road length
    lane        (lane − lane_min) / (lanes − 1)
    speed       v / speed limit
    accel       a / 10 m/s²
    time        time since reset / episode_s
    vehicles    vehicles in the network × 7.5 m / (lanes × road length) (1: a standing queue)
    mean_speed  mean speed of every vehicle / speed limit
    cav_share   share of the vehicles that are CAVs (agents included)

each clipped to [−1, 1]; `state()[:max_agents * 5].reshape(max_agents, 5)` are the agents' rows.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import load_env_creator
from pettingzoo import ParallelEnv

from cavlab.envs import ENV_IDS
from cavlab.envs.config import EnvConfigError, env_config
from cavlab.envs.core import AgentTraffic
from cavlab.envs.observations import ACCEL_SCALE_MPS2
from cavlab.envs.render import TopDownRenderer
from cavlab.sim.resolve import load_scenario

STATE_AGENT_FEATURES = ("presence", "x", "lane", "speed", "accel")
STATE_TRAFFIC_FEATURES = ("time", "vehicles", "mean_speed", "cav_share")
JAM_SPACING_M = 7.5  # a standing vehicle's share of the lane, for the `vehicles` state feature
FIRST_AGENT_WAIT_S = 60.0  # how long reset lets the traffic run for a first CAV after the warm-up


class TrafficParallelEnv(ParallelEnv):
    """Every CAV an agent (see the module docstring); keyword arguments as for `TrafficEnv`, and
    `max_agents`, `flatten_observations` and `task` (the options of that single-agent env id)."""

    metadata: ClassVar[dict[str, Any]] = {"name": "cavlab_traffic_v0", "render_modes": ["rgb_array"], "render_fps": 10,
                                          "is_parallelizable": True}  # fmt: skip
    defaults: ClassVar[dict[str, Any]] = {"scenario": "highway", "warmup_s": 20.0, "episode_s": 40.0}

    def __init__(self, render_mode: str | None = None, max_agents: int = 32, flatten_observations: bool = False,
                 task: str | None = None, **kwargs: Any) -> None:  # fmt: skip
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise EnvConfigError(f"render_mode '{render_mode}' is not supported (allowed: rgb_array)")
        if not isinstance(max_agents, int) or isinstance(max_agents, bool) or max_agents < 1:
            raise EnvConfigError(f"max_agents must be a positive integer (got {max_agents!r})")
        if not isinstance(flatten_observations, bool):
            raise EnvConfigError(f"flatten_observations must be true or false (got {flatten_observations!r})")
        self.render_mode = render_mode
        self.config = env_config(self._task_defaults(task), kwargs)
        if load_scenario(self.config.scenario, self.config.set).road.kind == "network":
            raise EnvConfigError(
                f"scenario '{self.config.scenario}': road.kind 'network' is not supported by the multi-agent "
                "environment yet (it needs a generated road: highway, on_ramp or lane_drop; the single-agent envs run "
                "on networks)"
            )
        self.traffic = AgentTraffic(self.config)
        self._check_cavs()
        self.possible_agents = [f"cav_{k}" for k in range(max_agents)]
        self.agents: list[str] = []
        self._raw_space = self.traffic.observation_type.space
        self.flatten_observations = flatten_observations
        space = spaces.flatten_space(self._raw_space) if flatten_observations else self._raw_space
        self.observation_spaces = dict.fromkeys(self.possible_agents, space)
        self.action_spaces = {name: self.traffic.make_action().space for name in self.possible_agents}
        width = max_agents * len(STATE_AGENT_FEATURES) + len(STATE_TRAFFIC_FEATURES)
        self.state_space = spaces.Box(-1.0, 1.0, shape=(width,), dtype=np.float32)
        self._rng: np.random.Generator | None = None
        self._renderer: TopDownRenderer | None = None

    def _task_defaults(self, task: str | None) -> dict[str, Any]:
        """This class's defaults, or those of the single-agent env `task` (without its ego)."""
        if task is None:
            return self.defaults
        if task not in ENV_IDS:
            raise EnvConfigError(f"unknown task '{task}' (allowed: {', '.join(ENV_IDS)})")
        return {k: v for k, v in load_env_creator(ENV_IDS[task]).defaults.items() if k != "ego"}

    def _check_cavs(self) -> None:
        """An `EnvConfigError` unless some flow of the scenario brings CAVs (the agents)."""
        scenario = self.traffic.scenario
        demand = scenario.demand
        shares = [demand.cav_share if f.cav_share is None else f.cav_share for f in demand.flows
                  if f.vehicles_per_hour > 0]  # fmt: skip
        if demand.scale == 0 or not any(share > 0 for share in shares):
            raise EnvConfigError(
                f"scenario '{scenario.name}' has no CAVs, and the multi-agent env's agents are its CAVs: give "
                f"demand.cav_share (or a flow's cav_share) > 0, e.g. set=['demand.cav_share=0.2']"
            )

    def observation_space(self, agent: str) -> spaces.Space:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        return self.action_spaces[agent]

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None or self._rng is None:
            self._rng = np.random.default_rng(seed)
        traffic = self.traffic
        traffic.start(int(self._rng.integers(2**31 - 1)))
        self._vehicle_of: dict[str, str] = {}
        self._adopted: set[str] = set()
        self.agents = []
        for _ in range(round(FIRST_AGENT_WAIT_S / traffic.step_length_s)):
            if self._adopt_new():
                break
            traffic.step({})  # no agents: one SUMO step
        else:
            raise EnvConfigError(
                f"no CAV entered the network within {self.config.warmup_s + FIRST_AGENT_WAIT_S:g} s of traffic "
                f"(seed {seed}): the multi-agent env needs CAVs; raise demand.cav_share or the flows' rates"
            )
        self.start_time_s = traffic.world.time_s
        observations, infos = {}, {}
        for name in self.agents:
            result = traffic.transition(traffic.agents[self._vehicle_of[name]])
            observations[name], infos[name] = self._observation(result.observation), result.info
        return observations, infos

    def step(self, actions: dict[str, Any]):
        traffic = self.traffic
        live = list(self.agents)
        traffic.step({self._vehicle_of[name]: a for name, a in actions.items() if name in self._vehicle_of})
        truncate = traffic.world.time_s - self.start_time_s >= self.config.episode_s - 1e-9
        new = self._adopt_new() if not truncate else []
        observations, rewards, terminations, truncations, infos = {}, {}, {}, {}, {}
        for name in live + new:
            result = traffic.transition(traffic.agents[self._vehicle_of[name]], truncate)
            observations[name] = self._observation(result.observation)
            rewards[name], infos[name] = result.reward, result.info
            terminations[name] = result.terminated
            truncations[name] = truncate and not result.terminated
        self.agents = [name for name in live + new if not (terminations[name] or truncations[name])]
        return observations, rewards, terminations, truncations, infos

    def _observation(self, observation: np.ndarray) -> np.ndarray:
        return spaces.flatten(self._raw_space, observation) if self.flatten_observations else observation

    def state(self) -> np.ndarray:
        """The global state (layout in the module docstring), of the world after the last reset or step."""
        traffic = self.traffic
        if self._rng is None or traffic.backend is None:
            raise gym.error.ResetNeeded("call reset() before state()")
        world, frame, road = traffic.world, traffic.frame, traffic.scenario.road
        rows = np.zeros((len(self.possible_agents), len(STATE_AGENT_FEATURES)))
        for name in self.agents:
            row = traffic.agents[self._vehicle_of[name]].row
            rows[int(name.removeprefix("cav_"))] = (
                1.0,
                world.x_m[row] / road.length_m,
                (int(world.lane[row]) - frame.lane_min) / max(1, frame.lanes - 1),
                world.speed_mps[row] / frame.speed_ref_mps,
                world.accel_mps2[row] / ACCEL_SCALE_MPS2,
            )
        n = len(world.ids)
        traffic_features = (
            (world.time_s - self.start_time_s) / self.config.episode_s,
            n * JAM_SPACING_M / (frame.lanes * road.length_m),
            float(world.speed_mps.mean()) / frame.speed_ref_mps if n else 0.0,
            float(world.is_cav.mean()) if n else 0.0,
        )
        state = np.concatenate((rows.ravel(), traffic_features))
        return np.clip(state, -1.0, 1.0).astype(np.float32)

    def _adopt_new(self) -> list[str]:
        """Hand every CAV not yet seen to a new agent while names last."""
        traffic, world = self.traffic, self.traffic.world
        new = []
        for row in np.flatnonzero(world.is_cav).tolist():
            vid = world.ids[row]
            if vid in self._adopted or len(self._vehicle_of) == len(self.possible_agents):
                continue
            self._adopted.add(vid)
            name = self.possible_agents[len(self._vehicle_of)]
            self._vehicle_of[name] = vid
            traffic.adopt(vid)
            new.append(name)
        self.agents += new
        return new

    def render(self):
        if self.render_mode is None:
            return None
        traffic = self.traffic
        if self._renderer is None:
            half = traffic.scenario.road.length_m / 2
            frame = traffic.frame
            self._renderer = TopDownRenderer(traffic.network, frame.lane_min, frame.lane_max, half, px_per_m=0.5)
        return self._renderer.frame(traffic.world, None, traffic.scenario.road.length_m / 2)

    def close(self) -> None:
        self.traffic.dispose()


def parallel_env(**kwargs: Any) -> TrafficParallelEnv:
    """PettingZoo-style constructor."""
    return TrafficParallelEnv(**kwargs)
