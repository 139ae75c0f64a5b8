"""ONNX export of the perception models, one graph per component, checked for a target.

Components of a `cavlab perception train` checkpoint: the three stems, the seven branch
heads, the deep gate, and the spiking branch as two graphs — its input layer (run once per
frame) and its step (run once per time step) with the membrane states as explicit inputs and
outputs (`lif1.v_in` → `lif1.v_out`, …; the pairing is stored in the graph's metadata under
`state_pairs`). Every graph has a dynamic batch axis.

Every export is checked: `onnx.checker`; the opset and IR version against the target's;
every operator against the target's allowlist (a `UserError` names the operator and the
target); for stateful graphs, that the states are inputs and outputs and that the outputs
really depend on the input states (a graph that silently dropped its state would not).

INT8 versions of the stateless graphs are calibrated on frames of the simulated sensors
(`sensors.sample_frames`, seed 0, run through the model up to the component) and checked on
other frames (seed 1): the RMS difference from FP32 against the spread of the FP32 outputs.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from cavlab.errors import UserError
from cavlab.hw.targets import Target
from cavlab.perception.fusion import BRANCHES, MODALITIES, DeepGate
from cavlab.perception.sensors import sample_frames
from cavlab.perception.spiking import lif_step
from cavlab.perception.spiking_branch import SpikingHead
from cavlab.perception.training import load_checkpoint, spiking_head

CALIBRATION = {"frames": 512, "seed": 0}  # the frames INT8 activations are calibrated on
INT8_CHECK = {"frames": 512, "seed": 1}  # and the other frames their error is measured on


@dataclass
class Component:
    """A module to export with example inputs, names and state pairs (input → output); `representative(n,
    seed)` gives its inputs on n frames of the simulated sensors (None for the stateful spiking step)."""

    name: str
    module: nn.Module
    inputs: tuple[Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    state_pairs: dict[str, str] = field(default_factory=dict)
    representative: Callable[[int, int], tuple[Tensor, ...]] | None = None


class GateGraph(nn.Module):
    """The deep gate with its frame statistics inside: (radar features, camera, lidar) → predicted losses."""

    def __init__(self, gate: DeepGate) -> None:
        super().__init__()
        self.gate = gate

    def forward(self, radar_features: Tensor, camera: Tensor, lidar: Tensor) -> Tensor:
        return self.gate(radar_features, {"camera": camera, "lidar": lidar})


class SpikingInput(nn.Module):
    """z = W₁·f, run once per frame."""

    def __init__(self, head: SpikingHead) -> None:
        super().__init__()
        self.w1 = head.w1

    def forward(self, features: Tensor) -> Tensor:
        return self.w1(features)


class SpikingStep(nn.Module):
    """One active time step of the spiking head: (z, v₁, v₂) → (W₃·s², v₁', v₂'); the host loops
    over the active steps and averages the outputs."""

    def __init__(self, head: SpikingHead) -> None:
        super().__init__()
        self.w2, self.w3 = head.w2, head.w3
        self.lif1, self.lif2 = head.lif1, head.lif2

    def forward(self, z: Tensor, v1: Tensor, v2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        s1, v1 = lif_step(z, v1, self.lif1.beta, self.lif1.theta)
        s2, v2 = lif_step(self.w2(s1), v2, self.lif2.beta, self.lif2.theta)
        return self.w3(s2), v1, v2


def load_components(model_dir: Path) -> list[Component]:
    """The exportable components of a trained perception model; their examples are three frames of the
    simulated sensors (seed 0) run through the model up to each component."""
    model, gate, ckpt = load_checkpoint(model_dir)
    shapes = ckpt["shapes"]

    @cache
    def frames(n: int, seed: int) -> dict[str, Tensor]:
        return {m: torch.from_numpy(a) for m, a in sample_frames(shapes, n, seed).items()}

    @torch.no_grad()
    def features(mods: tuple[str, ...], n: int, seed: int) -> Tensor:
        return torch.cat([model.stems[m](frames(n, seed)[m]) for m in mods], dim=1)

    def stem(m: str) -> Callable[[int, int], tuple[Tensor, ...]]:
        return lambda n, seed: (frames(n, seed)[m],)

    def head_of(mods: tuple[str, ...]) -> Callable[[int, int], tuple[Tensor, ...]]:
        return lambda n, seed: (features(mods, n, seed),)

    def gate_inputs(n: int, seed: int) -> tuple[Tensor, ...]:
        return features(("radar",), n, seed), frames(n, seed)["camera"], frames(n, seed)["lidar"]

    def component(name: str, module: nn.Module, feed: Callable, inputs: list[str], outputs: list[str]) -> Component:
        return Component(name, module, feed(3, 0), inputs, outputs, representative=feed)

    components = [component(f"stem.{m}", model.stems[m], stem(m), [m], ["features"]) for m in MODALITIES]
    for branch, mods in BRANCHES.items():
        components.append(component(f"head.{branch}", model.heads[branch], head_of(mods), ["features"], ["slots"]))
    components.append(component("gate", GateGraph(gate), gate_inputs, ["radar_features", "camera", "lidar"],
                                ["predicted_losses"]))  # fmt: skip
    head = spiking_head(ckpt, Path(model_dir) / "checkpoint.pt")
    if head is not None:
        mods = BRANCHES[ckpt["spiking"]["branch"]]
        spiking_input = component("spiking.input", SpikingInput(head), head_of(mods), ["features"], ["z"])
        components.append(spiking_input)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            z = spiking_input.module(*spiking_input.inputs)
        states = tuple(torch.rand(z.shape, generator=gen) for _ in range(2))
        components.append(Component("spiking.step", SpikingStep(head), (z, *states), ["z", "lif1.v_in", "lif2.v_in"],
                                    ["y", "lif1.v_out", "lif2.v_out"],
                                    {"lif1.v_in": "lif1.v_out", "lif2.v_in": "lif2.v_out"}))  # fmt: skip
    return components


def export_onnx(component: Component, target: Target) -> onnx.ModelProto:
    """The component as ONNX at the target's opset, batch axis dynamic, metadata set; checked."""
    buffer = io.BytesIO()
    names = component.input_names + component.output_names
    # the TorchScript exporter: the torch.export one needs onnxscript and gave nothing more here
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            component.module.eval(), component.inputs, buffer, dynamo=False, opset_version=target.opset,
            input_names=component.input_names, output_names=component.output_names,
            dynamic_axes={n: {0: "batch"} for n in names},
        )  # fmt: skip
    model = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(model, {
        "cavlab.component": component.name,
        "cavlab.target": target.name,
        "state_pairs": json.dumps(component.state_pairs),
    })  # fmt: skip
    check(model, target, component)
    return model


def check(model: onnx.ModelProto, target: Target, component: Component) -> None:
    """The checks of the module docstring; each failure is a `UserError` naming what is wrong."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset != target.opset:
        raise UserError(f"{component.name}: exported at opset {opset}, target {target.name} wants {target.opset}")
    if model.ir_version > target.max_ir_version:
        raise UserError(f"{component.name}: IR version {model.ir_version} is newer than target {target.name} "
                        f"reads ({target.max_ir_version})")  # fmt: skip
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise UserError(f"{component.name}: the exported graph is not valid ONNX ({exc})") from None
    for op in sorted({n.op_type for n in model.graph.node}):
        if op not in target.operators:
            why = target.not_supported.get(op, "not in its operator list")
            raise UserError(f"{component.name}: operator {op} cannot run on target {target.name}: {why}")
    if component.state_pairs:
        check_state(model, component)


def check_state(model: onnx.ModelProto, component: Component) -> None:
    """Every state input is consumed and paired with an output, and the outputs change with it."""
    import onnxruntime as ort

    inputs = {i.name for i in model.graph.input}
    outputs = {o.name for o in model.graph.output}
    consumed = {name for node in model.graph.node for name in node.input}
    for state_in, state_out in component.state_pairs.items():
        if state_in not in inputs or state_in not in consumed or state_out not in outputs:
            raise UserError(f"{component.name}: the state {state_in} → {state_out} was dropped from the graph")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {n: t.numpy() for n, t in zip(component.input_names, component.inputs, strict=True)}
    other = dict(feeds)
    for state_in in component.state_pairs:
        other[state_in] = feeds[state_in] + 0.7
    first, second = session.run(None, feeds), session.run(None, other)
    if all(np.array_equal(a, b) for a, b in zip(first, second, strict=True)):
        raise UserError(f"{component.name}: the outputs do not depend on the state inputs (a stateless graph)")


@dataclass(frozen=True)
class Parity:
    """Largest |ORT − torch| over the outputs, per batch size, and of a K-step rollout."""

    per_batch: dict[int, float]
    rollout: float | None


def parity(model: onnx.ModelProto, component: Component, batches: tuple[int, ...] = (1, 7, 513),
           rollout_steps: int = 8, seed: int = 0) -> Parity:  # fmt: skip
    """ONNX Runtime against torch on random inputs at each batch size; for stateful graphs also
    a rollout of `rollout_steps` steps with the states fed back."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    module = component.module.eval()
    per_batch = {}
    for b in batches:
        inputs = tuple(torch.rand(b, *t.shape[1:], generator=gen) * (t.abs().max() + 1e-3) for t in component.inputs)
        per_batch[b] = _max_error(session, module, component, inputs)
    rollout = None
    if component.state_pairs:
        b = 7
        inputs = [torch.rand(b, *t.shape[1:], generator=gen) * 2 for t in component.inputs]
        states_at = [component.input_names.index(n) for n in component.state_pairs]
        for n in states_at:
            inputs[n] = torch.zeros_like(inputs[n])
        out_at = [component.output_names.index(o) for o in component.state_pairs.values()]
        torch_inputs, ort_inputs = list(inputs), [t.numpy() for t in inputs]
        rollout = 0.0
        for _ in range(rollout_steps):
            with torch.no_grad():
                t_out = [o.numpy() for o in _as_tuple(module(*torch_inputs))]
            o_out = session.run(None, dict(zip(component.input_names, ort_inputs, strict=True)))
            rollout = max(rollout, *(float(np.abs(a - c).max()) for a, c in zip(t_out, o_out, strict=True)))
            for n, o in zip(states_at, out_at, strict=True):
                torch_inputs[n] = torch.from_numpy(t_out[o])
                ort_inputs[n] = o_out[o]
    return Parity(per_batch, rollout)


def _as_tuple(out) -> tuple[Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def _max_error(session, module: nn.Module, component: Component, inputs: tuple[Tensor, ...]) -> float:
    with torch.no_grad():
        expected = [o.numpy() for o in _as_tuple(module(*inputs))]
    got = session.run(None, {n: t.numpy() for n, t in zip(component.input_names, inputs, strict=True)})
    return max(float(np.abs(a - b).max()) for a, b in zip(expected, got, strict=True))


def quantize_int8(model: onnx.ModelProto, component: Component, path: Path, batches: int = 16) -> onnx.ModelProto:
    """INT8 QDQ (QuantizeLinear/DequantizeLinear around every MatMul/Gemm/Conv: the explicit form
    TensorRT 11 and the Jetson DLAs take), per-channel weights, activations calibrated (min–max) on the
    component's inputs on `CALIBRATION` frames of the simulated sensors, in `batches` batches; written
    to `path`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    inputs = [t.numpy() for t in component.representative(CALIBRATION["frames"], CALIBRATION["seed"])]
    feeds = [
        {n: part for n, part in zip(component.input_names, parts, strict=True)}
        for parts in zip(*(np.array_split(t, batches) for t in inputs), strict=True)
    ]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict | None:
            return next(self.items, None)

    source = path.with_suffix(".fp32-source.onnx")
    onnx.save(model, source)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process shape inference: the graphs are small and static
    try:
        quantize_static(source, path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)  # fmt: skip
    finally:
        root.setLevel(level)
        source.unlink()
    return onnx.load(path)


def int8_error(quantized: onnx.ModelProto, component: Component) -> dict[str, float | None]:
    """The INT8 graph against torch FP32 on the component's inputs on `INT8_CHECK` frames (not those it
    was calibrated on): the RMS difference, the spread of the FP32 outputs (the RMS over output values of
    their standard deviation over frames), their ratio (None for a constant output) and the largest
    difference."""
    import onnxruntime as ort

    inputs = component.representative(INT8_CHECK["frames"], INT8_CHECK["seed"])
    with torch.no_grad():
        expected = np.concatenate([o.numpy().reshape(len(o), -1) for o in _as_tuple(component.module(*inputs))], 1)
    session = ort.InferenceSession(quantized.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: t.numpy() for n, t in zip(component.input_names, inputs, strict=True)})
    got = np.concatenate([o.reshape(len(o), -1) for o in got], 1)
    rms = float(np.sqrt(np.mean((got - expected) ** 2)))
    spread = float(np.sqrt(np.mean(expected.var(axis=0))))
    return {"rms_error": rms, "output_spread": spread, "error_vs_spread": rms / spread if spread else None,
            "max_abs_error": float(np.abs(got - expected).max())}  # fmt: skip


def export_model(model_dir: Path, target: Target, folder: Path) -> dict[str, dict]:
    """Export every component for `target` into `folder` (<component>.onnx) with its parity, and, for
    targets that run INT8, a QDQ version of every stateless one (<component>.int8.onnx: spiking steps
    keep FP32 membranes) with its `int8_error`; the report."""
    report = {}
    for component in load_components(model_dir):
        model = export_onnx(component, target)
        path = folder / f"{component.name}.onnx"
        onnx.save(model, path)
        p = parity(model, component)
        int8 = None
        if "int8" in target.precisions and component.representative is not None:
            quantized = quantize_int8(model, component, folder / f"{component.name}.int8.onnx")
            check(quantized, target, component)
            int8 = {"file": f"{component.name}.int8.onnx", "calibration": CALIBRATION, "check": INT8_CHECK,
                    **int8_error(quantized, component)}  # fmt: skip
        report[component.name] = {
            "file": path.name, "bytes": path.stat().st_size, "opset": target.opset, "ir_version": model.ir_version,
            "operators": sorted({n.op_type for n in model.graph.node}),
            "max_abs_error": {str(b): e for b, e in p.per_batch.items()}, "rollout_max_abs_error": p.rollout,
            "state_pairs": component.state_pairs, "int8": int8,
        }  # fmt: skip
    return report
