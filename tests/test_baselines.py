"""Baselines: the open-loop search, the rule-based driver and `cavlab evaluate`'s paired comparison.

The open-loop test: on each shipped task the best short open-loop action sequence (searched on
seeds of its own) scores below the rule-based driver on the same evaluation episodes, by a paired
margin whose 95 % interval excludes 0, so no task is solved blind."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from typer.testing import CliRunner

import cavlab.envs  # noqa: F401  (registers the environments)
from cavlab.cli import app
from cavlab.envs.actions import FASTER, IDLE, LANE_LEFT
from cavlab.rl.baselines import OpenLoop, RuleBased, idm_accel, open_loop_sequences, run_episode, search_open_loop
from cavlab.runs.stats import mean_ci

SEARCH_SEEDS = (2000, 2001)  # disjoint from the evaluation's
EVAL_SEEDS = tuple(range(100, 116))


def test_open_loop_sequences_are_the_distinct_short_sequences() -> None:
    assert len(open_loop_sequences(1)) == 5 and len(open_loop_sequences(2)) == 25
    three = open_loop_sequences(3)
    assert len(three) == 125 == len(set(three))
    assert (LANE_LEFT, FASTER) in three and (FASTER, FASTER) not in three and (IDLE, FASTER, FASTER) not in three


def test_open_loop_policy_plays_its_sequence_then_repeats_the_last_action() -> None:
    policy = OpenLoop([LANE_LEFT, FASTER])
    assert [policy.act(None) for _ in range(4)] == [LANE_LEFT, FASTER, FASTER, FASTER]
    policy.reset()
    assert policy.act(None) == LANE_LEFT and policy.name == "LANE_LEFT→FASTER"


def test_idm_accelerates_on_a_free_road_and_brakes_when_closing() -> None:
    assert idm_accel(0.0, 30.0, np.inf, 0.0, 2.0) == pytest.approx(2.0)
    assert idm_accel(30.0, 30.0, np.inf, 30.0, 2.0) == pytest.approx(0.0)
    assert idm_accel(30.0, 33.0, 20.0, 20.0, 2.0) < -4.0


@pytest.mark.sumo
@pytest.mark.parametrize("env_id", ["cavlab/LaneChange-v0", "cavlab/Merge-v0", "cavlab/Highway-v0"])
def test_best_open_loop_sequence_scores_below_the_rule_based_driver(env_id: str) -> None:
    env = gym.make(env_id)
    try:
        best, scores = search_open_loop(env, SEARCH_SEEDS, max_length=2)
        assert len(scores) == 25 and scores[best] == max(scores.values())
        blind = [run_episode(env, OpenLoop(best), s) for s in EVAL_SEEDS]
        rule = [run_episode(env, RuleBased(env), s) for s in EVAL_SEEDS]
    finally:
        env.close()
    diff, ci = mean_ci([r["return"] - b["return"] for r, b in zip(rule, blind, strict=True)])
    assert diff - ci > 0, (OpenLoop(best).name, diff, ci)
    assert not any(r["outcome"] in ("collision", "lane_end") for r in rule)


# ----------------------------------------------------------------------------- cavlab evaluate


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.sumo
def test_evaluate_runs_the_baselines_on_the_same_episodes_with_paired_differences(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = invoke("evaluate", "cavlab/Merge-v0", "--episodes", "2", "--baseline", "random", "--baseline", "rule",
                    "--baseline", "constant", "--baseline", "open_loop", "--search-length", "1",
                    "--search-episodes", "1", "--reference", "random", "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "evaluation.json").read_text())
    results = meta["results"]
    assert meta["search_seeds"] == [1002, 1002] and meta["seeds"] == [1000, 1001]
    assert {"random", "rule", "constant:IDLE", "constant:FASTER"} <= set(results)
    assert sum(name.startswith("open_loop:") for name in results) == 1
    for r in results.values():
        assert r["reference"] == "random" and len(r["returns"]) == 2
        expected = np.mean(np.subtract(r["returns"], results["random"]["returns"]))
        assert r["diff_to_reference"] == pytest.approx(expected)
    assert results["random"]["diff_to_reference"] == 0.0
    assert "paired" in result.output and "random" in result.output


@pytest.mark.sumo
def test_evaluate_runs_the_cooperative_planner_on_its_own_environment(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = invoke("evaluate", "cavlab/LaneChange-v0", "--episodes", "1", "--baseline", "planner", "--out", str(out))
    assert result.exit_code == 0, result.output
    results = json.loads((out / "evaluation.json").read_text())["results"]
    assert list(results) == ["planner"] and results["planner"]["reference"] == "planner"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--baseline", "greedy"],
            "unknown baseline 'greedy' (allowed: random, constant, open_loop, rule, planner, all)",
        ),
        (["--reference", "ppo"], "reference 'ppo' is not an evaluated policy (evaluated: random, rule)"),
        (["--search-length", "4"], "--search-length must be between 1 and 3 (got 4)"),
        (["--search-episodes", "0"], "--search-episodes must be between 1 and 100 (got 0)"),
        (["--env", "action.type=continuous"], "the rule-based driver uses discrete meta actions"),
    ],
)
def test_bad_evaluate_options_give_one_line_and_leave_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "eval"
    result = invoke("evaluate", "cavlab/Merge-v0", "--episodes", "1", *args, "--out", str(out))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()
