"""The tasks: per-episode randomisation, the time-to-collision observation, the completion and
disruption terms, and per-episode configuration through `reset(options={"config": ...})`."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import cavlab.envs  # noqa: F401  (registers the environments)
from cavlab.envs.actions import IDLE, LANE_LEFT
from cavlab.envs.config import EnvConfigError, ObservationSpec, RandomizeSpec
from cavlab.envs.observations import RoadFrame, TimeToCollision
from cavlab.envs.randomize import BESIDE_ID
from cavlab.world import WorldState


def world_of(x, lane, v, length=5.0) -> WorldState:
    n = len(x)
    return WorldState(
        time_s=0.0, ids=np.array([f"v{i}" for i in range(n)], dtype=object), slot=np.arange(n),
        type_index=np.zeros(n, dtype=np.int16), is_cav=np.zeros(n, dtype=bool), controlled=np.zeros(n, dtype=bool),
        edge=np.zeros(n, dtype=np.int16), lane=np.array(lane, dtype=np.int16), x_m=np.array(x, dtype=float),
        speed_mps=np.array(v, dtype=float), accel_mps2=np.zeros(n), length_m=np.full(n, length),
        type_names=("car",), edge_names=("main",),
    )  # fmt: skip


# ----------------------------------------------------------------------------- unit: TTC, options


def test_ttc_observation_known_answers() -> None:
    # ego v0 in lane 1 at x = 100, 20 m/s; lanes 0..2
    world = world_of(
        x=[100, 130, 80, 160, 98, 400, 60],
        lane=[1, 1, 1, 2, 0, 1, 0],
        v=[20, 15, 25, 30, 18, 0, 40],
    )
    raw = TimeToCollision(
        ObservationSpec(type="ttc", normalize=False, range_m=150, ttc_cap_s=10), RoadFrame(0, 2, 30.0, lane_width_m=3.2)
    )
    out = raw.observe(world, ego=0)
    # columns: lane exists, TTC ahead, TTC behind, gap ahead, gap behind; rows: left, own, right
    np.testing.assert_allclose(out[0], [1, 10, 10, 55, 150])  # left: leader pulls away, no follower
    np.testing.assert_allclose(out[1], [1, 5, 3, 25, 15])  # own: 25 m closing at 5 m/s; 15 m closing at 5 m/s
    # right: v4 alongside (bumper gap < 0 → 0) is the follower, slower: no collision course; v6 is farther back
    np.testing.assert_allclose(out[2], [1, 10, 10, 150, 0])
    norm = TimeToCollision(
        ObservationSpec(type="ttc", range_m=150, ttc_cap_s=10), RoadFrame(0, 2, 30.0, lane_width_m=3.2)
    )
    got = norm.observe(world, ego=0)
    np.testing.assert_allclose(got[1], [1, 0.5, 0.3, 25 / 150, 15 / 150], rtol=1e-6)
    assert norm.space.contains(got)
    # a lane that does not exist is marked absent, its times capped
    top = norm.observe(world_of(x=[0, 10], lane=[2, 2], v=[30, 10]), ego=0)
    np.testing.assert_allclose(top[0], [0, 1, 1, 1, 1])
    np.testing.assert_allclose(top[1], [1, 0.025, 1, 5 / 150, 1], rtol=1e-6)  # 5 m closing at 20 m/s: 0.25 s of 10


def test_ttc_has_fixed_features_and_default_cap() -> None:
    with pytest.raises(ValueError, match="type 'ttc' has fixed features"):
        ObservationSpec(type="ttc", features=["x"])
    assert ObservationSpec(type="ttc").ttc_cap_s == 10.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"randomize": {"keep_fraction": [0.9, 0.5]}},
            r"option 'randomize': keep_fraction must be a range \(lo, hi\) with lo ≤ hi \(got 0.9, 0.5\)",
        ),
        ({"randomize": {"speed_scale": [0.0, 1.0]}}, r"randomize.speed_scale.0'?: Input should be greater than 0"),
        ({"randomize": {"slow_leader_probability": 0.9, "no_leader_probability": 0.2}}, r"at most 1"),
        ({"randomize": {"density": 0.5}}, r"unknown environment option 'randomize.density' \(allowed: beside_dv_mps"),
    ],
)
def test_bad_randomize_options_name_the_problem(kwargs: dict, message: str) -> None:
    with pytest.raises(EnvConfigError, match=message):
        gym.make("cavlab/LaneChange-v0", **kwargs)


def test_randomize_defaults_are_on_and_null_turns_it_off() -> None:
    env = gym.make("cavlab/Merge-v0")
    assert env.unwrapped.config.randomize == RandomizeSpec(ego_dx_m=(0.0, 60.0), ego_speed_mps=(14.0, 20.0))
    assert gym.make("cavlab/Merge-v0", randomize=None).unwrapped.config.randomize is None


# ----------------------------------------------------------------------------- SUMO: randomisation


def _episode_start(env, seed: int) -> tuple[dict, np.ndarray, dict]:
    obs, info = env.reset(seed=seed)
    base = env.unwrapped
    world, api = base.traffic.world, base.traffic.backend.api
    # the vehicles of the warmed traffic (not those that entered at the road's start in the step after it)
    warmed = [str(i) for i, x in zip(world.ids, world.x_m, strict=True) if x > 30 and str(i) != base.ego.vehicle_id]
    return info, obs, {vid: api.vehicle.getSpeedFactor(vid) for vid in warmed}


@pytest.mark.sumo
def test_same_seed_same_perturbation_other_seeds_other_ones_within_the_ranges() -> None:
    env = gym.make("cavlab/LaneChange-v0")
    spec = env.unwrapped.config.randomize
    try:
        a, b = _episode_start(env, 7), _episode_start(env, 7)
        assert a[0] == b[0] and a[2] == b[2]
        np.testing.assert_array_equal(a[1], b[1])
        seen = [_episode_start(env, s) for s in range(8)]
        perturbations = [info["randomize"] for info, _, _ in seen]
        assert len({p["speed_scale"] for p in perturbations}) == 8
        assert len({p["leader"] for p in perturbations}) >= 2
        for (_, _, factors), p in zip(seen, perturbations, strict=True):
            assert spec.keep_fraction[0] <= p["keep_fraction"] <= spec.keep_fraction[1]
            assert spec.speed_scale[0] <= p["speed_scale"] <= spec.speed_scale[1]
            assert spec.cav_share[0] <= p["cav_share"] <= spec.cav_share[1]
            lo, hi = p["speed_scale"] * (1 - spec.speed_spread), p["speed_scale"] * (1 + spec.speed_spread)
            warmed = {k: f for k, f in factors.items() if k != BESIDE_ID}
            assert warmed and all(lo - 1e-9 <= f <= hi + 1e-9 for f in warmed.values())
            if p["gap"] is not None:
                lane, start, end = p["gap"]
                assert lane == 1 and spec.gap_length_m[0] - 1e-6 <= end - start <= spec.gap_length_m[1] + 1e-6
            if p["leader_speed_mps"] is not None:
                assert spec.slow_leader_speed_mps[0] <= p["leader_speed_mps"] <= spec.slow_leader_speed_mps[1]
        # the ego's start is shifted within ego_dx_m around ego.x_m … up to the takeover's choice of vehicle
        assert len({round(info["x_m"], 3) for info, _, _ in seen}) == 8
    finally:
        env.close()


@pytest.mark.sumo
def test_the_vehicle_beside_and_the_slow_leader_are_placed_as_drawn() -> None:
    beside = {"beside_probability": 1.0, "beside_dx_m": [0.0, 0.0], "beside_dv_mps": [0.0, 0.0]}
    env = gym.make("cavlab/LaneChange-v0", randomize={**beside, "slow_leader_probability": 1.0,
                                                       "no_leader_probability": 0.0})  # fmt: skip
    try:
        unsafe = []
        for seed in range(3):
            info = env.reset(seed=seed)[1]
            base = env.unwrapped
            world, ego = base.traffic.world, base.ego
            p = info["randomize"]
            assert p["inserted"] == 1 and p["leader"] == "slow"
            k = world.index_of(BESIDE_ID)
            # beside: it enters where the ego was, the ego has moved on for one step
            assert world.lane[k] == 1 and abs(world.x_m[k] - world.x_m[ego.row]) < 0.1 * world.speed_mps[ego.row] + 1
            lead = int(world.leader_ahead_row[ego.row])
            api = base.traffic.backend.api
            assert api.vehicle.getMaxSpeed(str(world.ids[lead])) == pytest.approx(p["leader_speed_mps"])
            assert api.vehicle.getLaneChangeMode(str(world.ids[lead])) == 0  # it keeps its lane
            # cutting in blind beside it pushes the new followers off their speed, more than staying does
            terms = {}
            for plan in ([LANE_LEFT, IDLE, IDLE, IDLE], [IDLE] * 4):
                env.reset(seed=seed)
                steps = [env.step(a)[4]["reward_terms"] for a in plan]
                terms[plan[0]] = steps
            assert sum(t["disruption"] for t in terms[LANE_LEFT]) < sum(t["disruption"] for t in terms[IDLE])
            unsafe.append(min(t["unsafe"] for t in terms[LANE_LEFT]))
        assert min(unsafe) == -1.0  # and it left a headway or a time to collision the term calls unsafe
    finally:
        env.close()


# ----------------------------------------------------------------------------- SUMO: reward terms, reset options


@pytest.mark.sumo
def test_completion_is_paid_at_a_safe_end_in_the_target_lane() -> None:
    env = gym.make("cavlab/Highway-v0", episode_s=3.0, randomize=None)
    try:
        env.reset(seed=0)
        steps = [env.step(IDLE) for _ in range(3)]
        assert [s[4]["reward_terms"]["completion"] for s in steps] == [0.0, 0.0, 1.0] and steps[-1][3]
        terms = steps[-1][4]["reward_terms"]
        weights = env.unwrapped.config.reward
        assert steps[-1][1] == pytest.approx(sum(getattr(weights, k) * v for k, v in terms.items()))
        assert all(s[4]["reward_terms"]["disruption"] <= 0 for s in steps)
    finally:
        env.close()


@pytest.mark.sumo
def test_reset_options_configure_one_episode() -> None:
    env = gym.make("cavlab/Highway-v0", episode_s=4.0)
    try:
        config = {"reward": {"completion": 3.0, "speed": 0.0}, "episode_s": 2.0, "target_lane": 2, "randomize": None}
        _, info = env.reset(seed=1, options={"config": config})
        assert "randomize" not in info and env.unwrapped.config.reward.collision == 10.0  # merged, not replaced
        steps = [env.step(IDLE) for _ in range(2)]
        assert steps[-1][3] and steps[-1][4]["reward_terms"]["target_lane"] == 0.0  # not in lane 2
        assert steps[-1][4]["reward_terms"]["completion"] == 0.0
        # the next reset without options is the env's own configuration again
        _, info = env.reset(seed=1)
        assert "randomize" in info and env.unwrapped.config.episode_s == 4.0
        assert env.unwrapped.config.target_lane is None and env.unwrapped.config.reward.completion == 10.0
        steps = []
        while not steps or not (steps[-1][2] or steps[-1][3]):
            steps.append(env.step(IDLE))
        assert len(steps) == 4 or steps[-1][2]
    finally:
        env.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"conifg": {}}, r"unknown reset option 'conifg' \(allowed: config\)"),
        (
            {"config": {"scenario": "highway"}},
            r"reset option config.scenario cannot change per episode .*per episode: ego, randomize",
        ),
        ({"config": {"observation": {"type": "ttc"}}}, r"config.observation cannot change per episode"),
        (
            {"config": {"reward": {"speed": "fast"}}},
            r"environment option 'reward.speed': Input should be a valid number",
        ),
        ({"config": {"episode_s": 100.0}}, r"config.episode_s = 100 exceeds the environment's episode_s = 40"),
        ({"config": [1, 2]}, r"reset option 'config' must be a mapping"),
    ],
)
def test_bad_reset_options_are_refused_before_sumo_starts(options: dict, message: str) -> None:
    env = gym.make("cavlab/Highway-v0")
    try:
        with pytest.raises(EnvConfigError, match=message):
            env.reset(seed=0, options=options)
        assert env.unwrapped.traffic.backend is None
    finally:
        env.close()
