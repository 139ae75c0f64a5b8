"""`cavlab train` and `cavlab evaluate`: real SB3 training on real SUMO, reproducible
evaluation, the rule-based driver, and one clear error for every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import pytest
from typer.testing import CliRunner

from cavlab.cli import app
from cavlab.envs.actions import LANE_LEFT, LANE_RIGHT
from cavlab.rl.baselines import rule_based_action
from cavlab.rl.sb3 import learning_curve

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
