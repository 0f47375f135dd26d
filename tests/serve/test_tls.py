"""TLS, mutual TLS and certificate rotation (reload / SIGHUP) against real servers on loopback.

Certificates are made per module with `cryptography` (tests/serve/certs.py). Every channel gets
its own connection (a local subchannel pool), so "a new channel" really is a new handshake.
"""

from __future__ import annotations

import logging
import re
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from edgecnn.benchmarks.certs import issue, make_pki
from edgecnn.protos import grpc_predict_v2_pb2 as pb
from edgecnn.protos.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from edgecnn.serve import codec
from edgecnn.serve.server import start_server
from edgecnn.serve.tls import ServerTls, client_credentials

from tests.helpers.models import random_images
from tests.helpers.processes import LOOPBACK, ServeProcess
from tests.helpers.serving import settings_for

REFUSED_WITHIN_S = 3  # a refused handshake fails at once; this only bounds a hang


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Two server CAs, a client CA and leaves: servers A (CA 1) and B (CA 2), clients good and rogue."""
    folder = tmp_path_factory.mktemp("pki")
    ca1, ca2, client_ca = make_pki(folder, "ca1"), make_pki(folder, "ca2"), make_pki(folder, "client-ca")
    return {
        "ca1": ca1,
        "ca2": ca2,
        "client_ca": client_ca,
        "server_a": issue(ca1, folder, "server-a", server=True),
        "server_b": issue(ca2, folder, "server-b", server=True),
        "client": issue(client_ca, folder, "client", server=False),
        "rogue_client": issue(ca2, folder, "rogue-client", server=False),
    }


@contextmanager
def serving(model, **overrides):
    running = start_server(settings_for(model, **overrides))
    try:
        yield running
    finally:
        running.stop(grace=0)


@contextmanager
def channel(address: str, ca: Path | None = None, cert: Path | None = None, key: Path | None = None, *, tls=True):
    """A channel with a connection of its own to ``address`` ("127.0.0.1:PORT": the IP is in the SAN)."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    if tls:
        made = grpc.secure_channel(address, client_credentials(ca, cert, key), options)
    else:
        made = grpc.insecure_channel(address, options)
    with made:
        yield made


def live(chan: grpc.Channel) -> bool:
    return GRPCInferenceServiceStub(chan).ServerLive(pb.ServerLiveRequest(), timeout=10).live


def infer_shape(chan: grpc.Channel) -> tuple[int, ...]:
    response = GRPCInferenceServiceStub(chan).ModelInfer(codec.images_request("tiny", random_images(2)), timeout=10)
    return codec.response_arrays(response)["logits"].shape


def assert_refused(chan: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as error:
        GRPCInferenceServiceStub(chan).ServerLive(pb.ServerLiveRequest(), timeout=REFUSED_WITHIN_S)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.fixture
def server_files(pki, tmp_path):
    """The server's cert/key files, a copy of server A's that a test may overwrite."""
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    shutil.copy(pki["server_a"].cert, cert)
    shutil.copy(pki["server_a"].key, key)
    return cert, key


@pytest.fixture(scope="module")
def tls_server(tiny_model, pki):
    with serving(tiny_model, tls_cert=pki["server_a"].cert, tls_key=pki["server_a"].key) as running:
        yield running


@pytest.fixture(scope="module")
def mtls_server(tiny_model, pki):
    a = pki["server_a"]
    with serving(tiny_model, tls_cert=a.cert, tls_key=a.key, tls_client_ca=pki["client_ca"].cert) as running:
        yield running


@pytest.fixture
def tls_errors():
    """Error records of the edgecnn.serve.tls logger."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("edgecnn.serve.tls")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


# --- TLS -----------------------------------------------------------------------------------------


def test_tls_client_trusting_the_ca_is_served(tls_server, pki):
    with channel(tls_server.address, pki["ca1"].cert) as chan:
        assert live(chan)
        assert infer_shape(chan) == (2, 3)


def test_plaintext_client_is_refused_and_the_server_keeps_serving(tls_server, pki):
    with channel(tls_server.address, tls=False) as plain:
        assert_refused(plain)
    with channel(tls_server.address, pki["ca1"].cert) as chan:
        assert infer_shape(chan) == (2, 3)


def test_client_trusting_another_ca_is_refused(tls_server, pki):
    with channel(tls_server.address, pki["ca2"].cert) as chan:
        assert_refused(chan)


# --- mutual TLS ----------------------------------------------------------------------------------


def test_mtls_client_without_a_certificate_is_refused(mtls_server, pki):
    with channel(mtls_server.address, pki["ca1"].cert) as chan:
        assert_refused(chan)


def test_mtls_client_certificate_from_another_ca_is_refused(mtls_server, pki):
    rogue = pki["rogue_client"]
    with channel(mtls_server.address, pki["ca1"].cert, rogue.cert, rogue.key) as chan:
        assert_refused(chan)


def test_mtls_client_certificate_from_the_client_ca_is_served(mtls_server, pki):
    client = pki["client"]
    with channel(mtls_server.address, pki["ca1"].cert, client.cert, client.key) as chan:
        assert live(chan)
        assert infer_shape(chan) == (2, 3)
    assert mtls_server.server.tls.describe() == "mutual TLS"


# --- rotation ------------------------------------------------------------------------------------


def test_reload_serves_new_handshakes_the_new_certificate_and_keeps_open_connections(tiny_model, pki, server_files):
    cert, key = server_files
    with serving(tiny_model, tls_cert=cert, tls_key=key) as running, channel(running.address, pki["ca1"].cert) as old:
        assert live(old)
        shutil.copy(pki["server_b"].cert, cert)
        shutil.copy(pki["server_b"].key, key)
        assert running.server.tls.reload() is True
        assert infer_shape(old) == (2, 3)  # the connection made with certificate A is still open
        with channel(running.address, pki["ca2"].cert) as new:
            assert infer_shape(new) == (2, 3)  # a new handshake gets certificate B
        with channel(running.address, pki["ca1"].cert) as stale:
            assert_refused(stale)
        assert live(old)


@pytest.mark.parametrize("breakage", ["garbage cert", "key of another cert", "missing key"])
def test_reload_with_broken_files_keeps_the_current_certificate(tiny_model, pki, server_files, tls_errors, breakage):
    cert, key = server_files
    with serving(tiny_model, tls_cert=cert, tls_key=key) as running:
        if breakage == "garbage cert":
            cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
        elif breakage == "key of another cert":
            shutil.copy(pki["server_b"].key, key)
        else:
            key.unlink()
        assert running.server.tls.reload() is False
        [record] = tls_errors
        assert record.getMessage() == "TLS files not reloaded; keeping the current ones"
        assert str(cert if breakage == "garbage cert" else key) in record.error
        with channel(running.address, pki["ca1"].cert) as chan:  # a new handshake: still certificate A
            assert infer_shape(chan) == (2, 3)
        with channel(running.address, pki["ca2"].cert) as chan:
            assert_refused(chan)


def test_sighup_rotates_the_certificate_of_a_serve_process(tiny_model, pki, server_files):
    cert, key = server_files
    server = ServeProcess(str(tiny_model), *LOOPBACK, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        address = server.wait_for_log("serving")["address"]
        with channel(address, pki["ca1"].cert) as old:
            assert live(old)
            shutil.copy(pki["server_b"].cert, cert)
            shutil.copy(pki["server_b"].key, key)
            server.process.send_signal(signal.SIGHUP)
            server.wait_for_log("TLS certificates reloaded", timeout=10)
            assert infer_shape(old) == (2, 3)
            with channel(address, pki["ca2"].cert) as new:
                assert infer_shape(new) == (2, 3)
            with channel(address, pki["ca1"].cert) as stale:
                assert_refused(stale)

            cert.write_text("garbage")  # a bad rotation is logged; the process keeps certificate B
            server.process.send_signal(signal.SIGHUP)
            assert str(cert) in server.wait_for_log("TLS files not reloaded; keeping the current ones", timeout=10)["error"]
            with channel(address, pki["ca2"].cert) as new:
                assert live(new)
            assert live(old)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
    finally:
        server.stop()


# --- ServerTls and client_credentials on their own -----------------------------------------------


@pytest.mark.parametrize(
    "case", ["missing cert", "missing key", "missing client CA", "cert not PEM", "key not PEM", "key of another cert"]
)
def test_server_tls_rejects_bad_files_naming_the_file(pki, tmp_path, case):
    a, b = pki["server_a"], pki["server_b"]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    missing = tmp_path / "missing.pem"
    cert, key, client_ca, sentence = {
        "missing cert": (missing, a.key, None, f"--tls-cert {missing}: no such file"),
        "missing key": (a.cert, missing, None, f"--tls-key {missing}: no such file"),
        "missing client CA": (a.cert, a.key, missing, f"--tls-client-ca {missing}: no such file"),
        "cert not PEM": (garbage, a.key, None, f"--tls-cert {garbage}: not a PEM certificate"),
        "key not PEM": (a.cert, garbage, None, f"--tls-key {garbage}: not a PEM private key"),
        "key of another cert": (a.cert, b.key, None, f"--tls-key {b.key}: the key does not match --tls-cert {a.cert}"),
    }[case]
    with pytest.raises(ValueError) as error:
        ServerTls(cert, key, client_ca)
    message = str(error.value)
    assert message.startswith(sentence) and "\n" not in message


def test_server_tls_describes_itself(pki):
    a = pki["server_a"]
    assert ServerTls(a.cert, a.key).describe() == "TLS"
    assert ServerTls(a.cert, a.key, pki["client_ca"].cert).describe() == "mutual TLS"


def test_client_credentials_check_their_files(pki, tmp_path):
    client = pki["client"]
    assert isinstance(client_credentials(pki["ca1"].cert, client.cert, client.key), grpc.ChannelCredentials)
    assert isinstance(client_credentials(), grpc.ChannelCredentials)  # system roots
    with pytest.raises(ValueError, match="go together"):
        client_credentials(pki["ca1"].cert, cert=client.cert)
    with pytest.raises(ValueError, match=re.escape(f"--tls-ca {tmp_path / 'nope.pem'}: no such file")):
        client_credentials(tmp_path / "nope.pem")
    with pytest.raises(ValueError, match=re.escape(f"--tls-ca {tmp_path}: a folder, not a file")):
        client_credentials(tmp_path)
