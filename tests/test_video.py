"""Videos of episodes: `render_mode="rgb_array_list"` gives a frame after every SUMO step, rendering
does not change the episode, and `record_video` writes one real mp4 per episode with every frame."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import gymnasium as gym
import imageio
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from cavlab.envs.config import EnvConfigError
from cavlab.envs.traffic import LaneChangeEnv
from cavlab.errors import UserError
from cavlab.rl.video import episode_frames, record_video

SHORT = {"warmup_s": 3.0, "episode_s": 3.0}  # three decisions of 1 s: 10 SUMO steps of 0.1 s each
IDLE = 1  # of the discrete meta actions


@pytest.mark.sumo
def test_every_sumo_step_of_a_decision_is_a_frame() -> None:
    env = gym.make("cavlab.envs:cavlab/LaneChange-v0", render_mode="rgb_array_list", **SHORT)
    try:
        assert env.metadata["render_fps"] == 10  # one frame per 0.1 s step: real time
        env.reset(seed=3)
        first = env.render()
        assert len(first) == 1 and first[0].dtype == np.uint8 and first[0].ndim == 3
        assert env.render() == []  # handed out once
        done, steps = False, []
        while not done:
            _, _, terminated, truncated, _ = env.step(IDLE)
            steps.append(env.render())
            done = terminated or truncated
        assert len(steps) == 3 and all(len(frames) == 10 for frames in steps[:-1]) and 1 <= len(steps[-1]) <= 10
        frames = first + [f for frames in steps for f in frames]
        assert all(f.shape == first[0].shape for f in frames)
        assert sum(not np.array_equal(a, b) for a, b in itertools.pairwise(frames)) >= len(frames) // 2
    finally:
        env.close()


@pytest.mark.sumo
def test_rendering_every_step_leaves_the_episode_as_it_is() -> None:
    runs = []
    for mode in (None, "rgb_array_list"):
        env = gym.make("cavlab.envs:cavlab/LaneChange-v0", render_mode=mode, **SHORT)
        try:
            obs, _ = env.reset(seed=5)
            seen, done = [obs], False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(IDLE)
                seen += [obs, reward]
                done = terminated or truncated
        finally:
            env.close()
        runs.append(seen)
    assert len(runs[0]) == len(runs[1])
    assert all(np.array_equal(a, b) for a, b in zip(*runs, strict=True))


@pytest.mark.sumo
def test_check_env_passes_with_every_frame_rendered() -> None:
    env = gym.make("cavlab.envs:cavlab/LaneChange-v0", render_mode="rgb_array_list", **SHORT).unwrapped
    try:
        check_env(env)  # the render check included, of every render mode (the env is made anew for each)
    finally:
        env.close()


@pytest.mark.sumo
def test_record_video_writes_an_mp4_with_every_frame(tmp_path: Path) -> None:
    env = gym.make("cavlab.envs:cavlab/LaneChange-v0", render_mode="rgb_array_list", **SHORT)
    try:
        frames, _ = episode_frames(env, lambda obs: IDLE, 1000)
    finally:
        env.close()
    paths = record_video("cavlab/LaneChange-v0", lambda env: lambda obs: IDLE, tmp_path / "videos", 1, 1000, SHORT)
    assert paths == [tmp_path / "videos" / "episode-1000.mp4"]
    assert paths[0].stat().st_size > 0 and not list((tmp_path / "videos").glob(".*"))
    reader = imageio.get_reader(paths[0])
    try:
        assert reader.count_frames() == len(frames) == 31  # the reset's frame and 10 per decision
        assert reader.get_meta_data()["fps"] == 10
        assert reader.get_meta_data()["size"] == (frames[0].shape[1], frames[0].shape[0])
    finally:
        reader.close()


def test_an_unknown_render_mode_names_the_allowed_ones() -> None:
    with pytest.raises(EnvConfigError, match="allowed: rgb_array, rgb_array_list, human"):
        LaneChangeEnv(render_mode="rgb")


def test_without_moviepy_the_error_names_the_extra(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "moviepy.video.io.ImageSequenceClip", None)  # its import fails
    with pytest.raises(UserError, match=r'videos need moviepy: pip install -e "\.\[video\]"'):
        record_video("cavlab/LaneChange-v0", "random", tmp_path / "videos")
    assert not (tmp_path / "videos").exists()
