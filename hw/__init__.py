"""Edge deployment of the perception models: targets, ONNX export, cost model, one backend per runtime."""
