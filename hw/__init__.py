"""Edge deployment: ONNX export, edge targets and hardware cost models (see issue 6)."""
