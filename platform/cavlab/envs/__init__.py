"""Gymnasium environments on cavlab's engine (and a PettingZoo one in `cavlab.envs.multi_agent`).

Importing this module registers the environments:

    import gymnasium as gym
    import cavlab.envs
    env = gym.make("cavlab/LaneChange-v0", render_mode="rgb_array")

or, in one call that also works in fresh worker processes,
`gym.make("cavlab.envs:cavlab/LaneChange-v0")`.

Many envs in one process work: libsumo runs one simulation per process, so with the option
`backend: auto` (the default) the first env to start SUMO gets libsumo and the others a SUMO
child process each over TraCI (see `cavlab.envs.core`). Every id has a `vector_entry_point`, so
`gym.make_vec(id, num_envs=n)` gives a `SyncVectorEnv` of such envs (in this process: SUMO
steps one env after the other); for envs stepping in parallel, `vectorization_mode="async"`
(one process per env, each on libsumo) or SB3's `SubprocVecEnv`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import gymnasium as gym

from cavlab.envs.config import EnvConfig, EnvConfigError
from cavlab.envs.traffic import HighwayEnv, LaneChangeEnv, MergeEnv, TrafficEnv

ENV_IDS = {
    "cavlab/LaneChange-v0": "cavlab.envs.traffic:LaneChangeEnv",
    "cavlab/Merge-v0": "cavlab.envs.traffic:MergeEnv",
    "cavlab/Highway-v0": "cavlab.envs.traffic:HighwayEnv",
}


def make_vector_env(env_id: str, num_envs: int = 1, **kwargs: Any) -> gym.vector.SyncVectorEnv:
    """`num_envs` envs `env_id` with the keyword arguments `kwargs`, stepped in this process (the
    `vector_entry_point` of every id: `gym.make_vec(env_id, num_envs)`)."""
    return gym.vector.SyncVectorEnv([partial(gym.make, env_id, **kwargs) for _ in range(num_envs)])


make_lane_change_vec = partial(make_vector_env, "cavlab/LaneChange-v0")
make_merge_vec = partial(make_vector_env, "cavlab/Merge-v0")
make_highway_vec = partial(make_vector_env, "cavlab/Highway-v0")
VECTOR_ENTRY_POINTS = {  # names, not callables, so that the specs serialise (EnvSpec.to_json)
    "cavlab/LaneChange-v0": "cavlab.envs:make_lane_change_vec",
    "cavlab/Merge-v0": "cavlab.envs:make_merge_vec",
    "cavlab/Highway-v0": "cavlab.envs:make_highway_vec",
}


def register_envs() -> None:
    """Register every cavlab environment with Gymnasium (idempotent)."""
    for env_id, entry_point in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, vector_entry_point=VECTOR_ENTRY_POINTS[env_id])


register_envs()

__all__ = [
    "ENV_IDS",
    "EnvConfig",
    "EnvConfigError",
    "HighwayEnv",
    "LaneChangeEnv",
    "MergeEnv",
    "TrafficEnv",
    "make_vector_env",
    "register_envs",
]
