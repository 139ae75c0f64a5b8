"""Fast resets: an episode restores a saved warm-up (`warm_states`) into the running SUMO instead of
simulating it, and its randomness still comes from the seed."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils import seeding

import cavlab.envs  # noqa: F401 - registers the envs
from cavlab.envs.config import env_config
from cavlab.envs.core import AgentTraffic
from cavlab.envs.traffic import LaneChangeEnv

pytestmark = pytest.mark.sumo

ENV_ID = "cavlab/LaneChange-v0"
SHORT = {"warmup_s": 4.0, "episode_s": 4.0}
WARM_STATES = 8


def warm_index(seed: int) -> int:
    """The warm state `reset(seed=seed)` restores (the env draws its SUMO seed first)."""
    return int(seeding.np_random(seed)[0].integers(2**31 - 1)) % WARM_STATES


def snapshot(env: gym.Env) -> tuple[list[str], np.ndarray, np.ndarray]:
    world = env.unwrapped.traffic.world
    return list(world.ids), world.x_m.copy(), world.speed_mps.copy()


def assert_same(a, b) -> None:
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])


def test_same_seed_same_episode_and_the_warm_up_is_not_simulated_again():
    env = gym.make(ENV_ID, **SHORT)
    fresh = gym.make(ENV_ID, warm_states=0, **SHORT)
    try:
        obs1, _ = env.reset(seed=21)  # the first: simulates and saves the warm state
        first = snapshot(env)
        env.step(3)
        obs2, _ = env.reset(seed=21)  # restores it into the running SUMO
        np.testing.assert_array_equal(obs1, obs2)
        assert_same(first, snapshot(env))
        warmup_steps = round(SHORT["warmup_s"] / 0.1)
        assert env.unwrapped.traffic.engine.steps < warmup_steps  # only the ego's placement
        assert env.unwrapped.traffic.world.time_s >= SHORT["warmup_s"]  # it begins where the warm-up ended
        fresh.reset(seed=21)
        assert fresh.unwrapped.traffic.engine.steps > warmup_steps
    finally:
        env.close()
        fresh.close()


def test_different_seeds_different_traffic():
    seeds = range(100)
    same_state = [s for s in seeds if warm_index(s) == warm_index(0)][:2]
    other_state = next(s for s in seeds if warm_index(s) != warm_index(0))
    env = gym.make(ENV_ID, randomize=None, **SHORT)
    try:
        env.reset(seed=other_state)
        a = snapshot(env)
        env.reset(seed=same_state[0])
        b = snapshot(env)
        assert a[0] != b[0] or not np.array_equal(a[1], b[1])  # another warm state
        # the same warm state: SUMO's randomness from then on comes from the seed
        runs = []
        for seed in same_state:
            env.reset(seed=seed)
            for _ in range(4):
                env.step(1)
            runs.append(snapshot(env))
        assert runs[0][0] != runs[1][0] or not np.allclose(runs[0][1], runs[1][1])
    finally:
        env.close()


def test_reset_after_an_episode_that_ended_in_a_collision():
    kwargs = {"warmup_s": 3.0, "episode_s": 20.0, "randomize": None, "ego": {"leader_within_m": 30.0}}
    env = gym.make(ENV_ID, **kwargs)
    again = gym.make(ENV_ID, **kwargs)
    try:
        env.reset(seed=4)
        for _ in range(20):
            _, _, terminated, truncated, info = env.step(3)  # FASTER into the leader
            if terminated or truncated:
                break
        assert info.get("outcome") == "collision"
        obs, _ = env.reset(seed=5)
        expected, _ = again.reset(seed=5)
        np.testing.assert_array_equal(obs, expected)
        assert_same(snapshot(env), snapshot(again))
    finally:
        env.close()
        again.close()


def run_metrics(warm_states: int) -> dict:
    env = gym.make(ENV_ID, metrics=True, warm_states=warm_states, **SHORT)
    try:
        info: dict = {}
        for seed in (1, 1):  # the second episode restores the warm state in a new SUMO (metrics close it)
            env.reset(seed=seed)
            done = False
            while not done:
                _, _, terminated, truncated, info = env.step(1)
                done = terminated or truncated
        return info["metrics"]
    finally:
        env.close()


def test_metrics_keep_their_shape():
    restored, warmed = run_metrics(WARM_STATES), run_metrics(0)
    assert set(restored) == set(warmed)
    assert restored["vehicle_hours"] > 0


@pytest.mark.parametrize("backend", ["libsumo", "traci"])
def test_backend_restart_from_a_saved_state(backend, tmp_path):
    """`SumoBackend.restart` with `--load-state` rebuilds the vehicle table from the state: the world
    read at once is the saved one, and stepping goes on from it."""
    traffic = AgentTraffic(env_config(LaneChangeEnv.defaults, {"warmup_s": 5.0, "backend": backend}))
    try:
        traffic._prepare()
        traffic._launch(("--seed", "3", "--save-state.precision", "8"))
        traffic._warm_up()
        saved = traffic.world
        state = tmp_path / "warm.sbx"
        traffic.backend.save_state(str(state))
        for _ in range(30):
            traffic._advance([])
        traffic._launch(("--seed", "4", "--load-state", str(state)))
        engine = traffic.engine
        assert engine.backend.name == backend
        assert {d.vehicle_id for d in engine.backend.present} == set(saved.ids)
        world = engine.world
        assert world.time_s == pytest.approx(saved.time_s)
        order = np.argsort(world.ids)
        np.testing.assert_allclose(world.x_m[order], saved.x_m[np.argsort(saved.ids)], atol=1e-6)
        assert sorted(world.slot) == list(range(len(world)))
        world, _ = engine.step()
        assert world.time_s == pytest.approx(saved.time_s + 0.1)
    finally:
        traffic.dispose()


def test_traci_removal_leaves_no_subscription_noise(capfd):
    """A vehicle removed over TraCI is unsubscribed first (SUMO would complain at every step)."""
    env = gym.make(ENV_ID, backend="traci", **SHORT)
    try:
        env.reset(seed=8)  # randomize removes vehicles
        for _ in range(2):
            env.step(1)
    finally:
        env.close()
    assert "Error!" not in capfd.readouterr().out
