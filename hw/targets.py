"""Target profiles (hw/targets/*.yaml): what each edge target runs, how fast, at what energy.

Every number in a profile carries its source in the profile's `sources` block; numbers are finite
and strictly typed (`InputModel`).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Literal

import yaml
from pydantic import Field, ValidationError

from cavlab.config.scenario import InputModel
from cavlab.errors import UserError


class Target(InputModel):
    """One deployment target."""

    name: str
    description: str
    kind: Literal["cpu", "gpu", "fpga"]
    runtime: Literal["onnxruntime", "tensorrt", "hls4ml"]
    runtime_version: str
    opset: int = Field(ge=7)
    max_ir_version: int = Field(ge=3)
    precisions: list[str]
    peak_macs_per_s: float = Field(gt=0)
    memory_bandwidth_bytes_per_s: float = Field(gt=0)
    power_w: float | list[float]
    energy_pj: dict[str, float]
    operators: list[str]
    not_supported: dict[str, str] = Field(default_factory=dict)
    sources: dict[str, str]
    dla: dict | None = None
    peak_int8_ops_per_s: float | None = None
    clock_hz: float | None = None
    resources: dict[str, int] | None = None


@cache
def targets() -> dict[str, Target]:
    """Every shipped target profile by name."""
    out = {}
    for path in sorted(files("cavlab.hw").joinpath("targets").iterdir(), key=lambda p: p.name):
        if path.name.endswith(".yaml"):
            try:
                target = Target.model_validate(yaml.safe_load(path.read_text()))
            except ValidationError as exc:  # a broken shipped file is a bug, not user input
                raise RuntimeError(f"hw/targets/{path.name}: {exc}") from exc
            out[target.name] = target
    return out


def get_target(name: str) -> Target:
    """The named target, or a `UserError` listing the known ones."""
    known = targets()
    if name not in known:
        raise UserError(f"unknown target '{name}' (available: {', '.join(known)})")
    return known[name]
