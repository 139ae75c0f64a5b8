"""The FPGA flavour of the perception components (hls4ml) and its check by C simulation.

`fpga_onnx` exports a module at batch 1 (the TorchScript exporter, opset 13) and prepares the graph
for hls4ml's QONNX front end: qonnx cleanup, channels-last, Gemm → MatMul. hls4ml has no comparison
operator, so every spike `Cast(Greater(v, ϑ))` becomes

    s = Quant(v − ϑ + 1 − 2^-F),   Quant: scale 1, zero point 0, 1 bit, unsigned, FLOOR,

which is 1[v > ϑ] exactly when v − ϑ lies on the grid of F fractional bits (`Quant` is the QONNX
operator, domain `qonnx.custom_op.general`; ONNX Runtime cannot run this flavour). The data
precision must then have at least F fractional bits: `fixed<24,8>` for F = 16.

`hls_model` converts with `hls4ml.converters.convert_from_onnx_model` and compiles the C simulation
(g++ only; synthesis needs Vitis HLS). `predict` runs it with the outputs in the ONNX graph's order,
`csim_parity` compares it with torch.

What converts (hls4ml 1.3.0): the branch heads and the deep gate's network (MLPs), the grid stems
(Conv, Relu, MaxPool, Flatten, MatMul; the input stays NCHW, qonnx inserts the Transpose) and the
spiking head's step. The radar stem does not: it needs Slice (x[..., :1]) and ReduceMax (the max
over the returns), which hls4ml's ONNX front end lacks.

Sizing for synthesis: with the Latency strategy a dense layer takes n_in·n_out multipliers; a
512 × 512 layer on the XCZU7EV (1728 DSP) needs strategy "Resource" with reuse_factor ≥ 152.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import Tensor, nn

from cavlab.errors import UserError
from cavlab.hw.export import load_components
from cavlab.hw.targets import get_target
from cavlab.perception.spiking import LIF, lif_step

if TYPE_CHECKING:
    from hls4ml.model import ModelGraph

QONNX_DOMAIN = "qonnx.custom_op.general"
OPSET = 13
SPIKE_BITS_KEY = "cavlab.spike_fraction_bits"
PART = "xczu7ev-ffvc1156-2-e"  # ZCU104
TARGET = "zynq-zcu104"  # its profile gives the hints for rejected operators
HLS4ML_SKIPS = ("Dropout", "Identity")  # hls4ml's ONNX parser drops these


class LIFStep(nn.Module):
    """A linear layer and one LIF step: (x, v) → (s, v_new) with v' = β·v + W·x (see `lif_step`)."""

    def __init__(self, linear: nn.Linear, lif: LIF) -> None:
        super().__init__()
        self.linear, self.lif = linear, lif

    def forward(self, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return lif_step(self.linear(x), v, self.lif.beta, self.lif.theta)


def fpga_onnx(
    module: nn.Module, example_inputs: Tensor | tuple[Tensor, ...], spike_fraction_bits: int = 16
) -> onnx.ModelProto:
    """`module` as ONNX for hls4ml: batch 1, spikes in the 1-bit Quant form with F =
    `spike_fraction_bits` (recorded in the metadata), cleaned, channels-last, MatMul for Gemm.
    Inputs and outputs keep the order of `module.forward`'s arguments and results."""
    _require("qonnx")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.channels_last import ConvertToChannelsLastAndClean
    from qonnx.transformation.gemm_to_matmul import GemmToMatMul
    from qonnx.util.cleanup import cleanup_model

    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module.eval(), tuple(t[:1] for t in inputs), buffer, dynamo=False, opset_version=OPSET)
    model = onnx.load_from_string(buffer.getvalue())
    if _spikes_to_quant(model.graph, spike_fraction_bits):
        model.opset_import.append(helper.make_opsetid(QONNX_DOMAIN, 1))
        helper.set_model_props(model, {SPIKE_BITS_KEY: str(spike_fraction_bits)})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The GemmToMatMul transformation only offers", UserWarning)
        wrapper = cleanup_model(ModelWrapper(model))
        wrapper = wrapper.transform(ConvertToChannelsLastAndClean()).transform(GemmToMatMul())
        model = cleanup_model(wrapper).model
    check_operators(model)
    return model


def _spikes_to_quant(graph: onnx.GraphProto, fraction_bits: int) -> int:
    """Rewrite every `Cast(Greater(a, b))` to float as Quant(a − b + 1 − 2^-F), in place; how many."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    spikes: dict[str, str] = {}  # output of a Cast replaced → output of its Quant
    nodes, count = [], 0
    for node in graph.node:
        if node.op_type == "Cast" and node.output[0] in spikes:
            nodes.append(helper.make_node("Identity", [spikes[node.output[0]]], list(node.output), name=node.name))
            continue
        users = consumers.get(node.output[0], [])
        if node.op_type != "Greater" or not users or not all(_is_float_cast(u) for u in users):
            nodes.append(node)
            continue
        p = f"spike{count}"
        count += 1
        graph.initializer.extend(
            numpy_helper.from_array(np.array(value, np.float32), f"{p}_{name}")
            for name, value in (("offset", 1 - 2.0**-fraction_bits), ("scale", 1.0), ("zeropt", 0.0), ("bits", 1.0))
        )
        nodes += [
            helper.make_node("Sub", list(node.input), [f"{p}_diff"], name=f"{p}_sub"),
            helper.make_node("Add", [f"{p}_diff", f"{p}_offset"], [f"{p}_shifted"], name=f"{p}_add"),
            helper.make_node("Quant", [f"{p}_shifted", f"{p}_scale", f"{p}_zeropt", f"{p}_bits"], [f"{p}_s"],
                             name=f"{p}_quant", domain=QONNX_DOMAIN, signed=0, narrow=0, rounding_mode="FLOOR"),
        ]  # fmt: skip
        spikes.update(dict.fromkeys((u.output[0] for u in users), f"{p}_s"))
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def _is_float_cast(node: onnx.NodeProto) -> bool:
    return node.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in node.attribute)


def check_operators(model: onnx.ModelProto) -> None:
    """A `UserError` naming the operators hls4ml's ONNX front end cannot convert, or a Quant
    rounding mode it lacks (it takes ROUND and FLOOR)."""
    hls4ml = _require("hls4ml")
    supported = {*hls4ml.converters.get_supported_onnx_layers(), *HLS4ML_SKIPS}
    rejected = sorted({node.op_type for node in model.graph.node} - supported)
    if rejected:
        hints = get_target(TARGET).not_supported
        why = "; ".join(f"{op}: {hints.get(op, 'no hls4ml ONNX handler')}" for op in rejected)
        raise UserError(f"hls4ml {hls4ml.__version__} cannot convert operator {', '.join(rejected)} ({why})")
    for node in model.graph.node:
        rounding = next((a.s.decode() for a in node.attribute if a.name == "rounding_mode"), "ROUND")
        if node.op_type in ("Quant", "IntQuant") and rounding not in ("ROUND", "FLOOR"):
            raise UserError(f"hls4ml cannot convert operator {node.op_type} with rounding_mode {rounding} "
                            f"(node {node.name}): only ROUND and FLOOR")  # fmt: skip


def hls_model(
    onnx_model: onnx.ModelProto, output_dir: Path, precision: str = "fixed<16,6,RND,SAT>", reuse_factor: int = 1,
    strategy: str = "Latency", part: str = PART, clock_period_ns: float = 5.0, backend: str = "Vitis",
    io_type: str = "io_parallel",
) -> ModelGraph:  # fmt: skip
    """The hls4ml model of a `fpga_onnx` graph, its C simulation compiled (g++) in `output_dir`.

    `precision` is every layer's default (weights, biases, results; accumulators are sized by
    hls4ml): `fixed<W,I,RND,SAT>` rounds to nearest and saturates; the plain `fixed<W,I>` truncates,
    which biases every weight by −½ LSB (errors of 0.05–0.08 instead of 0.003 on a 512-wide head at
    W=16, I=6).
    A graph with spikes needs at least the fractional bits it was exported with (`fixed<24,8>`
    for 16). Run it with `predict`."""
    hls4ml = _require("hls4ml")
    check_operators(onnx_model)
    props = {p.key: p.value for p in onnx_model.metadata_props}
    if SPIKE_BITS_KEY in props and _fraction_bits(precision) < int(props[SPIKE_BITS_KEY]):
        raise UserError(f"precision {precision} has {_fraction_bits(precision)} fractional bits; the spikes of this "
                        f"graph need {props[SPIKE_BITS_KEY]} (e.g. fixed<24,8,RND,SAT>)")  # fmt: skip
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # hls4ml prints every layer
        config = hls4ml.utils.config.config_from_onnx_model(
            onnx_model, granularity="name", backend=backend, default_precision=precision,
            default_reuse_factor=reuse_factor,
        )  # fmt: skip
        config["Model"]["Strategy"] = strategy
        model = hls4ml.converters.convert_from_onnx_model(
            onnx_model, output_dir=str(output_dir), hls_config=config, backend=backend, part=part,
            clock_period=clock_period_ns, io_type=io_type,
        )  # fmt: skip
        try:
            model.compile()
        except Exception as exc:  # hls4ml raises a bare Exception and prints the g++ log
            raise RuntimeError(f"the C simulation of {output_dir} did not compile:\n{log.getvalue()[-4000:]}") from exc
    return model


def _fraction_bits(precision: str) -> int:
    """W − I of fixed<W,I,...> / ufixed<W,I,...>; 0 for int<N> / uint<N>."""
    match = re.fullmatch(r"\s*u?fixed<\s*(\d+)\s*,\s*(-?\d+)[^>]*>\s*", precision)
    if match:
        return int(match[1]) - int(match[2])
    if re.fullmatch(r"\s*u?int<\s*\d+\s*>\s*", precision):
        return 0
    raise UserError(f"precision {precision!r} is not fixed<W,I[,rounding,saturation]> or int<N>")


def predict(model: ModelGraph, inputs: Sequence[np.ndarray | Tensor]) -> list[np.ndarray]:
    """C simulation of `inputs` (batch first, in the graph's input order); the outputs in the ONNX
    graph's order, each (batch, features) flattened. hls4ml orders its outputs by the node that
    computes them; this puts them back."""
    graph = model.config.config["OnnxModel"].graph
    xs = [np.ascontiguousarray(np.asarray(x, dtype=np.float32)) for x in inputs]
    out = model.predict(xs[0] if len(xs) == 1 else xs)
    out = [np.asarray(o).reshape(len(xs[0]), -1) for o in (out if isinstance(out, list) else [out])]
    producer = {name: k for k, node in enumerate(graph.node) for name in node.output}
    order = sorted(range(len(graph.output)), key=lambda j: producer[graph.output[j].name])
    names = {o.name for o in graph.output}
    result: list[np.ndarray] = [np.empty(0)] * len(order)
    for k, j in enumerate(order):
        if model.outputs[k] in names and model.outputs[k] != graph.output[j].name:
            raise RuntimeError(f"hls4ml output {model.outputs[k]} is not ONNX output {graph.output[j].name}")
        result[j] = out[k]
    return result


def csim_parity(module: nn.Module, model: ModelGraph, inputs: Sequence[Tensor]) -> float:
    """Largest |C simulation − torch| over all outputs of `module` on `inputs` (batch first)."""
    with torch.no_grad():
        expected = module.eval()(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = predict(model, inputs)
    return max(float(np.abs(g - e.reshape(len(g), -1).numpy()).max()) for g, e in zip(got, expected, strict=True))


def _require(name: str):
    """The optional module `name` (hls4ml, qonnx), or a `UserError` saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(f"the FPGA flavour needs {name}: pip install 'cavlab[fpga]'") from None


def export_fpga(
    model_dir: Path, folder: Path, only: Sequence[str] | None = None, batch: int = 16,
    precision: str = "fixed<24,10,RND,SAT>", spiking_precision: str = "fixed<24,8,RND,SAT>",
) -> dict[str, dict]:  # fmt: skip
    """Every FPGA-able component of a perception model as QONNX (<name>.qonnx.onnx) and a compiled
    hls4ml project (<name>.hls/, ready for synthesis), with the C simulation's largest error against
    torch on `batch` random inputs; the radar stem stays on the host (Slice and ReduceMax). The gate
    goes without its frame statistics (computed on the host). `only` restricts the components.

    The default `precision` keeps 10 integer bits: trained heads output logits up to ~40, which
    fixed<16,6> saturates at 32 (errors 0.07 against 0.004 at fixed<24,10>)."""
    report: dict[str, dict] = {}
    gen = torch.Generator().manual_seed(0)
    for component in load_components(model_dir):
        if only is not None and component.name not in only:
            continue
        module, inputs = component.module, component.inputs
        if component.name == "gate":
            module = module.gate.net
            inputs = (torch.rand(batch, module[0].in_features, generator=gen),)
        inputs = tuple(torch.rand(batch, *t.shape[1:], generator=gen) * (t.abs().max() + 1e-3) for t in inputs)
        spiking = component.name == "spiking.step"
        try:
            qonnx_model = fpga_onnx(module, inputs)
        except UserError as exc:
            report[component.name] = {"runs_on": "host", "reason": str(exc)}
            continue
        path = folder / f"{component.name}.qonnx.onnx"
        onnx.save(qonnx_model, path)
        chosen = spiking_precision if spiking else precision
        hls = hls_model(qonnx_model, folder / f"{component.name}.hls", precision=chosen)
        report[component.name] = {
            "runs_on": "fpga", "file": path.name, "project": f"{component.name}.hls", "precision": chosen,
            "operators": sorted({n.op_type for n in qonnx_model.graph.node}),
            "csim_max_abs_error": csim_parity(module, hls, inputs),
        }  # fmt: skip
    return report
