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
command writes the same shards. `load_dataset` checks the manifest (`Manifest`) and every shard
against it before the arrays are used.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from cavlab.config.files import check_regular_file, read_json
from cavlab.errors import UserError, validation_message
from cavlab.perception.sensors import SENSORS, SensorSuite, frame_shapes
from cavlab.perception.task import SLOTS, neighbour_targets
from cavlab.world import Command, WorldState

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

    def guard(self, commands: list[Command]) -> list[Command]:
        return commands

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


MAX_SHARD_BYTES = 1024**3  # a shard file
MAX_ARRAY_BYTES = 4 * 1024**3  # the arrays of one shard, loaded


class Shard(BaseModel):
    """One shard of a manifest: its file (in the dataset directory), context label, seed and frame count."""

    model_config = ConfigDict(extra="ignore", strict=True)

    file: str
    context: str
    seed: int
    samples: Annotated[int, Field(ge=0)]

    @field_validator("file")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not name.endswith(".npz") or Path(name).name != name or name.startswith("."):
            raise ValueError(f"'{name}' must be the name of a .npz file in the dataset directory")
        return name


class Manifest(BaseModel):
    """What `load_dataset` reads of a `manifest.json` (the rest is a record of how it was made)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    contexts: Annotated[list[str], Field(min_length=1)]
    shapes: Annotated[dict[str, list[int]], BeforeValidator(frame_shapes)]
    shards: Annotated[list[Shard], Field(min_length=1)]


def load_dataset(folder: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The manifest and every shard's arrays concatenated, with each sample's `seed`; every file checked
    (`Manifest`, then each shard's arrays against it: a `UserError` names the file and the key)."""
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.exists():
        raise UserError(f"{folder}: no manifest.json (a directory written by `cavlab perception dataset`)")
    manifest = read_json(path, "dataset manifest")
    try:
        spec = Manifest.model_validate(manifest)
    except ValidationError as exc:
        line = validation_message(exc, Manifest, missing="missing key '{field}'", invalid_at_root="not a mapping",
                                  show_input=True)  # fmt: skip
        raise UserError(f"{path}: {line} (a manifest holds contexts, shapes and shards, as `cavlab perception "
                        "dataset` writes it)") from None  # fmt: skip
    parts: dict[str, list[np.ndarray]] = {}
    for k, shard in enumerate(spec.shards):
        arrays = _read_shard(folder / shard.file, f"{path}: shards.{k}", spec)
        if len(arrays["targets"]) != shard.samples:
            raise UserError(f"{path}: shards.{k}.samples is {shard.samples}, {shard.file} holds "
                            f"{len(arrays['targets'])} frames")  # fmt: skip
        for key, array in arrays.items():
            parts.setdefault(key, []).append(array)
        parts.setdefault("seed", []).append(np.full(shard.samples, shard.seed, dtype=np.int32))
    return {**manifest, "shapes": spec.shapes}, {k: np.concatenate(v) for k, v in parts.items()}


def _read_shard(path: Path, where: str, spec: Manifest) -> dict[str, np.ndarray]:
    """A shard's arrays, each of the shape and kind the manifest says and finite. The array headers are
    checked before anything is loaded: no Python objects (nothing is unpickled), and at most
    `MAX_ARRAY_BYTES` in all however well the file compresses."""
    check_regular_file(path, f"{where}: shard", MAX_SHARD_BYTES)
    expected = {**{m: tuple(spec.shapes[m]) for m in SENSORS}, "targets": (len(SLOTS), 3), "context": (), "time_s": ()}
    try:
        headers = _array_headers(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise UserError(f"{where}: {path.name} is not a .npz of numeric arrays ({_short(exc)})") from None
    missing = [key for key in expected if key not in headers]
    if missing:
        raise UserError(f"{where}: {path.name} has no array '{missing[0]}' (a shard holds {', '.join(expected)})")
    n = headers["targets"][0][0] if headers["targets"][0] else -1
    total = 0
    for key, shape in expected.items():
        got_shape, dtype = headers[key]
        integer = key == "context"
        kind = np.integer if integer else np.floating
        if dtype.hasobject or not np.issubdtype(dtype, kind) or got_shape != (n, *shape):
            want = "integers" if integer else "floats"
            raise UserError(f"{where}: {path.name}: '{key}' is {dtype} {list(got_shape)}; {want} of shape "
                            f"{[n, *shape]} expected")  # fmt: skip
        total += int(np.prod(got_shape)) * dtype.itemsize
    if total > MAX_ARRAY_BYTES:
        raise UserError(f"{where}: {path.name} holds {total >> 20} MiB of arrays; at most {MAX_ARRAY_BYTES >> 20} "
                        "MiB per shard are allowed")  # fmt: skip
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in expected}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise UserError(f"{where}: {path.name} cannot be read ({_short(exc)})") from None
    context = arrays.pop("context")
    if len(context) and not (context.min() >= 0 and context.max() < len(spec.contexts)):
        raise UserError(f"{where}: {path.name}: 'context' must index the manifest's {len(spec.contexts)} contexts "
                        f"(0 to {len(spec.contexts) - 1})")  # fmt: skip
    for key, array in arrays.items():
        if not np.isfinite(array).all():
            raise UserError(f"{where}: {path.name}: '{key}' holds NaN or infinite values")
        arrays[key] = array.astype(np.float32, copy=False)
    return {**arrays, "context": context.astype(np.int16)}


def _array_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array of a .npz, from the .npy headers alone."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    out = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version not in readers:
                    raise ValueError(f"{info.filename}: .npy format {version} is not read")
                shape, _, dtype = readers[version](f)
            out[info.filename.removesuffix(".npy")] = (tuple(shape), dtype)
    return out


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:120]
