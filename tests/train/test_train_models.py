"""The model registry: seed parameter counts, convolution options, shapes from the data, clean ONNX export."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from edgecnn.train.models import ModelConfigError, count_parameters, create_model, list_models, model_options


@pytest.mark.parametrize(
    "name, channels, size, parameters",
    [("mnist-cnn", 1, 28, 225_034), ("fashion-cnn", 1, 28, 225_034), ("cifar-cnn", 3, 32, 122_570)],
)
def test_seed_parameter_counts(name: str, channels: int, size: int, parameters: int) -> None:
    model = create_model(name, in_channels=channels, num_classes=10, image_size=(size, size))
    assert count_parameters(model) == parameters


def test_registry_lists_the_seeds_and_ours() -> None:
    assert {"mnist-cnn", "fashion-cnn", "cifar-cnn", "vgg-224", "resnet-small"} <= set(list_models())
    assert model_options("fashion-cnn") == {"padding": "valid", "stride": 1, "pool": "max"}


@pytest.mark.parametrize("padding", ["valid", "same", "full"])
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_convolution_options_change_the_model_not_the_output(padding: str, pool: str) -> None:
    model = create_model("fashion-cnn", in_channels=1, num_classes=10, image_size=(28, 28), padding=padding, pool=pool)
    flat = model.head[0].in_features
    assert flat == {"valid": 64 * 5 * 5, "same": 64 * 7 * 7, "full": 64 * 8 * 8}[padding]
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_stride_shrinks_the_feature_map() -> None:
    model = create_model("mnist-cnn", in_channels=1, num_classes=10, image_size=(28, 28), stride=2, padding="same")
    assert model.head[0].in_features == 64 * 2 * 2  # 28 -> 14 -> pool 7 -> 4 -> pool 2


def test_shape_comes_from_the_data() -> None:
    model = create_model("cifar-cnn", in_channels=1, num_classes=4, image_size=(40, 36))
    assert model(torch.zeros(3, 1, 40, 36)).shape == (3, 4)


@pytest.mark.parametrize(
    "options, message",
    [({"padding": "weird"}, "padding must be one of"), ({"pool": "min"}, "pool must be one of"),
     ({"colour": 1}, "takes no option colour")],
)
def test_bad_options_are_clear(options: dict, message: str) -> None:
    with pytest.raises(ModelConfigError, match=message):
        create_model("fashion-cnn", in_channels=1, num_classes=10, image_size=(28, 28), **options)


def test_too_small_images_and_unknown_names_are_clear() -> None:
    with pytest.raises(ModelConfigError, match="8x8 are too small for cifar-cnn"):
        create_model("cifar-cnn", in_channels=3, num_classes=10, image_size=(8, 8))
    with pytest.raises(ModelConfigError, match="unknown model 'resnet-huge'; choose one of"):
        create_model("resnet-huge", in_channels=3, num_classes=10, image_size=(8, 8))


@pytest.mark.parametrize(
    "name, channels, size",
    [("mnist-cnn", 1, 28), ("fashion-cnn", 1, 28), ("cifar-cnn", 3, 32), ("vgg-224", 3, 48), ("resnet-small", 3, 20)],
)
def test_every_model_exports_to_onnx_with_a_dynamic_batch(name: str, channels: int, size: int) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    model = create_model(name, in_channels=channels, num_classes=10, image_size=(size, size)).eval()
    example = torch.randn(2, channels, size, size)
    program = torch.onnx.export(
        model, (example,), dynamo=True, input_names=["x"], dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
    )
    buffer = io.BytesIO()
    program.save(buffer)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    images = torch.randn(5, channels, size, size)
    (onnx_logits,) = session.run(None, {"x": images.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(onnx_logits, model(images).numpy(), rtol=1e-4, atol=1e-4)
