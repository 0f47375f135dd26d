"""ONNX export, quantisation and the report. Importing this package loads no torch."""
