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
    assert result.output.strip().splitlines() == [
        f"error: {server.address}: INVALID_ARGUMENT: input 'images': image 0: not a PNG or JPEG image (12 bytes)"
    ]
    result = CliRunner().invoke(app, ["predict", str(bad), "--server", server.address, "--model", "nope"])
    assert result.exit_code == 1 and "NOT_FOUND: model 'nope' is not served; models: tiny" in result.output
