"""The shipped perception model (perception/models/highway-fusion-h64) and INT8 on real frames.

The frames are regenerated with the model's own dataset command (model.json; SUMO, about 35 s):
the model's accuracy on them is the one it shipped with, and its INT8 export for every INT8 target,
calibrated on frames of the training seed and checked on the test seed, stays within 1 point of
slot accuracy of FP32 in every configuration and through the deep gate; a second export with the
same seeds writes the same files, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cavlab.perception
from cavlab.cli import app
from cavlab.hw.targets import targets
from cavlab.perception.dataset import load_dataset
from cavlab.perception.fusion import CONFIGURATIONS
from cavlab.perception.training import evaluate, load_checkpoint, split

MODEL = Path(cavlab.perception.__file__).parent / "models" / "highway-fusion-h64"
INT8_TARGETS = [t.name for t in targets().values() if "int8" in t.precisions and t.runtime != "hls4ml"]
runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped model's dataset, regenerated with the command in its model.json."""
    args = shlex.split(json.loads((MODEL / "model.json").read_text())["commands"]["dataset"])
    out = tmp_path_factory.mktemp("shipped") / "data"
    args[args.index("--out") + 1] = str(out)
    done = runner.invoke(app, args[1:])  # without the leading "cavlab"
    assert done.exit_code == 0, done.output
    return out


@pytest.fixture(scope="module")
def exports(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`cavlab export` of the shipped model with --data for every INT8 target."""
    folders = {}
    for target in INT8_TARGETS:
        folders[target] = tmp_path_factory.mktemp("export") / target
        done = runner.invoke(app, ["export", str(MODEL), "--target", target, "--data", str(data),
                                   "--out", str(folders[target])])  # fmt: skip
        assert done.exit_code == 0, done.output
    return folders


def test_the_shipped_model_is_small_and_says_how_it_was_made() -> None:
    record = json.loads((MODEL / "model.json").read_text())
    assert (MODEL / "checkpoint.pt").stat().st_size < 1024**2
    assert "--seed 0" in record["commands"]["train"] and record["seed"] == 0
    assert set(INT8_TARGETS) == {"x86-cpu", "jetson-agx-orin", "jetson-orin-nano"}
    model, _, ckpt = load_checkpoint(MODEL)
    assert ckpt["hidden"] == 64 and ckpt["spiking"] is None and model.hidden == 64


@pytest.mark.sumo
def test_the_shipped_model_reproduces_its_accuracy_on_regenerated_frames(data: Path) -> None:
    """The regenerated test seed gives the accuracies of results.json, in every context and configuration."""
    shipped = json.loads((MODEL / "results.json").read_text())
    _, arrays = load_dataset(data)
    test = split(arrays, 0)[2]
    assert len(test) == shipped["frames"]["test"]
    results = evaluate(MODEL, data, rows=test)
    for context, row in shipped["contexts"].items():
        for name, r in row.items():
            assert results["contexts"][context][name]["accuracy"] == pytest.approx(r["accuracy"], abs=1e-3), (
                context, name)  # fmt: skip


@pytest.mark.sumo
def test_int8_is_within_one_point_of_fp32_for_every_int8_target(exports: dict[str, Path]) -> None:
    shipped = json.loads((MODEL / "results.json").read_text())["contexts"]["all"]
    for target, folder in exports.items():
        report = json.loads((folder / "export.json").read_text())
        assert report["int8"]["frames"]["calibration_seeds"] == [0] and report["int8"]["frames"]["test_seed"] == 1
        accuracy = report["int8"]["accuracy"]["all"]
        assert set(accuracy) == {*CONFIGURATIONS, "deep gate"}
        for name, r in accuracy.items():
            assert abs(r["int8"] - r["fp32"]) <= 0.01, (target, name, r)
            assert r["fp32"] == pytest.approx(shipped[name]["accuracy"], abs=1e-3), (target, name)


@pytest.mark.sumo
def test_seeded_exports_are_bit_identical(data: Path, exports: dict[str, Path], tmp_path: Path) -> None:
    target = "jetson-agx-orin"  # every kind of file: FP32 and INT8 graphs, calibration caches, tensorrt.sh
    again = tmp_path / "again"
    done = runner.invoke(app, ["export", str(MODEL), "--target", target, "--data", str(data), "--out", str(again)])
    assert done.exit_code == 0, done.output

    def digests(folder: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}

    first = digests(exports[target])
    assert {".onnx", ".cache", ".sh", ".json"} <= {Path(name).suffix for name in first}
    assert first == digests(again)
