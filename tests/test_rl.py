"""`cavlab train` and `cavlab evaluate`: real SB3 training on real SUMO, reproducible
evaluation, the rule-based driver, and one clear error for every bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gymnasium as gym
import pytest
from typer.testing import CliRunner

from cavlab.cli import app
from cavlab.envs.actions import LANE_LEFT, LANE_RIGHT
from cavlab.rl.baselines import rule_based_action
from cavlab.rl.sb3 import EVAL_SEED, THREAD_VARIABLES, compute_threads, learning_curve, load_policy, read_evaluations

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_learning_curve_reads_every_monitor_file_in_time_order(tmp_path: Path) -> None:
    header = '#{"t_start": 0, "env_id": "x"}\nr,l,t\n'
    (tmp_path / "0.monitor.csv").write_text(header + "1.5,10,3.0\n2.5,20,9.0\n")
    (tmp_path / "1.monitor.csv").write_text(header + "-4.0,5,4.5\n")
    assert learning_curve(tmp_path) == [(1.5, 10), (-4.0, 5), (2.5, 20)]


def test_learning_curve_orders_episodes_by_wall_time_across_files(tmp_path: Path) -> None:
    """SB3's load_results: each file's times count from its own start (t_start), so they are shifted by it."""
    assert learning_curve(tmp_path) == [] and learning_curve(tmp_path / "missing") == []
    (tmp_path / "0.monitor.csv").write_text('#{"t_start": 100.0, "env_id": "x"}\nr,l,t\n')
    assert learning_curve(tmp_path) == []  # a header, no episode yet
    (tmp_path / "0.monitor.csv").write_text('#{"t_start": 100.0, "env_id": "x"}\nr,l,t\n1.0,10,3.0\n2.0,20,9.0\n')
    (tmp_path / "1.monitor.csv").write_text('#{"t_start": 105.0, "env_id": "x"}\nr,l,t\n3.0,30,1.0\n')
    assert learning_curve(tmp_path) == [(1.0, 10), (3.0, 30), (2.0, 20)]  # at 103, 106 and 109 s


@pytest.mark.sumo
def test_train_then_evaluate_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "ppo"
    done = invoke("train", "cavlab/LaneChange-v0", "--timesteps", "128", "--envs", "1", "--out", str(out))
    assert done.exit_code == 0, done.output
    meta = json.loads((out / "train.json").read_text())
    assert (meta["algo"], meta["env_id"], meta["timesteps"]) == ("ppo", "cavlab/LaneChange-v0", 512)  # one rollout
    assert (out / "policy.zip").stat().st_size > 0 and (out / "learning_curve.png").stat().st_size > 0
    assert any((out / "tensorboard").rglob("events.out.tfevents.*"))
    runs = []
    for name in ("a", "b"):
        done = invoke("evaluate", "cavlab/LaneChange-v0", "--policy", str(out / "policy.zip"), "--episodes", "2",
                      "--out", str(tmp_path / name))  # fmt: skip
        assert done.exit_code == 0, done.output
        runs.append(json.loads((tmp_path / name / "evaluation.json").read_text())["results"])
    assert set(runs[0]) == {"trained:ppo", "random", "rule"}
    # the same seeded episodes give the same returns for every policy, the random one included
    assert {k: v["returns"] for k, v in runs[0].items()} == {k: v["returns"] for k, v in runs[1].items()}
    assert (tmp_path / "a" / "returns.png").stat().st_size > 0


def test_compute_threads_sets_the_learner_and_the_workers_then_restores_both(monkeypatch) -> None:
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    with compute_threads(3):
        assert torch.get_num_threads() == 3
        assert all(os.environ[key] == "1" for key in THREAD_VARIABLES)  # what worker processes started here get
    assert torch.get_num_threads() == before
    assert os.environ["OMP_NUM_THREADS"] == "7" and "MKL_NUM_THREADS" not in os.environ


SHORT = ["--env", "warmup_s=5", "--env", "episode_s=8"]


@pytest.mark.sumo
def test_evaluation_during_training_keeps_the_best_policy_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "ppo"
    args = ["train", "cavlab/LaneChange-v0", "--envs", "1", "--seed", "3", *SHORT, "--hp", "n_steps=64",
            "--hp", "net_arch=[16, 16]", "--eval-every", "128", "--eval-episodes", "2", "--out", str(out)]  # fmt: skip
    done = invoke(*args, "--timesteps", "200")
    assert done.exit_code == 0, done.output
    meta = json.loads((out / "train.json").read_text())
    assert meta["hp"] == {"n_steps": 64, "net_arch": [16, 16]} and meta["threads"] == 1
    assert meta["hyperparameters"]["n_steps"] == 64 and meta["hyperparameters"]["gamma"] == 0.9
    rows = read_evaluations(out)
    # at the rollouts starting at 128 steps and after the last one (256): the same seeded episodes each time
    assert [(r["timesteps"], r["seed"]) for r in rows] == [(128, EVAL_SEED), (128, EVAL_SEED + 1),
                                                            (256, EVAL_SEED), (256, EVAL_SEED + 1)]  # fmt: skip
    means = {step: sum(r["return"] for r in rows if r["timesteps"] == step) / 2 for step in (128, 256)}
    best = max(means, key=means.get)
    assert (meta["best_eval_timesteps"], meta["best_eval_return"]) == (best, pytest.approx(means[best]))
    assert (out / "best_policy.zip").stat().st_size > 0
    assert all(r["outcome"] in ("collision", "lane_end", "goal", "time") for r in rows)

    refused = invoke(*[a if a != "n_steps=64" else "n_steps=128" for a in args], "--timesteps", "400", "--resume")
    assert refused.exit_code == 2 and "was trained with --hp" in " ".join(refused.output.split())
    done = invoke(*args, "--timesteps", "400", "--resume")
    assert done.exit_code == 0, done.output
    meta = json.loads((out / "train.json").read_text())
    assert meta["timesteps"] == 448 and meta["hyperparameters"]["net_arch"] == [16, 16]
    assert [r["timesteps"] for r in read_evaluations(out)][4:] == [384, 384, 448, 448]
    # the best policy, whose networks are those of --hp net_arch, drives the environment like the last
    env = gym.make("cavlab.envs:cavlab/LaneChange-v0", warmup_s=5, episode_s=8)
    try:
        act = load_policy(out / "best_policy.zip", env)
        assert env.action_space.contains(act(env.reset(seed=0)[0]))
    finally:
        env.close()


@pytest.mark.sumo
def test_dqn_trains_on_discrete_actions(tmp_path: Path) -> None:
    out = tmp_path / "dqn"
    done = invoke("train", "cavlab/Highway-v0", "--algo", "dqn", "--timesteps", "100", "--envs", "1",
                  "--out", str(out))  # fmt: skip
    assert done.exit_code == 0, done.output
    assert json.loads((out / "train.json").read_text())["algo"] == "dqn"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "CartPole-v1"], "unknown environment 'CartPole-v1' (available: cavlab/LaneChange-v0"),
        (["train", "cavlab/Merge-v0", "--algo", "a2c"], "unknown algorithm 'a2c' (allowed: ppo, dqn)"),
        (["train", "cavlab/Merge-v0", "--env", "reward.colission=1"], "unknown environment option 'reward.colission'"),
        (
            ["train", "cavlab/Merge-v0", "--algo", "dqn", "--env", "action.type=continuous"],
            "DQN needs discrete actions",
        ),
        (["train", "cavlab/Merge-v0", "--timesteps", "0"], "need --timesteps ≥ 1 and --envs ≥ 1"),
        (["evaluate", "cavlab/Merge-v0", "--policy", "nope/policy.zip"], "nope/policy.zip: no such policy (a"),
        (["train", "cavlab/Merge-v0", "--hp", "lr=1e-3"], "--hp lr: not a setting of PPO (allowed: batch_size,"),
        (["train", "cavlab/Merge-v0", "--algo", "dqn", "--hp", "n_epochs=3"], "--hp n_epochs: not a setting of DQN"),
        (["train", "cavlab/Merge-v0", "--hp", "gamma=1.5"], "--hp gamma: Input should be less than or equal to 1"),
        (["train", "cavlab/Merge-v0", "--hp", "n_steps=many"], "--hp n_steps: Input should be a valid integer"),
        (["train", "cavlab/Merge-v0", "--hp", "gamma"], "--hp 'gamma' must look like key=value"),
        (["train", "cavlab/Merge-v0", "--hp", "gamma=0.9", "--hp", "gamma=0.8"], "--hp gamma is given twice"),
        (["train", "cavlab/Merge-v0", "--hp", "net_arch=[64, [1]"], "--hp net_arch"),
        (["train", "cavlab/Merge-v0", "--backend", "rllib", "--hp", "gamma=0.9"], "need --backend sb3"),
        (["train", "cavlab/Merge-v0", "--threads", "0"], "--threads must be at least 1 (got 0)"),
        (["train", "cavlab/Merge-v0", "--eval-every", "0"], "--eval-every must be between 1 and"),
        (["train", "cavlab/Merge-v0", "--eval-every", "100", "--eval-episodes", "0"], "--eval-episodes must be"),
        (
            ["train", "cavlab/Merge-v0", "--eval-every", "9", "--seed", str(2**31 - 1), "--envs", "2"],
            "would meet the evaluation's",
        ),
        (["evaluate", "cavlab/Merge-v0", "--episodes", "0"], "need --episodes ≥ 1"),
        (["evaluate", "cavlab/Merge-v0", "--env", "action.type=continuous"], "the rule-based driver uses discrete"),
    ],
)
def test_bad_input_gives_one_line_and_leaves_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "out"
    result = invoke(*args, "--out", str(out))
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.glob(".*"))


@pytest.mark.sumo
def test_rule_based_driver_changes_lanes_without_colliding() -> None:
    env = gym.make("cavlab/LaneChange-v0", set=["demand.flows.2.vehicles_per_hour=100"])
    try:
        for seed in range(3):
            env.reset(seed=seed)
            lanes, actions = [], []
            while True:
                actions.append(rule_based_action(env))
                _, _, terminated, truncated, info = env.step(actions[-1])
                lanes.append(info.get("lane"))
                if terminated or truncated:
                    break
            assert info.get("outcome") != "collision"
            assert LANE_LEFT in actions and LANE_RIGHT not in actions
            assert lanes[-1] == 1
    finally:
        env.close()
