"""Serve an exported edgecnn model through NVIDIA Triton (the real tritonserver, via nvidia-pytriton):

    LD_LIBRARY_PATH=$(python -c "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))") \
        python triton_launcher.py CONFIG.json

Triton's Python backend hands each dynamically batched request to ``infer`` below (``@batch``), which
runs an onnxruntime session in this process. CONFIG.json (written by benchmarks/peers.py) gives the
model file and name, its inputs and outputs (numpy dtype names, dims without the batch axis), the
batching settings, the intra-op threads and the ports. Runs until SIGINT or SIGTERM.
"""

import json
import signal
import sys
from pathlib import Path

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from peer_session import open_session


def tensors(specs: list) -> list:
    return [Tensor(name=spec["name"], dtype=np.dtype(spec["dtype"]), shape=tuple(spec["shape"])) for spec in specs]


def main() -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a clean stop, as on SIGINT
    config = json.loads(Path(sys.argv[1]).read_text())
    session = open_session(config["model"], config["intra_op_threads"])
    output_names = [output["name"] for output in config["outputs"]]

    @batch
    def infer(**inputs):
        return dict(zip(output_names, session.run(output_names, inputs)))

    ports = config["ports"]
    server = TritonConfig(grpc_address="127.0.0.1", grpc_port=ports["grpc"], http_address="127.0.0.1",
                          http_port=ports["http"], metrics_port=ports["metrics"], exit_on_error=True)
    batching = ModelConfig(max_batch_size=config["max_batch_size"],
                           batcher=DynamicBatcher(max_queue_delay_microseconds=config["max_queue_delay_microseconds"]))
    with Triton(config=server) as triton:
        triton.bind(model_name=config["name"], infer_func=infer, inputs=tensors(config["inputs"]),
                    outputs=tensors(config["outputs"]), config=batching, strict=False)
        triton.serve()


if __name__ == "__main__":
    main()
