"""The wrapper that gives a trained model the wire format: the same logits, whatever the fold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from edgecnn.export.exporter import pytorch_logits
from edgecnn.export.graph import wrap_for_export
from edgecnn.train.models import create_model
from edgecnn.train.normalisation import Normalisation


@pytest.mark.parametrize(
    "architecture, options, channels, size, expected_fold",
    [
        ("fashion-cnn", {}, 1, 28, "weights+bias"),  # valid padding: mean folded into the bias
        ("mnist-cnn", {"padding": "same"}, 1, 28, "weights"),  # padded: the graph keeps a Sub
        ("cifar-cnn", {}, 3, 32, "weights+bias"),
        ("resnet-small", {"width": 8}, 3, 16, "weights"),  # first conv has no bias and pads
    ],
)
def test_wrapper_gives_the_models_logits_on_uint8_nhwc(architecture, options, channels, size, expected_fold):
    torch.manual_seed(0)
    model = create_model(architecture, in_channels=channels, num_classes=10, image_size=(size, size), **options).eval()
    normalisation = Normalisation(mean=[0.2, 0.4, 0.6][:channels], std=[0.3, 0.25, 0.2][:channels])
    images = np.random.default_rng(1).integers(0, 256, (5, size, size, channels), dtype=np.uint8)
    wrapper = wrap_for_export(model, normalisation, (size, size, channels))
    with torch.no_grad():
        logits, probabilities = wrapper(torch.from_numpy(images))
    assert wrapper.folded == expected_fold
    np.testing.assert_allclose(logits.numpy(), pytorch_logits(model, normalisation, images), atol=1e-4)
    np.testing.assert_allclose(probabilities.sum(dim=1).numpy(), 1.0, atol=1e-6)


def test_wrapper_leaves_the_trained_model_untouched():
    model = create_model("fashion-cnn", in_channels=1, num_classes=10, image_size=(28, 28)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrap_for_export(model, Normalisation(mean=[0.13], std=[0.31]), (28, 28, 1))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
