"""Simulated sensors, the neighbour task and perception datasets."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cavlab.cli import app
from cavlab.config.scenario import ContextSpec, SensorFault
from cavlab.perception.dataset import load_dataset
from cavlab.perception.sensors import (
    SENSOR_VERSION,
    SensorSuite,
    _synthetic_world,
    detection_probability,
    sensor_params,
    sensor_table,
)
from cavlab.perception.task import RANGE_M, SLOT_AHEAD, SLOT_LANE, neighbour_rows, neighbour_targets, slot_correct
from cavlab.world import WorldState

runner = CliRunner()


def world_of(x, lane, v, length=5.0) -> WorldState:
    n = len(x)
    return WorldState(
        time_s=0.0, ids=np.array([f"v{i}" for i in range(n)], dtype=object), slot=np.arange(n),
        type_index=np.zeros(n, dtype=np.int16), is_cav=np.ones(n, dtype=bool), controlled=np.zeros(n, dtype=bool),
        edge=np.zeros(n, dtype=np.int16), lane=np.array(lane, dtype=np.int16), x_m=np.array(x, dtype=float),
        speed_mps=np.array(v, dtype=float), accel_mps2=np.zeros(n), length_m=np.full(n, length),
        type_names=("cav",), edge_names=("main",),
    )  # fmt: skip


def test_context_effects_combine_as_documented() -> None:
    fog_night = sensor_params(ContextSpec(weather="fog", light="night"))
    # camera: range 120 × 0.3 (fog) × 0.35 (night); noise 0.05 × 2.5 × 3.0; dropout 0.02 + 0.10 + 0.10
    assert fog_night["camera"].range_m == pytest.approx(12.6)
    assert fog_night["camera"].noise == pytest.approx(0.375)
    assert fog_night["camera"].dropout == pytest.approx(0.22)
    assert fog_night["radar"].range_m == pytest.approx(152.0)  # radar: fog × 0.95, night no effect
    clear = sensor_params(ContextSpec())
    assert clear["lidar"].range_m == 100 and clear["lidar"].dropout == pytest.approx(0.03)
    faults = sensor_params(ContextSpec(sensor_faults=[
        SensorFault(sensor="lidar", kind="dropout", severity=0.5),
        SensorFault(sensor="camera", kind="blackout", severity=0.3),
        SensorFault(sensor="radar", kind="noise", severity=0.5),
    ]))  # fmt: skip
    assert faults["lidar"].dropout == pytest.approx(0.03 + 0.5 * 0.97)
    assert faults["camera"].blackout == pytest.approx(0.3)
    assert faults["radar"].noise == pytest.approx(0.5 * 3.0)


def test_detection_probability_is_half_at_the_range_and_falls_with_distance() -> None:
    p = detection_probability(np.array([0.0, 50.0, 100.0, 150.0]), 100.0)
    assert p[0] == 1.0 and p[2] == pytest.approx(0.5)
    assert np.all(np.diff(p) < 0) and p[3] < 0.05


def detection_rate(context: ContextSpec, world: WorldState, draws: int = 2000) -> dict[str, float]:
    """How often the observer (row 0) sees the vehicle ahead in its lane (row 1, body 35–40 m ahead), per
    sensor: camera bins and lidar cells over that body only."""
    suite = SensorSuite(context, lane_width_m=3.2)
    frames = suite.observe(world, np.zeros(draws, dtype=int), np.random.default_rng(0))
    edges = suite.camera_edges
    bins = (edges[1:] > 35) & (edges[:-1] < 40)
    cells = np.arange(int((35 + 60) / 2), int((40 + 60) / 2) + 1)
    return {
        "camera": float((frames.camera[:, 0, 1][:, bins] > 0.5).any(axis=-1).mean()),
        "lidar": float((frames.lidar[:, 0, 1][:, cells] > 0.5).any(axis=-1).mean()),
        "radar": float((frames.radar[:, :, 0] > 0).any(axis=-1).mean()),
    }


def test_fog_shortens_the_camera_and_lidar_range_as_documented_radar_barely() -> None:
    world = world_of(x=[0.0, 40.0], lane=[0, 0], v=[25.0, 25.0])  # centre to centre 40 m
    clear = detection_rate(ContextSpec(), world)
    fog = detection_rate(ContextSpec(weather="fog"), world)
    # camera: p(40 m; 120 m)·(1 − 0.02) ≈ 0.98 clear; p(40 m; 36 m)·(1 − 0.12) ≈ 0.26 in fog
    assert clear["camera"] == pytest.approx(0.98, abs=0.02)
    assert fog["camera"] == pytest.approx(detection_probability(40.0, 36.0) * (1 - 0.12), abs=0.04)
    # lidar: p(40; 100) ≈ 1 clear; p(40; 50)·(1 − cell dropout³) ≈ 0.86 in fog
    assert clear["lidar"] > 0.99 and fog["lidar"] == pytest.approx(detection_probability(40.0, 50.0), abs=0.05)
    assert fog["radar"] == pytest.approx(clear["radar"], abs=0.03)


def test_occlusion_fov_and_blackout() -> None:
    # observer, a car 20 m ahead, one 40 m ahead behind it, one alongside in the left lane
    world = world_of(x=[0.0, 25.0, 45.0, 2.0], lane=[0, 0, 0, 1], v=[25.0] * 4)
    table = copy.deepcopy(sensor_table())
    for name in ("camera", "lidar", "radar"):
        table[name].update(noise=0.0, dropout=0.0, clutter=0.0)
    suite = SensorSuite(ContextSpec(), table, lane_width_m=3.2)
    frames = suite.observe(world, np.zeros(400, dtype=int), np.random.default_rng(1))
    edges = suite.camera_edges
    far_bins = (edges[1:] > 40) & (edges[:-1] < 45)
    assert far_bins.any() and not frames.camera[:, 0, 1, far_bins].any()  # occluded: never seen by the camera
    assert not frames.camera[:, 0, 2].any()  # alongside: outside the camera's ±35°
    assert frames.lidar[:, 0, 2].any(axis=-1).all()  # the lidar sees all around
    far_cells = np.arange(int((40 + 60) / 2), int((45 + 60) / 2))
    lidar_far = frames.lidar[:, 0, 1][:, far_cells].any(axis=-1).mean()
    assert 0.03 < lidar_far < 0.2  # seen through with probability 0.1
    returns = frames.radar[:, :, 0].sum(axis=1)
    assert returns.min() == 2 and returns.mean() == pytest.approx(2.5, abs=0.1)  # the hidden one half the time
    blind = SensorSuite(
        ContextSpec(sensor_faults=[SensorFault(sensor="camera", kind="blackout", severity=1.0)]), lane_width_m=3.2
    )
    assert not blind.observe(world, np.zeros(5, dtype=int), np.random.default_rng(0)).camera.any()


def _frames_digest(version: int) -> str:
    """SHA-256 of the frames of 13 synthetic worlds (every weather × light, then a rain-night world with a lidar
    dropout fault and a camera blackout on 3.7 m lanes), each observed with a seeded generator."""
    digest, worlds = hashlib.sha256(), np.random.default_rng(5)
    table = sensor_table()
    contexts = [(ContextSpec(weather=w, light=li), 3.2, 7) for w in table["weather"] for li in table["light"]]
    faults = [SensorFault(sensor="lidar", kind="dropout", severity=0.5),
              SensorFault(sensor="camera", kind="blackout", severity=0.3)]  # fmt: skip
    contexts.append((ContextSpec(weather="rain", light="night", sensor_faults=faults), 3.7, 8))
    for k, (context, lane_width_m, seed) in enumerate(contexts):
        world = _synthetic_world(worlds)
        observers = np.flatnonzero(world.is_cav & ((world.x_m > 100) & (world.x_m < 500) | (k == 12)))
        frames = SensorSuite(context, lane_width_m=lane_width_m, version=version).observe(
            world, observers, np.random.default_rng(seed))  # fmt: skip
        for array in (frames.camera, frames.lidar, frames.radar):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def test_version_1_replays_the_frames_of_the_sensors_before_version_2() -> None:
    """The digest was taken with the sensors as they were before version 2 (commit 97e31be): datasets of
    version 1 are regenerated frame for frame."""
    assert _frames_digest(1) == "ca29bc87337908e3a8f5d2f6cc9ffe56fa5a1d56fbd285709d249752999b959c"
    assert _frames_digest(2) != _frames_digest(1)


def test_both_versions_give_the_same_frames_where_nothing_is_random() -> None:
    """Two observers 5 km apart, each with one vehicle ahead and one behind in each lane (nothing occluded
    nearby), noise-free sensors that see everything: the frames do not depend on how the draws are grouped."""
    x, lane = [], []
    for base in (0.0, 5000.0):
        x += [base, base + 22.0, base - 18.0, base + 30.0, base - 26.0, base + 14.0, base - 40.0]
        lane += [1, 1, 1, 2, 2, 0, 0]
    world = world_of(x=x, lane=lane, v=[25.0, 22, 27, 30, 28, 20, 24] * 2)
    table = copy.deepcopy(sensor_table())
    for name in ("camera", "lidar", "radar"):
        table[name].update(noise=0.0, dropout=0.0, clutter=0.0, speed_noise_mps=0.0, range_m=1e6)
    table["radar"]["returns"] = 6
    observers = np.array([0, 7])
    v1, v2 = (SensorSuite(ContextSpec(), table, lane_width_m=3.2, version=v).observe(
        world, observers, np.random.default_rng(3)) for v in (1, 2))  # fmt: skip
    for name in ("camera", "lidar", "radar"):
        np.testing.assert_array_equal(getattr(v1, name), getattr(v2, name))
    assert v2.radar[:, :, 0].sum() == 12 and v2.lidar[:, 0].any(axis=-1).all()
    for version in (1, 2):  # no observer: empty frames of the right shapes
        none = SensorSuite(ContextSpec(), table, lane_width_m=3.2, version=version).observe(
            world, np.zeros(0, dtype=int), np.random.default_rng(0))  # fmt: skip
        assert none.camera.shape == (0, *v2.camera.shape[1:]) and none.radar.shape == (0, *v2.radar.shape[1:])


def test_both_versions_draw_from_the_same_distributions() -> None:
    """Per sensor, the mean occupancy (camera, lidar) and the mean number of radar returns per frame of 2000
    observations in fog at night agree between the versions within 5 standard errors of their difference."""
    world = world_of(x=[0.0, 25.0, 45.0, 2.0, -20.0, 30.0], lane=[0, 0, 0, 1, 1, 1], v=[25.0, 24, 26, 27, 22, 25])
    context = ContextSpec(weather="fog", light="night")
    observers = np.zeros(2000, dtype=int)
    frames = [SensorSuite(context, lane_width_m=3.2, version=v).observe(world, observers, np.random.default_rng(v))
              for v in (1, 2)]  # fmt: skip
    for per_frame in (lambda f: (f.camera[:, 0] > 0.5).mean(axis=(1, 2)), lambda f: (f.lidar[:, 0] > 0.5).mean(
            axis=(1, 2)), lambda f: f.radar[:, :, 0].sum(axis=1)):  # fmt: skip
        a, b = (per_frame(f) for f in frames)
        error = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        assert error > 0 and abs(a.mean() - b.mean()) <= 5 * error


@pytest.mark.parametrize("lane_width_m", [3.2, 4.0])
def test_radar_measures_range_azimuth_and_range_rate(lane_width_m: float) -> None:
    world = world_of(x=[0.0, 35.0], lane=[0, 1], v=[20.0, 26.0])
    table = copy.deepcopy(sensor_table())
    table["radar"].update(noise=0.0, dropout=0.0)
    suite = SensorSuite(ContextSpec(), table, lane_width_m=lane_width_m)
    frames = suite.observe(world, np.array([0]), np.random.default_rng(0))
    centre, lateral = 35.0, lane_width_m  # centre to centre: 32.5 − (−2.5) = 35 m; one lane to the left
    r, az = np.hypot(centre, lateral), np.arctan2(lateral, centre)
    np.testing.assert_allclose(frames.radar[0, 0], [1.0, r / 160, az / np.pi, 6.0 * np.cos(az) / 30], rtol=1e-5)
    assert not frames.radar[0, 1:].any()


def test_neighbour_targets_known_answer() -> None:
    # observer in lane 1 at 100 m; ahead in its lane at 130 (gap 25), behind at 80 (gap 15), left lane 2
    # ahead at 150 (gap 45), right lane 0 behind at 20 (gap 75: out of range), left lane behind: none
    world = world_of(x=[100, 130, 80, 150, 20], lane=[1, 1, 1, 2, 0], v=[25, 20, 27, 30, 22])
    t = neighbour_targets(world, np.array([0]))[0]
    np.testing.assert_allclose(t, [[1, 25, -5], [1, 15, 2], [1, 45, 5], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    estimate = t.copy()
    estimate[0, 1] += 4.0  # within 5 m
    estimate[1, 2] += 2.5  # speed off by more than 2 m/s
    estimate[3, 0] = 0.9  # a phantom
    assert slot_correct(estimate, t).tolist() == [True, False, True, False, True, True]


@pytest.mark.sumo
def test_dataset_is_reproducible_and_bad_input_is_refused(tmp_path: Path) -> None:
    args = ["perception", "dataset", "--weather", "fog", "--light", "night", "--seeds", "1", "--duration", "40",
            "--warmup", "20"]  # fmt: skip
    for name in ("a", "b"):
        done = runner.invoke(app, [*args, "--out", str(tmp_path / name)])
        assert done.exit_code == 0, done.output
    manifest, a = load_dataset(tmp_path / "a")
    _, b = load_dataset(tmp_path / "b")
    assert manifest["contexts"] == ["fog-night"] and manifest["samples"] == len(a["targets"]) > 0
    assert manifest["sensor_version"] == SENSOR_VERSION == 2
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not (tmp_path / "a" / ".sumo").exists()
    for bad, message in [
        (["--weather", "hail"], "unknown weather 'hail' (allowed: clear, rain, fog, snow)"),
        (["--every", "0.25"], "--every 0.25 must be a multiple of the step length (0.1 s)"),
        (["--sensors", str(tmp_path / "none.yaml")], "none.yaml': no such file"),
        (["--sensor-version", "3"], "--sensor-version 3 is not known (allowed: 1, 2)"),
    ]:
        done = runner.invoke(app, ["perception", "dataset", *bad, "--out", str(tmp_path / "bad")])
        assert done.exit_code == 2 and message in " ".join(done.output.split()), done.output
        assert not (tmp_path / "bad").exists()


@pytest.mark.sumo
def test_a_mixed_dataset_holds_every_scenario_and_the_first_as_alone(tmp_path: Path) -> None:
    """Two roads, held-out seed 3: one shard per road, named by it; the first road's frames are those of a
    dataset of it alone, the second's follow them."""
    args = ["perception", "dataset", "--weather", "clear", "--light", "day", "--seeds", "1", "--first-seed", "3",
            "--duration", "30", "--warmup", "20"]  # fmt: skip
    for name, roads in (("mixed", ["highway", "lane-drop"]), ("alone", ["highway"])):
        scenarios = [a for road in roads for a in ("--scenario", road)]
        done = runner.invoke(app, [*args, *scenarios, "--out", str(tmp_path / name)])
        assert done.exit_code == 0, done.output
    manifest, mixed = load_dataset(tmp_path / "mixed")
    _, alone = load_dataset(tmp_path / "alone")
    assert manifest["scenarios"] == ["highway", "lane-drop"] and manifest["seeds"] == [3]
    assert [(s["file"], s["scenario"]) for s in manifest["shards"]] == [
        ("highway-clear-day-s3.npz", "highway"), ("lane-drop-clear-day-s3.npz", "lane-drop")]
    first = manifest["shards"][0]["samples"]
    assert 0 < first < len(mixed["targets"]) and first == len(alone["targets"])
    for key in alone:
        np.testing.assert_array_equal(mixed[key][:first], alone[key])
    for bad, message in [
        (["--scenario", "highway", "--scenario", "highway"], "each scenario once (given: highway, highway)"),
        (["--first-seed", "-1"], "--first-seed ≥ 0"),
    ]:
        done = runner.invoke(app, ["perception", "dataset", *bad, "--out", str(tmp_path / "bad")])
        assert done.exit_code == 2 and message in " ".join(done.output.split()), done.output
        assert not (tmp_path / "bad").exists()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 300), st.integers(0, 2), st.floats(3, 15)), min_size=1, max_size=25),
       st.data())  # fmt: skip
def test_neighbour_rows_match_a_direct_search(vehicles, data) -> None:
    """Against the definition, vehicle by vehicle: the nearest one ahead (front bumper beyond ours) or
    behind (at or behind ours) in the slot's lane, bumper to bumper within 60 m, the lowest row on ties."""
    x, lane, length = (np.array(c) for c in zip(*vehicles, strict=True))
    world = world_of(x=x.tolist(), lane=lane.tolist(), v=[20.0] * len(x))
    world = WorldState(**{**world.__dict__, "length_m": length})
    observers = np.array(data.draw(st.lists(st.integers(0, len(x) - 1), min_size=1, max_size=5)))
    rows = neighbour_rows(world, observers)
    for k, o in enumerate(observers.tolist()):
        for s, (offset, ahead) in enumerate(zip(SLOT_LANE, SLOT_AHEAD, strict=True)):
            best, best_gap = -1, np.inf
            for j in range(len(x)):
                if j == o or lane[j] != lane[o] + offset or (x[j] > x[o]) != ahead:
                    continue
                gap = x[j] - length[j] - x[o] if ahead else x[o] - length[o] - x[j]
                if gap < best_gap:
                    best, best_gap = j, gap
            assert rows[k, s] == (best if best_gap <= RANGE_M else -1), (k, s)
