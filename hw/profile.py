"""What each perception component, and each gated configuration, costs on a target.

Per component (per frame): parameters, weight and state bytes, MACs, SOPs (spiking layers,
from the firing rates measured in training), memory traffic (weights read once per batch,
activations in and out), a roofline latency t = max(MACs / peak, bytes / bandwidth) at batch
1 and 64, the measured ONNX Runtime CPU latency (p50, p99 per batch size) when the target is
this machine's CPU, and the energy E = MACs·e_mac + SOPs·e_ac + bytes·e_dram with the target's
pJ table. Per configuration of the fusion model (the gate's cost table) the sum of its
components; per context the deep gate's choices from the training run (which branches it
switches off, and the energy per frame on this target), as CARMA reports reconfiguration.

Caveats (printed with every report): operation-count energy ignores on-chip data movement
and leakage; roofline latency ignores launch overheads and assumes perfect overlap; the
DRAM energy per byte is an order of magnitude. Measure on the device where one exists.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cavlab.config.files import read_json
from cavlab.errors import UserError, validation_message
from cavlab.hw.export import Component, export_onnx, load_components
from cavlab.hw.targets import Target
from cavlab.perception.fusion import BRANCHES, CONFIGURATIONS, MODALITIES

CAVEATS = (
    "energy from operation counts (45 nm-class pJ per operation) ignores on-chip data movement and leakage; "
    "roofline latency ignores launch overheads and assumes compute and memory overlap perfectly; "
    "the DRAM energy per byte is an order of magnitude; measure on the device where one exists"
)
BATCHES = (1, 8, 64)
BYTES_PER_VALUE = 4  # FP32


@dataclass(frozen=True)
class ComponentCost:
    name: str
    parameters: int
    weight_bytes: int
    state_bytes: int
    macs: float
    sops: float
    activation_bytes: int
    latency_roofline_s: dict[str, float]
    energy_pj: float
    latency_measured_s: dict[str, dict[str, float]] | None = None


def _macs_of(component: Component, rates: dict[str, float] | None, active_steps: int) -> tuple[float, float]:
    """(MACs, SOPs) per frame of a component; the spiking step counts per frame over its active steps."""
    module = component.module
    if component.name == "spiking.step":
        r1, r2 = (rates or {}).get("rate_layer1", 0.0), (rates or {}).get("rate_layer2", 0.0)
        sops = active_steps * (r1 * module.w2.in_features * module.w2.out_features
                               + r2 * module.w3.in_features * module.w3.out_features)  # fmt: skip
        return 0.0, sops
    if component.name == "spiking.input":
        return float(module.w1.in_features * module.w1.out_features), 0.0
    if component.name == "gate":
        return float(
            sum(m.in_features * m.out_features for m in module.gate.net if isinstance(m, torch.nn.Linear))
        ), 0.0
    return float(module.macs()), 0.0


def _activation_bytes(component: Component) -> int:
    with torch.no_grad():
        outputs = component.module(*[t[:1] for t in component.inputs])
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    values = sum(t[:1].numel() for t in component.inputs) + sum(o.numel() for o in outputs)
    return values * BYTES_PER_VALUE


def _measure(component: Component, target: Target, runs: int = 200) -> dict[str, dict[str, float]]:
    """ONNX Runtime CPU latency per batch size: p50 and p99 over `runs` calls."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(export_onnx(component, target).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    out = {}
    for b in BATCHES:
        feeds = {n: np.random.default_rng(0).random((b, *t.shape[1:]), dtype=np.float32)
                 for n, t in zip(component.input_names, component.inputs, strict=True)}  # fmt: skip
        session.run(None, feeds)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run(None, feeds)
            times.append(time.perf_counter() - start)
        out[str(b)] = {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))}
    return out


class _Results(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


Share = Annotated[float, Field(ge=0, le=1)]
Rate = Annotated[float, Field(ge=0)]  # spikes per neuron per active step


class _Rates(_Results):
    rate_layer1: Rate
    rate_layer2: Rate


class _SpikingContexts(_Results):
    all: _Rates  # the firing rates over every context: the SOPs per frame


class _Spiking(_Results):
    active_steps: Annotated[int, Field(ge=0)]
    contexts: _SpikingContexts


class _DeepGate(_Results):
    accuracy: Share
    choices: dict[str, Annotated[int, Field(ge=0)]]

    @field_validator("choices")
    @classmethod
    def _configurations(cls, choices: dict[str, int]) -> dict[str, int]:
        unknown = [c for c in choices if c not in CONFIGURATIONS]
        if unknown:
            raise ValueError(f"unknown configuration '{unknown[0]}' (allowed: {', '.join(CONFIGURATIONS)})")
        if not sum(choices.values()):
            raise ValueError("must count at least one frame")
        return choices


class _Context(_Results):
    deep_gate: _DeepGate = Field(alias="deep gate")


class TrainingResults(_Results):
    """What `profile_model` reads of a model directory's `results.json` (from `cavlab perception train`)."""

    contexts: dict[str, _Context]
    spiking: _Spiking | None = None


def read_results(model_dir: Path) -> dict[str, Any] | None:
    """The model directory's `results.json`, checked against `TrainingResults`; None if there is none."""
    path = Path(model_dir) / "results.json"
    if not path.exists():
        return None
    results = read_json(path, "training results")
    try:
        TrainingResults.model_validate(results)
    except ValidationError as exc:
        line = validation_message(exc, TrainingResults, missing="missing key '{field}'",
                                  invalid_at_root="not a mapping")  # fmt: skip
        raise UserError(f"{path}: {line} (the results.json `cavlab perception train` writes)") from None
    return results


def profile_model(model_dir: Path, target: Target, measure: bool, batch: int = 32) -> dict[str, Any]:
    """The report of the module docstring as a dict (also the content of profile.json); energy per frame
    with the weights read once per batch of `batch` frames (all CAVs of a step run as one batch)."""
    results = read_results(model_dir)
    spiking = (results or {}).get("spiking")
    rates = spiking["contexts"]["all"] if spiking else None
    active = spiking["active_steps"] if spiking else 0
    e = target.energy_pj
    costs: dict[str, ComponentCost] = {}
    for component in load_components(model_dir):
        params = sum(p.numel() for p in component.module.parameters())
        weight_bytes = params * BYTES_PER_VALUE
        state_bytes = sum(component.inputs[component.input_names.index(n)][0].numel() for n in component.state_pairs)
        state_bytes *= BYTES_PER_VALUE
        macs, sops = _macs_of(component, rates, active)
        act = _activation_bytes(component) * (max(active, 1) if component.state_pairs else 1)
        roofline = {}
        for b in (1, 64):
            traffic = weight_bytes / b + act
            roofline[str(b)] = max(macs / target.peak_macs_per_s, traffic / target.memory_bandwidth_bytes_per_s)
        energy = macs * e["mac"] + sops * e["ac"] + (weight_bytes / batch + act) * e.get("dram_byte", 0.0)
        measured = _measure(component, target) if measure else None
        costs[component.name] = ComponentCost(component.name, params, weight_bytes, state_bytes, macs, sops, act,
                                              roofline, energy, measured)  # fmt: skip
    configurations = {}
    for config in CONFIGURATIONS:
        branches = tuple(BRANCHES) if config == "all branches" else (config,)
        parts = [f"stem.{m}" for m in MODALITIES if any(m in BRANCHES[b] for b in branches)]
        parts += [f"head.{b}" for b in branches]
        configurations[config] = {
            "components": parts,
            "macs": sum(costs[p].macs for p in parts),
            "energy_pj": sum(costs[p].energy_pj for p in parts),
            "latency_roofline_s": sum(costs[p].latency_roofline_s["1"] for p in parts),
        }
    report: dict[str, Any] = {
        "target": target.name, "batch": batch, "caveats": CAVEATS,
        "components": {k: asdict(v) for k, v in costs.items()},
        "configurations": configurations,
    }  # fmt: skip
    if results is not None:
        report["contexts"] = reconfiguration(results, configurations, costs)
    return report


def reconfiguration(results: dict[str, Any], configurations: dict[str, dict], costs: dict[str, ComponentCost]
                    ) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per context: the deep gate's choices, the share of frames each sensor branch is off, and the
    energy per frame on this target (the gate and its radar stem included)."""
    gate_pj = costs["gate"].energy_pj + costs["stem.radar"].energy_pj
    out = {}
    for label, row in results["contexts"].items():
        choices = row["deep gate"]["choices"]
        frames = sum(choices.values())
        energy = 0.0
        on = dict.fromkeys(MODALITIES, 0)
        for config, count in choices.items():
            parts = configurations[config]["components"]
            energy += count * (configurations[config]["energy_pj"]
                               - (costs["stem.radar"].energy_pj if "stem.radar" in parts else 0.0))  # fmt: skip
            for m in MODALITIES:
                on[m] += count * (f"stem.{m}" in parts)
        out[label] = {
            "energy_pj": energy / frames + gate_pj,
            "all_branches_energy_pj": configurations["all branches"]["energy_pj"],
            "sensor_off_share": {m: 1 - on[m] / frames for m in MODALITIES},
            "choices": choices,
            "accuracy": row["deep gate"]["accuracy"],
        }
    return out


def profile_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables."""
    lines = [f"Target `{report['target']}`; energy per frame with the weights read once per batch of "
             f"{report['batch']} frames.", "",
             "| component | parameters | state bytes | MACs | SOPs | traffic bytes (batch 1) | roofline µs (1 / 64) "
             "| ORT CPU p50 µs (1 / 8 / 64) | energy µJ |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, c in report["components"].items():
        roof = " / ".join(f"{v * 1e6:.1f}" for v in c["latency_roofline_s"].values())
        measured = " / ".join(f"{v['p50'] * 1e6:.0f}" for v in c["latency_measured_s"].values()) if c[
            "latency_measured_s"] else "—"  # fmt: skip
        traffic = c["weight_bytes"] + c["activation_bytes"]
        lines.append(f"| {name} | {c['parameters']:,} | {c['state_bytes']:,} | {c['macs']:,.0f} | {c['sops']:,.0f} | "
                     f"{traffic:,} | {roof} | {measured} | {c['energy_pj'] / 1e6:.2f} |")  # fmt: skip
    lines += ["", "| configuration (the gate's cost table) | MACs | energy µJ | roofline µs |", "|---|---|---|---|"]
    for name, c in report["configurations"].items():
        lines.append(
            f"| {name} | {c['macs']:,.0f} | {c['energy_pj'] / 1e6:.2f} | {c['latency_roofline_s'] * 1e6:.1f} |"
        )
    if "contexts" in report:
        lines += ["", "| context | deep gate accuracy | energy µJ per frame | vs all branches | camera off | lidar off "
                  "| radar off |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for label, c in report["contexts"].items():
            off = c["sensor_off_share"]
            saving = 100 * (c["energy_pj"] / c["all_branches_energy_pj"] - 1)
            shares = " | ".join(f"{100 * off[m]:.0f} %" for m in ("camera", "lidar", "radar"))
            lines.append(f"| {label} | {c['accuracy']:.3f} | {c['energy_pj'] / 1e6:.2f} | {saving:+.0f} % | {shares} |")
    lines += ["", f"Caveats: {report['caveats']}."]
    return "\n".join(lines) + "\n"
