"""OIP tensor encoding: BYTES framing, classification strings, request builders, input validation."""

from __future__ import annotations

import numpy as np
import pytest
from edgecnn.export.metadata import ModelMetadata
from edgecnn.protos import grpc_predict_v2_pb2 as pb
from edgecnn.serve import codec
from edgecnn.serve.errors import InvalidInput

META = ModelMetadata(name="tiny", version="1", labels=["zero", "one", "two"], height=2, width=3, channels=1)


def test_bytes_tensor_round_trip_uses_little_endian_length_prefixes():
    items = [b"", b"a", b"\x00\xff" * 300]
    raw = codec.encode_bytes(items)
    assert raw[:4] == b"\x00\x00\x00\x00" and raw[4:8] == b"\x01\x00\x00\x00"
    assert codec.decode_bytes(raw) == items


@pytest.mark.parametrize("raw", [b"\x05\x00\x00\x00abc", b"\x01\x00"])
def test_malformed_bytes_tensor_is_rejected(raw):
    with pytest.raises(ValueError):
        codec.decode_bytes(raw)


def test_top_k_strings_follow_triton_format_best_first():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], dtype=np.float32)
    strings = codec.top_k_strings(scores, 2, META.labels)
    assert strings == [b"0.700000:1:one", b"0.200000:2:two", b"0.500000:0:zero", b"0.250000:1:one"]
    parsed = codec.parse_classifications(np.array(strings, dtype=object).reshape(2, 2))
    assert parsed[0][0] == codec.Classification(pytest.approx(0.7), 1, "one")
    assert [c.index for c in parsed[1]] == [0, 1]  # ties keep the lower index first


def test_top_k_is_clipped_to_the_number_of_classes():
    assert len(codec.top_k_strings(np.zeros((1, 3), np.float32), 10, META.labels)) == 3


def test_images_request_carries_raw_uint8_and_classification():
    images = np.arange(12, dtype=np.uint8).reshape(2, 2, 3, 1)
    request = codec.images_request("tiny", images, top_k=2, request_id="r1")
    tensor = request.inputs[0]
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("images", "UINT8", [2, 2, 3, 1])
    assert request.raw_input_contents[0] == images.tobytes()
    assert request.outputs[0].name == "probabilities"
    assert request.outputs[0].parameters["classification"].int64_param == 2
    np.testing.assert_array_equal(codec.request_images(request, META, max_images=64), images)


def test_single_hwc_image_becomes_a_batch_of_one():
    request = codec.images_request("tiny", np.zeros((2, 3, 1), np.uint8))
    assert list(request.inputs[0].shape) == [1, 2, 3, 1]


def test_images_request_refuses_non_uint8():
    with pytest.raises(TypeError):
        codec.images_request("tiny", np.zeros((1, 2, 3, 1), np.float32))


def test_encoded_images_request_is_a_bytes_input():
    request = codec.encoded_images_request("tiny", [b"png1", b"jpeg2"])
    assert (request.inputs[0].datatype, list(request.inputs[0].shape)) == ("BYTES", [2])
    assert codec.request_images(request, META, max_images=64) == [b"png1", b"jpeg2"]


def test_typed_contents_are_accepted():
    request = pb.ModelInferRequest(model_name="tiny")
    tensor = request.inputs.add(name="images", datatype="UINT8", shape=[1, 2, 3, 1])
    tensor.contents.uint_contents.extend(range(6))
    np.testing.assert_array_equal(codec.request_images(request, META, max_images=64).ravel(), np.arange(6))


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda r: setattr(r.inputs[0], "name", "pixels"), "takes one input 'images'"),
        (lambda r: setattr(r.inputs[0], "datatype", "FP32"), "UINT8 [n, 2, 3, 1]"),
        (lambda r: r.inputs[0].shape.__setitem__(1, 5), "has shape [1, 5, 3, 1]"),
        (lambda r: r.raw_input_contents.__setitem__(0, b"\x00" * 5), "needs 6 bytes"),
        (lambda r: r.raw_input_contents.append(b""), "raw_input_contents"),
        (lambda r: r.inputs.add(name="extra"), "got inputs: 'images', 'extra'"),
    ],
)
def test_invalid_inputs_say_what_was_expected(change, expected):
    request = codec.images_request("tiny", np.zeros((1, 2, 3, 1), np.uint8))
    change(request)
    with pytest.raises(InvalidInput, match=expected.replace("[", r"\[").replace("]", r"\]")):
        codec.request_images(request, META, max_images=64)


def test_requested_outputs_default_to_all_and_validate_names_and_classification():
    request = pb.ModelInferRequest()
    assert [o.name for o in codec.requested_outputs(request, META)] == ["logits", "probabilities"]
    request.outputs.add(name="scores")
    with pytest.raises(InvalidInput, match="no output 'scores'"):
        codec.requested_outputs(request, META)
    bad = pb.ModelInferRequest()
    bad.outputs.add(name="logits").parameters["classification"].int64_param = 0
    with pytest.raises(InvalidInput, match="int64 >= 1"):
        codec.requested_outputs(bad, META)


def test_response_arrays_decode_raw_and_bytes_outputs():
    response = pb.ModelInferResponse()
    logits = np.arange(6, dtype=np.float32).reshape(2, 3)
    for name, rows, top_k in (("logits", logits, None), ("probabilities", logits, 1)):
        datatype, shape, raw = codec.output_tensor(rows, top_k, META.labels)
        response.outputs.add(name=name, datatype=datatype, shape=shape)
        response.raw_output_contents.append(raw)
    arrays = codec.response_arrays(response)
    np.testing.assert_array_equal(arrays["logits"], logits)
    assert arrays["probabilities"].shape == (2, 1) and arrays["probabilities"][1, 0] == b"5.000000:2:two"
