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

Sizing for synthesis (`plan_reuse`, `resource_estimate`; analytic, not hls4ml's or Vitis's report): every
project uses the Resource strategy, with a reuse factor R per layer, so that a layer of M = n_in·n_out
multiplications per pixel takes M / R multipliers and about P·R cycles (P output pixels: 1 for a dense
layer). R is chosen from the device's budget (`RESOURCE_SHARE` of its DSPs and BRAM): minimising the
cycles Σ P_l·R_l under Σ d·M_l / R_l ≤ DSP budget gives R_l ∝ √(M_l / P_l), rounded up to a reuse factor
hls4ml accepts, then raised where the weights' BRAM does not fit. d is the DSP48E2 slices per multiply
(27 × 18 bits each: 2 for 24-bit weights and data). The weights are counted in BRAM the way the Resource
strategy stores them (R words of M / R weights: ⌈M·W / (R·36)⌉ BRAM18 per 512 words of depth), in LUTs
(64 bits each) when R < 64 or for the per-neuron scales (β·v). Graphs
with convolutions use io_stream (feature maps through FIFOs and line buffers instead of registers), MLPs
io_parallel. Latency is the sum over layers (no dataflow overlap) at the target's clock.
Without the Resource strategy a 512 × 512 layer would need 262,144 multipliers against 1,728 DSPs.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import Tensor, nn

from cavlab.errors import UserError
from cavlab.hw.export import Component, load_components
from cavlab.hw.targets import get_target
from cavlab.perception.fusion import DeepGate
from cavlab.perception.spiking import LIF, lif_step
from cavlab.perception.spiking_branch import TIME_STEPS

if TYPE_CHECKING:
    from hls4ml.model import ModelGraph

QONNX_DOMAIN = "qonnx.custom_op.general"
OPSET = 13
SPIKE_BITS_KEY = "cavlab.spike_fraction_bits"
PART = "xczu7ev-ffvc1156-2-e"  # ZCU104
TARGET = "zynq-zcu104"  # its profile gives the hints for rejected operators
HLS4ML_SKIPS = ("Dropout", "Identity")  # hls4ml's ONNX parser drops these
RESOURCE_SHARE = 0.8  # of the device's DSPs and BRAM a project plans on: headroom for routing and interfaces
BRAM_DEPTH, BRAM_WIDTH_BITS = 512, 36  # a BRAM18 as 512 × 36 bits
BRAM_MIN_DEPTH = 64  # shallower weight memories (reuse factor below this) go to LUTs, 64 bits per LUT6
DSP_A_BITS, DSP_B_BITS = 27, 18  # a DSP48E2's multiplier


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
    onnx_model: onnx.ModelProto, output_dir: Path, precision: str = "fixed<16,6,RND,SAT>", part: str = PART,
    clock_period_ns: float = 5.0, backend: str = "Vitis", io_type: str | None = None,
    resources: dict[str, int] | None = None, compile_csim: bool = True,
) -> ModelGraph:  # fmt: skip
    """The hls4ml model of a `fpga_onnx` graph, its C simulation compiled (g++) in `output_dir` (unless
    `compile_csim` is false: converted only, enough for `resource_estimate`).

    Resource strategy, reuse factors per layer from `plan_reuse` for `resources` (the ZCU104's by default),
    io_stream for graphs with convolutions and io_parallel otherwise unless `io_type` is given.
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
    if io_type is None:
        io_type = "io_stream" if any(n.op_type == "Conv" for n in onnx_model.graph.node) else "io_parallel"
    resources = resources or get_target(TARGET).resources
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # hls4ml prints every layer
        config = hls4ml.utils.config.config_from_onnx_model(
            onnx_model, granularity="name", backend=backend, default_precision=precision, default_reuse_factor=1,
        )  # fmt: skip
        config["Model"]["Strategy"] = "Resource"

        def convert() -> ModelGraph:
            return hls4ml.converters.convert_from_onnx_model(
                onnx_model, output_dir=str(output_dir), hls_config=config, backend=backend, part=part,
                clock_period=clock_period_ns, io_type=io_type,
            )  # fmt: skip

        # the layers hls4ml builds (fused, renamed) are known only after a conversion: plan on a first one
        for node, reuse in plan_reuse(layer_shapes(convert(), onnx_model), resources, _total_bits(precision)).items():
            config["LayerName"][node]["ReuseFactor"] = reuse
        model = convert()
        if not compile_csim:
            return model
        try:
            model.compile()
        except Exception as exc:  # hls4ml raises a bare Exception and prints the g++ log
            raise RuntimeError(f"the C simulation of {output_dir} did not compile:\n{log.getvalue()[-4000:]}") from exc
    return model


@dataclass(frozen=True)
class LayerShape:
    """A layer that multiplies: M = n_in·n_out multiplications per output pixel, `pixels` of them per frame.
    `node` is the ONNX node whose hls4ml configuration sets the layer's reuse factor."""

    node: str
    kind: str
    n_in: int
    n_out: int
    pixels: int = 1

    @property
    def multiplications(self) -> int:
        return self.n_in * self.n_out


def layer_shapes(model: ModelGraph, onnx_model: onnx.ModelProto) -> list[LayerShape]:
    """The multiplying layers of an hls4ml model: Dense, Conv2D, and ApplyAlpha scales other than 1 (β·v of a
    LIF: n multiplications, taken as n_in = n, n_out = 1)."""
    names = sorted((n.name for n in onnx_model.graph.node), key=len, reverse=True)
    shapes = []
    for layer in model.get_layers():
        node = next((n for n in names if layer.name == n or layer.name.endswith("_" + n)), None)
        kind = layer.class_name
        if node is None and kind in ("Dense", "Conv2D", "ApplyAlpha"):
            raise RuntimeError(f"hls4ml layer {layer.name} ({kind}) matches no ONNX node to set its reuse factor on")
        if kind == "Dense":
            shapes.append(LayerShape(node, kind, int(layer.get_attr("n_in")), int(layer.get_attr("n_out"))))
        elif kind == "Conv2D":
            n_in = layer.get_attr("n_chan") * layer.get_attr("filt_height") * layer.get_attr("filt_width")
            pixels = layer.get_attr("out_height") * layer.get_attr("out_width")
            shapes.append(LayerShape(node, kind, int(n_in), int(layer.get_attr("n_filt")), int(pixels)))
        elif kind == "ApplyAlpha" and not np.all(layer.weights["scale"].data == 1):
            shapes.append(LayerShape(node, kind, int(layer.get_attr("n_in")), 1))
    return shapes


def valid_reuse_factors(n_in: int, n_out: int) -> list[int]:
    """The reuse factors hls4ml accepts for an n_in × n_out layer (`FPGABackend._validate_reuse_factor`):
    the divisors of n_in, and n_in·k for every divisor k of n_out."""
    return sorted({*_divisors(n_in), *(n_in * k for k in _divisors(n_out))})


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def _dsp_per_multiply(bits: int) -> int:
    """DSP48E2 slices for a bits × bits multiply (27 × 18 each)."""
    return math.ceil(bits / DSP_A_BITS) * math.ceil(bits / DSP_B_BITS)


def _layer_cost(shape: LayerShape, reuse: int, bits: int) -> tuple[int, int, int, int]:
    """(DSPs, BRAM18, LUTs holding weights, cycles) of a layer at reuse factor `reuse` (the module docstring's
    model; the LUTs of the logic itself are not counted)."""
    multipliers = math.ceil(shape.multiplications / reuse)
    dsp = multipliers * _dsp_per_multiply(bits)
    bram = luts = 0
    if shape.kind == "ApplyAlpha" or reuse < BRAM_MIN_DEPTH:  # a scale per neuron, or a shallow memory: LUTs
        luts = math.ceil(shape.multiplications * bits / 64)
    else:
        bram = math.ceil(multipliers * bits / BRAM_WIDTH_BITS) * math.ceil(reuse / BRAM_DEPTH)
    cycles = shape.pixels * reuse + math.ceil(math.log2(max(shape.n_in, 2))) + 2  # the adder tree, the pipeline
    return dsp, bram, luts, cycles


def plan_reuse(shapes: Sequence[LayerShape], resources: dict[str, int], bits: int,
               share: float = RESOURCE_SHARE) -> dict[str, int]:  # fmt: skip
    """A reuse factor per layer (by ONNX node) within `share` of the DSPs, BRAM and LUTs of `resources` (the module
    docstring's rule). Where even the largest reuse factors do not fit, it returns them: `resource_estimate`
    then says the project does not fit."""
    if not shapes:
        return {}
    d = _dsp_per_multiply(bits)
    budgets = (share * resources["dsp"], share * 2 * resources["bram_36k"], share * resources["lut"])
    valid = {s.node: valid_reuse_factors(s.n_in, s.n_out) for s in shapes}
    scale = sum(math.sqrt(s.multiplications * s.pixels) for s in shapes) * d / budgets[0]
    reuse = {}
    for s in shapes:
        ideal = math.sqrt(s.multiplications / s.pixels) * scale
        reuse[s.node] = next((r for r in valid[s.node] if r >= ideal), valid[s.node][-1])
    while True:
        costs = {s.node: _layer_cost(s, reuse[s.node], bits) for s in shapes}
        over = [k for k, budget in enumerate(budgets) if sum(c[k] for c in costs.values()) > budget]
        if not over:
            return reuse
        k = over[0]
        # per layer, the next reuse factor that lowers the resource over budget (BRAM is not monotone in R)
        better = {s.node: next((r for r in valid[s.node] if r > reuse[s.node] and _layer_cost(s, r, bits)[k]
                                < costs[s.node][k]), None) for s in shapes}  # fmt: skip
        raisable = [s for s in shapes if better[s.node] is not None]
        if not raisable:
            return reuse
        worst = max(raisable, key=lambda s: costs[s.node][k])
        reuse[worst.node] = better[worst.node]


def module_layer_shapes(module: nn.Module, inputs: Sequence[Tensor]) -> list[LayerShape]:
    """The multiplying layers of a torch module as hls4ml builds them, without hls4ml: every Linear (Dense)
    and Conv2d (Conv2D, its output pixels from a forward pass at batch 1), in call order."""
    shapes: list[LayerShape] = []

    def record(name: str):
        def hook(layer: nn.Module, args: tuple, output: Tensor) -> None:
            if isinstance(layer, nn.Conv2d):
                kh, kw = layer.kernel_size
                n_in = layer.in_channels // layer.groups * kh * kw
                shapes.append(LayerShape(name, "Conv2D", n_in, layer.out_channels, output.shape[-2] * output.shape[-1]))
            else:
                shapes.append(LayerShape(name, "Dense", layer.in_features, layer.out_features))

        return hook

    hooks = [layer.register_forward_hook(record(name)) for name, layer in module.named_modules()
             if isinstance(layer, (nn.Linear, nn.Conv2d))]  # fmt: skip
    try:
        with torch.no_grad():
            module.eval()(*[t[:1] for t in inputs])
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def analytic_latency_s(shapes: Sequence[LayerShape], resources: dict[str, int], bits: int, clock_hz: float) -> float:
    """The latency of `resource_estimate`'s model for layers planned by `plan_reuse` (the multiplying layers
    only: the few cycles of the others are left out)."""
    reuse = plan_reuse(shapes, resources, bits)
    return sum(_layer_cost(s, reuse[s.node], bits)[3] for s in shapes) / clock_hz


def resource_estimate(model: ModelGraph, onnx_model: onnx.ModelProto, precision: str,
                      resources: dict[str, int] | None = None, clock_hz: float = 2.0e8) -> dict:  # fmt: skip
    """Per multiplying layer and in total: reuse factor, multipliers, DSPs, BRAM18 and cycles, analytic (the
    module docstring's model, from the layers hls4ml built and their reuse factors), against the device."""
    resources = resources or get_target(TARGET).resources
    bits = _total_bits(precision)
    rows = []
    for shape in layer_shapes(model, onnx_model):
        reuse = int(model.config.config["HLSConfig"]["LayerName"][shape.node]["ReuseFactor"])
        dsp, bram, luts, cycles = _layer_cost(shape, reuse, bits)
        rows.append({**asdict(shape), "reuse_factor": reuse, "multipliers": math.ceil(shape.multiplications / reuse),
                     "dsp": dsp, "bram_18k": bram, "weight_luts": luts, "cycles": cycles})  # fmt: skip
    other = len(model.get_layers()) - len(rows)  # activations, merges, pooling: a few cycles each
    cycles = sum(r["cycles"] for r in rows) + 2 * other
    total = {k: sum(r[k] for r in rows) for k in ("dsp", "bram_18k", "weight_luts")}
    total |= {"cycles": cycles, "latency_s": cycles / clock_hz}
    device = {"dsp": resources["dsp"], "bram_18k": 2 * resources["bram_36k"], "weight_luts": resources["lut"]}
    return {
        "method": "analytic (cavlab.hw.backends.hls4ml: Resource strategy, M/R multipliers, weights in BRAM or "
                  "LUTs, latency the sum over layers; the logic's own LUTs and FFs not counted); not a synthesis "
                  "report",
        "io_type": model.config.get_config_value("IOType"), "layers": rows, "total": total, "device": device,
        "fits": all(total[k] <= device[k] for k in device),
    }  # fmt: skip


def _total_bits(precision: str) -> int:
    """W of fixed<W,I,...> / ufixed<W,I,...> or N of int<N> / uint<N>."""
    match = re.fullmatch(r"\s*u?(?:fixed<\s*(\d+)\s*,[^>]*|int<\s*(\d+)\s*)>\s*", precision)
    if not match:
        raise UserError(f"precision {precision!r} is not fixed<W,I[,rounding,saturation]> or int<N>")
    return int(match[1] or match[2])


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
    xs = [np.ascontiguousarray(np.asarray(x, dtype=np.float32)) for x in inputs]
    out = model.predict(xs[0] if len(xs) == 1 else xs)
    out = [np.asarray(o).reshape(len(xs[0]), -1) for o in (out if isinstance(out, list) else [out])]
    order = _output_order(model)
    result: list[np.ndarray] = [np.empty(0)] * len(order)
    for k, j in enumerate(order):
        result[j] = out[k]
    return result


def _output_order(model: ModelGraph) -> list[int]:
    """For every hls4ml output k, the index of the ONNX graph output it is."""
    graph = model.config.config["OnnxModel"].graph
    producer = {name: k for k, node in enumerate(graph.node) for name in node.output}
    order = sorted(range(len(graph.output)), key=lambda j: producer[graph.output[j].name])
    names = {o.name for o in graph.output}
    for k, j in enumerate(order):
        if model.outputs[k] in names and model.outputs[k] != graph.output[j].name:
            raise RuntimeError(f"hls4ml output {model.outputs[k]} is not ONNX output {graph.output[j].name}")
    return order


def write_tb_data(model: ModelGraph, module: nn.Module, inputs: Sequence[Tensor]) -> None:
    """The project's testbench data, in hls4ml's format (one line per frame, values separated by spaces):
    tb_data/tb_input_features.dat, the inputs flattened and concatenated in the graph's order, and
    tb_output_predictions.dat, torch's outputs in hls4ml's output order."""
    with torch.no_grad():
        expected = module.eval()(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    folder = Path(model.config.get_output_dir()) / "tb_data"
    folder.mkdir(exist_ok=True)
    for name, arrays in (("tb_input_features.dat", list(inputs)),
                         ("tb_output_predictions.dat", [expected[j] for j in _output_order(model)])):  # fmt: skip
        table = np.concatenate([np.asarray(a, dtype=np.float32).reshape(len(a), -1) for a in arrays], axis=1)
        np.savetxt(folder / name, table, fmt="%.9g", delimiter=" ")


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
    frames: dict[str, np.ndarray] | None = None, final_dir: Path | None = None, seed: int = 0,
) -> dict[str, dict]:  # fmt: skip
    """Every FPGA-able component of a perception model as QONNX (<name>.qonnx.onnx) and a compiled
    hls4ml project (<name>.hls/, ready for synthesis: Resource strategy, reuse factors planned for the
    ZCU104, `resource_estimate` in the report), with the C simulation's largest error against torch on
    `batch` inputs; the radar stem stays on the host (Slice and ReduceMax). The gate goes without its
    frame statistics (computed on the host). `only` restricts the components.

    With `frames` (sensor frames of a perception dataset, e.g. `Int8Frames.test` of `cavlab.hw.export`), the
    inputs are `batch` of them (a draw seeded by `seed`) run through the model up to each component (for the
    spiking step: the membranes of the head's time steps on them), and they are the projects' testbench data
    (tb_data/); without, uniform random inputs in the examples' range. `final_dir` is where `folder` ends up
    (an export writes to a staging folder first): every project's hls4ml_config.yml names it as OutputDir.

    The default `precision` keeps 10 integer bits: trained heads output logits up to ~40, which
    fixed<16,6> saturates at 32 (errors 0.07 against 0.004 at fixed<24,10>)."""
    report: dict[str, dict] = {}
    gen = torch.Generator().manual_seed(seed)
    picked = None
    if frames is not None:
        count = len(frames["radar"])
        rows = np.sort(np.random.default_rng(seed).choice(count, min(batch, count), replace=False))
        picked = {m: frames[m][rows] for m in ("camera", "lidar", "radar")}
    components = {c.name: c for c in load_components(model_dir)}
    for component in components.values():
        if only is not None and component.name not in only:
            continue
        module, inputs = _fpga_inputs(component, components, picked, batch, gen)
        spiking = component.name == "spiking.step"
        try:
            qonnx_model = fpga_onnx(module, inputs)
        except UserError as exc:
            report[component.name] = {"runs_on": "host", "reason": str(exc)}
            continue
        path = folder / f"{component.name}.qonnx.onnx"
        onnx.save(qonnx_model, path)
        chosen = spiking_precision if spiking else precision
        project = folder / f"{component.name}.hls"
        hls = hls_model(qonnx_model, project, precision=chosen)
        write_tb_data(hls, module, inputs)
        if final_dir is not None:
            config = project / "hls4ml_config.yml"
            config.write_text(config.read_text().replace(str(project), str(Path(final_dir) / project.name)))
        report[component.name] = {
            "runs_on": "fpga", "file": path.name, "project": project.name, "precision": chosen,
            "operators": sorted({n.op_type for n in qonnx_model.graph.node}),
            "inputs": "dataset frames" if picked is not None else "uniform random",
            "csim_max_abs_error": csim_parity(module, hls, inputs),
            "resources": resource_estimate(hls, qonnx_model, chosen),
        }  # fmt: skip
    return report


def _fpga_inputs(component: Component, components: dict[str, Component], frames: dict[str, np.ndarray] | None,
                 batch: int, gen: torch.Generator) -> tuple[nn.Module, tuple[Tensor, ...]]:  # fmt: skip
    """The module hls4ml gets for a component and its inputs: from `frames` when given, else random."""
    module, inputs = component.module, component.inputs
    if component.name == "gate":
        module = module.gate.net
    if frames is None:
        like = (torch.zeros(1, module[0].in_features),) if component.name == "gate" else inputs
        return module, tuple(torch.rand(batch, *t.shape[1:], generator=gen) * (t.abs().max() + 1e-3) for t in like)
    with torch.no_grad():
        if component.name == "gate":
            radar_features, camera, lidar = component.representative(frames)
            return module, (torch.cat([radar_features, DeepGate.statistics({"camera": camera, "lidar": lidar})], 1),)
        if component.name != "spiking.step":
            return module, component.representative(frames)
        first = components["spiking.input"]
        z = first.module(*first.representative(frames))
        v1 = v2 = torch.zeros_like(z)
        steps = []
        for _ in range(TIME_STEPS):  # the membranes of one frame's steps from rest
            steps.append((z, v1, v2))
            _, v1, v2 = module(z, v1, v2)
    rows = torch.randperm(len(z) * len(steps), generator=gen)[:batch]
    return module, tuple(torch.cat([step[k] for step in steps])[rows] for k in range(3))
