"""The spiking branch streams in the perception loop: per-CAV membranes in a StateTable, carried from
step to step, dropped when the CAV leaves, and scored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cavlab.perception.fusion import FusionModel
from cavlab.perception.spiking_branch import SpikingStream
from cavlab.sim.perception_loop import PerceptionLoop

from .conftest import PERCEPTION_SHAPES
from .test_perception_loop import make_loop, observe, world_at


def test_the_loop_carries_each_cavs_spiking_state_and_drops_it_when_the_cav_leaves(
    perception_model_dir: Path,
) -> None:
    loop, oracle = make_loop(perception_model_dir, latency_s=0.0)
    assert isinstance(loop.spiking, SpikingStream)
    seen: list[tuple[list[str], dict[str, np.ndarray]]] = []
    estimate = loop.spiking.estimate

    def recording(ids: list[str], frames: dict[str, np.ndarray]) -> np.ndarray:
        seen.append((list(ids), {k: v.copy() for k, v in frames.items()}))
        return estimate(ids, frames)

    loop.spiking.estimate = recording
    for k in range(1, 5):
        observe(loop, oracle, world_at(k))
    assert [ids for ids, _ in seen] == [["cav_a", "cav_b"]] * 4
    assert len(loop.spiking.table) == 2
    carried = {vid: {n: t.clone() for n, t in row.items()} for vid, row in loop.spiking.table.rows.items()}
    replay = SpikingStream(_model(loop), loop.spiking.head, "lidar+radar")
    for ids, frames in seen:
        replay.estimate(ids, frames)
    for vid in ("cav_a", "cav_b"):
        for name in ("lif1.v", "lif2.v"):
            assert torch.equal(carried[vid][name], replay.table.rows[vid][name])
    last = SpikingStream(_model(loop), loop.spiking.head, "lidar+radar")
    last.estimate(*seen[-1])  # the last frame alone, from zero: not what the loop carries
    assert not torch.equal(last.table.rows["cav_a"]["lif1.v"], carried["cav_a"]["lif1.v"])
    observe(loop, oracle, world_at(5, drop=("cav_b",)))
    assert list(loop.spiking.table.rows) == ["cav_a"]
    metrics = loop.metrics()
    assert 0 <= metrics["perception_spiking_slot_accuracy"] <= 1


def _model(loop: PerceptionLoop) -> FusionModel:
    """A fusion model whose stems are the loop's spiking stems (what SpikingStream copies)."""
    model = FusionModel(PERCEPTION_SHAPES)
    for name, stem in loop.spiking.stems.items():
        model.stems[name].load_state_dict(stem.state_dict())
    return model
