"""Three `edgecnn serve` replicas on 127.0.0.2-4 behind our client (gRPC's round robin, health
checking, retries on UNAVAILABLE, a per-attempt timeout): one drained (SIGTERM), one killed
(SIGKILL) and one hung (SIGSTOP) in turn under load, and no request fails."""

from __future__ import annotations

import signal
import threading
import urllib.request

import grpc
import pytest
from edgecnn.serve.client import InferenceClient, channel_target
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.models import random_images
from tests.helpers.processes import ServeProcess, free_port_on_every_host
from tests.helpers.serving import wait_until

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
CALLERS = 16


def _replica(model, host: str, port: int) -> ServeProcess:
    replica = ServeProcess(str(model), "--host", host, "--port", str(port), "--metrics-port", "0",
                           "--provider", "cpu", "--intra-op-threads", "1")
    replica.metrics_url = f"http://{host}:{replica.wait_for_log('serving')['metrics_port']}/metrics"
    return replica


def _answered_by(replica: ServeProcess) -> float:
    """ModelInfer calls this replica answered OK, from its own metrics (a restarted one counts from 0)."""
    text = urllib.request.urlopen(replica.metrics_url, timeout=10).read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "edgecnn_requests_total" and sample.labels.get("status") == "OK")


def _wait_for_load_on(replica: ServeProcess, what: str) -> None:
    """The client has (re)connected to ``replica``: it answers a share of the callers' load."""
    wait_until(lambda: _answered_by(replica) >= CALLERS, timeout=60, what=what)


def _serving(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            return health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=1
            ).status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def test_several_addresses_become_one_balanced_channel():
    target, options = channel_target("127.0.0.2:8001,127.0.0.3:8001")
    assert target == "ipv4:127.0.0.2:8001,127.0.0.3:8001"
    assert any(name == "grpc.service_config" and "round_robin" in value for name, value in options)
    assert channel_target("localhost:8001") == ("localhost:8001", [])


@pytest.mark.slow
def test_a_drained_a_killed_and_a_hung_replica_fail_no_request(tiny_model):
    port = free_port_on_every_host(HOSTS)
    replicas = {host: _replica(tiny_model, host, port) for host in HOSTS}
    addresses = ",".join(f"{host}:{port}" for host in HOSTS)
    failures: list[str] = []
    answered = [0]
    started = [0] * CALLERS  # calls each caller has begun
    finished = [0] * CALLERS  # ... and has had answered or failed
    stop = threading.Event()
    with InferenceClient(addresses, timeout=15, attempt_timeout=1.0) as client:

        def caller(index: int) -> None:
            while not stop.is_set():
                started[index] += 1
                try:
                    client.infer("tiny", random_images(1))
                    answered[0] += 1
                except grpc.RpcError as error:
                    failures.append(f"{error.code().name}: {error.details()}")
                finished[index] += 1

        def progress(what: str) -> None:
            """More calls answered from now on than there are callers: the load goes on."""
            before = answered[0]
            wait_until(lambda: answered[0] >= before + CALLERS, timeout=60, what=what)

        threads = [threading.Thread(target=caller, args=(index,)) for index in range(CALLERS)]
        try:
            for thread in threads:
                thread.start()
            drained, killed, hung = HOSTS
            for host in HOSTS:
                _wait_for_load_on(replicas[host], f"load on {host}")
            counts = {"start": answered[0]}

            replicas[drained].process.send_signal(signal.SIGTERM)  # drain: NOT_SERVING, delay, refuse, finish
            assert replicas[drained].process.wait(timeout=30) == 0
            replicas[drained] = _replica(tiny_model, drained, port)
            counts["after drain"] = answered[0]

            _wait_for_load_on(replicas[drained], "the client to use the restarted replica")
            replicas[killed].process.send_signal(signal.SIGKILL)
            replicas[killed].process.wait(timeout=30)
            progress("calls answered by the survivors of the kill")
            replicas[killed] = _replica(tiny_model, killed, port)
            counts["after kill"] = answered[0]

            _wait_for_load_on(replicas[killed], "the client to use the replica restarted after the kill")
            assert all(_serving(f"{host}:{port}") for host in (drained, killed))
            replicas[hung].process.send_signal(signal.SIGSTOP)
            # Calls held by it are resent after 1 s (keepalive drops it within ~3 s): every call begun
            # before the hang has ended, and the others go on answering.
            held = list(started)
            wait_until(lambda: all(f >= h for f, h in zip(finished, held)), timeout=60,
                       what="every call begun before the hang to end")
            progress("calls answered while a replica hangs")
            counts["while hung"] = answered[0]
            replicas[hung].process.send_signal(signal.SIGCONT)
            wait_until(lambda: _serving(f"{hung}:{port}"), timeout=30, what="the hung replica to serve again")
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
            for replica in replicas.values():
                replica.process.send_signal(signal.SIGCONT)
                replica.stop()
    assert failures == []
    assert counts["after drain"] > counts["start"] and counts["while hung"] > counts["after kill"], counts


@pytest.mark.slow
def test_twenty_drains_under_load_lose_nothing_for_a_plain_grpc_client_that_retries_unavailable(tiny_model):
    """A plain gRPC channel with the README's service config (no edgecnn client code): round robin over
    two replicas, health checking, retries on UNAVAILABLE. One replica is drained and restarted 20 times
    while 16 callers send; not one call may fail (nothing CANCELLED, nothing UNAVAILABLE in the end)."""
    import json

    from edgecnn.protos import grpc_predict_v2_pb2_grpc as pb_grpc
    from edgecnn.serve.client import FAILOVER_SERVICE_CONFIG
    from edgecnn.serve.codec import images_request

    hosts = HOSTS[:2]
    port = free_port_on_every_host(HOSTS)
    replicas = {host: _replica(tiny_model, host, port) for host in hosts}
    options = [("grpc.service_config", json.dumps(FAILOVER_SERVICE_CONFIG)), ("grpc.enable_retries", 1)]
    request = images_request("tiny", random_images(1))
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()
    with grpc.insecure_channel(f"ipv4:{','.join(f'{h}:{port}' for h in hosts)}", options=options) as channel:
        infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer

        def caller() -> None:
            while not stop.is_set():
                try:
                    infer(request, timeout=15)
                    answered[0] += 1
                except grpc.RpcError as error:
                    failures.append(error.code().name)

        threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
        try:
            for thread in threads:
                thread.start()
            for repetition in range(20):
                drained = hosts[repetition % 2]
                other = hosts[(repetition + 1) % 2]
                assert _serving(f"{other}:{port}")
                before = answered[0]
                replicas[drained].process.send_signal(signal.SIGTERM)
                assert replicas[drained].process.wait(timeout=30) == 0, f"repetition {repetition}"
                replicas[drained] = _replica(tiny_model, drained, port)
                wait_until(lambda before=before: answered[0] > before, timeout=30,
                           what=f"progress in repetition {repetition}")
                # The channel reconnects to the restarted replica before the other drains.
                _wait_for_load_on(replicas[drained], f"load on the restarted replica, repetition {repetition}")
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
            for replica in replicas.values():
                replica.stop()
    assert failures == []
