"""SIGTERM under load (Triton's L0 drain spirit): every request the server received before the signal
is answered OK, new ones are refused with UNAVAILABLE (which clients retry), none is CANCELLED, and
the server exits 0."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

import grpc
from edgecnn.protos import grpc_predict_v2_pb2_grpc as pb_grpc
from edgecnn.serve.codec import images_request

from tests.helpers.models import random_images
from tests.helpers.processes import LOOPBACK, ServeProcess

CALLERS = 16
REPETITIONS = 20


def _drain_under_load(model, *extra: str) -> tuple[list[tuple[float, str]], float, int]:
    """16 closed-loop callers on their own channels; SIGTERM once each has had answers. Returns every
    request's (send time, final status), the signal's time and the exit code."""
    server = ServeProcess(str(model), *LOOPBACK, *extra)
    try:
        address = server.wait_for_log("serving")["address"]
        request = images_request("tiny", random_images(1))
        results: list[tuple[float, str]] = []
        lock = threading.Lock()
        warmed = threading.Barrier(CALLERS + 1)

        def caller() -> None:
            with grpc.insecure_channel(address) as channel:
                infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
                infer(request, timeout=30)
                warmed.wait()
                while True:
                    sent = time.monotonic()
                    try:
                        infer(request, timeout=30)
                        status = "OK"
                    except grpc.RpcError as error:
                        status = error.code().name
                    with lock:
                        results.append((sent, status))
                    if status != "OK":
                        return

        threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
        for thread in threads:
            thread.start()
        warmed.wait()
        time.sleep(0.2)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=60)
        return results, signalled, server.process.wait(timeout=60)
    finally:
        server.stop()


def test_sigterm_under_16_callers_answers_everything_received_before_it(tiny_model):
    outcomes: Counter = Counter()
    for repetition in range(REPETITIONS):
        results, signalled, exit_code = _drain_under_load(tiny_model)  # default --drain-delay-s and --grace
        before = Counter(status for sent, status in results if sent < signalled)
        after = Counter(status for sent, status in results if sent >= signalled)
        assert exit_code == 0, f"repetition {repetition}"
        assert set(before) == {"OK"}, f"repetition {repetition}: requests sent before SIGTERM ended {before}"
        assert set(after) <= {"OK", "UNAVAILABLE"}, f"repetition {repetition}: after SIGTERM {after}"
        outcomes.update(before)
        outcomes.update(f"after:{s}" for s in after.elements())
    assert outcomes["OK"] >= REPETITIONS * CALLERS
    assert outcomes["after:UNAVAILABLE"] == REPETITIONS * CALLERS  # every caller was told to go elsewhere
