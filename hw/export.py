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
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from cavlab.errors import UserError
from cavlab.hw.targets import Target
from cavlab.perception.fusion import BRANCHES, FEATURES, DeepGate
from cavlab.perception.spiking import lif_step
from cavlab.perception.spiking_branch import SpikingHead
from cavlab.perception.training import load_checkpoint


@dataclass
class Component:
    """A module to export with example inputs, names and state pairs (input → output)."""

    name: str
    module: nn.Module
    inputs: tuple[Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    state_pairs: dict[str, str] = field(default_factory=dict)


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
    """The exportable components of a trained perception model."""
    model, gate, ckpt = load_checkpoint(model_dir)
    shapes = ckpt["shapes"]
    batch = 3
    gen = torch.Generator().manual_seed(0)  # example inputs: their ranges set the INT8 calibration's
    frames = {m: torch.rand(batch, *shapes[m], generator=gen) for m in ("camera", "lidar", "radar")}
    components = [
        Component(f"stem.{m}", model.stems[m], (frames[m],), [m], ["features"]) for m in ("camera", "lidar", "radar")
    ]
    for branch, mods in BRANCHES.items():
        x = torch.rand(batch, FEATURES * len(mods), generator=gen)
        components.append(Component(f"head.{branch}", model.heads[branch], (x,), ["features"], ["slots"]))
    radar = torch.rand(batch, FEATURES, generator=gen)
    components.append(Component("gate", GateGraph(gate), (radar, frames["camera"], frames["lidar"]),
                                ["radar_features", "camera", "lidar"], ["predicted_losses"]))  # fmt: skip
    if "spiking" in ckpt:
        mods = BRANCHES[ckpt["spiking"]["branch"]]
        head = SpikingHead(len(mods))
        head.load_state_dict(ckpt["spiking"]["state"])
        head.eval()
        hidden = head.w1.out_features
        z_example = torch.rand(batch, FEATURES * len(mods), generator=gen)
        components.append(Component("spiking.input", SpikingInput(head), (z_example,), ["features"], ["z"]))
        step_inputs = tuple(torch.rand(batch, hidden, generator=gen) * s for s in (2.0, 1.0, 1.0))
        components.append(Component("spiking.step", SpikingStep(head), step_inputs, ["z", "lif1.v_in", "lif2.v_in"],
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


def quantize_int8(model: onnx.ModelProto, component: Component, path: Path, batches: int = 16,
                  seed: int = 0) -> onnx.ModelProto:  # fmt: skip
    """INT8 QDQ (QuantizeLinear/DequantizeLinear around every MatMul/Gemm/Conv: the explicit form
    TensorRT 11 and the Jetson DLAs take), per-channel weights, activations calibrated (min–max)
    on `batches` batches of random inputs in the range of the component's examples; written to `path`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    gen = torch.Generator().manual_seed(seed)
    feeds = [
        {n: (torch.rand(32, *t.shape[1:], generator=gen) * (t.abs().max() + 1e-3)).numpy()
         for n, t in zip(component.input_names, component.inputs, strict=True)}
        for _ in range(batches)
    ]  # fmt: skip

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


def export_model(model_dir: Path, target: Target, folder: Path) -> dict[str, dict]:
    """Export every component for `target` into `folder` (<component>.onnx) with its parity, and, for
    targets that run INT8, a QDQ version of every stateless one (<component>.int8.onnx: spiking steps
    keep FP32 membranes); the report."""
    report = {}
    for component in load_components(model_dir):
        model = export_onnx(component, target)
        path = folder / f"{component.name}.onnx"
        onnx.save(model, path)
        p = parity(model, component)
        int8 = None
        if "int8" in target.precisions and not component.state_pairs:
            quantized = quantize_int8(model, component, folder / f"{component.name}.int8.onnx")
            check(quantized, target, component)
            int8 = {"file": f"{component.name}.int8.onnx", "max_abs_error": parity(quantized, component).per_batch,
                    "output_scale": _output_scale(component)}  # fmt: skip
        report[component.name] = {
            "file": path.name, "bytes": path.stat().st_size, "opset": target.opset, "ir_version": model.ir_version,
            "operators": sorted({n.op_type for n in model.graph.node}),
            "max_abs_error": {str(b): e for b, e in p.per_batch.items()}, "rollout_max_abs_error": p.rollout,
            "state_pairs": component.state_pairs, "int8": int8,
        }  # fmt: skip
    return report


def _output_scale(component: Component) -> float:
    """The largest |output| on the example inputs: the scale INT8 errors compare with."""
    with torch.no_grad():
        return max(float(o.abs().max()) for o in _as_tuple(component.module.eval()(*component.inputs)))
