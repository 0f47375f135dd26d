"""`edgecnn serve` as a real process: start-up, no torch, signals, graceful drain, workers, start-up errors."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from edgecnn.serve.client import InferenceClient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers.models import random_images
from tests.helpers.processes import EDGECNN, LOOPBACK, free_port
from tests.helpers.serving import encode


def test_server_process_has_no_torch_and_stops_cleanly_on_sigint(serve_process, tiny_model):
    server = serve_process(str(tiny_model), *LOOPBACK)
    serving = server.wait_for_log("serving")
    with InferenceClient(serving["address"]) as client:
        assert client.server_ready()
        assert client.infer("tiny", random_images(1), top_k=1).top_k[0][0].label in ("zero", "one", "two")
    maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    assert "onnxruntime" in maps  # the check below looks at the right process
    assert "torch" not in maps
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(timeout=30) == 0


def test_sigterm_drains_in_flight_requests_then_exits_zero(serve_process, tiny_model):
    server = serve_process(str(tiny_model), *LOOPBACK, "--decode-threads", "1", "--grace", "60")
    address = server.wait_for_log("serving")["address"]
    # Large PNGs take a while to decode on the single decode thread: requests stay in flight.
    big = encode(np.full((3000, 3000, 3), 120, dtype=np.uint8))
    count = 6
    with InferenceClient(address, timeout=60) as client, ThreadPoolExecutor(count) as pool:
        health = health_pb2_grpc.HealthStub(client.channel).Watch(health_pb2.HealthCheckRequest(service=""))
        statuses = [next(health).status]
        futures = [pool.submit(client.infer, "tiny", [big]) for _ in range(count)]
        done = next(iter(_first_completed(futures)))
        done.result()
        server.process.send_signal(signal.SIGTERM)
        statuses += [response.status for response in health]  # the watch ends after NOT_SERVING
        results = [f.result() for f in futures]  # every accepted request is answered
        assert server.process.wait(timeout=60) == 0
        with pytest.raises(grpc.RpcError) as error:
            client.server_live()
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert statuses == [serving, not_serving]
    assert len(results) == count and all("logits" in r.outputs for r in results)
    assert any(json.loads(line).get("msg") == "draining" for line in server.log if line.startswith("{"))


def _first_completed(futures):
    from concurrent.futures import FIRST_COMPLETED, wait

    return wait(futures, timeout=60, return_when=FIRST_COMPLETED).done


def test_workers_share_the_port_and_metrics(serve_process, tiny_model):
    port = free_port()
    server = serve_process(
        str(tiny_model), "--workers", "2", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0",
        "--provider", "cpu", "--intra-op-threads", "1",
    )
    metrics_port = server.wait_for_log("serving metrics of all workers")["metrics_port"]  # once every worker serves
    pids = {entry["pid"] for entry in map(json.loads, server.log) if entry.get("msg") == "serving"}
    assert len(pids) == 2
    with InferenceClient(f"127.0.0.1:{port}") as client:
        for _ in range(4):
            assert client.infer("tiny", random_images(2)).outputs["logits"].shape == (2, 3)
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    assert 'edgecnn_requests_total{model="tiny",status="OK",version="1"} 4.0' in text
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0



@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_cuda_where_unavailable_is_a_clear_error_not_a_fallback(tiny_model):
    command = [*EDGECNN, "serve", str(tiny_model), "--provider", "cuda"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "error: --provider cuda" in result.stderr and "--provider cpu" in result.stderr


def test_missing_model_is_one_clear_line(tmp_path):
    result = subprocess.run([*EDGECNN, "serve", str(tmp_path / "none.onnx")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: no model file or repository at {tmp_path / 'none.onnx'}"]


@pytest.mark.parametrize("layout", ["file", "repository"])
def test_a_file_that_is_not_onnx_is_one_clear_line(tmp_path, layout):
    bad = tmp_path / "bad.onnx" if layout == "file" else tmp_path / "repo" / "m" / "1" / "model.onnx"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"not a model")
    target = bad if layout == "file" else tmp_path / "repo"
    result = subprocess.run([*EDGECNN, "serve", str(target), "--port", "0", "--metrics-port", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: not an ONNX model onnxruntime can load")
