"""`edgecnn predict IMAGE... --server HOST:PORT`: a table of labels and scores for the good images, and one error
line for each bad one (or for a failed call)."""

from __future__ import annotations

import numpy as np
import pytest
from edgecnn.serve.cli import app
from PIL import Image
from typer.testing import CliRunner

from tests.helpers.models import reference_outputs
from tests.helpers.serving import encode


def _table_rows(output: str) -> list[tuple[str, str, str, str, str]]:
    """(image, rank, label, index, score) of each row of predict's table; an image's later rows name it once."""
    rows, image = [], ""
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) == 5 and cells[1].isdigit():
            image = cells[0] or image
            rows.append((image, *cells[1:]))
    return rows


def test_predict_prints_top_labels_of_each_image(server, tiny_model, tmp_path):
    paths, expected = [], []
    for i, fmt in enumerate(["PNG", "JPEG"]):
        path = tmp_path / f"image{i}.{fmt.lower()}"
        path.write_bytes(encode(np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8), fmt))
        paths.append(str(path))
        # what the server should see: the decoded file, grey and resized (bilinear) to the model's 8x8
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L").resize((8, 8), Image.BILINEAR), np.uint8)[None, :, :, None]
        probabilities = reference_outputs(tiny_model, pixels)["probabilities"][0]
        for rank, index in enumerate(np.argsort(-probabilities)[:2], start=1):
            expected.append((str(path), str(rank), ("zero", "one", "two")[index], str(index),
                             f"{probabilities[index]:.4f}"))
    result = CliRunner().invoke(app, ["predict", *paths, "--server", server.address, "--top-k", "2"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "tiny (version 1)" in result.output
    assert _table_rows(result.output) == expected, result.output


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
    from edgecnn.benchmarks.certs import issue, make_pki
    from edgecnn.serve.server import start_server

    from tests.helpers.serving import settings_for

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


def test_predict_reports_each_image_and_fails_if_any_did(server, tmp_path):
    """The good images get their rows; a bad one (not an image, a GIF the server would refuse) an error line."""
    good = [tmp_path / "good.png", tmp_path / "good.jpg"]
    for path, fmt in zip(good, ["PNG", "JPEG"]):
        path.write_bytes(encode(np.full((8, 8, 3), 90, np.uint8), fmt))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "anim.gif")
    gif_bytes = (tmp_path / "anim.gif").stat().st_size
    paths = [good[0], tmp_path / "bad.png", good[1], tmp_path / "anim.gif", tmp_path / "missing.png"]
    result = CliRunner().invoke(app, ["predict", *map(str, paths), "--server", server.address, "--top-k", "1"],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[:3] == [f"error: {tmp_path / 'bad.png'}: not a PNG or JPEG image (12 bytes)",
                         f"error: {tmp_path / 'anim.gif'}: not a PNG or JPEG image ({gif_bytes} bytes)",
                         f"error: {tmp_path / 'missing.png'}: no such file"]
    rows = [line for line in lines[3:] if str(tmp_path) in line]
    assert [next(str(p) for p in good if str(p) in row) for row in rows] == [str(p) for p in good]
    assert "tiny (version 1)" in result.output


@pytest.mark.parametrize("command", ["predict", "classify", "serve"])
def test_help_names_exactly_the_formats_the_server_decodes(command):
    from edgecnn.serve.images import FORMATS_TEXT, IMAGE_SUFFIXES, SERVED_FORMATS
    from PIL import Image as pillow

    pillow.init()
    assert {pillow.registered_extensions()[suffix] for suffix in IMAGE_SUFFIXES} == set(SERVED_FORMATS)
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    assert FORMATS_TEXT in " ".join(result.output.replace("│", " ").split()), result.output
