"""Perception datasets from simulations: every (scenario, context, seed) of a plan run in SUMO with a
`SampleRecorder` as the engine's perception hook, one shard each (format: `cavlab.perception.dataset`).

The sensor noise is drawn from a generator seeded by (seed, context index), and the scenario's index
after the first: the same command writes the same shards, and the first scenario's are those of a
dataset of it alone.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cavlab.config.scenario import ContextSpec, Scenario
from cavlab.errors import UserError
from cavlab.perception.dataset import LIGHTS, WEATHERS, SampleRecorder
from cavlab.perception.sensors import SENSOR_VERSION, SENSOR_VERSIONS, SensorSuite, context_label, sensor_table
from cavlab.perception.task import SLOTS
from cavlab.sim.engine import Engine
from cavlab.sim.resolve import load_scenario


@dataclass(frozen=True)
class DatasetPlan:
    """What `generate` runs."""

    scenarios: list[Scenario]
    contexts: list[ContextSpec]
    seeds: list[int]
    sample_every_s: float
    sensor_version: int = SENSOR_VERSION

    @property
    def labels(self) -> list[str]:
        return [context_label(c) for c in self.contexts]


def plan_dataset(
    scenarios: list[str], overrides: list[str], weathers: list[str], lights: list[str], seeds: int,
    duration_s: float, warmup_s: float, sample_every_s: float, sensor_version: int = SENSOR_VERSION,
    first_seed: int = 0,
) -> DatasetPlan:  # fmt: skip
    """Validate the request; every context is a (weather, light) pair of the lists, the seeds
    `first_seed` … `first_seed + seeds − 1`; the overrides apply to every scenario."""
    for w in weathers:
        if w not in WEATHERS:
            raise UserError(f"unknown weather '{w}' (allowed: {', '.join(WEATHERS)})")
    for light in lights:
        if light not in LIGHTS:
            raise UserError(f"unknown light '{light}' (allowed: {', '.join(LIGHTS)})")
    if sensor_version not in SENSOR_VERSIONS:
        allowed = ", ".join(map(str, SENSOR_VERSIONS))
        raise UserError(f"--sensor-version {sensor_version} is not known (allowed: {allowed})")
    if seeds < 1 or first_seed < 0 or not 0 <= warmup_s < duration_s or sample_every_s <= 0:
        raise UserError("need --seeds ≥ 1, --first-seed ≥ 0, 0 ≤ --warmup < --duration and --every > 0")
    if len(set(scenarios)) < len(scenarios):
        raise UserError(f"--scenario: each scenario once (given: {', '.join(scenarios)})")
    timing = [f"simulation.duration_s={duration_s}", f"simulation.warmup_s={warmup_s}"]
    loaded = [load_scenario(name, [*overrides, *timing]) for name in scenarios]
    names = [sc.name for sc in loaded]
    if len(set(names)) < len(names):
        raise UserError(f"--scenario: the scenarios' names must differ (they name the shards): {', '.join(names)}")
    steps = {sc.simulation.step_length_s for sc in loaded}
    if len(steps) > 1:
        raise UserError(f"--scenario: the scenarios' step lengths differ ({', '.join(f'{t:g}' for t in steps)} s)")
    step = steps.pop()
    if abs(round(sample_every_s / step) * step - sample_every_s) > 1e-9:
        raise UserError(f"--every {sample_every_s:g} must be a multiple of the step length ({step:g} s)")
    base = loaded[0].context
    contexts = [base.model_copy(update={"weather": w, "light": light}) for w in weathers for light in lights]
    return DatasetPlan(loaded, contexts, list(range(first_seed, first_seed + seeds)), sample_every_s, sensor_version)


def generate(
    plan: DatasetPlan, folder: Path, table: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run every (scenario, context, seed) and write its shard into `folder` (named `{context}-s{seed}`, with
    `{scenario}-` before it when there are several); the manifest, returned and written."""
    table = table or sensor_table()
    shards = []
    several = len(plan.scenarios) > 1
    for s_index, base in enumerate(plan.scenarios):
        sim = base.simulation
        for c_index, context in enumerate(plan.contexts):
            suite = SensorSuite(context, table, lane_width_m=base.road.lane_width_m, version=plan.sensor_version)
            for seed in plan.seeds:
                name = f"{base.name}-{suite.label}-s{seed}" if several else f"{suite.label}-s{seed}"
                scenario = base.model_copy(update={
                    "context": context,
                    "simulation": sim.model_copy(update={"seed": seed}),
                    "outputs": base.outputs.model_copy(update={"trajectories": False}),
                })  # fmt: skip
                recorder = SampleRecorder(
                    suite,
                    every_steps=round(plan.sample_every_s / sim.step_length_s),
                    first_step=round(sim.warmup_s / sim.step_length_s) + 1,
                    rng=np.random.default_rng([seed, c_index, *([s_index] if s_index else [])]),
                )
                Engine(scenario, folder / ".sumo" / name, perception=recorder).run()
                arrays = recorder.arrays(c_index)
                np.savez_compressed(folder / f"{name}.npz", **arrays)
                shards.append({"file": f"{name}.npz", "scenario": base.name, "context": suite.label, "seed": seed,
                               "samples": len(arrays["targets"])})  # fmt: skip
                if progress is not None:
                    progress(name)
    shutil.rmtree(folder / ".sumo", ignore_errors=True)
    first = plan.scenarios[0]
    shapes = SensorSuite(plan.contexts[0], table, lane_width_m=first.road.lane_width_m).shapes()
    sim = first.simulation
    manifest = {
        "scenario": ", ".join(sc.name for sc in plan.scenarios),
        "scenarios": [sc.name for sc in plan.scenarios],
        "contexts": plan.labels,
        "seeds": plan.seeds,
        "sample_every_s": plan.sample_every_s,
        "duration_s": sim.duration_s,
        "warmup_s": sim.warmup_s,
        "slots": list(SLOTS),
        "shapes": {k: list(v) for k, v in shapes.items()},
        "sensor_table": table,
        "sensor_version": plan.sensor_version,
        "shards": shards,
        "samples": sum(s["samples"] for s in shards),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
