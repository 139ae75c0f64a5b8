"""TensorRT engines from the exported graphs, where TensorRT and a CUDA GPU exist (a Jetson, a
workstation); elsewhere `available()` is False and nothing here runs but `tensorrt_script`.

`cavlab export` writes, for a TensorRT target, `tensorrt.sh` (`tensorrt_script`): per component a
trtexec build of an FP32, an FP16 and (stateless components) an INT8 engine from the calibration
cache, each with an optimization profile over the batch axis (building without one is the most
common TensorRT mistake with dynamic shapes) and its per-layer timing exported, on the AGX Orin's
DLA core 0 too, then Polygraphy's comparison of the FP32 and FP16 engines with ONNX Runtime.
`build_engine` does the same builds from Python; `TrtEngine` runs one and times its layers;
`run_spiking` carries the spiking step's membranes across frames per vehicle (a `StateTable`).

TensorRT 10 (JetPack 6.x): FP16 is the builder's flag on the FP32 graph, INT8 the implicit
(calibrated) mode reading the cache; TensorRT 11 removed both (precision then comes from the graph:
the `<component>.int8.onnx` QDQ export, or a strongly typed FP16 graph) and `build_engine` says so.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cavlab.errors import UserError
from cavlab.hw.targets import Target

if TYPE_CHECKING:
    import torch

    from cavlab.perception.inference import StateTable

BATCH = (1, 32, 256)  # the optimization profile over the batch axis: min, opt, max
PRECISIONS = ("fp32", "fp16", "int8")


def available() -> bool:
    """Whether TensorRT is importable and a CUDA GPU is present."""
    try:
        import tensorrt  # noqa: F401
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _dims(shape: list[int], batch: int, sep: str = "x") -> str:
    return sep.join(str(d) for d in (batch, *shape))


def trtexec_command(name: str, entry: dict[str, Any], precision: str, batch: tuple[int, int, int] = BATCH,
                    dla_core: int | None = None) -> list[str]:  # fmt: skip
    """The trtexec arguments building `name`'s engine at `precision` (INT8 from its calibration cache), with
    the batch profile and the per-layer profile and layer information exported next to the engine."""
    stem = f"{name}.{precision}" + ("" if dla_core is None else f".dla{dla_core}")
    shapes = {k: ",".join(f"{i}:{_dims(s, b)}" for i, s in entry["inputs"].items())
              for k, b in zip(("min", "opt", "max"), batch, strict=True)}  # fmt: skip
    args = ["trtexec", f"--onnx={entry['file']}", f"--saveEngine={stem}.plan",
            *(f"--{k}Shapes={v}" for k, v in shapes.items())]  # fmt: skip
    if precision == "fp16":
        args.append("--fp16")
    elif precision == "int8":
        args += ["--int8", f"--calib={entry['int8']['cache']}"]
        if entry["int8"]["fp32_layers"]:  # the regressions stay FP32, as in the QDQ graph
            args += ["--precisionConstraints=obey",
                     "--layerPrecisions=" + ",".join(f"{n}:fp32" for n in entry["int8"]["fp32_layers"])]  # fmt: skip
    if dla_core is not None:
        args += [f"--useDLACore={dla_core}", "--allowGPUFallback"]
    args += ["--profilingVerbosity=detailed", "--separateProfileRun", "--dumpProfile",
             f"--exportProfile={stem}.profile.json", f"--exportLayerInfo={stem}.layers.json"]  # fmt: skip
    return args


def polygraphy_command(name: str, entry: dict[str, Any], precision: str, batch: tuple[int, int, int] = BATCH
                       ) -> list[str]:  # fmt: skip
    """Polygraphy's comparison of the TensorRT engine (FP32 or FP16) with ONNX Runtime on random inputs."""
    args = ["polygraphy", "run", entry["file"], "--trt", "--onnxrt"]
    for k, b in zip(("min", "opt", "max"), batch, strict=True):
        args += [f"--trt-{k}-shapes", *(f"{i}:[{_dims(s, b, ',')}]" for i, s in entry["inputs"].items())]
    args += ["--input-shapes", *(f"{i}:[{_dims(s, batch[1], ',')}]" for i, s in entry["inputs"].items())]
    if precision == "fp16":
        args.append("--fp16")
    tolerance = "1e-2" if precision == "fp16" else "1e-4"
    return [*args, "--atol", tolerance, "--rtol", tolerance]


def tensorrt_script(report: dict[str, dict[str, Any]], target: Target, batch: tuple[int, int, int] = BATCH) -> str:
    """`tensorrt.sh` for an export's components (see the module docstring); run it in the export folder."""
    lines = ["#!/bin/sh", f"# TensorRT engines for {target.name} (TensorRT {target.runtime_version}), written by "
             "`cavlab export`; run on the device", "# from the export folder. Batch profile min/opt/max = "
             f"{'/'.join(map(str, batch))}.", "set -eu", 'cd "$(dirname "$0")"']  # fmt: skip
    dla = target.dla["count"] if target.dla else 0
    for name, entry in report.items():
        lines.append(f"\n# {name}")
        for precision in PRECISIONS:
            if precision == "int8" and (entry["int8"] is None or entry["int8"]["cache"] is None):
                continue  # the spiking step keeps FP32 membranes
            lines.append(shlex.join(trtexec_command(name, entry, precision, batch)))
            if dla and precision in target.dla["precisions"]:
                lines.append(shlex.join(trtexec_command(name, entry, precision, batch, dla_core=0)))
        for precision in ("fp32", "fp16"):
            lines.append(shlex.join(polygraphy_command(name, entry, precision, batch)))
    return "\n".join(lines) + "\n"


def build_engine(onnx_path: Path, batch: tuple[int, int, int] = BATCH, precision: str = "fp32",
                 calibration_cache: Path | None = None, fp32_layers: tuple[str, ...] = (),
                 dla_core: int | None = None) -> bytes:  # fmt: skip
    """A serialized engine for `onnx_path`, batch axis profiled as (min, opt, max), at `precision` (INT8:
    implicit, from `calibration_cache`, the layers of the ONNX nodes `fp32_layers` kept FP32), optionally
    on a DLA core (GPU fallback allowed); layer information kept (detailed profiling verbosity)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"{onnx_path}: TensorRT cannot parse it ({errors})")
    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        profile.set_shape(tensor.name, (batch[0], *rest), (batch[1], *rest), (batch[2], *rest))
    config.add_optimization_profile(profile)
    if precision in ("fp16", "int8") and not hasattr(trt.BuilderFlag, "FP16"):
        raise UserError(f"TensorRT {trt.__version__} has no FP16/INT8 builder flags (removed in 11): build the "
                        "<component>.int8.onnx QDQ graph instead")  # fmt: skip
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        if calibration_cache is None:
            raise UserError(f"{onnx_path}: INT8 needs its calibration cache (<component>.int8.cache)")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _cache_calibrator(trt, Path(calibration_cache).read_bytes())
        config.set_calibration_profile(profile)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.name.startswith(tuple(fp32_layers)):  # the parser names layers after their ONNX nodes
                layer.precision = trt.float32
                layer.set_output_type(0, trt.float32)
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise UserError(f"{onnx_path}: TensorRT could not build an engine (see its log above)")
    return bytes(engine)


def _cache_calibrator(trt: Any, cache: bytes) -> Any:
    """A calibrator that only reads the cache (no batches: the ranges come from `cavlab export`)."""

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> None:
            return None

        def read_calibration_cache(self) -> bytes:
            return cache

        def write_calibration_cache(self, data: bytes) -> None:
            return None

    return CacheCalibrator()


class TrtEngine:
    """A deserialized engine and its execution context, run on CUDA tensors."""

    def __init__(self, engine: bytes) -> None:
        import tensorrt as trt

        self.trt = trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine)
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One run on CUDA tensors (contiguous FP32); the outputs by name (CUDA tensors)."""
        import torch

        for name in self.inputs:
            self.context.set_input_shape(name, tuple(inputs[name].shape))
            self.context.set_tensor_address(name, inputs[name].data_ptr())
        outputs = {}
        for name in self.outputs:
            outputs[name] = torch.empty(tuple(self.context.get_tensor_shape(name)), device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.Stream()
        self.context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return outputs

    def layer_times(self, inputs: dict[str, torch.Tensor], runs: int = 100) -> dict[str, float]:
        """Mean time per layer [s] over `runs` runs (TensorRT's profiler; layer names as the engine fused them)."""
        trt = self.trt
        totals: dict[str, float] = {}

        class Profiler(trt.IProfiler):
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                totals[layer_name] = totals.get(layer_name, 0.0) + ms * 1e-3

        self.context.profiler = Profiler()
        try:
            for _ in range(runs):
                self.run(inputs)
        finally:
            self.context.profiler = None
        return {name: t / runs for name, t in totals.items()}


def run_engine(engine: bytes, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run a serialized engine once on CUDA tensors; the outputs by name (CUDA tensors)."""
    return TrtEngine(engine).run(inputs)


def run_spiking(spiking_input: TrtEngine, step: TrtEngine, features: torch.Tensor, ids: list[str],
                table: StateTable, pairs: dict[str, str], active_steps: int) -> torch.Tensor:  # fmt: skip
    """The spiking branch's readout for one frame of the vehicles `ids`: z = W₁·f once, then `active_steps`
    runs of the step engine with the membranes (`pairs`: state input → output, the graph's `state_pairs`)
    fed back, starting from each vehicle's rows of `table` and stored back into it (new vehicles start at
    zero; vehicles not in `ids` are dropped); the mean of the step outputs."""
    z = spiking_input.run({"features": features.contiguous()})["z"]
    states = {name: rows.to(z.device).contiguous() for name, rows in table.gather(ids).items()}
    y = 0
    for _ in range(active_steps):
        out = step.run({"z": z, **states})
        y = y + out["y"]
        states = {state_in: out[state_out] for state_in, state_out in pairs.items()}
    table.scatter(ids, {name: rows.cpu() for name, rows in states.items()})
    return y / max(active_steps, 1)
