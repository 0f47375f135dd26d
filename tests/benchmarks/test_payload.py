"""Requests built once from the server's model description: random pixels or real images."""

from __future__ import annotations

import numpy as np
import pytest
from edgecnn.benchmarks.payload import InputSpec, ModelSpec, batch_shape, build_requests, load_images
from edgecnn.protos import grpc_predict_v2_pb2 as pb
from PIL import Image

IMAGES = InputSpec("images", "UINT8", (-1, 8, 8, 1))
MODEL = ModelSpec("tiny", "1", "onnxruntime", (IMAGES,))


def test_random_requests_have_the_batch_shape_and_raw_bytes():
    requests = [pb.ModelInferRequest.FromString(r) for r in build_requests(MODEL, 4, 3, seed=1)]
    assert len(requests) == 3
    for request in requests:
        assert (request.model_name, request.model_version) == ("tiny", "1")
        assert list(request.inputs[0].shape) == [4, 8, 8, 1] and request.inputs[0].datatype == "UINT8"
        assert len(request.raw_input_contents[0]) == 4 * 8 * 8
        assert not request.outputs  # every output comes back, as a plain client would ask
    assert requests[0].raw_input_contents != requests[1].raw_input_contents
    assert build_requests(MODEL, 4, 3, seed=1) == build_requests(MODEL, 4, 3, seed=1)


def test_other_datatypes_and_several_inputs():
    model = ModelSpec("other", "", "", (InputSpec("x", "FP32", (-1, 3)), InputSpec("ids", "INT64", (-1, 2))))
    (raw,) = build_requests(model, 2, 1)
    request = pb.ModelInferRequest.FromString(raw)
    assert [t.name for t in request.inputs] == ["x", "ids"]
    assert [len(c) for c in request.raw_input_contents] == [2 * 3 * 4, 2 * 2 * 8]


def test_shapes_that_cannot_be_batched_are_explained():
    assert batch_shape(IMAGES, 16) == [16, 8, 8, 1]
    with pytest.raises(ValueError, match="fixed batch of 1"):
        batch_shape(InputSpec("x", "FP32", (1, 3)), 4)
    with pytest.raises(ValueError, match="variable non-batch"):
        batch_shape(InputSpec("x", "FP32", (-1, -1, 3)), 4)


def test_real_images_are_resized_to_the_input_and_cycled(tmp_path):
    for i, size in enumerate([(20, 10), (8, 8), (5, 30)]):
        Image.fromarray(np.full((size[1], size[0], 3), 40 * (i + 1), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    images = load_images(tmp_path, IMAGES)
    assert images.shape == (3, 8, 8, 1) and images.dtype == np.uint8
    first, second = (pb.ModelInferRequest.FromString(r) for r in build_requests(MODEL, 2, 2, images=images))
    assert first.raw_input_contents[0] == images[[0, 1]].tobytes()
    assert second.raw_input_contents[0] == images[[2, 0]].tobytes()


def test_real_images_need_an_image_input(tmp_path):
    with pytest.raises(ValueError, match="UINT8"):
        load_images(tmp_path, InputSpec("x", "FP32", (-1, 3, 8, 8)))
    with pytest.raises(ValueError, match="no images"):
        load_images(tmp_path, IMAGES)
