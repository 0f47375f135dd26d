"""Generated Open Inference Protocol stubs. Regenerate with `python -m edgecnn.protos.generate`."""
