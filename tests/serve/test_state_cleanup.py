"""Requests that are cancelled or expire leave nothing behind (Triton's L0_request_cancellation and
L0_grpc_state_cleanup, in spirit).

1,000 requests, in rounds of 100 concurrent ones, while the compute is held by a gate and the one
decode thread is held busy: pixel requests wait in the batcher's queue, encoded ones in the decode
backlog. Each round's requests are then cancelled (once all of them are queued, or at once, before
the server may have seen them) or expire (timeouts of 1-50 ms). Still gated, the server must hold
none of them: no queued request or image, no decode backlog, no call in flight but the one being
computed; none of them is ever computed; no thread is left over; and it serves a valid request.
"""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from edgecnn.serve import codec
from edgecnn.serve.client import InferenceClient
from edgecnn.serve.server import start_server

from tests.helpers.models import random_images, reference_outputs
from tests.helpers.serving import Gate, encode, settings_for, wait_until

ROUNDS = 10
PER_ROUND = 100
KINDS = ("cancel once queued", "cancel at once", "expire")


@pytest.fixture(scope="module")
def running(tiny_model):
    # Room for every request of a round: nothing here is refused for load, only cancelled or expired.
    settings = settings_for(tiny_model, decode_threads=1, max_decode_backlog=1024, max_queue_bytes=1024 * 8 * 8)
    with start_server(settings) as running:
        yield running


def _requests(rng: random.Random):
    """PER_ROUND requests, mixed: pixels (1-3 images) that queue in the batcher, PNGs (1-2) that wait to decode."""
    png = encode(random_images(1, seed=2)[0], "PNG")
    made = []
    for i in range(PER_ROUND):
        if i % 2:
            made.append(codec.encoded_images_request("tiny", [png] * rng.randint(1, 2)))
        else:
            made.append(codec.images_request("tiny", random_images(rng.randint(1, 3), seed=i)))
    return made


def _server_state(running) -> dict[str, int]:
    batcher = running.server.batchers["tiny", "1"]
    service = running.server.service
    return {
        "queued requests": batcher.queue_depth,
        "queued images": batcher._queued_images,
        "decode backlog": service._decode_backlog,
        "calls in flight": service.drain.in_flight,
    }


def _requests_by_status(running) -> dict[str, float]:
    metric = running.server.metrics.registry.get_sample_value
    return {
        status: metric("edgecnn_requests_total", {"model": "tiny", "version": "1", "status": status}) or 0.0
        for status in ("OK", "CANCELLED", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN", "RESOURCE_EXHAUSTED")
    }


def test_cancelled_and_expired_requests_leave_no_state(running, tiny_model):
    model = running.server.repository.get("tiny")
    service = running.server.service
    client = InferenceClient(running.address, timeout=30)
    stub = client.stub
    # Warm up every path (pixels, decode thread, futures) before counting threads.
    assert client.infer("tiny", random_images(1)).outputs["logits"].shape == (1, 3)
    assert client.infer("tiny", [encode(random_images(1)[0])]).outputs["logits"].shape == (1, 3)
    stub.ModelInfer.future(codec.images_request("tiny", random_images(1))).result()
    baseline = {thread.ident: thread.name for thread in threading.enumerate()}
    rng = random.Random(7)
    outcomes: dict[str, int] = {}
    for round_ in range(ROUNDS):
        kind = KINDS[round_ % len(KINDS)]
        requests = _requests(rng)
        encoded_images = sum(r.inputs[0].shape[0] for r in requests if r.inputs[0].datatype == "BYTES")
        pixel_requests = sum(r.inputs[0].datatype == "UINT8" for r in requests)
        release_decode = threading.Event()
        with Gate(model) as gate, ThreadPoolExecutor(1) as pool:
            computing = pool.submit(client.infer, "tiny", random_images(1, seed=99))
            assert gate.entered.wait(10)
            decode_blocker = running.server._decode.submit(release_decode.wait, 60)
            try:
                if kind == "expire":
                    futures = [stub.ModelInfer.future(r, timeout=rng.uniform(0.001, 0.05)) for r in requests]
                    codes = [_code(f) for f in futures]
                    assert set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}, (round_, codes)
                else:
                    futures = []
                    for request in requests:
                        futures.append(stub.ModelInfer.future(request, timeout=30))
                        if kind == "cancel at once":
                            assert futures[-1].cancel()
                    if kind == "cancel once queued":
                        wait_until(
                            lambda: _server_state(running)["queued requests"] == pixel_requests
                            and service._decode_backlog == encoded_images,
                            what=f"round {round_}: every request queued or waiting to decode",
                        )
                        assert all(future.cancel() for future in futures)
                    assert all(future.cancelled() for future in futures)
                for future in futures:
                    outcomes[_code(future).name] = outcomes.get(_code(future).name, 0) + 1
                # Still gated: nothing of this round may be held, only the call being computed is in flight.
                _wait_for_state(running, in_flight=1, what=f"round {round_} ({kind}), still gated")
            finally:
                release_decode.set()
                decode_blocker.result(timeout=30)
                gate.open()
            assert computing.result().outputs["logits"].shape == (1, 3)
        assert gate.batches == [1], f"round {round_} ({kind}): cancelled or expired requests were computed"
        _wait_for_state(running, in_flight=0, what=f"round {round_} ({kind}), done")

    assert sum(outcomes.values()) == ROUNDS * PER_ROUND
    assert set(outcomes) == {"CANCELLED", "DEADLINE_EXCEEDED"}, outcomes
    assert _server_state(running) == {"queued requests": 0, "queued images": 0, "decode backlog": 0, "calls in flight": 0}
    by_status = _requests_by_status(running)
    print(f"\nclient saw: {outcomes}; server counted: {by_status}")
    assert by_status["INTERNAL"] == by_status["UNKNOWN"] == by_status["RESOURCE_EXHAUSTED"] == 0, by_status
    # Threads: the grpc client's future-polling thread ends once no call is left; nothing else was started.
    wait_until(
        lambda: set(t.ident for t in threading.enumerate()) <= set(baseline),
        what=f"no extra threads; extra: {[t.name for t in threading.enumerate() if t.ident not in baseline]}",
    )
    images = random_images(4, seed=5)
    served = client.infer("tiny", images)
    np.testing.assert_allclose(served.outputs["logits"], reference_outputs(tiny_model, images)["logits"], rtol=1e-6)
    assert client.infer("tiny", [encode(images[0])]).outputs["logits"].shape == (1, 3)
    client.close()


def _wait_for_state(running, in_flight: int, what: str) -> None:
    """Until the server holds nothing but ``in_flight`` calls (fails with the state it holds)."""
    expected = {"queued requests": 0, "queued images": 0, "decode backlog": 0, "calls in flight": in_flight}
    try:
        wait_until(lambda: _server_state(running) == expected, what=what)
    except AssertionError:
        assert _server_state(running) == expected, what


def _code(future) -> grpc.StatusCode:
    if future.cancelled():
        return grpc.StatusCode.CANCELLED
    try:
        future.result()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK
