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

INT8 versions of the stateless graphs but those of `FP32_COMPONENTS` (`quantize_int8`: QDQ, symmetric
INT8 as TensorRT takes it, per-channel weights, min–max activation ranges, the regression outputs'
layers FP32) are calibrated on real frames of a perception dataset (`int8_frames`: a seeded draw of
`frames_per_context` frames of every context from the training seeds), run through the model up to
the component. For TensorRT targets a calibration cache of the same ranges is written for every
tensor of the FP32 graph (`calibration_cache`), and the engine-build script. The INT8 graphs are then
checked on the dataset's test seed, component by component (`int8_error` on up to `ERROR_FRAMES` of
its frames: RMS difference from FP32 against the spread of the FP32 outputs) and as the task sees it
(`int8_accuracy`: slot accuracy of every configuration and of the deep gate, INT8 against FP32). The
same model, dataset and seed give the same files, byte for byte.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import tempfile
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from cavlab.errors import UserError
from cavlab.hw.targets import Target
from cavlab.perception.dataset import load_dataset
from cavlab.perception.fusion import BRANCHES, CONFIGURATIONS, MODALITIES, DeepGate, Selection, estimates, fuse
from cavlab.perception.sensors import sample_frames
from cavlab.perception.spiking import lif_step
from cavlab.perception.spiking_branch import SpikingHead
from cavlab.perception.task import slot_correct
from cavlab.perception.training import check_shapes, configuration_energies, load_checkpoint, spiking_head, split

FRAMES_PER_CONTEXT = 64  # calibration frames drawn from each context of the dataset, by default
CALIBRATION_BATCHES = 16
ERROR_FRAMES = 4096  # test frames the component errors are measured on (the task accuracy: all of them)
FP32_COMPONENTS = {  # stateless components that get no INT8 graph, and why
    "stem.radar": "its hidden layer needs the sign bit symmetric INT8 (TensorRT's only kind) spends on ReLU "
    "outputs: INT8 cost the radar branch 1.0 point of slot accuracy (asymmetric 0.1); 8·(4·32 + 32·64) MACs",
}
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
REGRESSIONS = ("slots", "predicted_losses")  # graph outputs
RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose")


@dataclass
class Component:
    """A module to export with example inputs, names and state pairs (input → output); `representative(frames)`
    gives its inputs on sensor frames, the model run up to the component (None for the stateful spiking step)."""

    name: str
    module: nn.Module
    inputs: tuple[Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    state_pairs: dict[str, str] = field(default_factory=dict)
    representative: Callable[[dict[str, np.ndarray]], tuple[Tensor, ...]] | None = None


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
    simulated sensors (`sample_frames`, seed 0) run through the model up to each component."""
    model, gate, ckpt = load_checkpoint(model_dir)
    example = sample_frames(ckpt["shapes"], 3, 0)
    computed: dict[tuple[int, str], tuple[dict[str, np.ndarray], Tensor]] = {}  # the heads share their stems

    @torch.no_grad()
    def stem_features(m: str, frames: dict[str, np.ndarray]) -> Tensor:
        key = (id(frames), m)
        if key not in computed or computed[key][0] is not frames:
            computed[key] = frames, model.stems[m](torch.from_numpy(frames[m]))
        return computed[key][1]

    def features(mods: tuple[str, ...], frames: dict[str, np.ndarray]) -> Tensor:
        return torch.cat([stem_features(m, frames) for m in mods], dim=1)

    def stem(m: str) -> Callable[[dict[str, np.ndarray]], tuple[Tensor, ...]]:
        return lambda frames: (torch.from_numpy(frames[m]),)

    def head_of(mods: tuple[str, ...]) -> Callable[[dict[str, np.ndarray]], tuple[Tensor, ...]]:
        return lambda frames: (features(mods, frames),)

    def gate_inputs(frames: dict[str, np.ndarray]) -> tuple[Tensor, ...]:
        return features(("radar",), frames), torch.from_numpy(frames["camera"]), torch.from_numpy(frames["lidar"])

    def component(name: str, module: nn.Module, feed: Callable, inputs: list[str], outputs: list[str]) -> Component:
        return Component(name, module, feed(example), inputs, outputs, representative=feed)

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


@dataclass(frozen=True)
class Int8Frames:
    """Real frames for INT8 (`int8_frames`): `calibration` and `test` hold the sensor frames, `targets` and
    `context` of their rows; `record` says where they came from (for export.json)."""

    calibration: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    contexts: list[str]
    record: dict[str, Any]


def int8_frames(data_dir: Path, shapes: dict[str, list[int]], frames_per_context: int = FRAMES_PER_CONTEXT,
                seed: int = 0) -> Int8Frames:  # fmt: skip
    """From a perception dataset with the model's frame shapes: `frames_per_context` frames of every context
    (all of them where it has fewer), drawn with `seed` from the training seeds, to calibrate on; every frame
    of the test seed (the last one, as `cavlab perception train` splits), to check on."""
    manifest, arrays = load_dataset(data_dir)
    check_shapes(shapes, manifest["shapes"], data_dir)
    train, held_out, test = split(arrays, seed)
    pool = np.sort(np.concatenate([train, held_out]))
    rng = np.random.default_rng(seed)
    picked = []
    for k in range(len(manifest["contexts"])):
        rows = pool[arrays["context"][pool] == k]
        picked.append(np.sort(rng.choice(rows, min(frames_per_context, len(rows)), replace=False)))
    rows = np.concatenate(picked)
    if not len(rows) or not len(test):
        raise UserError(f"{data_dir}: INT8 needs frames in its training seeds and its test seed (the last); "
                        f"it has {len(rows)} and {len(test)}")  # fmt: skip
    keys = (*MODALITIES, "targets", "context")
    record = {"data": str(data_dir), "frames_per_context": frames_per_context, "seed": seed,
              "calibration_frames": len(rows), "calibration_seeds": np.unique(arrays["seed"][pool]).tolist(),
              "test_frames": len(test), "test_seed": int(arrays["seed"][test[0]])}  # fmt: skip
    return Int8Frames({k: arrays[k][rows] for k in keys}, {k: arrays[k][test] for k in keys}, manifest["contexts"],
                      record)  # fmt: skip


def _reader(component: Component, inputs: tuple[Tensor, ...]):
    """ONNX Runtime's calibration reader over `inputs` in `CALIBRATION_BATCHES` batches."""
    from onnxruntime.quantization import CalibrationDataReader

    parts = zip(*(np.array_split(t.numpy(), CALIBRATION_BATCHES) for t in inputs), strict=True)
    feeds = [dict(zip(component.input_names, p, strict=True)) for p in parts]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict | None:
            return next(self.items, None)

    return Reader()


@contextmanager
def _quiet_quantizer():
    """ONNX Runtime's quantizer logs advice to pre-process shape inference: the graphs are small and static."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(model: onnx.ModelProto, component: Component, path: Path, inputs: tuple[Tensor, ...]
                  ) -> onnx.ModelProto:  # fmt: skip
    """INT8 QDQ (QuantizeLinear/DequantizeLinear around every MatMul/Gemm/Conv: the explicit form TensorRT
    and the Jetson DLAs take), symmetric (zero points 0, as TensorRT requires), per-channel weights,
    activations calibrated (min–max) on the component's `inputs`. Only their inputs are quantized (their
    outputs stay FP32 until the next one's input), and the `fp32_layers` stay FP32: INT8 inputs of the
    heads' last layer moved the estimated gaps by 3 m RMS (against 0.6 m for everything else in INT8);
    written to `path`."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory() as tmp, _quiet_quantizer():
        source = Path(tmp) / "fp32.onnx"
        onnx.save(model, source)
        quantize_static(source, path, _reader(component, inputs), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=fp32_layers(model),
                        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                       "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS)})  # fmt: skip
    return onnx.load(path)


def fp32_layers(model: onnx.ModelProto) -> list[str]:
    """The Conv/Gemm/MatMul nodes that write a regression output (`REGRESSIONS`: a head's slots, the gate's
    predicted losses), directly or through reshapes only: they stay FP32."""
    producer = {o: node for node in model.graph.node for o in node.output}
    names = []
    for output in model.graph.output:
        node = producer.get(output.name) if output.name in REGRESSIONS else None
        while node is not None and node.op_type in RESHAPES:
            node = producer.get(node.input[0])
        if node is not None and node.op_type in QUANTIZED_OPS:
            names.append(node.name)
    return names


def tensorrt_version(target: Target) -> int:
    """TensorRT's version number (NV_TENSORRT_VERSION: major·10000 + minor·100 + patch from 10 on) of a target."""
    parts = [int(p) for p in target.runtime_version.split(".")] + [0, 0]
    return parts[0] * 10000 + parts[1] * 100 + parts[2]


def calibration_cache(model: onnx.ModelProto, component: Component, inputs: tuple[Tensor, ...], target: Target
                      ) -> str:  # fmt: skip
    """A TensorRT INT8 calibration cache for the FP32 graph: a header line, then per tensor (the graph's
    inputs and every node output, by its ONNX name, as TensorRT's parser names them) its scale amax/127 as
    a big-endian float32 in hex; amax from min–max over the component's `inputs` (the ranges of
    `quantize_int8`). For implicit INT8 (`trtexec --int8 --calib=`, a builder calibrator that reads it)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    with tempfile.TemporaryDirectory() as tmp, _quiet_quantizer():
        source = Path(tmp) / "fp32.onnx"
        onnx.save(model, source)
        calibrator = create_calibrator(source, None, augmented_model_path=Path(tmp) / "augmented.onnx",
                                       calibrate_method=CalibrationMethod.MinMax)  # fmt: skip
        calibrator.collect_data(_reader(component, inputs))
        ranges = calibrator.compute_data()
    names = [i.name for i in model.graph.input] + [o for n in model.graph.node for o in n.output]
    lines = [f"TRT-{tensorrt_version(target)}-EntropyCalibration2"]
    for name in names:
        if name in ranges:
            low, high = (float(np.asarray(v).max()) for v in (np.abs(ranges[name].range_value[0]),
                                                               np.abs(ranges[name].range_value[1])))  # fmt: skip
            scale = max(low, high, 1e-7) / 127.0
            lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    return "\n".join(lines) + "\n"


def int8_error(quantized: onnx.ModelProto, component: Component, inputs: tuple[Tensor, ...]) -> dict[str, float | None]:
    """The INT8 graph against torch FP32 on the component's `inputs` (test frames, not calibrated on): the
    RMS difference, the spread of the FP32 outputs (the RMS over output values of their standard deviation
    over frames), their ratio (None for a constant output) and the largest difference."""
    import onnxruntime as ort

    with torch.no_grad():
        expected = np.concatenate([o.numpy().reshape(len(o), -1) for o in _as_tuple(component.module(*inputs))], 1)
    session = ort.InferenceSession(quantized.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: t.numpy() for n, t in zip(component.input_names, inputs, strict=True)})
    got = np.concatenate([o.reshape(len(o), -1) for o in got], 1)
    rms = float(np.sqrt(np.mean((got - expected) ** 2)))
    spread = float(np.sqrt(np.mean(expected.var(axis=0))))
    return {"rms_error": rms, "output_spread": spread, "error_vs_spread": rms / spread if spread else None,
            "max_abs_error": float(np.abs(got - expected).max())}  # fmt: skip


def int8_accuracy(model_dir: Path, folder: Path, report: dict[str, dict], frames: Int8Frames, chunk: int = 4096
                  ) -> dict[str, dict[str, dict[str, float]]]:  # fmt: skip
    """Slot accuracy (`task.slot_correct`) on the test frames, per context and over all ("all"), of every
    configuration and of the deep gate, in FP32 (torch) and in INT8 (the `<component>.int8.onnx` graphs of
    `folder` on ONNX Runtime's CPU, the FP32 graph of a component without one: the stems, then the heads;
    the deep gate's choice from the INT8 gate)."""
    import onnxruntime as ort

    model, gate, ckpt = load_checkpoint(model_dir)
    files = {name: r["file"] if r["int8"] is None else r["int8"]["file"] for name, r in report.items()}
    sessions = {name: ort.InferenceSession(str(folder / file), providers=["CPUExecutionProvider"])
                for name, file in files.items()}  # fmt: skip
    selection, energies = Selection(**ckpt["selection"]), configuration_energies(model)
    test = frames.test
    correct: dict[str, dict[str, list[np.ndarray]]] = {"fp32": {}, "int8": {}}
    for start in range(0, len(test["targets"]), chunk):
        part = {k: v[start : start + chunk] for k, v in test.items()}
        x = {m: torch.from_numpy(part[m]) for m in MODALITIES}
        with torch.no_grad():
            fp32 = model(x)
            predicted = {"fp32": gate(model.stems["radar"](x["radar"]), x).numpy()}
        features = {m: sessions[f"stem.{m}"].run(None, {m: part[m]})[0] for m in MODALITIES}
        int8 = {b: torch.from_numpy(sessions[f"head.{b}"].run(None, {"features": np.concatenate(
            [features[m] for m in mods], axis=1)})[0]) for b, mods in BRANCHES.items()}  # fmt: skip
        predicted["int8"] = sessions["gate"].run(None, {"radar_features": features["radar"], "camera": part["camera"],
                                                         "lidar": part["lidar"]})[0]  # fmt: skip
        for precision, outputs in (("fp32", fp32), ("int8", int8)):
            outputs["all branches"] = fuse(list(outputs.values()))
            right = np.stack([slot_correct(estimates(outputs[c]), part["targets"]).mean(axis=1)
                              for c in CONFIGURATIONS], axis=1)  # fmt: skip
            choice = selection.choose(predicted[precision], energies)
            right = np.concatenate([right, right[np.arange(len(choice)), choice][:, None]], axis=1)
            correct[precision].setdefault("rows", []).append(right)
    table = {p: np.concatenate(c["rows"]) for p, c in correct.items()}
    names = [*CONFIGURATIONS, "deep gate"]
    out = {}
    for k, label in enumerate([*frames.contexts, "all"]):
        sel = np.arange(len(test["targets"])) if label == "all" else np.flatnonzero(test["context"] == k)
        if len(sel):
            out[label] = {n: {p: float(table[p][sel, i].mean()) for p in table} for i, n in enumerate(names)}
    return out


def export_model(model_dir: Path, target: Target, folder: Path, frames: Int8Frames | None = None) -> dict[str, Any]:
    """Export every component for `target` into `folder` (<component>.onnx) with its parity; for targets
    that run INT8 and with `frames`, a QDQ version of every stateless one (<component>.int8.onnx: spiking
    steps keep FP32 membranes) with its `int8_error`, for TensorRT targets its calibration cache
    (<component>.int8.cache) and the engine-build script (`tensorrt.sh`), and the task's `int8_accuracy`.
    The report: {"components": per component, "int8": the frames' record and the accuracy, or None}."""
    from cavlab.hw.backends.tensorrt import tensorrt_script

    quantize = frames is not None and "int8" in target.precisions
    if quantize:  # the component errors on every k-th test frame, at most ERROR_FRAMES
        stride = -(-len(frames.test["targets"]) // ERROR_FRAMES)
        error_frames = {k: v[::stride] for k, v in frames.test.items()}
    report = {}
    for component in load_components(model_dir):
        model = export_onnx(component, target)
        path = folder / f"{component.name}.onnx"
        onnx.save(model, path)
        p = parity(model, component)
        int8 = None
        if quantize and component.representative is not None and component.name not in FP32_COMPONENTS:
            calibration = component.representative(frames.calibration)
            quantized = quantize_int8(model, component, folder / f"{component.name}.int8.onnx", calibration)
            check(quantized, target, component)
            cache = None
            if target.runtime == "tensorrt":
                cache = f"{component.name}.int8.cache"
                (folder / cache).write_text(calibration_cache(model, component, calibration, target))
            int8 = {"file": f"{component.name}.int8.onnx", "cache": cache, "fp32_layers": fp32_layers(model),
                    "error_frames": len(error_frames["targets"]),
                    **int8_error(quantized, component, component.representative(error_frames))}  # fmt: skip
        report[component.name] = {
            "file": path.name, "bytes": path.stat().st_size, "opset": target.opset, "ir_version": model.ir_version,
            "operators": sorted({n.op_type for n in model.graph.node}),
            "inputs": {n: list(t.shape[1:]) for n, t in zip(component.input_names, component.inputs, strict=True)},
            "max_abs_error": {str(b): e for b, e in p.per_batch.items()}, "rollout_max_abs_error": p.rollout,
            "state_pairs": component.state_pairs, "int8": int8, "fp32_only": FP32_COMPONENTS.get(component.name),
        }  # fmt: skip
    if target.runtime == "tensorrt":
        (folder / "tensorrt.sh").write_text(tensorrt_script(report, target))
    accuracy = int8_accuracy(model_dir, folder, report, frames) if quantize else None
    return {"components": report,
            "int8": None if accuracy is None else {"frames": frames.record, "accuracy": accuracy}}  # fmt: skip
