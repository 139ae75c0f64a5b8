"""`cavlab train --backend rllib`: a real RLlib PPO run on real SUMO in a remote env runner, its
checkpoint restored to a policy, and one clear error for every bad combination of options."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import gymnasium as gym
import pytest
from typer.testing import CliRunner

from cavlab.cli import app
from cavlab.rl.rllib import load_policy, train_rllib

runner = CliRunner()


@pytest.mark.sumo
def test_rllib_ppo_trains_saves_and_restores(tmp_path: Path) -> None:
    out = tmp_path / "rllib"
    done = runner.invoke(app, ["train", "cavlab/LaneChange-v0", "--backend", "rllib", "--ray", "local",
                               "--envs", "1", "--timesteps", "300", "--out", str(out)])  # fmt: skip
    assert done.exit_code == 0, done.output
    meta = json.loads((out / "train.json").read_text())
    assert (meta["backend"], meta["algo"], meta["env_id"], meta["envs"]) == ("rllib", "ppo", "cavlab/LaneChange-v0", 1)
    assert meta["timesteps"] >= 300 and meta["episodes"] >= 1
    assert (out / "checkpoint" / "rllib_checkpoint.json").is_file()
    assert (out / "learning_curve.png").stat().st_size > 0
    with (out / "learning_curve.csv").open() as fh:
        curve = list(csv.DictReader(fh))
    assert len(curve) >= 1 and int(curve[-1]["env_steps"]) == meta["timesteps"]
    # the restored policy acts on real observations (no Ray instance needed)
    act = load_policy(out / "checkpoint")
    env = gym.make("cavlab.envs:cavlab/LaneChange-v0")
    try:
        obs, _ = env.reset(seed=7)
        for _ in range(3):
            action = act(obs)
            assert env.action_space.contains(action)
            obs, *_ = env.step(action)
    finally:
        env.close()
    # and `cavlab evaluate` takes the checkpoint like a policy.zip
    evaluated = runner.invoke(app, ["evaluate", "cavlab/LaneChange-v0", "--policy", str(out / "checkpoint"),
                                    "--episodes", "1", "--out", str(tmp_path / "eval")])  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    results = json.loads((tmp_path / "eval" / "evaluation.json").read_text())["results"]
    assert set(results) == {"trained:rllib", "random", "rule"} and len(results["trained:rllib"]["returns"]) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "rllib", "--algo", "dqn"], "--backend rllib trains PPO only, not 'dqn'"),
        (["--backend", "tf"], "unknown backend 'tf' (allowed: sb3, rllib)"),
        (["--ray", "local"], "--ray needs --backend rllib"),
        (["--backend", "rllib", "--envs", "0"], "need --timesteps ≥ 1 and --envs ≥ 1"),
        (["--backend", "rllib", "--env", "reward.colission=1"], "unknown environment option 'reward.colission'"),
    ],
)
def test_bad_rllib_options_give_one_line_and_leave_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["train", "cavlab/Merge-v0", *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_missing_rllib_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray.rllib.algorithms.ppo", None)  # import fails as if not installed
    from cavlab.errors import UserError

    with pytest.raises(UserError, match=r"pip install 'cavlab\[distributed\]'"):
        train_rllib("cavlab/Merge-v0", 10, 1, 0, {}, tmp_path)
