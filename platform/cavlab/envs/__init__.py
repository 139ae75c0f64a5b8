"""Gymnasium environments on cavlab's engine (and a PettingZoo one in `cavlab.envs.multi_agent`).

Importing this module registers the environments:

    import gymnasium as gym
    import cavlab.envs
    env = gym.make("cavlab/LaneChange-v0", render_mode="rgb_array")

or, in one call that also works in fresh worker processes,
`gym.make("cavlab.envs:cavlab/LaneChange-v0")`. With libsumo (the default backend) a process
runs one simulation: vectorise with processes (`AsyncVectorEnv`, SB3's `SubprocVecEnv`).
"""

from __future__ import annotations

import gymnasium as gym

from cavlab.envs.config import EnvConfig, EnvConfigError
from cavlab.envs.traffic import HighwayEnv, LaneChangeEnv, MergeEnv, TrafficEnv

ENV_IDS = {
    "cavlab/LaneChange-v0": "cavlab.envs.traffic:LaneChangeEnv",
    "cavlab/Merge-v0": "cavlab.envs.traffic:MergeEnv",
    "cavlab/Highway-v0": "cavlab.envs.traffic:HighwayEnv",
}


def register_envs() -> None:
    """Register every cavlab environment with Gymnasium (idempotent)."""
    for env_id, entry_point in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point)


register_envs()

__all__ = [
    "ENV_IDS",
    "EnvConfig",
    "EnvConfigError",
    "HighwayEnv",
    "LaneChangeEnv",
    "MergeEnv",
    "TrafficEnv",
    "register_envs",
]
