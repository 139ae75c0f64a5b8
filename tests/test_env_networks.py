"""The Gymnasium environment on an external SUMO network (scenarios/sumo-ramp-network.yaml: SUMO's own
"ramp" example): the API checker, an episode on a named route, seeding, rendering and the ego's options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from cavlab.envs.config import EnvConfigError
from cavlab.envs.traffic import TrafficEnv

SCENARIO = str(Path(__file__).resolve().parents[1] / "scenarios" / "sumo-ramp-network.yaml")
MOTORWAY = {"from_edge": "gneE2", "to_edge": "gneE11", "lane": 1, "x_m": 150.0}  # the three-lane motorway
QUICK = {"scenario": SCENARIO, "warmup_s": 30.0, "episode_s": 20.0, "warm_states": 1}


def make(**kwargs) -> TrafficEnv:
    return TrafficEnv(**{**QUICK, "ego": MOTORWAY, **kwargs})


def corridor_of(env: TrafficEnv, edge_id: str) -> int:
    network = env.traffic.network
    return network.external.corridor[network.edge_names.index(edge_id)]


@pytest.mark.sumo
def test_check_env_on_a_network() -> None:
    env = make(render_mode="rgb_array")
    try:
        check_env(env)
        env.reset(seed=1)
        frame = env.render()
        assert frame.ndim == 3 and frame.shape[2] == 3
        assert env._renderer.corridor == corridor_of(env, "gneE2")  # the ego's corridor only
    finally:
        env.close()


def episode(env: TrafficEnv, seed: int) -> tuple[list[np.ndarray], list[dict]]:
    obs, info = env.reset(seed=seed)
    observations, infos = [obs], [info]
    done = False
    while not done:
        obs, _, terminated, truncated, info = env.step(0)  # planner actions: 0 is SUMO's car following
        observations.append(obs)
        infos.append(info)
        done = terminated or truncated
    return observations, infos


@pytest.mark.sumo
@pytest.mark.parametrize("placement", ["takeover", "insert"])
def test_an_episode_on_a_named_route_reaches_the_goal(placement: str) -> None:
    env = make(episode_s=80.0, action={"type": "planner"}, randomize=None, ego={**MOTORWAY, "placement": placement})
    try:
        start = env.traffic.network.edge("gneE2").start_m
        _, infos = episode(env, seed=3)
        assert start + 100.0 <= infos[0]["x_m"] <= start + 300.0  # near x_m = 150 m along gneE2
        assert infos[-1]["outcome"] == "goal"
        end = env.traffic.network.edge("gneE11")
        assert end.start_m + end.length_m - 50.0 <= infos[-1]["x_m"] <= end.start_m + end.length_m
        assert infos[-1]["reward_terms"]["completion"] == 1.0
    finally:
        env.close()


@pytest.mark.sumo
def test_a_route_from_the_on_ramp_crosses_corridors_to_its_goal() -> None:
    ego = {"from_edge": "gneE15", "to_edge": "gneE8", "lane": 0, "x_m": 20.0, "placement": "insert"}
    env = make(episode_s=70.0, action={"type": "planner"}, randomize=None, ego=ego)
    try:
        _, infos = episode(env, seed=5)
        assert infos[-1].get("outcome") == "goal", infos[-1]
        goal = env.traffic.network.edge("gneE8")
        assert corridor_of(env, "gneE15") != corridor_of(env, "gneE8")
        assert goal.start_m + goal.length_m / 2 <= infos[-1]["x_m"] <= goal.start_m + goal.length_m
    finally:
        env.close()


@pytest.mark.sumo
def test_same_seed_same_episode_on_a_network() -> None:
    env = make(episode_s=8.0)
    try:
        obs_a, infos_a = episode(env, seed=11)
        obs_b, infos_b = episode(env, seed=11)
        assert len(obs_a) == len(obs_b)
        for a, b in zip(obs_a, obs_b, strict=True):
            np.testing.assert_array_equal(a, b)
        assert [i["x_m"] for i in infos_a] == [i["x_m"] for i in infos_b]
    finally:
        env.close()


@pytest.mark.sumo
def test_libsumo_and_traci_run_the_same_episode_on_a_network() -> None:
    """The insertion on SUMO's route and the takeover's new destination go through either backend alike."""
    runs = []
    for backend in ("libsumo", "traci"):
        env = make(episode_s=6.0, backend=backend, ego={**MOTORWAY, "placement": "insert"})
        try:
            runs.append(episode(env, seed=7))
        finally:
            env.close()
    (obs_a, infos_a), (obs_b, infos_b) = runs
    np.testing.assert_array_equal(np.array(obs_a), np.array(obs_b))
    assert [i["x_m"] for i in infos_a] == [i["x_m"] for i in infos_b]


@pytest.mark.parametrize(
    ("ego", "words"),
    [
        ({**MOTORWAY, "route": "ramp"}, ["'ego.route' = 'ramp'", "ego.from_edge to ego.to_edge", "allowed: mainline"]),
        ({"to_edge": "gneE11"}, ["'ego.from_edge'", "needs it", "edges of the network", "gneE2"]),
        ({**MOTORWAY, "from_edge": "nowhere"}, ["'ego.from_edge'", "unknown edge 'nowhere'", "gneE11"]),
        ({**MOTORWAY, "to_edge": "nowhere"}, ["'ego.to_edge'", "unknown edge 'nowhere'"]),
        ({**MOTORWAY, "lane": 3}, ["'ego.lane' = 3", "edge 'gneE2' has road lanes 0..2"]),
        ({**MOTORWAY, "from_edge": "gneE8", "lane": 0}, ["'ego.lane' = 0", "edge 'gneE8' has road lanes 1..2"]),
        ({**MOTORWAY, "x_m": 500.0}, ["'ego.x_m' = 500", "start of ego.from_edge 'gneE2'", "allowed: 0..381"]),
        ({**MOTORWAY, "from_edge": "gneE11", "to_edge": "gneE2"}, ["'ego.to_edge' = 'gneE2'", "no route from"]),
    ],
)
def test_bad_ego_options_on_a_network(ego: dict, words: list[str]) -> None:
    with pytest.raises(EnvConfigError) as caught:
        TrafficEnv(**QUICK, ego=ego)
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_a_goal_beyond_the_destination_edge() -> None:
    with pytest.raises(EnvConfigError, match=r"'goal_x_m' = 5000: .* ego.to_edge 'gneE11' \(allowed: 0\.\.1109"):
        TrafficEnv(**QUICK, ego=MOTORWAY, goal_x_m=5000.0)


def test_network_fields_on_a_generated_road() -> None:
    with pytest.raises(EnvConfigError, match=r"'ego.from_edge' is for road.kind 'network'.*generated 'highway'"):
        TrafficEnv(scenario="highway", ego={"from_edge": "main", "to_edge": "main"})


@pytest.mark.sumo
def test_the_goal_follows_the_destination_of_an_episode() -> None:
    env = make(episode_s=2.0)
    try:
        env.reset(seed=0, options={"config": {"ego": {"to_edge": "gneE8"}, "goal_x_m": 30.0}})
        assert env.traffic.goal_x_m == pytest.approx(env.traffic.network.edge("gneE8").start_m + 30.0)
        env.reset(seed=0)  # back to the env's own: 50 m before the end of gneE11
        end = env.traffic.network.edge("gneE11")
        assert env.traffic.goal_x_m == pytest.approx(end.start_m + end.length_m - 50.0)
    finally:
        env.close()


def test_a_bad_ego_per_episode_is_refused_at_reset() -> None:
    env = make()
    try:
        with pytest.raises(EnvConfigError, match="unknown edge 'nowhere'"):
            env.reset(seed=0, options={"config": {"ego": {"to_edge": "nowhere"}}})
    finally:
        env.close()


@pytest.mark.sumo
def test_the_snippet_of_the_docs_runs(capsys: pytest.CaptureFixture[str]) -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "environments.md").read_text()
    snippet = page.split("## On your own network", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    exec(compile(snippet, "docs/environments.md", "exec"), {})
    edges, outcome = capsys.readouterr().out.splitlines()[:2]
    assert "'gneE2'" in edges and "'gneE11'" in edges
    assert outcome.split()[0] in ("goal", "None")  # at the goal, or truncated after episode_s
