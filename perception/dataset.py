"""Perception datasets from simulations: sensor frames of every CAV with the true neighbours.

One shard per (context, seed): the scenario runs in SUMO under that context (weather, light)
and seed; after the warm-up, every `sample_every_s` each CAV's camera, lidar and radar
frames are simulated and stored with its neighbour targets (`task.neighbour_targets`).

    DIR/
      manifest.json                  scenario, contexts, seeds, shapes, sensor table, counts
      <weather>-<light>-s<seed>.npz  camera (N,2,3,C) lidar (N,2,3,G) radar (N,K,4)
                                     targets (N,6,3) context (N,) time_s (N,)

The sensor noise is drawn from a generator seeded by (seed, context index): the same
command writes the same shards.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cavlab.config.scenario import ContextSpec, Scenario, load_scenario
from cavlab.errors import UserError
from cavlab.perception.sensors import SensorSuite, context_label, sensor_table
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


@dataclass(frozen=True)
class DatasetPlan:
    """What `generate` runs."""

    scenario: Scenario
    contexts: list[ContextSpec]
    seeds: list[int]
    sample_every_s: float

    @property
    def labels(self) -> list[str]:
        return [context_label(c) for c in self.contexts]


def plan_dataset(
    scenario: str, overrides: list[str], weathers: list[str], lights: list[str], seeds: int,
    duration_s: float, warmup_s: float, sample_every_s: float,
) -> DatasetPlan:  # fmt: skip
    """Validate the request; every context is a (weather, light) pair of the lists."""
    for w in weathers:
        if w not in WEATHERS:
            raise UserError(f"unknown weather '{w}' (allowed: {', '.join(WEATHERS)})")
    for light in lights:
        if light not in LIGHTS:
            raise UserError(f"unknown light '{light}' (allowed: {', '.join(LIGHTS)})")
    if seeds < 1 or not 0 <= warmup_s < duration_s or sample_every_s <= 0:
        raise UserError("need --seeds ≥ 1, 0 ≤ --warmup < --duration and --every > 0")
    base = load_scenario(
        scenario, [*overrides, f"simulation.duration_s={duration_s}", f"simulation.warmup_s={warmup_s}"]
    )
    step = base.simulation.step_length_s
    if abs(round(sample_every_s / step) * step - sample_every_s) > 1e-9:
        raise UserError(f"--every {sample_every_s:g} must be a multiple of the step length ({step:g} s)")
    contexts = [base.context.model_copy(update={"weather": w, "light": light}) for w in weathers for light in lights]
    return DatasetPlan(base, contexts, list(range(seeds)), sample_every_s)


def generate(
    plan: DatasetPlan, folder: Path, table: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run every (context, seed) and write its shard into `folder`; the manifest, returned and written."""
    from cavlab.sim.engine import Engine

    table = table or sensor_table()
    sim = plan.scenario.simulation
    shards = []
    for c_index, context in enumerate(plan.contexts):
        suite = SensorSuite(context, table)
        for seed in plan.seeds:
            name = f"{suite.label}-s{seed}"
            scenario = plan.scenario.model_copy(update={
                "context": context,
                "simulation": sim.model_copy(update={"seed": seed}),
                "outputs": plan.scenario.outputs.model_copy(update={"trajectories": False}),
            })  # fmt: skip
            recorder = SampleRecorder(
                suite,
                every_steps=round(plan.sample_every_s / sim.step_length_s),
                first_step=round(sim.warmup_s / sim.step_length_s) + 1,
                rng=np.random.default_rng([seed, c_index]),
            )
            Engine(scenario, folder / ".sumo" / name, perception=recorder).run()
            arrays = recorder.arrays(c_index)
            np.savez_compressed(folder / f"{name}.npz", **arrays)
            shards.append({"file": f"{name}.npz", "context": suite.label, "seed": seed,
                           "samples": len(arrays["targets"])})  # fmt: skip
            if progress is not None:
                progress(name)
    shutil.rmtree(folder / ".sumo", ignore_errors=True)
    shapes = SensorSuite(plan.contexts[0], table).shapes()
    manifest = {
        "scenario": plan.scenario.name,
        "contexts": plan.labels,
        "seeds": plan.seeds,
        "sample_every_s": plan.sample_every_s,
        "duration_s": sim.duration_s,
        "warmup_s": sim.warmup_s,
        "slots": list(SLOTS),
        "shapes": {k: list(v) for k, v in shapes.items()},
        "sensor_table": table,
        "shards": shards,
        "samples": sum(s["samples"] for s in shards),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


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
