"""What our clients (`edgecnn predict`, `edgecnn bench`, InferenceClient) say when they cannot reach a server.

gRPC reports a TLS mismatch only as "Socket closed" or a failed handshake; the clients add the likely cause
in their own flags. Real servers on loopback: plaintext, TLS and mutual TLS, with certificates from
edgecnn.benchmarks.certs. A URL-style --server (http://, https://, grpc://) is refused in one sentence.
"""

from __future__ import annotations

from contextlib import contextmanager

import grpc
import numpy as np
import pytest
from edgecnn.benchmarks.certs import issue, make_pki
from edgecnn.serve.cli import app
from edgecnn.serve.client import ChannelSecurity, InferenceClient, describe_rpc_error
from edgecnn.serve.server import start_server
from typer.testing import CliRunner

from tests.helpers.models import random_images
from tests.helpers.serving import encode, settings_for

EXPECT_TLS = "(the server may expect TLS: --tls-ca CA.pem, or --tls)"
NEED_CERTIFICATE = "(the server may require a client certificate: --tls-cert and --tls-key)"
CERTIFICATE_REFUSED = ("(the server may not accept the client certificate of --tls-cert: "
                       "its --tls-client-ca must have signed it)")
NOT_TLS = "(the server may not use TLS: leave out --tls and --tls-ca)"
OTHER_CA = "(the server's certificate may not be signed by the CA of --tls-ca)"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca, other_ca, client_ca = make_pki(folder, "ca"), make_pki(folder, "other-ca"), make_pki(folder, "client-ca")
    return {"ca": ca, "other_ca": other_ca, "client_ca": client_ca,
            "server": issue(ca, folder, "server", server=True),
            "client": issue(client_ca, folder, "client", server=False),
            "rogue": issue(other_ca, folder, "rogue", server=False)}


@contextmanager
def serving(model, **overrides):
    running = start_server(settings_for(model, **overrides))
    try:
        yield running.address
    finally:
        running.stop(grace=0)


@pytest.fixture(scope="module")
def servers(tiny_model, pki):
    """The addresses of a plaintext, a TLS and a mutual-TLS server."""
    leaf = pki["server"]
    with serving(tiny_model) as plain, serving(tiny_model, tls_cert=leaf.cert, tls_key=leaf.key) as tls, \
            serving(tiny_model, tls_cert=leaf.cert, tls_key=leaf.key, tls_client_ca=pki["client_ca"].cert) as mtls:
        yield {"plain": plain, "tls": tls, "mtls": mtls}


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "image.png"
    path.write_bytes(encode(np.zeros((8, 8, 1), np.uint8)))
    return path


def security_flags(pki, ca: str | None = None, cert: str | None = None) -> list[str]:
    flags = ["--tls-ca", str(pki[ca].cert)] if ca else []
    return flags + (["--tls-cert", str(pki[cert].cert), "--tls-key", str(pki[cert].key)] if cert else [])


# (server, the client's CA, the client's certificate, the hint)
MISMATCHES = [
    ("tls", None, None, EXPECT_TLS),
    ("mtls", None, None, EXPECT_TLS),
    ("mtls", "ca", None, NEED_CERTIFICATE),
    ("mtls", "ca", "rogue", CERTIFICATE_REFUSED),
    ("plain", "ca", None, NOT_TLS),
    ("tls", "other_ca", None, OTHER_CA),
]
IDS = ["plaintext-to-tls", "plaintext-to-mtls", "no-certificate-to-mtls", "foreign-certificate-to-mtls",
       "tls-to-plaintext", "tls-trusting-another-ca"]


@pytest.mark.parametrize("server, ca, cert, hint", MISMATCHES, ids=IDS)
def test_predict_names_the_likely_cause_of_a_tls_mismatch(servers, pki, image, server, ca, cert, hint):
    address = servers[server]
    args = ["predict", str(image), "--server", address, "--timeout", "10", *security_flags(pki, ca, cert)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"error: {address}: UNAVAILABLE: ") and line.endswith(hint), line


@pytest.mark.parametrize("server, ca, cert, hint", MISMATCHES[:3], ids=IDS[:3])
def test_bench_names_the_likely_cause_of_a_tls_mismatch(servers, pki, server, ca, cert, hint):
    args = ["bench", "--server", servers[server], "--model", "tiny", "--scenario", "", "--concurrency", "1",
            *security_flags(pki, ca, cert)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1].endswith(hint), result.output


def test_matching_security_is_served_and_a_closed_port_gets_no_tls_hint(servers, pki):
    security = ChannelSecurity.from_files(tls_ca=pki["ca"].cert, tls_cert=pki["client"].cert,
                                          tls_key=pki["client"].key)
    with InferenceClient(servers["mtls"], timeout=10, security=security) as client:
        assert client.infer("tiny", random_images(1), top_k=1).top_k[0][0].label
    with InferenceClient("127.0.0.1:1", timeout=10) as client, pytest.raises(grpc.RpcError) as error:
        client.model_metadata("tiny")
    assert describe_rpc_error(error.value, ChannelSecurity()) == describe_rpc_error(error.value)  # no hint


@pytest.mark.parametrize("scheme", ["http", "https", "grpc", "grpcs", "HTTP"])
@pytest.mark.parametrize("command", ["predict", "bench"])
def test_a_url_style_server_address_is_refused_in_one_sentence(image, command, scheme):
    address = f"{scheme}://localhost:8001"
    args = ["predict", str(image)] if command == "predict" else ["bench", "--model", "tiny", "--scenario", ""]
    result = CliRunner().invoke(app, [*args, "--server", address])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: {address} is not a gRPC address: it takes no scheme; give localhost:8001 "
        "(with --tls-ca or --tls for TLS)")
