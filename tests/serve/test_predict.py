"""`edgecnn predict IMAGE... --server HOST:PORT`: a table of labels and scores, or one error line."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from edgecnn.serve.cli import app
from tests.serve.support import encode


def test_predict_prints_top_labels_of_each_image(server, tmp_path):
    paths = []
    for i, fmt in enumerate(["PNG", "JPEG"]):
        path = tmp_path / f"image{i}.{fmt.lower()}"
        path.write_bytes(encode(np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8), fmt))
        paths.append(str(path))
    result = CliRunner().invoke(app, ["predict", *paths, "--server", server.address, "--top-k", "2"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "tiny (version 1)" in result.output
    assert all(path in result.output for path in paths)
    assert sum(result.output.count(label) for label in ("zero", "one", "two")) == 4


def test_predict_errors_are_one_line_with_a_nonzero_exit(server, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    result = CliRunner().invoke(app, ["predict", str(bad), "--server", server.address])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"error: {bad}: not a PNG or JPEG image (12 bytes)"]
    good = tmp_path / "good.png"
    good.write_bytes(encode(np.zeros((8, 8, 1), np.uint8)))
    result = CliRunner().invoke(app, ["predict", str(good), "--server", server.address, "--model", "nope"])
    assert result.exit_code == 1 and "NOT_FOUND: model 'nope' is not served; models: tiny" in result.output


def test_predict_over_mutual_tls_with_a_token(tiny_model, tmp_path):
    from edgecnn.serve.server import start_server
    from edgecnn.benchmarks.certs import issue, make_pki
    from tests.serve.support import settings_for

    pki = make_pki(tmp_path / "pki")
    server_leaf = issue(pki, tmp_path / "pki", "localhost", server=True)
    client_leaf = issue(pki, tmp_path / "pki", "client", server=False)
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("a-long-enough-test-token-0001 inference,metadata\n")
    image = tmp_path / "image.png"
    image.write_bytes(encode(np.zeros((8, 8, 1), np.uint8)))
    settings = settings_for(tiny_model, tls_cert=server_leaf.cert, tls_key=server_leaf.key,
                            tls_client_ca=pki.cert, auth_token_file=tokens)
    with start_server(settings) as running:
        address = f"localhost:{running.port}"
        secure = ["--tls-ca", str(pki.cert), "--tls-cert", str(client_leaf.cert), "--tls-key", str(client_leaf.key)]
        result = CliRunner().invoke(app, ["predict", str(image), "--server", address, *secure,
                                          "--token-file", str(tokens)], env={"COLUMNS": "250"})
        assert result.exit_code == 0, result.output
        assert "tiny (version 1)" in result.output
        result = CliRunner().invoke(app, ["predict", str(image), "--server", address, *secure])
        assert result.exit_code == 1
        assert result.output.startswith(f"error: {address}: UNAUTHENTICATED: missing or unknown bearer token")
        result = CliRunner().invoke(app, ["predict", str(image), "--server", address, "--tls-ca",
                                          str(tmp_path / "missing.pem")])
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
        assert "missing.pem" in result.output
