"""One backend per target runtime, as hls4ml organises its backends: `onnxruntime` (CPU, CUDA and
TensorRT execution providers), `tensorrt` (engines for Jetson and NVIDIA GPUs), `hls4ml` (FPGA
projects and their C simulation)."""
