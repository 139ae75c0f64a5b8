"""`TrafficParallelEnv`: a PettingZoo ParallelEnv in which every CAV of the traffic is an agent.

    from cavlab.envs.multi_agent import TrafficParallelEnv
    env = TrafficParallelEnv(scenario="highway")
    observations, infos = env.reset(seed=0)
    while env.agents:
        actions = {a: env.action_space(a).sample() for a in env.agents}
        observations, rewards, terminations, truncations, infos = env.step(actions)

Agents enter and leave with the traffic: at reset every CAV in the network becomes an agent,
every CAV that enters later too, named `cav_0`, `cav_1`, … in the order they are adopted
(names are never reused within an episode); CAVs beyond `max_agents` stay with the
scenario's controller. An agent's episode ends (terminated) on a collision, on running out
of lane or on reaching the goal; everyone is truncated after `episode_s`. Observations,
actions and rewards are those of `TrafficEnv`, per agent.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from cavlab.envs.config import EnvConfigError, env_config
from cavlab.envs.core import AgentTraffic
from cavlab.envs.render import TopDownRenderer


class TrafficParallelEnv(ParallelEnv):
    """Every CAV an agent (see the module docstring); keyword arguments as for `TrafficEnv`."""

    metadata: ClassVar[dict[str, Any]] = {"name": "cavlab_traffic_v0", "render_modes": ["rgb_array"], "render_fps": 10,
                                          "is_parallelizable": True}  # fmt: skip
    defaults: ClassVar[dict[str, Any]] = {"scenario": "highway", "warmup_s": 20.0, "episode_s": 40.0}

    def __init__(self, render_mode: str | None = None, max_agents: int = 32, **kwargs: Any) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise EnvConfigError(f"render_mode '{render_mode}' is not supported (allowed: rgb_array)")
        if not isinstance(max_agents, int) or max_agents < 1:
            raise EnvConfigError(f"max_agents must be a positive integer (got {max_agents!r})")
        self.render_mode = render_mode
        self.config = env_config(self.defaults, kwargs)
        self.traffic = AgentTraffic(self.config)
        self.possible_agents = [f"cav_{k}" for k in range(max_agents)]
        self.agents: list[str] = []
        self._observation_space = self.traffic.observation_type.space
        self._rng: np.random.Generator | None = None
        self._renderer: TopDownRenderer | None = None

    def observation_space(self, agent: str) -> spaces.Space:
        return self._observation_space

    @functools.cache  # noqa: B019 - one space object per agent, as PettingZoo requires
    def action_space(self, agent: str) -> spaces.Space:
        return self.traffic.make_action().space

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None or self._rng is None:
            self._rng = np.random.default_rng(seed)
        traffic = self.traffic
        world = traffic.start(int(self._rng.integers(2**31 - 1)))
        self._vehicle_of: dict[str, str] = {}
        self._adopted: set[str] = set()
        self.agents = []
        self.start_time_s = world.time_s
        self._adopt_new()
        observations, infos = {}, {}
        for name in self.agents:
            result = traffic.transition(traffic.agents[self._vehicle_of[name]])
            observations[name], infos[name] = result.observation, result.info
        return observations, infos

    def step(self, actions: dict[str, Any]):
        traffic = self.traffic
        live = list(self.agents)
        traffic.step({self._vehicle_of[name]: a for name, a in actions.items() if name in self._vehicle_of})
        truncate = traffic.world.time_s - self.start_time_s >= self.config.episode_s - 1e-9
        new = self._adopt_new() if not truncate else []
        observations, rewards, terminations, truncations, infos = {}, {}, {}, {}, {}
        for name in live + new:
            result = traffic.transition(traffic.agents[self._vehicle_of[name]])
            observations[name], rewards[name], infos[name] = result.observation, result.reward, result.info
            terminations[name] = result.terminated
            truncations[name] = truncate and not result.terminated
        self.agents = [name for name in live + new if not (terminations[name] or truncations[name])]
        return observations, rewards, terminations, truncations, infos

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
