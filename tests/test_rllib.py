"""`cavlab train --backend rllib`: a real RLlib PPO run on real SUMO in a remote env runner, its
checkpoint restored to a policy, Ctrl-C keeping the last checkpoint and --resume going on from it,
and one clear error for every bad combination of options."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from typer.testing import CliRunner

from cavlab.cli import app
from cavlab.rl.common import TrainRecord, write_record
from cavlab.rl.rllib import MODULE_STATE, RLMODULE_SUBDIR, load_policy, read_module_state, train_rllib

from .interrupt import interrupt_after_first_checkpoint, one_thread_env

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
        (["--backend", "rllib", "--envs", "-1"], "need --timesteps ≥ 1 and --envs ≥ 0"),
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


def _curve_rows(out: Path) -> int:
    return len((out / "learning_curve.csv").read_text().splitlines()) - 1


def _train_command(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cavlab.cli", "train", "cavlab/LaneChange-v0", "--backend", "rllib", "--envs", "1",
            "--checkpoint-every", "1", "--out", str(out), *args]  # fmt: skip


@pytest.mark.sumo
def test_ctrl_c_keeps_the_rllib_checkpoint_and_resume_goes_on(tmp_path: Path) -> None:
    out = tmp_path / "rllib"
    done = interrupt_after_first_checkpoint(
        _train_command(out, "--timesteps", "100000"), tmp_path, ".rllib.partial-*/train.json", 180, 120
    )
    stderr = done.stderr
    assert done.returncode == 130, stderr
    assert "Traceback" not in stderr
    line = " ".join(stderr.split())
    assert "interrupted: the checkpoint at" in line and "--backend rllib --timesteps 100000" in line
    assert f"--out {out} --checkpoint-every 1 --resume" in line
    kept = json.loads((out / "train.json").read_text())
    assert (kept["backend"], kept["complete"], kept["target_timesteps"]) == ("rllib", False, 100000)
    assert kept["timesteps"] >= 512 and _curve_rows(out) >= 1
    assert not list(tmp_path.glob(".rllib.partial-*")) and not list(out.glob(".checkpoint.*"))
    probe = gym.make("cavlab.envs:cavlab/LaneChange-v0")  # the checkpoint is a loadable policy
    try:
        assert probe.action_space.contains(load_policy(out / "checkpoint")(gym.spaces.flatten(
            probe.observation_space, probe.observation_space.sample())))  # fmt: skip
    finally:
        probe.close()
    weights = out / "checkpoint" / RLMODULE_SUBDIR / MODULE_STATE
    before = read_module_state(weights)
    target = kept["timesteps"] + 1  # one more iteration
    resumed = subprocess.run(_train_command(out, "--timesteps", str(target), "--resume"), capture_output=True,
                             text=True, env=one_thread_env(), timeout=180)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at {kept['timesteps']} steps" in " ".join(resumed.stdout.split())
    final = json.loads((out / "train.json").read_text())
    assert final["complete"] is True and final["timesteps"] >= target and final["target_timesteps"] == target
    assert final["wall_time_s"] > kept["wall_time_s"] and _curve_rows(out) > 1
    # it went on from the kept weights: one update moves them a little, a fresh start would be as far as they are big
    after = read_module_state(weights)
    moved = sum(np.abs(after[k] - before[k]).sum() for k in before) / sum(np.abs(before[k]).sum() for k in before)
    assert 0 < moved < 0.5


def test_resume_into_another_backends_run_gives_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "train"
    folder.mkdir()
    write_record(folder, TrainRecord(env_id="cavlab/LaneChange-v0", algo="ppo", backend="rllib", timesteps=512,
                                     target_timesteps=4096, complete=False, envs=1, seed=0, env_kwargs={},
                                     episodes=1, wall_time_s=1.0))  # fmt: skip
    result = runner.invoke(app, ["train", "cavlab/LaneChange-v0", "--out", str(folder), "--resume"])
    assert result.exit_code == 2, result.output
    assert "holds an RLlib run; --resume needs --backend rllib" in " ".join(result.output.split())
    assert "Traceback" not in result.output
