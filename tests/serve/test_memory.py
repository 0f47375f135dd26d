"""Refused requests do not grow a real `edgecnn serve` process (Triton's L0_memory_growth, in spirit).

A server refuses oversized requests all day: more images than --max-request-images
(INVALID_ARGUMENT, refused before any copy) and messages over the receive limit
(RESOURCE_EXHAUSTED, refused by gRPC before parsing). After a warm-up, 5,000 of them (3,750 and
1,250) must not grow the process's resident memory (VmRSS) by 10 MB.

The negative control proves the measurement can fail: the same procedure against a server that
keeps every request it handles (a wrapper around ``InferenceService.ModelInfer``, launched with
``python -c``) must grow by more than 10 MB.

The receive limit is set to 64 KiB (--max-message-bytes): refused messages of a few tens of KB keep
the run short; the default (4 MiB and up) would send gigabytes. The last test does send 4 MB
requests, a few hundred, at the default limit: memory held for a refused request must be released
when its call ends, not when Python's cyclic garbage collector gets round to it.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import grpc
import pytest
from edgecnn.protos import grpc_predict_v2_pb2 as pb
from edgecnn.serve import codec
from edgecnn.serve.client import CHANNEL_OPTIONS, InferenceClient

from tests.helpers.models import random_images
from tests.helpers.processes import LOOPBACK, ServeProcess

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MAX_MESSAGE_BYTES = 64 * 1024
ARGS = (*LOOPBACK, "--max-message-bytes", str(MAX_MESSAGE_BYTES), "--decode-threads", "1")
TOO_MANY, TOO_LARGE_COUNT = 3_750, 1_250  # REQUESTS, as refused for their image count and for their size
REQUESTS = TOO_MANY + TOO_LARGE_COUNT
CHANNELS = 16
WAVE = 16  # calls over the receive limit at once per connection, within --max-concurrent-streams (256)
WINDOW = 16  # calls over the image limit at once
WARMUP = CHANNELS * WAVE  # of each kind: one full wave, as wide as those measured
LIMIT_MB = 10.0


def _too_many_images() -> bytes:
    """1,000 images (64,000 bytes) in one request: within the message limit, over --max-request-images (64)."""
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="images", datatype="UINT8", shape=[1000, 8, 8, 1])
    request.raw_input_contents.append(bytes(1000 * 64))
    assert len(request.SerializeToString()) < MAX_MESSAGE_BYTES
    return request.SerializeToString()


def _too_large() -> bytes:
    request = codec.images_request("tiny", random_images(1))
    request.raw_input_contents[0] = bytes(MAX_MESSAGE_BYTES + 4096)
    return request.SerializeToString()


TOO_MANY_IMAGES, TOO_LARGE = _too_many_images(), _too_large()

# `edgecnn serve` with a leak: every request ModelInfer handles is kept for good.
LEAKY_SERVER = """
import sys
from edgecnn.serve import grpc_service

KEPT = []
original = grpc_service.InferenceService.ModelInfer

async def ModelInfer(self, request, context):
    KEPT.append(request)
    return await original(self, request, context)

grpc_service.InferenceService.ModelInfer = ModelInfer
sys.argv = ["edgecnn", *sys.argv[1:]]
from edgecnn.serve.cli import main
main()
"""


class LeakyServeProcess(ServeProcess):
    """ServeProcess, but the process runs LEAKY_SERVER."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", LEAKY_SERVER, "serve", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()


@pytest.fixture
def processes():
    started: list[ServeProcess] = []
    yield started
    for process in started:
        process.stop()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB
    raise AssertionError(f"no VmRSS for process {pid}")


def _send_oversized(address: str, too_large: int, too_many: int) -> Counter[str]:
    """``too_large`` messages over the receive limit, then ``too_many`` requests over the image limit; their statuses.

    gRPC takes 0.1-1 s (idle, not busy) to fail a call whose message is over the receive limit, on a bare
    grpc.aio server too, but it fails hundreds at once, per connection: those go out in waves of
    CHANNELS x WAVE calls. The others are answered in about a millisecond: WINDOW at a time.
    """
    statuses: Counter[str] = Counter()

    def wait(calls) -> None:
        for call in calls:
            error = call.exception()
            statuses[error.code().name if error is not None else "OK"] += 1

    # Separate connections: a channel of its own each (no shared subchannel).
    options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(address, options=options) for _ in range(CHANNELS)]
    try:
        sends = [channel.unary_unary(MODEL_INFER) for channel in channels]  # bytes as they are: no serializer
        for start in range(0, too_large, CHANNELS * WAVE):
            count = min(CHANNELS * WAVE, too_large - start)
            wait([sends[i % CHANNELS].future(TOO_LARGE, timeout=60) for i in range(count)])
        for start in range(0, too_many, WINDOW):
            wait([sends[0].future(TOO_MANY_IMAGES, timeout=60) for _ in range(min(WINDOW, too_many - start))])
    finally:
        for channel in channels:
            channel.close()
    return statuses


def rss_growth_mb(server: ServeProcess) -> float:
    """Warm up, then the RSS growth (MB) over REQUESTS oversized requests, every one refused as it should be."""
    address = server.wait_for_log("serving")["address"]
    pid = server.process.pid
    with InferenceClient(address, timeout=30) as client:  # it serves: the measurement is of a working server
        assert client.infer("tiny", random_images(2)).outputs["logits"].shape == (2, 3)
    assert _send_oversized(address, WARMUP, WARMUP) == {"INVALID_ARGUMENT": WARMUP, "RESOURCE_EXHAUSTED": WARMUP}
    before = rss_mb(pid)
    statuses = _send_oversized(address, TOO_LARGE_COUNT, TOO_MANY)
    after = rss_mb(pid)
    assert statuses == {"INVALID_ARGUMENT": TOO_MANY, "RESOURCE_EXHAUSTED": TOO_LARGE_COUNT}
    with InferenceClient(address, timeout=30) as client:
        images = random_images(3, seed=1)
        assert client.infer("tiny", images).outputs["logits"].shape == (3, 3)
    assert server.process.poll() is None
    print(f"\n{type(server).__name__}: VmRSS {before:.1f} MB -> {after:.1f} MB over {REQUESTS} refused requests")
    return after - before


def test_refused_oversized_requests_do_not_grow_the_server(processes, tiny_model):
    processes.append(ServeProcess(str(tiny_model), *ARGS))
    growth = rss_growth_mb(processes[-1])
    assert growth < LIMIT_MB, f"VmRSS grew {growth:.1f} MB over {REQUESTS} refused requests"


def test_the_measurement_catches_a_server_that_keeps_requests(processes, tiny_model):
    processes.append(LeakyServeProcess(str(tiny_model), *ARGS))
    growth = rss_growth_mb(processes[-1])
    # It keeps TOO_MANY messages of 64 KB (those refused by gRPC never reach ModelInfer): ~240 MB.
    assert growth > LIMIT_MB, f"a server keeping every request grew only {growth:.1f} MB: the measurement is blind"


BIG_IMAGES = 65_000  # 4.16 MB of pixels: within the default receive limit (4 MiB), over --max-request-images
BIG_REFUSED = 300
BIG_LIMIT_MB = 100.0  # 24 refused requests' worth


def test_memory_of_refused_big_requests_is_released_when_they_end(processes, tiny_model):
    """300 requests of 4 MB, one after another, each refused (INVALID_ARGUMENT): the server's RSS, read
    after each, never rises 100 MB above where it started. A server that let go of each refused
    request when its call ended holds one or two at a time (~30 MB with the allocator's slack)."""
    processes.append(ServeProcess(str(tiny_model), *LOOPBACK))
    address = processes[-1].wait_for_log("serving")["address"]
    pid = processes[-1].process.pid
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="images", datatype="UINT8", shape=[BIG_IMAGES, 8, 8, 1])
    request.raw_input_contents.append(bytes(BIG_IMAGES * 64))
    data = request.SerializeToString()
    with InferenceClient(address, timeout=30) as client:  # warm: full batches, served
        for _ in range(20):
            assert client.infer("tiny", random_images(64)).outputs["logits"].shape == (64, 3)
    statuses: Counter[str] = Counter()
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        send = channel.unary_unary(MODEL_INFER)
        before = peak = rss_mb(pid)
        for _ in range(BIG_REFUSED):
            try:
                send(data, timeout=60)
                statuses["OK"] += 1
            except grpc.RpcError as error:
                statuses[error.code().name] += 1
                assert "(--max-request-images)" in error.details()
            peak = max(peak, rss_mb(pid))
    print(f"\nVmRSS {before:.1f} MB, peak {peak:.1f} MB over {BIG_REFUSED} refused requests of {len(data):,} bytes")
    assert statuses == {"INVALID_ARGUMENT": BIG_REFUSED}
    assert peak - before < BIG_LIMIT_MB, (
        f"VmRSS rose {peak - before:.0f} MB while refusing {BIG_REFUSED} requests of 4 MB: refused requests are held "
        "after their calls end"
    )
    with InferenceClient(address, timeout=30) as client:
        assert client.infer("tiny", random_images(3)).outputs["logits"].shape == (3, 3)
