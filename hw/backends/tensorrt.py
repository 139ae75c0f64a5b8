"""TensorRT engines from the exported graphs, where TensorRT and a CUDA GPU exist (a Jetson, a
workstation); elsewhere `available()` is False and nothing here runs.

TensorRT 10 (JetPack 6.x): an FP32 graph with the builder's FP16 flag; TensorRT 11 removed that
flag (precision then comes from the graph: the INT8 QDQ export, or a strongly typed FP16 graph).
Every input gets an optimization profile over the batch axis — building without one is the
most common TensorRT mistake with dynamic shapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cavlab.errors import UserError

if TYPE_CHECKING:
    import torch


def available() -> bool:
    """Whether TensorRT is importable and a CUDA GPU is present."""
    try:
        import tensorrt  # noqa: F401
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def build_engine(onnx_path: Path, batch: tuple[int, int, int] = (1, 32, 256), fp16: bool = True) -> bytes:
    """A serialized engine for `onnx_path`, batch axis profiled as (min, opt, max)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"{onnx_path}: TensorRT cannot parse it ({errors})")
    config = builder.create_builder_config()
    if fp16 and hasattr(trt.BuilderFlag, "FP16"):  # TensorRT 10; gone in 11 (strong typing)
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        profile.set_shape(tensor.name, (batch[0], *rest), (batch[1], *rest), (batch[2], *rest))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise UserError(f"{onnx_path}: TensorRT could not build an engine (see its log above)")
    return bytes(engine)


def run_engine(engine: bytes, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run a serialized engine once on CUDA tensors; the outputs by name (CUDA tensors)."""
    import tensorrt as trt
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    context = runtime.deserialize_cuda_engine(engine).create_execution_context()
    engine_obj = context.engine
    outputs = {}
    for i in range(engine_obj.num_io_tensors):
        name = engine_obj.get_tensor_name(i)
        if engine_obj.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            context.set_input_shape(name, tuple(inputs[name].shape))
            context.set_tensor_address(name, inputs[name].data_ptr())
    for i in range(engine_obj.num_io_tensors):
        name = engine_obj.get_tensor_name(i)
        if engine_obj.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            outputs[name] = torch.empty(tuple(context.get_tensor_shape(name)), device="cuda")
            context.set_tensor_address(name, outputs[name].data_ptr())
    stream = torch.cuda.Stream()
    context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return outputs
