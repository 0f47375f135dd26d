"""The decomposition benchmark's no-compute model stands in for the real one: same input, outputs and
labels, so `edgecnn serve` accepts it and a client cannot tell the difference but for the answers."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from edgecnn.benchmarks.decompose import write_no_compute_model
from edgecnn.export.metadata import read_metadata

from tests.helpers.models import write_tiny_model


def test_the_no_compute_model_takes_the_real_models_input_and_answers_every_label(tmp_path):
    real = write_tiny_model(tmp_path / "real.onnx", name="shapes", height=12, width=10, channels=3)
    meta = read_metadata(real)
    stand_in = write_no_compute_model(meta, tmp_path / "no_compute.onnx")

    stand_in_meta = read_metadata(stand_in)
    assert stand_in_meta.name == "shapes-no-compute"
    assert (stand_in_meta.height, stand_in_meta.width, stand_in_meta.channels) == (12, 10, 3)
    assert stand_in_meta.labels == meta.labels and stand_in_meta.output_names == meta.output_names

    session = ort.InferenceSession(str(stand_in), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).integers(0, 256, (5, 12, 10, 3), dtype=np.uint8)
    logits, probabilities = session.run(meta.output_names, {"images": images})
    assert logits.shape == probabilities.shape == (5, len(meta.labels))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
