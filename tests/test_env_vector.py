"""Many environments in one process: libsumo's one simulation per process, worked around by the
`backend: auto` option (the first live env on libsumo, the others over TraCI), and the standard
tools that create several envs (check_env's render check, make_vec, SB3's DummyVecEnv and
EvalCallback)."""

from __future__ import annotations

import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from cavlab.envs import ENV_IDS, EnvConfigError

pytestmark = pytest.mark.sumo

SHORT = {"warmup_s": 3.0, "episode_s": 4.0}
ENV_ID = "cavlab/LaneChange-v0"


def backend_of(env: gym.Env) -> str:
    return env.unwrapped.traffic.backend.name


def rollout(env: gym.Env, seed: int, steps: int) -> list[np.ndarray]:
    """The observations of `steps` IDLE steps from `reset(seed=seed)`."""
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for _ in range(steps):
        obs, _, terminated, truncated, _ = env.step(1)
        out.append(obs)
        if terminated or truncated:
            break
    return out


def test_check_env_with_its_render_check():
    env = gym.make(ENV_ID, render_mode="rgb_array", **SHORT)
    try:
        check_env(env.unwrapped, skip_render_check=False)  # makes an env per render mode while this one is live
    finally:
        env.close()


@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
def test_every_id_has_a_vector_entry_point_and_serialises(env_id):
    spec = gym.spec(env_id)
    assert spec.vector_entry_point.startswith("cavlab.envs:")
    assert env_id in spec.to_json()  # a name, not a callable: the spec serialises
    envs = gym.make_vec(env_id, num_envs=3)  # SUMO starts only at the first reset
    try:
        assert isinstance(envs, gym.vector.SyncVectorEnv) and len(envs.envs) == 3
        assert all(e.spec.id == env_id for e in envs.envs)
    finally:
        envs.close()


@pytest.mark.parametrize("mode", ["sync", "async", None])
def test_make_vec(mode):
    """sync: in this process (one sub-env on libsumo, one over TraCI); async: a process each; None:
    the ids' vector_entry_point (a SyncVectorEnv)."""
    envs = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode=mode, **SHORT)
    try:
        obs, _ = envs.reset(seed=[5, 5])
        assert obs.shape == (2, *envs.single_observation_space.shape)
        np.testing.assert_array_equal(obs[0], obs[1])  # same seed, same episode, whichever backend
        if mode != "async":
            assert isinstance(envs, gym.vector.SyncVectorEnv)
            assert [backend_of(e) for e in envs.envs] == ["libsumo", "traci"]
        for _ in range(6):  # past the first episode's end: autoreset
            obs, _, _, _, _ = envs.step(np.array([3, 1]))
        assert np.isfinite(obs).all()
    finally:
        envs.close()


def test_same_seed_same_episode_on_libsumo_and_traci():
    first = gym.make(ENV_ID, **SHORT)
    second = gym.make(ENV_ID, **SHORT)
    try:
        a = rollout(first, 11, 3)
        b = rollout(second, 11, 3)
        assert (backend_of(first), backend_of(second)) == ("libsumo", "traci")
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
        wa, wb = first.unwrapped.traffic.world, second.unwrapped.traffic.world
        assert list(wa.ids) == list(wb.ids)
        np.testing.assert_array_equal(wa.x_m, wb.x_m)
    finally:
        first.close()
        second.close()


def test_explicit_libsumo_beside_a_live_one_is_a_clear_error():
    first = gym.make(ENV_ID, **SHORT)
    second = gym.make(ENV_ID, backend="libsumo", **SHORT)
    try:
        first.reset(seed=1)
        with pytest.raises(EnvConfigError) as err:
            second.reset(seed=1)
        message = str(err.value)
        assert "'backend'" in message and "libsumo" in message and "'auto'" in message and "traci" in message
        assert "\n" not in message
        assert backend_of(first) == "libsumo"  # the live one is untouched
        first.step(1)
        first.close()
        second.reset(seed=1)  # libsumo is free again
        assert backend_of(second) == "libsumo"
    finally:
        first.close()
        second.close()


def test_reset_after_close_starts_again():
    env = gym.make(ENV_ID, **SHORT)
    try:
        before = rollout(env, 3, 2)
        env.close()
        after = rollout(env, 3, 2)
        for x, y in zip(before, after, strict=True):
            np.testing.assert_array_equal(x, y)
    finally:
        env.close()


def _sockets(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def test_traci_sumo_listens_nowhere_once_connected():
    """SUMO's TraCI server binds 0.0.0.0 until its one client connects; then it listens no more, and the
    connection is on the loopback."""
    first = gym.make(ENV_ID, **SHORT)
    second = gym.make(ENV_ID, **SHORT)
    try:
        first.reset(seed=2)
        second.reset(seed=2)
        backend = second.unwrapped.traffic.backend
        assert backend.name == "traci"
        mine = _sockets(backend.process.pid)
        rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
        rows += [line.split() for line in Path("/proc/net/tcp6").read_text().splitlines()[1:]]
        held = [r for r in rows if r[9] in mine]
        assert held, "the SUMO child holds no TCP socket"
        assert all(r[3] != "0A" for r in held), "SUMO still listens"  # 0A: LISTEN
        loopback = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}
        assert all(r[1].split(":")[0] in loopback for r in held)
    finally:
        first.close()
        second.close()


def test_sb3_dummy_vec_env_with_two_envs_and_eval_callback():
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import EvalCallback
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    train = DummyVecEnv([lambda: Monitor(gym.make(ENV_ID, **SHORT)) for _ in range(2)])
    evaluation = Monitor(gym.make(ENV_ID, **SHORT))
    try:
        model = PPO("MlpPolicy", train, n_steps=8, batch_size=8, n_epochs=1, seed=0, device="cpu")
        callback = EvalCallback(evaluation, eval_freq=4, n_eval_episodes=1, verbose=0)
        model.learn(total_timesteps=16, callback=callback)
        assert np.isfinite(callback.last_mean_reward)  # it evaluated, in this process
        assert [backend_of(e) for e in train.envs] == ["libsumo", "traci"]
        assert backend_of(evaluation) == "traci"
    finally:
        train.close()
        evaluation.close()
