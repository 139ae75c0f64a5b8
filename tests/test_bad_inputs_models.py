"""Bad model files through the real CLI: perception checkpoints, training results, dataset manifests and
shards, sensor tables. Each ends with exit code 2 and one `error:` line naming the file or key and what is
allowed: no traceback, no library advice, nothing written, and no code from the file run."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from cavlab.cli import app
from cavlab.perception.sensors import sensor_table

runner = CliRunner()


class Payload:
    """Unpickling it opens (creates) `marker`: code run from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny dataset from `cavlab perception dataset`: one context, two seeds, 20 s sampled each."""
    out = tmp_path_factory.mktemp("bad-models") / "data"
    done = runner.invoke(app, ["perception", "dataset", "--weather", "clear", "--light", "day", "--seeds", "2",
                               "--duration", "40", "--warmup", "20", "--out", str(out)])  # fmt: skip
    assert done.exit_code == 0, done.output
    return out


@pytest.fixture(scope="module")
def model_dir(data_dir: Path) -> Path:
    """A tiny model from `cavlab perception train` on it (one epoch, seed 0)."""
    out = data_dir.parent / "model"
    done = runner.invoke(app, ["perception", "train", str(data_dir), "--epochs", "1", "--seed", "0", "--out", str(out)])
    assert done.exit_code == 0, done.output
    return out


def assert_refused(args: list[str], words: list[str], out: Path, marker: Path | None = None) -> None:
    """Exit 2, one `error:` line with every one of `words`, no traceback or torch advice, `out` not written."""
    done = runner.invoke(app, args)
    lines = done.output.strip().splitlines()
    assert done.exit_code == 2, done.output
    assert len(lines) == 1 and lines[0].startswith("error: "), done.output
    assert "Traceback" not in done.output and "weights_only" not in done.output, done.output
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not out.exists(), "nothing written"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial")], "no partial folder"
    if marker is not None:
        assert not marker.exists(), "code from the file ran"


# ----------------------------------------------------------------------------- checkpoints

HOLDS = "holds model, gate, shapes, knowledge_table, selection, spiking"
NOT_TORCH = "not a torch file of tensors and plain data"


def _changed(**changes: object) -> Callable[[dict], dict]:
    return lambda ckpt: {**ckpt, **changes}


def _without(key: str) -> Callable[[dict], dict]:
    return lambda ckpt: {k: v for k, v in ckpt.items() if k != key}


def _nan_gate(ckpt: dict) -> dict:
    gate = {k: v.clone() for k, v in ckpt["gate"].items()}
    next(iter(gate.values()))[0] = math.nan
    return {**ckpt, "gate": gate}


CONTENTS = {  # torch files of tensors and plain data, with the wrong contents
    "empty": (lambda ckpt: {}, ["missing key 'model'", HOLDS]),
    "a list": (lambda ckpt: [1, 2], ["not a mapping", HOLDS]),
    "no shapes": (_without("shapes"), ["missing key 'shapes'", HOLDS]),
    "weights as a number": (_changed(model=5), ["model:", "dictionary"]),
    "shapes of other sensors": (
        lambda ckpt: {**ckpt, "shapes": {**ckpt["shapes"], "camera": [2, 3, 30]}},
        ["model: the weights do not fit a FusionModel", "size mismatch"],
    ),
    "huge shapes": (
        lambda ckpt: {**ckpt, "shapes": {**ckpt["shapes"], "lidar": [2, 3, 10**9]}},
        ["shapes: lidar is [2, 3, 1000000000]", "2 ≤ cells ≤ 1024"],
    ),
    "missing weights": (_changed(gate={}), ["gate: the weights do not fit a DeepGate", "Missing key"]),
    "NaN weights": (_nan_gate, ["gate.", "NaN or infinite"]),
    "unknown configuration": (
        _changed(knowledge_table={"clear-day": "sonar"}),
        ["knowledge_table.clear-day", "'all branches'"],
    ),
    "infinite gamma": (_changed(selection={"gamma": math.inf, "energy_weight": 0.5}), ["selection.gamma", "finite"]),
    "spiking head of another branch": (
        lambda ckpt: {**ckpt, "spiking": {**ckpt["spiking"], "branch": "camera"}},
        ["spiking.state: the weights do not fit a SpikingHead"],
    ),
}


def _bad_model(model_dir: Path, folder: Path, kind: str, marker: Path) -> tuple[Path, list[str]]:
    """A copy of the model directory whose checkpoint.pt is of `kind`; the words its error must hold."""
    shutil.copytree(model_dir, folder)
    path = folder / "checkpoint.pt"
    if kind in CONTENTS:
        change, words = CONTENTS[kind]
        torch.save(change(torch.load(path, weights_only=True)), path)
        return folder, [str(path), *words]
    path.unlink()
    if kind == "pickle payload":
        path.write_bytes(pickle.dumps(Payload(marker)))
    elif kind == "torch file with an object":
        torch.save({"model": Payload(marker)}, path)
    elif kind == "not a torch file":
        path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    elif kind == "empty file":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
        return folder, ["checkpoint.pt' is a directory"]
    elif kind == "fifo":
        os.mkfifo(path)
        return folder, ["is not a regular file"]
    elif kind == "over 256 MiB":
        with path.open("wb") as f:
            f.truncate(300 * 1024**2)  # sparse: no disk used
        return folder, ["is 300.0 MiB; at most 256.0 MiB"]
    return folder, [str(path), NOT_TORCH, "loads no other Python objects"]


FILES = ["pickle payload", "torch file with an object", "not a torch file", "empty file", "directory", "fifo",
         "over 256 MiB"]  # fmt: skip


def _command(name: str, model: Path, data: Path, out: Path) -> list[str]:
    return {
        "run": ["run", "highway-lane-change", "--duration", "30", "-q", "--out", str(out), "--set",
                "simulation.warmup_s=10", "--set", "perception.enabled=true", "--set", f"perception.model={model}"],
        "export": ["export", str(model), "--target", "jetson-orin-nano", "--out", str(out)],
        "profile": ["profile", str(model), "--target", "x86-cpu", "--no-measure", "--out", str(out)],
        "perception eval": ["perception", "eval", str(model), str(data), "--out", str(out)],
        "perception study": ["perception", "study", str(model), "--seeds", "1", "--duration", "30", "--warmup", "10",
                             "--out", str(out)],
    }[name]  # fmt: skip


COMMANDS = ["run", "export", "profile", "perception eval", "perception study"]


@pytest.mark.sumo
@pytest.mark.parametrize("kind", [*CONTENTS, *FILES])
def test_a_bad_checkpoint_is_refused_by_export(kind: str, model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    model, words = _bad_model(model_dir, tmp_path / "model", kind, marker)
    assert_refused(_command("export", model, data_dir, tmp_path / "out"), words, tmp_path / "out", marker)


@pytest.mark.sumo
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", ["empty", "shapes of other sensors", "pickle payload", "fifo"])
def test_every_command_that_loads_a_checkpoint_refuses_a_bad_one(
    command: str, kind: str, model_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    model, words = _bad_model(model_dir, tmp_path / "model", kind, marker)
    if command == "run" and kind == "fifo":  # checked when the scenario is resolved, before anything runs
        words = ["perception.model: checkpoint", "is not a regular file"]
    assert_refused(_command(command, model, data_dir, tmp_path / "out"), words, tmp_path / "out", marker)


# ----------------------------------------------------------------------------- training results (results.json)

RESULTS = {
    "empty": ("{}", ["missing key 'contexts'"]),
    "not JSON": ("{contexts: 1}", ["not valid JSON"]),
    "NaN": ('{"contexts": {}, "x": NaN}', ["'NaN' is not JSON"]),
    "unknown configuration": (
        '{"contexts": {"clear-day": {"deep gate": {"accuracy": 0.9, "choices": {"sonar": 3}}}}}',
        ["contexts.clear-day.'deep gate'.choices: unknown configuration 'sonar' (allowed: camera,", "all branches)"],
    ),
    "no frames": ('{"contexts": {"clear-day": {"deep gate": {"accuracy": 0.9, "choices": {}}}}}', ["at least one"]),
    "negative firing rate": (
        '{"contexts": {}, "spiking": {"active_steps": 2, "contexts": {"all": {"rate_layer1": -1, "rate_layer2": 0}}}}',
        ["spiking.contexts.all.rate_layer1", "greater than or equal to 0"],
    ),
    "accuracy over 1": (
        '{"contexts": {"clear-day": {"deep gate": {"accuracy": 1.5, "choices": {"radar": 3}}}}}',
        ["contexts.clear-day.'deep gate'.accuracy", "less than or equal to 1"],
    ),
}


@pytest.mark.sumo
@pytest.mark.parametrize("command", ["profile", "run"])
@pytest.mark.parametrize("kind", list(RESULTS))
def test_bad_training_results_beside_a_checkpoint_are_refused(
    kind: str, command: str, model_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    text, words = RESULTS[kind]
    (model / "results.json").write_text(text)
    assert_refused(_command(command, model, data_dir, tmp_path / "out"), [str(model / "results.json"), *words],
                   tmp_path / "out")  # fmt: skip


# ----------------------------------------------------------------------------- datasets: manifest.json and shards


def _manifest(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = folder / "manifest.json"
        path.write_text(json.dumps(change(json.loads(path.read_text()))))

    return apply


def _text(text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / "manifest.json").write_text(text)


def _shard(change: Callable[[dict], dict], allow_pickle: bool = False) -> Callable[[Path], None]:
    """The first shard rewritten with `change` applied to its arrays."""

    def apply(folder: Path) -> None:
        name = json.loads((folder / "manifest.json").read_text())["shards"][0]["file"]
        with np.load(folder / name) as data:
            arrays = {k: data[k] for k in data.files}
        np.savez(folder / name, **change(arrays), allow_pickle=allow_pickle)

    return apply


def _object_array(arrays: dict) -> dict:
    camera = np.empty(arrays["camera"].shape[0], dtype=object)
    camera[:] = [Payload(Path("marker")) for _ in camera]
    return {**arrays, "camera": camera}


def _nan_frame(arrays: dict) -> dict:
    lidar = arrays["lidar"].copy()
    lidar[0, 0, 0, 0] = np.nan
    return {**arrays, "lidar": lidar}


DATASETS = {
    "empty manifest": (_text("{}"), ["missing key 'contexts'", "holds contexts, shapes and shards"]),
    "manifest a list": (_text("[]"), ["not a mapping"]),
    "manifest not JSON": (_text("contexts: [clear-day]"), ["not valid JSON"]),
    "manifest with NaN": (_text('{"contexts": ["clear-day"], "samples": NaN}'), ["'NaN' is not JSON"]),
    "no shards": (_manifest(lambda m: {k: v for k, v in m.items() if k != "shards"}), ["missing key 'shards'"]),
    "shards a number": (_manifest(lambda m: {**m, "shards": 5}), ["shards:", "valid list"]),
    "shard without a seed": (
        _manifest(lambda m: {**m, "shards": [{k: v for k, v in m["shards"][0].items() if k != "seed"}]}),
        ["missing key 'shards.0.seed'"],
    ),
    "shard outside the directory": (
        _manifest(lambda m: {**m, "shards": [{**m["shards"][0], "file": "../model/x.npz"}]}),
        ["shards.0.file", "the name of a .npz file in the dataset directory"],
    ),
    "shard file missing": (
        _manifest(lambda m: {**m, "shards": [{**m["shards"][0], "file": "gone.npz"}]}),
        ["shards.0: shard", "gone.npz': no such file"],
    ),
    "shapes of no sensor": (
        _manifest(lambda m: {**m, "shapes": {"camera": [2, 3, 24]}}),
        ["shapes:", "radar [returns, 4]"],
    ),
    "wrong sample count": (
        _manifest(lambda m: {**m, "shards": [{**m["shards"][0], "samples": 7}, *m["shards"][1:]]}),
        ["shards.0.samples is 7"],
    ),
    "shard not a .npz": (lambda f: (f / "clear-day-s0.npz").write_bytes(b"not a zip"), ["is not a .npz of numeric"]),
    "shard without targets": (_shard(lambda a: {k: v for k, v in a.items() if k != "targets"}), ["no array 'targets'"]),
    "shard of pickled objects": (_shard(_object_array, allow_pickle=True), ["'camera' is object", "floats of shape"]),
    "frames of another shape": (
        _shard(lambda a: {**a, "radar": a["radar"][:, :5]}),
        ["'radar' is float32", "5, 4]; floats of shape"],
    ),
    "NaN in a frame": (_shard(_nan_frame), ["'lidar' holds NaN or infinite values"]),
    "context out of range": (
        _shard(lambda a: {**a, "context": a["context"] + 3}),
        ["'context' must index the manifest's 1 contexts (0 to 0)"],
    ),
}


@pytest.mark.sumo
@pytest.mark.parametrize(
    ("kind", "command"),
    [(kind, "perception train") for kind in DATASETS]
    + [(kind, "perception eval") for kind in ("empty manifest", "shard outside the directory", "NaN in a frame")],
)
def test_a_bad_dataset_is_refused(kind: str, command: str, model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    spoil, words = DATASETS[kind]
    spoil(data)
    out = tmp_path / "out"
    args = ["perception", "train", str(data), "--epochs", "1"] if command == "perception train" else [
        "perception", "eval", str(model_dir), str(data)]  # fmt: skip
    assert_refused([*args, "--out", str(out)], [str(data), *words], out, tmp_path / "marker")


@pytest.mark.sumo
def test_a_dataset_directory_without_a_manifest_or_with_a_directory_for_one(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_refused(["perception", "train", str(tmp_path), "--out", str(out)], ["no manifest.json"], out)
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    (data / "manifest.json").unlink()
    (data / "manifest.json").mkdir()
    assert_refused(["perception", "train", str(data), "--out", str(out)], ["manifest.json' is a directory"], out)


# ----------------------------------------------------------------------------- sensor tables


def _table(change: Callable[[dict], None]) -> str:
    table = {name: dict(block) for name, block in sensor_table().items()}
    change(table)
    return yaml.safe_dump(table)


SENSOR_TABLES = {
    "camera a number": (_table(lambda t: t.update(camera=5)), ["camera must be a mapping of cells, clutter"]),
    "infinite range": (_table(lambda t: t["lidar"].update(range_m=math.inf)), ["lidar.range_m", "finite"]),
    "dropout over 1": (_table(lambda t: t["radar"].update(dropout=2)), ["radar.dropout", "less than or equal to 1"]),
    "string number": (_table(lambda t: t["camera"].update(noise="0.1")), ["camera.noise", "valid number"]),
    "boolean count": (_table(lambda t: t["radar"].update(returns=True)), ["radar.returns", "valid integer"]),
    "too many cells": (_table(lambda t: t["camera"].update(cells=100_000)), ["camera.cells", "512"]),
    "lidar grid too fine": (_table(lambda t: t["lidar"].update(cell_m=0.001)), ["lidar:", "2 to 1024 are allowed"]),
    "unknown weather": (_table(lambda t: t["weather"].update(hail={})), ["unknown field 'weather.hail'", "snow"]),
    "unknown effect": (
        _table(lambda t: t["light"].update(night={"camera": {"range": 0.3}})),
        ["unknown field 'light.night.camera.range'", "range_m"],
    ),
    "no light block": (_table(lambda t: t.pop("light")), ["missing field 'light'"]),
    "duplicate key": ("camera: {}\ncamera: {}\n", ["duplicate key 'camera'"]),
    "not YAML": ("camera: [1, 2\n", ["YAML syntax error"]),
    "empty": ("", ["the sensor table must be a mapping of camera, lidar, light, radar, weather"]),
}


@pytest.mark.parametrize("kind", list(SENSOR_TABLES))
def test_a_bad_sensor_table_is_refused_before_any_simulation(kind: str, tmp_path: Path) -> None:
    text, words = SENSOR_TABLES[kind]
    sensors = tmp_path / "sensors.yaml"
    sensors.write_text(text)
    out = tmp_path / "out"
    assert_refused(["perception", "dataset", "--sensors", str(sensors), "--seeds", "1", "--out", str(out)],
                   [str(sensors), *words], out)  # fmt: skip


@pytest.mark.parametrize("kind", ["directory", "fifo", "binary"])
def test_a_sensor_table_that_is_no_text_file_is_refused(kind: str, tmp_path: Path) -> None:
    sensors = tmp_path / "sensors.yaml"
    if kind == "directory":
        sensors.mkdir()
    elif kind == "fifo":
        os.mkfifo(sensors)
    else:
        sensors.write_bytes(b"\xff\xfe\x00camera")
    out = tmp_path / "out"
    words = {"directory": "is a directory", "fifo": "is not a regular file", "binary": "is not UTF-8 text"}[kind]
    assert_refused(
        ["perception", "dataset", "--sensors", str(sensors), "--out", str(out)], ["sensor table", words], out
    )
