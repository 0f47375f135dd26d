"""The Open Inference Protocol gRPC server on onnxruntime. Never imports torch."""
