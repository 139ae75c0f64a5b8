"""Gymnasium and PettingZoo environments: the API checkers, seeding, dynamics, rewards, errors."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import cavlab.envs  # registers the environments
from cavlab.envs.actions import FASTER, IDLE, LANE_LEFT, SLOWER, ContinuousAction, DiscreteMetaAction
from cavlab.envs.config import ActionSpec, EnvConfigError, ObservationSpec
from cavlab.envs.core import TAKEOVER_WAIT_S
from cavlab.envs.observations import Kinematics, OccupancyGrid, RoadFrame
from cavlab.world import WorldState

ENV_IDS = ["cavlab/LaneChange-v0", "cavlab/Merge-v0", "cavlab/Highway-v0"]


def world_of(x, lane, v, cav=None, length=5.0, accel=0.0) -> WorldState:
    n = len(x)
    return WorldState(
        time_s=0.0,
        ids=np.array([f"v{i}" for i in range(n)], dtype=object),
        slot=np.arange(n),
        type_index=np.zeros(n, dtype=np.int16),
        is_cav=np.array(cav if cav is not None else [False] * n),
        controlled=np.zeros(n, dtype=bool),
        edge=np.zeros(n, dtype=np.int16),
        lane=np.array(lane, dtype=np.int16),
        x_m=np.array(x, dtype=float),
        speed_mps=np.array(v, dtype=float),
        accel_mps2=np.full(n, accel),
        length_m=np.full(n, length),
        type_names=("car",),
        edge_names=("main",),
    )


# ----------------------------------------------------------------------------- unit: observations, actions, config


def test_kinematics_rows_are_ego_then_nearest_relative_and_normalised() -> None:
    spec = ObservationSpec(vehicles_count=3, features=("presence", "x", "y", "vx", "lane", "cav"), range_m=100)
    obs = Kinematics(spec, RoadFrame(0, 1, 30.0, lane_width_m=3.2))
    world = world_of(x=[100, 180, 130, 95, 400], lane=[0, 1, 0, 1, 0], v=[20, 30, 15, 21, 30], cav=[1, 0, 1, 0, 0])
    out = obs.observe(world, ego=0)
    assert out.shape == (3, 6) and out.dtype == np.float32
    # ego: absolute speed and lane
    np.testing.assert_allclose(out[0], [1, 0, 0, 20 / 30, 0, 1], rtol=1e-6)
    # nearest first: v3 (5 m behind, left lane), then v2 (30 m ahead); v1 (80 m) does not fit; v4 out of range
    np.testing.assert_allclose(out[1], [1, -5 / 100, 3.2 / 6.4, 1 / 30, 1, 0], rtol=1e-6)
    np.testing.assert_allclose(out[2], [1, 30 / 100, 0, -5 / 30, 0, 1], rtol=1e-6)
    assert obs.space.contains(out)


def test_kinematics_pads_absent_rows_and_clips() -> None:
    spec = ObservationSpec(vehicles_count=4, range_m=50)
    obs = Kinematics(spec, RoadFrame(0, 2, 30.0, lane_width_m=3.2))
    out = obs.observe(world_of(x=[0, 40], lane=[0, 0], v=[10, 90]), ego=0)
    assert out[1, 3] == 1.0  # Δv = 80 m/s clipped
    assert not out[2:].any()
    raw_spec = ObservationSpec(vehicles_count=2, range_m=50, normalize=False)
    raw = Kinematics(raw_spec, RoadFrame(0, 2, 30.0, lane_width_m=3.2))
    np.testing.assert_allclose(raw.observe(world_of(x=[0, 40], lane=[0, 2], v=[10, 90]), ego=0)[1], [1, 40, 6.4, 80])
    wide = Kinematics(raw_spec, RoadFrame(0, 2, 30.0, lane_width_m=4.0))  # y follows the road's lane width
    np.testing.assert_allclose(wide.observe(world_of(x=[0, 40], lane=[0, 2], v=[10, 90]), ego=0)[1], [1, 40, 8.0, 80])


def test_occupancy_grid_marks_each_body_cell() -> None:
    spec = ObservationSpec(type="occupancy_grid", range_m=20, grid_step_m=5)
    grid = OccupancyGrid(spec, RoadFrame(-1, 1, 30.0, lane_width_m=3.2))
    out = grid.observe(world_of(x=[0, 12, -3], lane=[0, 1, -1], v=[20, 26, 20], length=4.0), ego=0)
    assert out.shape == (2, 3, 8)
    # ego [−4, 0] → cells 3 and 4 (cell k covers [−20 + 5k, −15 + 5k)); lane 0 is row 1
    assert out[0, 1].tolist() == [0, 0, 0, 1, 1, 0, 0, 0]
    assert out[0, 2].tolist() == [0, 0, 0, 0, 0, 1, 1, 0]  # [8, 12] in lane 1
    assert out[1, 2, 6] == pytest.approx(6 / 30)
    assert out[0, 0].tolist() == [0, 0, 1, 1, 0, 0, 0, 0]  # [−7, −3] on the ramp lane


def test_discrete_meta_steps_through_target_speeds_and_tracks_them() -> None:
    act = DiscreteMetaAction(ActionSpec(target_speeds_mps=(10, 20, 30)), accel_mps2=2.0, decel_mps2=4.0)
    act.reset(speed_mps=19.0)
    assert act.target_speed_mps == 20
    assert act.decide(FASTER) == 0 and act.target_speed_mps == 30
    assert act.decide(FASTER) == 0 and act.target_speed_mps == 30  # saturates
    assert act.accel(29.0) == pytest.approx(1 / 0.6)
    assert act.accel(0.0) == 2.0  # clipped to a
    assert act.decide(SLOWER) == 0 and act.decide(SLOWER) == 0 and act.target_speed_mps == 10
    assert act.accel(30.0) == -4.0  # clipped to −b
    assert act.decide(LANE_LEFT) == 1 and act.decide(2) == -1 and act.decide(IDLE) == 0


def test_continuous_action_scales_by_the_limits() -> None:
    act = ContinuousAction(ActionSpec(type="continuous"), accel_mps2=2.0, decel_mps2=4.0)
    act.reset(20.0)
    assert act.decide(np.array([0.5, 0.9])) == 1 and act.accel(20.0) == 1.0
    assert act.decide(np.array([-0.5, -0.5])) == -1 and act.accel(20.0) == -2.0
    assert act.decide(np.array([3.0, 0.0])) == 0 and act.accel(20.0) == 2.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"speed": 3}, r"unknown environment option 'speed' \(allowed: action, backend, decision_period_s"),
        ({"reward": {"colission": 1}}, r"unknown environment option 'reward.colission' \(allowed: collision, comfort"),
        ({"observation": {"features": ["x", "jerk"]}}, r"feature 'jerk' is not a kinematics feature \(allowed: pres"),
        ({"action": {"type": "hybrid"}}, r"'action.type': Input should be 'discrete_meta', 'continuous' or 'planner'"),
        ({"decision_period_s": 0.25}, r"must be a multiple of the scenario's step length \(0.1 s\)"),
        ({"ego": {"lane": 3}}, r"'ego.lane' = 3: the road has lanes 0..1"),
        ({"ego": {"vehicle_type": "bus"}}, r"'ego.vehicle_type' = 'bus' is not a vehicle type of the scenario"),
        ({"scenario": "nope"}, r"unknown scenario 'nope'"),
    ],
)
def test_bad_options_name_the_problem(kwargs: dict, message: str) -> None:
    with pytest.raises(cavlab.errors.UserError, match=message):
        gym.make("cavlab/LaneChange-v0", **kwargs)


def test_bad_render_mode_is_refused() -> None:
    with pytest.raises(EnvConfigError, match=r"render_mode 'video' is not supported \(allowed: rgb_array, .*human\)"):
        cavlab.envs.LaneChangeEnv(render_mode="video")


# ----------------------------------------------------------------------------- SUMO: API checkers


@pytest.mark.sumo
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_envs_pass_gymnasium_and_sb3_checkers(env_id: str) -> None:
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(env_id)
    try:
        # libsumo runs one simulation per process: the render-mode check builds a second env (see the traci test)
        check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env.unwrapped, warn=True)
    finally:
        env.close()


@pytest.mark.sumo
def test_full_gymnasium_check_with_every_render_mode_on_traci() -> None:
    env = gym.make("cavlab/LaneChange-v0", backend="traci", render_mode="rgb_array")
    try:
        check_env(env.unwrapped)
    finally:
        env.close()


# ----------------------------------------------------------------------------- SUMO: behaviour


def rollout(env: gym.Env, actions, seed: int):
    obs, info = env.reset(seed=seed)
    out = [(obs, 0.0, False, False, info)]
    for a in actions:
        out.append(env.step(a))
        if out[-1][2] or out[-1][3]:
            break
    return out


@pytest.mark.sumo
def test_same_seed_same_episode_other_seed_other_traffic() -> None:
    env = gym.make("cavlab/LaneChange-v0")
    try:
        plan = [IDLE, FASTER, LANE_LEFT, IDLE, IDLE, IDLE, SLOWER, IDLE]
        a, b = rollout(env, plan, seed=3), rollout(env, plan, seed=3)
        c = rollout(env, plan, seed=4)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x[0], y[0])
            assert x[1:] == y[1:]
        assert not np.array_equal(a[0][0], c[0][0])
        # reset() without a seed continues the RNG: a new episode, reproducibly
        env.reset(seed=5)
        first = env.reset()[0]
        env.reset(seed=5)
        np.testing.assert_array_equal(env.reset()[0], first)
    finally:
        env.close()


@pytest.mark.sumo
def test_lane_change_env_starts_behind_a_leader_and_lane_left_reaches_the_fast_lane() -> None:
    # a light fast lane, so that the lane change cannot end in a collision
    env = gym.make("cavlab/LaneChange-v0", set=["demand.flows.2.vehicles_per_hour=100"], randomize=None,
                   observation={"features": ["presence", "x", "y", "vx", "lane"]})  # fmt: skip
    try:
        obs, info = env.reset(seed=1)
        assert info["lane"] == 0
        ahead = obs[1:][(obs[1:, 0] == 1) & (obs[1:, 2] == 0) & (obs[1:, 1] > 0)]
        assert ahead[:, 1].min() * 150 <= 60 + 12  # a leader within 60 m, bumper to bumper (≤ 12 m long)
        assert env.unwrapped.traffic.world.is_cav[env.unwrapped.ego.row]  # the ego took the CAV type
        info = env.step(LANE_LEFT)[-1]
        assert info["reward_terms"]["target_lane"] == 0.0
        for _ in range(3):
            _, reward, terminated, _, info = env.step(IDLE)
        assert info["lane"] == 1 and not terminated
        assert info["reward_terms"]["target_lane"] == 1.0
        assert reward == pytest.approx(
            sum(getattr(env.unwrapped.config.reward, k) * v for k, v in info["reward_terms"].items())
        )
    finally:
        env.close()


@pytest.mark.sumo
def test_driving_into_the_leader_ends_in_a_collision_with_its_penalty() -> None:
    env = gym.make("cavlab/LaneChange-v0", action={"target_speeds_mps": [20, 35]})
    try:
        env.reset(seed=2)
        steps = 0
        while steps < 40:
            _, reward, terminated, truncated, info = env.step(FASTER)
            steps += 1
            if terminated:
                break
        assert terminated and not truncated, info
        assert info["outcome"] == "collision" and steps < 30
        assert info["reward_terms"]["collision"] == -1.0
        assert reward < -5
        with pytest.raises(gym.error.ResetNeeded):
            env.unwrapped.step(IDLE)
    finally:
        env.close()


@pytest.mark.sumo
def test_staying_on_the_ramp_runs_out_of_lane() -> None:
    env = gym.make("cavlab/Merge-v0", randomize=None)
    try:
        env.reset(seed=0)
        for _ in range(60):
            _, _, terminated, truncated, info = env.step(IDLE)
            if terminated or truncated:
                break
        assert terminated and info["outcome"] == "lane_end"
        assert info["reward_terms"]["collision"] == -1.0
    finally:
        env.close()


@pytest.mark.sumo
def test_time_limit_truncates_and_disruption_is_counted() -> None:
    env = gym.make("cavlab/Highway-v0", episode_s=6.0, decision_period_s=2.0)
    try:
        env.reset(seed=0)
        steps = [env.step(IDLE) for _ in range(3)]
        assert [s[3] for s in steps] == [False, False, True]
        assert all(not s[2] for s in steps)
        assert steps[-1][4]["time_s"] == pytest.approx(env.unwrapped.start_time_s + 6.0)
        assert all(s[4]["reward_terms"]["disruption"] <= 0 for s in steps)
    finally:
        env.close()


@pytest.mark.sumo
def test_rgb_array_frames_show_the_ego() -> None:
    env = gym.make("cavlab/LaneChange-v0", render_mode="rgb_array")
    try:
        env.reset(seed=0)
        frame = env.render()
        assert frame.shape == (4 * 18, 600, 3) and frame.dtype == np.uint8
        ego_pixels = np.all(frame == cavlab.envs.render.EGO, axis=-1)
        assert ego_pixels.any()
        assert ego_pixels[:, 300 - 16 : 301].any()  # the ego's 5 m body ends at the centre column
    finally:
        env.close()


@pytest.mark.sumo
def test_a_second_libsumo_env_in_one_process_is_refused() -> None:
    first, second = gym.make("cavlab/LaneChange-v0"), gym.make("cavlab/Highway-v0", backend="libsumo")
    try:
        first.reset(seed=0)
        with pytest.raises(EnvConfigError, match="another libsumo simulation is live in this process"):
            second.reset(seed=0)
    finally:
        first.close()
        second.close()


@pytest.mark.sumo
def test_async_vector_env_runs_independent_simulations() -> None:
    envs = gym.make_vec("cavlab.envs:cavlab/LaneChange-v0", num_envs=2, vectorization_mode="async")
    try:
        obs, info = envs.reset(seed=[0, 1])
        assert obs.shape == (2, 7, 4)
        for _ in range(3):
            obs, _, _, _, info = envs.step(np.array([IDLE, IDLE]))
        # each process steps its own SUMO: warm-up, taking the ego over (waiting for a vehicle close behind a
        # leader for up to TAKEOVER_WAIT_S), randomising the traffic (one step), 3 decision periods
        assert not np.array_equal(obs[0], obs[1])
        warmup = cavlab.envs.LaneChangeEnv.defaults["warmup_s"]
        assert np.all((info["time_s"] > warmup + 3) & (info["time_s"] < warmup + TAKEOVER_WAIT_S + 3 + 1.2))
    finally:
        envs.close()


@pytest.mark.sumo
def test_planner_actions_pass_the_checkers() -> None:
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make("cavlab/LaneChange-v0", action={"type": "planner"})
    try:
        assert env.action_space == gym.spaces.Discrete(3)
        check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env.unwrapped, warn=True)
    finally:
        env.close()


@pytest.mark.sumo
@pytest.mark.parametrize("controller", ["sumo", "cooperative"])
def test_asking_the_planner_runs_a_maneuver_into_the_fast_lane(controller: str) -> None:
    from cavlab.envs.actions import ASK_LEFT, FOLLOW

    env = gym.make("cavlab/LaneChange-v0", action={"type": "planner"}, randomize=None,
                   set=[f"control.controller={controller}", "demand.cav_share=1.0"])  # fmt: skip
    try:
        env.reset(seed=1)
        statuses, in_maneuver, lanes = [], [], []
        for _ in range(40):
            _, _, terminated, truncated, info = env.step(ASK_LEFT)
            statuses.append(info.get("request", {}).get("status"))
            in_maneuver.append(info["in_maneuver"])
            lanes.append(info["lane"])
            if (lanes[-1] == 1 and not in_maneuver[-1]) or terminated or truncated:
                break
        assert "outcome" not in info
        assert "planned" in statuses
        start = statuses.index("planned")
        # while the maneuver runs, requests are ignored; it ends in the fast lane and hands the ego back
        assert all(s in ("ignored", None) for s in statuses[start + 1 :])
        assert in_maneuver[start] and not in_maneuver[-1] and lanes[-1] == 1
        # following only: SUMO's car following keeps the ego in its lane and out of trouble
        env.reset(seed=1)
        for _ in range(20):
            _, _, terminated, _, info = env.step(FOLLOW)
            assert info["lane"] == 0 and not terminated and "request" not in info
    finally:
        env.close()


@pytest.mark.sumo
def test_perception_observation_is_reproducible_and_validated(perception_model_dir, tmp_path) -> None:
    options = {"observation": {"type": "perception", "model": str(perception_model_dir)},
               "set": ["context.weather=fog"]}  # fmt: skip
    env = gym.make("cavlab/LaneChange-v0", **options)
    try:
        assert env.observation_space.shape == (6, 3)
        a, b = rollout(env, [IDLE] * 3, seed=2), rollout(env, [IDLE] * 3, seed=2)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x[0], y[0])
        assert env.observation_space.contains(a[-1][0])
        assert a[-1][0][:, 0].min() >= 0 and a[-1][0][:, 0].max() <= 1  # presence probabilities
    finally:
        env.close()
    with pytest.raises(EnvConfigError, match="'model' goes with type 'perception'"):
        gym.make("cavlab/LaneChange-v0", observation={"type": "perception"})
    with pytest.raises(cavlab.errors.UserError, match=r"no checkpoint\.pt"):
        gym.make("cavlab/LaneChange-v0", observation={"type": "perception", "model": str(tmp_path / "none")})
    with pytest.raises(EnvConfigError, match="the environments' controllers plan on the ground truth"):
        gym.make("cavlab/LaneChange-v0", set=["perception.enabled=true", f"perception.model={perception_model_dir}"])


# ----------------------------------------------------------------------------- one loop: the engine's metrics


@pytest.mark.sumo
def test_env_traffic_runs_the_engine_loop_of_cavlab_run(tmp_path) -> None:
    """With no agent in the traffic, an environment's episode is `cavlab run` of the same scenario,
    seed and duration: every run metric equal (the cooperative controller plans in both)."""
    import math

    from cavlab.envs.config import env_config
    from cavlab.envs.core import AgentTraffic
    from cavlab.sim.engine import Engine

    config = env_config({}, {"scenario": "highway-lane-change", "warmup_s": 30.0, "episode_s": 150.0, "metrics": True,
                             "set": ["control.controller=cooperative", "simulation.seed=11"]})  # fmt: skip
    traffic = AgentTraffic(config)
    try:
        traffic.start(sumo_seed=11)
        while traffic.world.time_s < 150.0 - 1e-9:
            traffic.step({})  # no agents: one engine step per call
        end_s = traffic.world.time_s
        from_env = traffic.episode_result()
    finally:
        traffic.dispose()
    sim = traffic.scenario.simulation.model_copy(update={"duration_s": end_s, "seed": 11})
    from_run = Engine(traffic.scenario.model_copy(update={"simulation": sim}), tmp_path / "sumo").run()
    assert from_env.steps == from_run.steps == round(end_s / sim.step_length_s)
    assert from_run.metrics["trips_completed"] > 0 and from_run.metrics["lane_changes_cav"] > 0
    assert from_env.metrics.keys() == from_run.metrics.keys()
    for key, value in from_run.metrics.items():
        got = from_env.metrics[key]
        assert got == value or (isinstance(value, float) and math.isnan(value) and math.isnan(got)), key


@pytest.mark.sumo
def test_episode_metrics_in_the_last_info() -> None:
    env = gym.make("cavlab/LaneChange-v0", episode_s=5.0, metrics=True)
    try:
        env.reset(seed=3)
        done, info = False, {}
        while not done:
            _, _, terminated, truncated, info = env.step(IDLE)
            done = terminated or truncated
            assert done or "metrics" not in info
        assert info["metrics"]["vehicle_hours"] > 0 and "throughput_vph" in info["metrics"]
        assert env.render is not None and env.unwrapped.traffic.backend is None  # SUMO closed for the metrics
    finally:
        env.close()
