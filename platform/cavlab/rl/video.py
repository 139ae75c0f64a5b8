"""Videos of a policy's episodes: every SUMO step, one mp4 per episode (extra `video`: moviepy).

The environment renders with `render_mode="rgb_array_list"`: a frame at the reset and one after
every SUMO step of each decision period, at the environment's `render_fps` (one frame per step
of the scenario's step length, so the video plays in real time). Gymnasium's `RecordVideo`
accepts that mode but keeps only the last frame of each `step`; this writes them all.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cavlab.errors import UserError
from cavlab.rl.common import make_env


def moviepy_clip():
    """moviepy's ImageSequenceClip, or a clear error if the `video` extra is missing."""
    try:
        from moviepy.video.io.ImageSequenceClip import ImageSequenceClip
    except ImportError:
        raise UserError('videos need moviepy: pip install -e ".[video]"') from None
    return ImageSequenceClip


def episode_frames(env, act: Callable[[np.ndarray], Any], seed: int) -> tuple[list[np.ndarray], float]:
    """The frames of one episode of `act` on `env` (made with render_mode="rgb_array_list"), seeded `seed`,
    and its return."""
    if env.render_mode != "rgb_array_list":
        raise UserError(f"episode_frames needs an environment made with render_mode='rgb_array_list', not "
                        f"{env.render_mode!r}")  # fmt: skip
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    frames, total, done = list(env.render()), 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(act(obs))
        frames += env.render()
        total += float(reward)
        done = terminated or truncated
    return frames, total


def write_mp4(frames: list[np.ndarray], path: Path, fps: float) -> None:
    """`frames` as an H.264 mp4 at `fps`, atomically (written aside, then renamed)."""
    clip_class = moviepy_clip()
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        clip = clip_class(list(frames), fps=fps)
        clip.write_videofile(str(tmp), codec="libx264", audio=False, logger=None)
        clip.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def record_video(
    env_id: str, act: Callable[[Any], Callable[[np.ndarray], Any]] | str, folder: Path, episodes: int = 1,
    seed: int = 1000, env_kwargs: dict[str, Any] | None = None,
) -> list[Path]:  # fmt: skip
    """`episodes` episodes (seeds seed, seed + 1, …) of a policy on `env_id`, each as folder/episode-<seed>.mp4;
    the paths. `act` is "random", or a function of the environment that gives the policy (obs → action), e.g.
    `lambda env: cavlab.rl.sb3.load_policy(path, env)`."""
    moviepy_clip()  # before any episode
    if episodes < 1:
        raise UserError("need at least one episode")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    env = make_env(env_id, {**(env_kwargs or {}), "render_mode": "rgb_array_list"})
    try:
        policy = (lambda obs: env.action_space.sample()) if act == "random" else act(env)
        paths = []
        for k in range(episodes):
            frames, _ = episode_frames(env, policy, seed + k)
            paths.append(folder / f"episode-{seed + k}.mp4")
            write_mp4(frames, paths[-1], env.metadata["render_fps"])
    finally:
        env.close()
    return paths
