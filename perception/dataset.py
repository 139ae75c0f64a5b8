"""Perception datasets: sensor frames of every CAV with the true neighbours, and their format.

One shard per (context, seed), written by `cavlab.experiments.datasets` (which runs the
scenario in SUMO under that context and seed with a `SampleRecorder` as the engine's perception
hook): after the warm-up, every `sample_every_s` each CAV's camera, lidar and radar frames are
simulated and stored with its neighbour targets (`task.neighbour_targets`).

    DIR/
      manifest.json                  scenario, contexts, seeds, shapes, sensor table, counts
      <weather>-<light>-s<seed>.npz  camera (N,2,3,C) lidar (N,2,3,G) radar (N,K,4)
                                     targets (N,6,3) context (N,) time_s (N,)

The sensor noise is drawn from a generator seeded by (seed, context index): the same
command writes the same shards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cavlab.errors import UserError
from cavlab.perception.sensors import SensorSuite
from cavlab.perception.task import SLOTS, neighbour_targets
from cavlab.world import WorldState

WEATHERS = ("clear", "rain", "fog", "snow")
LIGHTS = ("day", "dusk", "night")


class SampleRecorder:
    """A perception hook for the engine that records frames and targets (and passes the world on)."""

    def __init__(self, suite: SensorSuite, every_steps: int, first_step: int, rng: np.random.Generator) -> None:
        self.suite = suite
        self.every_steps = every_steps
        self.first_step = first_step
        self.rng = rng
        self.step = 0
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in ("camera", "lidar", "radar", "targets", "time_s")}

    def observe(self, world: WorldState) -> WorldState:
        self.step += 1
        if self.step >= self.first_step and (self.step - self.first_step) % self.every_steps == 0:
            observers = np.flatnonzero(world.is_cav)
            if len(observers):
                frames = self.suite.observe(world, observers, self.rng)
                self.parts["camera"].append(frames.camera)
                self.parts["lidar"].append(frames.lidar)
                self.parts["radar"].append(frames.radar)
                self.parts["targets"].append(neighbour_targets(world, observers))
                self.parts["time_s"].append(np.full(len(observers), world.time_s, dtype=np.float32))
        return world

    def metrics(self) -> dict:
        return {}

    def arrays(self, context_index: int) -> dict[str, np.ndarray]:
        shapes = self.suite.shapes()
        out = {}
        for key, parts in self.parts.items():
            if parts:
                out[key] = np.concatenate(parts)
            elif key in shapes:
                out[key] = np.zeros((0, *shapes[key]), dtype=np.float32)
            elif key == "targets":
                out[key] = np.zeros((0, len(SLOTS), 3), dtype=np.float32)
            else:
                out[key] = np.zeros(0, dtype=np.float32)
        out["context"] = np.full(len(out["targets"]), context_index, dtype=np.int16)
        return out


def load_dataset(folder: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The manifest and every shard's arrays concatenated, with each sample's `seed`."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except OSError:
        raise UserError(f"{folder}: no manifest.json (a directory written by `cavlab perception dataset`)") from None
    except ValueError:
        raise UserError(f"{folder}/manifest.json: not valid JSON") from None
    parts: dict[str, list[np.ndarray]] = {}
    for shard in manifest["shards"]:
        with np.load(folder / shard["file"]) as data:
            for key in data.files:
                parts.setdefault(key, []).append(data[key])
            parts.setdefault("seed", []).append(np.full(len(data["targets"]), shard["seed"], dtype=np.int32))
    return manifest, {k: np.concatenate(v) for k, v in parts.items()}
