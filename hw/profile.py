"""What each perception component, and each gated configuration, costs on a target.

Per component (per frame): parameters, weight and state bytes, the MACs the target executes, SOPs (what
an event-driven chip would do for the spiking layers: from the firing rates of training), memory traffic,
a roofline latency t = max(MACs / peak, DRAM bytes / bandwidth) at batch 1 and 64 (on the FPGA: the hls4ml
projects' analytic latency at the reuse factors planned for the device), the measured ONNX
Runtime CPU latency (p50, p99 per batch size) when the target is this machine's CPU, and two energies:

- `energy_pj`, the operation model E = MACs·e_mac + DRAM bytes·e_dram with the target's table for the
  profiled precision (`ENERGY_TABLES`: per target and precision, each entry with its source). e_mac is
  device-level (the device's power over its peak MAC rate at that precision: what one MAC costs when the
  device is fully used, static power included); on a target that is not fully used a MAC costs more;
- `energy_busy_pj`, the device's maximum power over the latency at batch 1 (the roofline's, or the
  calibrated one where measured): the upper bound when nothing else shares the device during the frame.

Spiking layers run dense on all four targets (GPUs, CPUs and hls4ml's layers compute every synapse on
every active step, whatever the spikes): their MACs are active steps × the dense step. Weights are read
from DRAM once per batch, and once per active step for a time-stepped graph whose weights do not fit the
target's on-chip memory (`ON_CHIP_BYTES`); the FPGA keeps every weight on chip. On x86 with measurements,
the roofline is calibrated against them (`calibrate`: t = t₀ + MACs / R fitted to the measured p50s), and
the RAPL package energy is read around the runs where /sys/class/powercap is readable (`rapl_energy_j`).

Per configuration of the fusion model (the gate's cost table) the sum of its components; per context the
deep gate's choices from the training run (which branches it switches off, and the energy per frame on
this target) and its saving against the baselines that matter (`BASELINES`: all branches fused, the
three-sensor branch that fuses every sensor early, and the best single configuration over all contexts).

Caveats (printed with every report): the energies are estimates; the measured figures say so.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cavlab.config.files import read_json
from cavlab.errors import UserError, validation_message
from cavlab.hw.backends.hls4ml import LayerShape, analytic_latency_s, module_layer_shapes
from cavlab.hw.export import Component, export_onnx, load_components
from cavlab.hw.targets import Target
from cavlab.perception.fusion import BRANCHES, CONFIGURATIONS, MODALITIES

CAVEATS = (
    "energy_pj: device-level pJ per MAC (the device's maximum power over its peak MAC rate at this precision) and "
    "pJ per DRAM byte (an order of magnitude), both estimates from data sheets (ENERGY_TABLES' sources); "
    "energy_busy_pj: maximum power × roofline latency, an upper bound; roofline latency ignores launch overheads "
    "(see the calibration where measured); only latency_measured_s and rapl are measured"
)
BATCHES = (1, 8, 64)
HOST_COMPONENTS = ("stem.radar",)  # not convertible by hls4ml (Slice, ReduceMax): on the FPGA target's host
THREE_SENSOR_BRANCH = "camera+lidar+radar"  # early fusion of every sensor (EcoFusion's early-fusion analogue)
RAPL_ROOT = Path("/sys/class/powercap")


@dataclass(frozen=True)
class EnergyEntry:
    """One precision on one target: pJ per MAC executed and per DRAM byte, bytes per value, the peak MAC rate
    (the roofline's compute roof) and where the figures come from."""

    mac_pj: float
    dram_pj_per_byte: float
    bytes_per_value: float
    peak_macs_per_s: float
    source: str


_DDR4 = "DRAM ~30 pJ/byte (DDR4; Horowitz ISSCC 2014: 1.3–2.6 nJ per 64-bit access, 20–40 pJ/byte)"
_LPDDR5 = "DRAM ~20 pJ/byte (LPDDR5, the low end of Horowitz ISSCC 2014's 20–40 pJ/byte)"
# fmt: off
ENERGY_TABLES: dict[str, dict[str, EnergyEntry]] = {
    "x86-cpu": {
        "fp32": EnergyEntry(1500.0, 30.0, 4, 2.0e10, "30 W package (assumed) / 2.0e10 FP32 MAC/s (2 vCPU AVX2 at "
                            f"~0.6 GHz sustained, the target's estimate); {_DDR4}"),
        "int8": EnergyEntry(375.0, 30.0, 1, 8.0e10, "30 W / 8.0e10 INT8 MAC/s (AVX2 VPMADDUBSW or AVX-VNNI: 4× the "
                            f"FP32 MACs per instruction); {_DDR4}"),
    },
    "jetson-agx-orin": {
        "fp32": EnergyEntry(22.6, 20.0, 4, 2.66e12, "60 W (MAXN) / 2.66e12 FP32 MAC/s (2048 CUDA cores × 1.3 GHz; "
                            f"Jetson AGX Orin Technical Brief v1.2); {_LPDDR5}"),
        "fp16": EnergyEntry(2.8, 20.0, 2, 2.13e13, "60 W / 2.13e13 FP16 MAC/s (tensor cores, dense: half the GPU's "
                            f"85 dense INT8 TOPS; the brief gives 170 sparse); {_LPDDR5}"),
        "int8": EnergyEntry(1.41, 20.0, 1, 4.25e13, "60 W / 4.25e13 INT8 MAC/s (GPU 170 sparse TOPS = 85 dense TOPS, "
                            f"2 ops per MAC); {_LPDDR5}"),
        "dla-fp16": EnergyEntry(0.94, 20.0, 2, 1.31e13, "assumed 3× the GPU's INT8 efficiency at half the DLA INT8 "
                                f"rate (2 DLAs: 105 sparse INT8 TOPS; no DLA power in the data sheet); {_LPDDR5}"),
        "dla-int8": EnergyEntry(0.47, 20.0, 1, 2.63e13, "assumed 3× the GPU's INT8 efficiency (NVIDIA gives no DLA "
                                "power; measure with tegrastats), 2.63e13 MAC/s (105 sparse INT8 TOPS / 4); "
                                f"{_LPDDR5}"),
    },
    "jetson-orin-nano": {
        "fp32": EnergyEntry(24.0, 20.0, 4, 1.04e12, "25 W (Super mode) / 1.04e12 FP32 MAC/s (1024 CUDA cores × "
                            f"1.02 GHz; Orin Nano Super data sheet, Dec 2024); {_LPDDR5}"),
        "fp16": EnergyEntry(3.0, 20.0, 2, 8.4e12, "25 W / 8.4e12 FP16 MAC/s (tensor cores, dense: half of 33.5 "
                            f"dense INT8 TOPS); {_LPDDR5}"),
        "int8": EnergyEntry(1.49, 20.0, 1, 1.68e13, "25 W / 1.68e13 INT8 MAC/s (67 sparse TOPS = 33.5 dense, 2 ops "
                            f"per MAC; no DLA on Orin Nano); {_LPDDR5}"),
    },
    "zynq-zcu104": {
        "fixed24": EnergyEntry(28.9, 30.0, 3, 1.73e11, "5 W programmable logic at full DSP use (assumed; replace "
                               "with Vivado's power report) / 3.456e11 DSP operations/s (1728 DSP48E2 × 200 MHz) = "
                               "14.5 pJ per DSP operation; a 24 × 24-bit MAC takes 2 DSPs (27 × 18 each); PS "
                               f"{_DDR4} for the frames in and out; the weights stay on chip"),
        "fixed16": EnergyEntry(14.5, 30.0, 2, 3.46e11, "as fixed24, one DSP per 16-bit MAC"),
        "int8": EnergyEntry(7.2, 30.0, 1, 6.91e11, "as fixed24, two INT8 MACs per DSP48E2 (AMD WP486)"),
    },
}
# fmt: on
DEFAULT_PRECISION = {"cpu": "fp32", "gpu": "fp32", "fpga": "fixed24"}
ON_CHIP_BYTES: dict[str, tuple[float, str]] = {
    "x86-cpu": (1.0 * 2**20, "1 MiB L2 per core (assumed; a 2-vCPU VM shares its L3)"),
    "jetson-agx-orin": (4.0 * 2**20, "4 MiB GPU L2 (Jetson AGX Orin Technical Brief)"),
    "jetson-orin-nano": (2.0 * 2**20, "2 MiB GPU L2 (assumed: half of AGX Orin's, as its GPU)"),
    "zynq-zcu104": (math.inf, "every weight in BRAM (the hls4ml projects; see their resource estimates)"),
}
EVENT_DRIVEN_AC_PJ = 0.9  # Horowitz ISSCC 2014, 45 nm FP32 add: the SOP bound of an event-driven chip


def energy_entry(target: Target, precision: str | None = None) -> EnergyEntry:
    """The target's energy entry for `precision` (its default if None); a `UserError` lists the precisions."""
    table = ENERGY_TABLES.get(target.name)
    if table is None:
        raise UserError(f"target {target.name} has no energy table (tables: {', '.join(ENERGY_TABLES)})")
    precision = precision or DEFAULT_PRECISION[target.kind]
    if precision not in table:
        raise UserError(f"--precision {precision}: {target.name} has {', '.join(table)}")
    return table[precision]


@dataclass(frozen=True)
class ComponentCost:
    name: str
    parameters: int
    weight_bytes: int
    state_bytes: int
    macs: float
    sops: float
    activation_bytes: int
    weight_reads: int
    latency_roofline_s: dict[str, float]
    energy_pj: float
    energy_busy_pj: float
    latency_measured_s: dict[str, dict[str, float]] | None = None
    latency_calibrated_s: dict[str, float] | None = None


def _counts(component: Component, rates: dict[str, float] | None, active_steps: int) -> tuple[float, float, float]:
    """(MACs executed, MACs of one call, SOPs) per frame; the spiking step runs dense on its active steps."""
    module = component.module
    if component.name == "spiking.step":
        r1, r2 = (rates or {}).get("rate_layer1", 0.0), (rates or {}).get("rate_layer2", 0.0)
        w2, w3 = module.w2, module.w3
        step = w2.in_features * w2.out_features + w3.in_features * w3.out_features + 2 * w2.in_features  # β·v
        sops = active_steps * (r1 * w2.in_features * w2.out_features + r2 * w3.in_features * w3.out_features)
        return float(active_steps * step), float(step), sops
    if component.name == "spiking.input":
        macs = float(module.w1.in_features * module.w1.out_features)
    elif component.name == "gate":
        macs = float(sum(m.in_features * m.out_features for m in module.gate.net if isinstance(m, torch.nn.Linear)))
    else:
        macs = float(module.macs())
    return macs, macs, 0.0


def _fpga_latency_s(component: Component, target: Target, entry: EnergyEntry) -> float:
    """One call of a component in its hls4ml project: the analytic latency of the reuse factors planned for the
    device (`cavlab.hw.backends.hls4ml`), the β·v of every LIF state included; frames one after another."""
    shapes = module_layer_shapes(component.module, component.inputs)
    for name in component.state_pairs:  # β·v: one multiplication per neuron
        shapes.append(LayerShape(name, "ApplyAlpha", component.inputs[component.input_names.index(name)][0].numel(), 1))
    return analytic_latency_s(shapes, target.resources, int(8 * entry.bytes_per_value), target.clock_hz)


def _activation_values(component: Component) -> int:
    with torch.no_grad():
        outputs = component.module(*[t[:1] for t in component.inputs])
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return sum(t[:1].numel() for t in component.inputs) + sum(o.numel() for o in outputs)


def rapl_energy_j() -> tuple[float | None, str]:
    """The summed package energy counters of Intel RAPL [J] and where they come from, or None and why not."""
    try:
        domains = sorted(RAPL_ROOT.glob("intel-rapl:[0-9]*"))
        domains = [d for d in domains if d.name.count(":") == 1]  # packages, not their sub-domains
        if not domains:
            return None, f"no RAPL package domain under {RAPL_ROOT}"
        return sum(int((d / "energy_uj").read_text()) for d in domains) * 1e-6, ", ".join(d.name for d in domains)
    except OSError as exc:
        return None, f"{RAPL_ROOT}: {exc.strerror or exc}"


def _measure(component: Component, target: Target, runs: int = 200) -> dict[str, dict[str, float]]:
    """ONNX Runtime CPU latency per batch size: p50 and p99 over `runs` calls; with RAPL readable, the package
    energy per call (the whole package: everything else running on it included)."""
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
        energy_before, _ = rapl_energy_j()
        for _ in range(runs):
            start = time.perf_counter()
            session.run(None, feeds)
            times.append(time.perf_counter() - start)
        energy_after, _ = rapl_energy_j()
        out[str(b)] = {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))}
        if energy_before is not None and energy_after is not None and energy_after >= energy_before:
            out[str(b)]["rapl_j_per_call"] = (energy_after - energy_before) / runs
    return out


def calibrate(samples: list[tuple[float, float]]) -> dict[str, float]:
    """t = t₀ + MACs / R fitted (least squares) to (MACs of a call, measured p50 [s]) pairs: t₀ [s] and R [MAC/s],
    and the median |fit − measured| / measured."""
    macs, measured = np.array(samples).T
    design = np.stack([np.ones_like(macs), macs], axis=1)
    (t0, per_mac), *_ = np.linalg.lstsq(design, measured, rcond=None)
    t0, per_mac = max(float(t0), 0.0), max(float(per_mac), 1e-18)
    fitted = t0 + macs * per_mac
    return {"t0_s": t0, "macs_per_s": 1 / per_mac, "samples": len(samples),
            "median_relative_error": float(np.median(np.abs(fitted - measured) / measured))}  # fmt: skip


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


def profile_model(model_dir: Path, target: Target, measure: bool, batch: int = 32,
                  precision: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The report of the module docstring as a dict (also the content of profile.json); energy per frame
    with the weights read once per batch of `batch` frames (all CAVs of a step run as one batch), at
    `precision` (the target's default when None: FP32 on CPUs and GPUs, fixed<24,·> on the FPGA)."""
    entry = energy_entry(target, precision)
    results = read_results(model_dir)
    spiking = (results or {}).get("spiking")
    rates = spiking["contexts"]["all"] if spiking else None
    active = spiking["active_steps"] if spiking else 0
    on_chip, on_chip_source = ON_CHIP_BYTES[target.name]
    power_w = max(target.power_w) if isinstance(target.power_w, list) else target.power_w
    costs: dict[str, ComponentCost] = {}
    call_macs: dict[str, float] = {}
    for component in load_components(model_dir):
        params = sum(p.numel() for p in component.module.parameters())
        weight_bytes = int(params * entry.bytes_per_value)
        state_bytes = sum(component.inputs[component.input_names.index(n)][0].numel() for n in component.state_pairs)
        state_bytes = int(state_bytes * entry.bytes_per_value)
        macs, call_macs[component.name], sops = _counts(component, rates, active)
        steps = max(active, 1) if component.state_pairs else 1
        act = int(_activation_values(component) * steps * entry.bytes_per_value)
        reads = 0 if math.isinf(on_chip) else (steps if component.state_pairs and weight_bytes > on_chip else 1)
        roofline = {}
        for b in (1, 64):
            traffic = reads * weight_bytes / b + act
            roofline[str(b)] = max(macs / entry.peak_macs_per_s, traffic / target.memory_bandwidth_bytes_per_s)
        if target.kind == "fpga" and component.name not in HOST_COMPONENTS:
            roofline = dict.fromkeys(("1", "64"), steps * _fpga_latency_s(component, target, entry))
        energy = macs * entry.mac_pj + (reads * weight_bytes / batch + act) * entry.dram_pj_per_byte
        measured = _measure(component, target) if measure else None
        costs[component.name] = ComponentCost(
            component.name, params, weight_bytes, state_bytes, macs, sops, act, reads, roofline, energy,
            power_w * roofline["1"] * 1e12, measured,
        )  # fmt: skip
    calibration = None
    if measure:
        samples = [(call_macs[n] * int(b), v["p50"]) for n, c in costs.items() for b, v in c.latency_measured_s.items()]
        calibration = calibrate(samples)
        for name, c in costs.items():
            calls = max(active, 1) if name == "spiking.step" else 1
            calibrated = {str(b): calls * (calibration["t0_s"] + b * call_macs[name] / calibration["macs_per_s"]) / b
                          for b in (1, 64)}  # fmt: skip
            busy = power_w * calibrated["1"] * 1e12  # the busy bound on the calibrated latency
            costs[name] = ComponentCost(**{**asdict(c), "latency_calibrated_s": calibrated, "energy_busy_pj": busy})
    configurations = {}
    for config in CONFIGURATIONS:
        branches = tuple(BRANCHES) if config == "all branches" else (config,)
        parts = [f"stem.{m}" for m in MODALITIES if any(m in BRANCHES[b] for b in branches)]
        parts += [f"head.{b}" for b in branches]
        configurations[config] = {
            "components": parts,
            "macs": sum(costs[p].macs for p in parts),
            "energy_pj": sum(costs[p].energy_pj for p in parts),
            "energy_busy_pj": sum(costs[p].energy_busy_pj for p in parts),
            "latency_roofline_s": sum(costs[p].latency_roofline_s["1"] for p in parts),
        }
    rapl, rapl_source = rapl_energy_j()
    report: dict[str, Any] = {
        "target": target.name, "batch": batch, "precision": precision or DEFAULT_PRECISION[target.kind],
        "energy_table": asdict(entry), "on_chip_bytes": {"bytes": on_chip, "source": on_chip_source},
        "power_w": power_w, "caveats": CAVEATS,
        "rapl": {"readable": rapl is not None, "source": rapl_source},
        "calibration": calibration,
        "components": {k: asdict(v) for k, v in costs.items()},
        "configurations": configurations,
    }  # fmt: skip
    if "spiking.step" in costs:
        report["spiking"] = spiking_costs(costs, rates is not None)
    if results is not None:
        report["contexts"] = reconfiguration(results, configurations, costs)
    return report


def spiking_costs(costs: dict[str, ComponentCost], trained: bool) -> dict[str, Any]:
    """The spiking branch (its stems, input layer and dense steps) against its non-spiking original (the same
    stems and the branch head), and the SOP bound of an event-driven chip for the steps."""
    stems = sum(c.energy_pj for n, c in costs.items() if n.startswith("stem.") and n != "stem.camera")
    step = costs["spiking.step"]
    return {
        "branch": "lidar+radar", "rates_from_training": trained,
        "spiking_energy_pj": stems + costs["spiking.input"].energy_pj + step.energy_pj,
        "ann_energy_pj": stems + costs["head.lidar+radar"].energy_pj,
        "event_driven_step_bound_pj": step.sops * EVENT_DRIVEN_AC_PJ,
        "step_weight_reads_per_frame": step.weight_reads,
    }  # fmt: skip


def baselines(results: dict[str, Any]) -> dict[str, str]:
    """The configurations the deep gate is compared with: all branches, the three-sensor branch, and the best
    single configuration (the most accurate over all contexts, when the results have per-configuration rows)."""
    out = {"all branches": "all branches", "three-sensor branch": THREE_SENSOR_BRANCH}
    overall = results["contexts"].get("all", {})
    scored = {c: overall[c]["accuracy"] for c in CONFIGURATIONS if isinstance(overall.get(c), dict)
              and isinstance(overall[c].get("accuracy"), float)}  # fmt: skip
    if scored:
        out["best single configuration"] = max(scored, key=lambda c: (scored[c], -CONFIGURATIONS.index(c)))
    return out


def reconfiguration(results: dict[str, Any], configurations: dict[str, dict], costs: dict[str, ComponentCost]
                    ) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per context: the deep gate's choices, the share of frames each sensor branch is off, the energy per
    frame on this target (the gate and its radar stem included) and its saving against each baseline."""
    gate_pj = costs["gate"].energy_pj + costs["stem.radar"].energy_pj
    compared = baselines(results)
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
        energy = energy / frames + gate_pj
        out[label] = {
            "energy_pj": energy,
            "all_branches_energy_pj": configurations["all branches"]["energy_pj"],
            "sensor_off_share": {m: 1 - on[m] / frames for m in MODALITIES},
            "choices": choices,
            "accuracy": row["deep gate"]["accuracy"],
            "saving_vs": {
                name: {"configuration": config, "energy_pj": configurations[config]["energy_pj"],
                       "saving": 1 - energy / configurations[config]["energy_pj"],
                       "accuracy": row.get(config, {}).get("accuracy")}
                for name, config in compared.items()
            },
        }  # fmt: skip
    return out


def profile_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables."""
    lines = [f"Target `{report['target']}` at {report['precision']}; energy per frame with the weights read once "
             f"per batch of {report['batch']} frames (estimated: {report['energy_table']['source']}).", "",
             "| component | parameters | state bytes | MACs | SOPs | weight reads | roofline µs (1 / 64) "
             "| ORT CPU p50 µs (1 / 8 / 64), measured | calibrated µs (1 / 64) | energy µJ | busy bound µJ |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, c in report["components"].items():
        roof = " / ".join(f"{v * 1e6:.1f}" for v in c["latency_roofline_s"].values())
        measured = " / ".join(f"{v['p50'] * 1e6:.0f}" for v in c["latency_measured_s"].values()) if c[
            "latency_measured_s"] else "—"  # fmt: skip
        calibrated = " / ".join(f"{v * 1e6:.1f}" for v in c["latency_calibrated_s"].values()) if c[
            "latency_calibrated_s"] else "—"  # fmt: skip
        lines.append(f"| {name} | {c['parameters']:,} | {c['state_bytes']:,} | {c['macs']:,.0f} | {c['sops']:,.0f} | "
                     f"{c['weight_reads']} | {roof} | {measured} | {calibrated} | {c['energy_pj'] / 1e6:.2f} | "
                     f"{c['energy_busy_pj'] / 1e6:.1f} |")  # fmt: skip
    if report["calibration"]:
        cal = report["calibration"]
        lines += ["", f"Roofline calibrated on the measured p50s (x86, ONNX Runtime, 1 thread): t = "
                  f"{cal['t0_s'] * 1e6:.1f} µs + MACs / {cal['macs_per_s']:.3g} MAC/s, median error "
                  f"{100 * cal['median_relative_error']:.0f} % over {cal['samples']} measurements."]  # fmt: skip
    lines += ["", f"RAPL: {'read around every measurement' if report['rapl']['readable'] else 'not readable'} "
              f"({report['rapl']['source']})."]  # fmt: skip
    lines += ["", "| configuration (the gate's cost table) | MACs | energy µJ | busy bound µJ | roofline µs |",
              "|---|---|---|---|---|"]  # fmt: skip
    for name, c in report["configurations"].items():
        lines.append(f"| {name} | {c['macs']:,.0f} | {c['energy_pj'] / 1e6:.2f} | {c['energy_busy_pj'] / 1e6:.1f} | "
                     f"{c['latency_roofline_s'] * 1e6:.1f} |")  # fmt: skip
    if "spiking" in report:
        sp = report["spiking"]
        lines += ["", f"Spiking {sp['branch']} branch: {sp['spiking_energy_pj'] / 1e6:.2f} µJ per frame (dense steps, "
                  f"weights read {sp['step_weight_reads_per_frame']}× per frame) against "
                  f"{sp['ann_energy_pj'] / 1e6:.2f} µJ for its non-spiking head; an event-driven chip would spend "
                  f"{sp['event_driven_step_bound_pj'] / 1e6:.3f} µJ on the steps' SOPs."]  # fmt: skip
    if "contexts" in report:
        names = list(next(iter(report["contexts"].values()))["saving_vs"])
        lines += ["", "| context | deep gate accuracy | energy µJ per frame | " + " | ".join(f"vs {n}" for n in names)
                  + " | camera off | lidar off | radar off |", "|---|---|---|" + "---|" * (len(names) + 3)]  # fmt: skip
        for label, c in report["contexts"].items():
            off = c["sensor_off_share"]
            savings = " | ".join(f"{-100 * v['saving']:+.0f} % ({v['configuration']})" for v in c["saving_vs"].values())
            shares = " | ".join(f"{100 * off[m]:.0f} %" for m in ("camera", "lidar", "radar"))
            lines.append(f"| {label} | {c['accuracy']:.3f} | {c['energy_pj'] / 1e6:.2f} | {savings} | {shares} |")
    lines += ["", f"Caveats: {report['caveats']}."]
    return "\n".join(lines) + "\n"
