"""The multi-agent env (`TrafficParallelEnv`): PettingZoo's API and seed tests, agents that enter
mid-episode with the spaces of every possible agent fixed up front, flat observations, the global
`state()`, and `cavlab train --multi-agent`: a real RLlib PPO iteration with one shared policy on
traffic where CAVs enter after the reset, saved, restored and resumed."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from typer.testing import CliRunner

from cavlab.cli import app
from cavlab.envs.config import EnvConfigError
from cavlab.envs.multi_agent import STATE_AGENT_FEATURES, STATE_TRAFFIC_FEATURES, TrafficParallelEnv
from cavlab.errors import UserError
from cavlab.rl.common import TrainRecord, read_record, write_record
from cavlab.rl.rllib import MODULE_STATE, RLMODULES, SHARED_MODULE_ID, load_policy, read_module_state, train_rllib

runner = CliRunner()
QUICK = {"warmup_s": 5.0, "episode_s": 15.0, "max_agents": 4}  # highway: a first CAV at reset, more enter after it
F = len(STATE_AGENT_FEATURES)


def run_until_entry(env: TrafficParallelEnv, seed: int) -> tuple[list[str], str, dict]:
    """Random actions from a reset until an agent enters: the reset's agents, the newcomer, its observation."""
    observations, _ = env.reset(seed=seed)
    first = list(observations)
    rng = np.random.default_rng(seed)
    while env.agents:
        actions = {a: int(rng.integers(env.action_space(a).n)) for a in env.agents}
        observations, *_ = env.step(actions)
        new = [a for a in observations if a not in first and a not in actions]
        if new:
            return first, new[0], observations
    raise AssertionError("no agent entered after the reset")


# ----------------------------------------------------------------------------- no SUMO


def test_every_possible_agent_has_its_spaces_before_any_reset() -> None:
    env = TrafficParallelEnv(max_agents=5, flatten_observations=True)
    raw = TrafficParallelEnv(max_agents=5)
    assert env.possible_agents == [f"cav_{k}" for k in range(5)] and env.agents == []
    for agent in env.possible_agents:
        space = env.observation_space(agent)
        assert space is env.observation_space(agent) and env.action_space(agent) is env.action_space(agent)
        assert space.shape == (int(np.prod(raw.observation_space(agent).shape)),)  # the 2-D Box, flat
        assert env.action_space(agent) == env.action_space("cav_0")
    assert env.action_space("cav_0") is not env.action_space("cav_1")  # each agent samples apart
    assert env.state_space.shape == (5 * F + len(STATE_TRAFFIC_FEATURES),)
    with pytest.raises(gym.error.ResetNeeded):
        env.state()


def test_task_gives_a_single_agent_envs_options() -> None:
    merge = TrafficParallelEnv(task="cavlab/Merge-v0", episode_s=12.0)
    assert (merge.config.scenario, merge.config.target_lane, merge.config.episode_s) == ("on-ramp-merge", 0, 12.0)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"max_agents": 0}, ["max_agents", "positive integer"]),
        ({"flatten_observations": "yes"}, ["flatten_observations", "true or false"]),
        ({"task": "cavlab/Nope-v0"}, ["unknown task 'cavlab/Nope-v0'", "cavlab/Merge-v0"]),
        ({"set": ["demand.cav_share=0"]}, ["has no CAVs", "demand.cav_share"]),
    ],
)
def test_bad_multi_agent_options_are_user_errors(kwargs: dict, words: list[str]) -> None:
    with pytest.raises(EnvConfigError) as info:
        TrafficParallelEnv(**kwargs)
    assert all(word in str(info.value) for word in words), str(info.value)


@pytest.mark.parametrize(("kwargs", "words"), [({"task": "cavlab/Merge-v0"}, "'task'"),
                                              ({"flatten_observations": False}, "'flatten_observations'")])  # fmt: skip
def test_training_envs_options_that_the_trainer_sets_are_refused(kwargs: dict, words: str) -> None:
    from cavlab.rl.rllib import make_parallel_env

    with pytest.raises(UserError, match=f"environment option {words} is not for --multi-agent training"):
        make_parallel_env("cavlab/Highway-v0", kwargs)


# ----------------------------------------------------------------------------- SUMO: the PettingZoo API


@pytest.mark.sumo
@pytest.mark.parametrize("flatten", [False, True])
def test_pettingzoo_parallel_api_test(flatten: bool) -> None:
    from pettingzoo.test import parallel_api_test

    env = TrafficParallelEnv(**QUICK, flatten_observations=flatten)
    try:
        parallel_api_test(env, num_cycles=20)
    finally:
        env.close()


@pytest.mark.sumo
def test_pettingzoo_parallel_seed_test() -> None:
    from pettingzoo.test import parallel_seed_test

    # two envs at once in this process: with the default backend (auto) the second one runs SUMO over TraCI
    parallel_seed_test(lambda: TrafficParallelEnv(**QUICK), num_cycles=10)


@pytest.mark.sumo
def test_agents_enter_mid_episode_with_the_spaces_given_up_front() -> None:
    env = TrafficParallelEnv(**QUICK, flatten_observations=True)
    try:
        first, new, observations = run_until_entry(env, seed=0)
        assert first == env.possible_agents[: len(first)] and new == env.possible_agents[len(first)]
        assert env.observation_space(new).contains(observations[new]) and observations[new].ndim == 1
        assert new in env.agents
        # names are never reused: every agent of the episode is one of possible_agents, in order
        seen = set(first) | {new}
        while env.agents:
            observations, *_ = env.step({a: 1 for a in env.agents})
            seen |= set(observations)
        assert sorted(seen, key=lambda a: int(a[4:])) == env.possible_agents[: len(seen)]
    finally:
        env.close()


@pytest.mark.sumo
def test_state_holds_every_possible_agents_row_and_the_traffic() -> None:
    env = TrafficParallelEnv(**QUICK)
    try:
        env.reset(seed=1)
        rows_of = None
        while env.agents:
            state = env.state()
            assert state.shape == env.state_space.shape and state.dtype == np.float32
            assert env.state_space.contains(state)
            rows_of = state[: len(env.possible_agents) * F].reshape(len(env.possible_agents), F)
            traffic = env.traffic
            world, frame, road = traffic.world, traffic.frame, traffic.scenario.road
            for k, agent in enumerate(env.possible_agents):
                if agent not in env.agents:
                    np.testing.assert_array_equal(rows_of[k], 0.0)  # not entered yet, or done
                    continue
                row = traffic.agents[env._vehicle_of[agent]].row
                expected = [1.0, world.x_m[row] / road.length_m, (world.lane[row] - frame.lane_min) / (frame.lanes - 1),
                            min(1.0, world.speed_mps[row] / frame.speed_ref_mps)]  # fmt: skip
                np.testing.assert_allclose(rows_of[k][:4], expected, atol=1e-6)
            time, vehicles, mean_speed, cav_share = state[-len(STATE_TRAFFIC_FEATURES) :]
            assert time == pytest.approx((world.time_s - env.start_time_s) / env.config.episode_s, abs=1e-6)
            assert vehicles == pytest.approx(len(world.ids) * 7.5 / (frame.lanes * road.length_m), abs=1e-6)
            assert mean_speed == pytest.approx(min(1.0, world.speed_mps.mean() / frame.speed_ref_mps), abs=1e-6)
            assert cav_share == pytest.approx(world.is_cav.mean(), abs=1e-6) and 0 < cav_share < 1
            env.step(dict.fromkeys(env.agents, 1))
        assert rows_of is not None and time > 0.9  # it ran to the truncation
    finally:
        env.close()


# ----------------------------------------------------------------------------- RLlib


@pytest.mark.sumo
def test_rllib_trains_one_shared_policy_while_agents_enter(tmp_path: Path) -> None:
    from cavlab.rl.rllib import RllibMultiAgentEnv, make_parallel_env

    kwargs = {"warmup_s": 5.0, "episode_s": 20.0, "max_agents": 4}
    # the traffic RLlib samples: a CAV enters after the reset; the episode ends for all once no agent is left
    probe = RllibMultiAgentEnv({"env_id": "cavlab/Highway-v0", "env_kwargs": kwargs})
    try:
        assert set(probe.observation_spaces) == set(probe.possible_agents) == set(probe.action_spaces)
        first, new, _ = run_until_entry(probe.env, seed=0)
        assert new not in first
        probe.reset(seed=0)
        terminated = truncated = {"__all__": False}
        while not (terminated["__all__"] or truncated["__all__"]):
            _, _, terminated, truncated, _ = probe.step(dict.fromkeys(probe.agents, 1))
        assert not probe.agents and truncated["__all__"] != terminated["__all__"]
    finally:
        probe.close()

    out = tmp_path / "ma"
    out.mkdir()
    result = train_rllib("cavlab/Highway-v0", 64, 0, 0, kwargs, out, multi_agent=True, train_batch_size=64)
    assert result.timesteps >= 64 and result.episodes >= 2 and len(result.curve) == 1
    record = read_record(out)
    assert (record.backend, record.multi_agent, record.complete, record.env_kwargs) == ("rllib", True, True, kwargs)
    weights = out / "checkpoint" / RLMODULES / SHARED_MODULE_ID / MODULE_STATE
    before = read_module_state(weights)
    assert (out / "learning_curve.png").stat().st_size > 0 and (out / "learning_curve.csv").is_file()
    # the shared policy drives any agent, without Ray
    act = load_policy(out / "checkpoint")
    env = make_parallel_env("cavlab/Highway-v0", kwargs)
    try:
        observations, _ = env.reset(seed=3)
        for agent, obs in observations.items():
            assert env.action_space(agent).contains(act(obs))
    finally:
        env.close()
    single = gym.make("cavlab.envs:cavlab/Highway-v0", warmup_s=5.0, episode_s=20.0)  # and the single-agent ego
    try:
        obs, _ = single.reset(seed=3)
        assert single.action_space.contains(load_policy(out / "checkpoint", single.unwrapped)(obs))
    finally:
        single.close()
    # --resume goes on from the shared policy's weights
    again = train_rllib("cavlab/Highway-v0", record.timesteps + 1, 0, 0, kwargs, out, resume=record,
                        multi_agent=True, train_batch_size=64)  # fmt: skip
    assert again.timesteps > record.timesteps and read_record(out).complete
    after = read_module_state(weights)
    moved = sum(np.abs(after[k] - before[k]).sum() for k in before) / sum(np.abs(before[k]).sum() for k in before)
    assert 0 < moved < 0.5


def _record(folder: Path, **update) -> TrainRecord:
    folder.mkdir()
    record = TrainRecord(env_id="cavlab/Highway-v0", algo="ppo", backend="rllib", timesteps=512, envs=1, seed=0,
                         target_timesteps=4096, complete=False, env_kwargs={}, episodes=1, wall_time_s=1.0,
                         **update)  # fmt: skip
    write_record(folder, record)
    return record


@pytest.mark.parametrize(
    ("multi_agent", "trained", "words"),
    [(True, {}, "holds a single-agent run; resume it without --multi-agent"),
     (False, {"multi_agent": True}, "holds a multi-agent run; resume it with --multi-agent")],
)  # fmt: skip
def test_resume_needs_the_same_multi_agent_flag(tmp_path: Path, multi_agent: bool, trained: dict, words: str) -> None:
    folder = tmp_path / "train"
    record = _record(folder, **trained)
    with pytest.raises(UserError, match=words):
        train_rllib("cavlab/Highway-v0", 4096, 1, 0, {}, folder, resume=record, multi_agent=multi_agent)
    assert sorted(p.name for p in folder.iterdir()) == ["train.json"]


def test_multi_agent_on_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    refused = runner.invoke(app, ["train", "cavlab/Highway-v0", "--multi-agent", "--out", str(out)])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "--multi-agent trains with RLlib: add --backend rllib" in " ".join(refused.output.split())
    assert not out.exists()
    resumed = _record(out)  # a single-agent RLlib run, resumed with --multi-agent: the trainer refuses it
    result = runner.invoke(app, ["train", "cavlab/Highway-v0", "--backend", "rllib", "--multi-agent", "--envs", "1",
                                 "--out", str(out), "--resume"])  # fmt: skip
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "holds a single-agent run; resume it without --multi-agent" in " ".join(result.output.split())
    assert read_record(out) == resumed
    # and the flag reaches the trainer
    seen = {}

    def fake_train(*args, **kwargs):
        seen.update(kwargs)
        raise UserError("stop here")

    monkeypatch.setattr("cavlab.cli.rl.train_rllib", fake_train)
    runner.invoke(app, ["train", "cavlab/Highway-v0", "--backend", "rllib", "--multi-agent", "--out",
                        str(tmp_path / "other"), "--env", "max_agents=3"])  # fmt: skip
    assert seen["multi_agent"] is True
    assert seen["resume"] is None


def test_the_multi_agent_env_refuses_an_external_network() -> None:
    with pytest.raises(EnvConfigError, match=r"road\.kind 'network' is not supported by the multi-agent environment"):
        TrafficParallelEnv(scenario="sumo-ramp-network")
