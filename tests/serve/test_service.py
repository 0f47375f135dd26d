"""Every OIP RPC against a real server on loopback, with real onnxruntime sessions."""

from __future__ import annotations

import io
import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from edgecnn.protos import grpc_predict_v2_pb2 as pb
from edgecnn.serve import codec
from edgecnn.serve.client import InferenceClient
from edgecnn.serve.server import start_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from tests.helpers.models import random_images, reference_outputs
from tests.helpers.pixels import pillow_grey_8x8
from tests.helpers.serving import MAX_MESSAGE_BYTES, Gate, encode, settings_for, wait_until


def test_server_live_ready_and_metadata(client):
    assert client.server_live() and client.server_ready()
    metadata = client.server_metadata()
    assert metadata.name == "edgecnn" and metadata.version
    assert "classification" in metadata.extensions


def test_model_ready(client):
    assert client.model_ready("tiny") and client.model_ready("tiny", "1")
    assert not client.model_ready("tiny", "2") and not client.model_ready("other")


def test_model_metadata_describes_the_wire_format_and_provider(client):
    metadata = client.model_metadata("tiny")
    assert (metadata.name, list(metadata.versions)) == ("tiny", ["1"])
    assert metadata.platform == "onnxruntime_onnx:CPUExecutionProvider"
    [images] = metadata.inputs
    assert (images.name, images.datatype, list(images.shape)) == ("images", "UINT8", [-1, 8, 8, 1])
    assert [(o.name, o.datatype, list(o.shape)) for o in metadata.outputs] == [
        ("logits", "FP32", [-1, 3]),
        ("probabilities", "FP32", [-1, 3]),
    ]
    assert client.model_metadata("").name == "tiny"  # the only model served


def test_infer_raw_uint8_matches_onnxruntime(stub, tiny_model):
    images = random_images(3, seed=7)
    response = stub.ModelInfer(codec.images_request("tiny", images, request_id="abc"))
    assert (response.model_name, response.model_version, response.id) == ("tiny", "1", "abc")
    arrays = codec.response_arrays(response)
    reference = reference_outputs(tiny_model, images)
    np.testing.assert_allclose(arrays["logits"], reference["logits"], rtol=1e-6)
    np.testing.assert_allclose(arrays["probabilities"], reference["probabilities"], rtol=1e-6)
    timings = {key: p.WhichOneof("parameter_choice") for key, p in response.parameters.items()}
    assert timings == {"queue_us": "int64_param", "compute_us": "int64_param", "batch_size": "int64_param"}
    assert response.parameters["batch_size"].int64_param >= 3


def test_infer_typed_contents(stub, tiny_model):
    images = random_images(2, seed=8)
    request = pb.ModelInferRequest(model_name="tiny")
    tensor = request.inputs.add(name="images", datatype="UINT8", shape=images.shape)
    tensor.contents.uint_contents.extend(images.ravel().tolist())
    arrays = codec.response_arrays(stub.ModelInfer(request))
    np.testing.assert_allclose(arrays["logits"], reference_outputs(tiny_model, images)["logits"], rtol=1e-6)


def png(array: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _quadrants() -> tuple[bytes, np.ndarray]:
    """Red, green, blue and one mixed colour: grey is the ITU-R 601-2 luma 0.299 R + 0.587 G + 0.114 B, rounded."""
    colour, grey = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)
    for (rows, cols), rgb, luma in [((slice(0, 4), slice(0, 4)), (255, 0, 0), 76),
                                    ((slice(0, 4), slice(4, 8)), (0, 255, 0), 150),
                                    ((slice(4, 8), slice(0, 4)), (0, 0, 255), 29),
                                    ((slice(4, 8), slice(4, 8)), (10, 20, 30), 18)]:
        colour[rows, cols], grey[rows, cols] = rgb, luma
    return png(colour, "RGB"), grey


def _with_alpha(mode: str) -> tuple[bytes, np.ndarray]:
    """Grey pixels under a random alpha (RGBA or LA): the alpha is dropped, nothing is blended onto a background."""
    rng = np.random.default_rng(11)
    grey, alpha = rng.integers(0, 256, (8, 8), dtype=np.uint8), rng.integers(0, 256, (8, 8), dtype=np.uint8)
    alpha[0] = 0  # fully transparent pixels keep their grey too
    channels = [grey] * (3 if mode == "RGBA" else 1)
    return png(np.stack([*channels, alpha], axis=-1), mode), grey


def _step(size: int, value: int, columns: list[int]) -> tuple[bytes, np.ndarray]:
    """A size x size RGB image, black on the left half and (value, value, value) on the right.

    At 8x8 each row is ``columns``."""
    image = np.zeros((size, size, 3), np.uint8)
    image[:, size // 2:] = value
    return png(image, "RGB"), np.tile(np.uint8(columns), (8, 1))


# Images whose 8x8 grey input is worked out by hand. Bilinear is a triangle filter, stretched over the scale
# when shrinking: 16 -> 8 weighs 4 source pixels 1:3:3:1, so the two columns at the edge are 255 * 1/8 = 32
# and 255 - 32; 4 -> 8 puts output column 3 a quarter of the way into the bright half: 200 * 1/4 = 50, then 150.
HAND_MADE = {
    "colours to luma": _quadrants(),
    "RGBA drops alpha": _with_alpha("RGBA"),
    "grey with alpha drops alpha": _with_alpha("LA"),
    "constant colour of another size": (png(np.full((20, 30, 3), (10, 20, 30), np.uint8), "RGB"),
                                        np.full((8, 8), 18, np.uint8)),
    "shrunk bilinearly": _step(16, 255, [0, 0, 0, 32, 223, 255, 255, 255]),
    "enlarged bilinearly": _step(4, 200, [0, 0, 0, 50, 150, 200, 200, 200]),
}


@pytest.mark.parametrize("format", ["PNG", "JPEG"])
def test_encoded_images_are_decoded_converted_and_resized(client, tiny_model, format):
    # Colour images of another size: the server converts them to 8x8 grey as the metadata says.
    colour = [np.random.default_rng(i).integers(0, 256, (20, 30, 3), dtype=np.uint8) for i in range(2)]
    encoded = [encode(image, format) for image in colour]
    result = client.infer("tiny", encoded, outputs=["logits"])
    expected = np.stack([pillow_grey_8x8(data) for data in encoded])
    np.testing.assert_allclose(result.outputs["logits"], reference_outputs(tiny_model, expected)["logits"], rtol=1e-6)


@pytest.mark.parametrize("image, expected", HAND_MADE.values(), ids=HAND_MADE.keys())
def test_hand_made_images_reach_the_model_as_the_grey_pixels_worked_out_by_hand(client, tiny_model, image, expected):
    assert np.array_equal(pillow_grey_8x8(image)[..., 0], expected)  # the worked-out pixels are Pillow's too
    result = client.infer("tiny", [image], outputs=["logits"])
    reference = reference_outputs(tiny_model, expected[None, ..., None])["logits"]
    np.testing.assert_allclose(result.outputs["logits"], reference, rtol=1e-6)


def test_classification_extension(client, stub, tiny_model):
    images = random_images(2, seed=9)
    result = client.infer("tiny", images, top_k=2)
    probabilities = reference_outputs(tiny_model, images)["probabilities"]
    for row, classes in zip(probabilities, result.top_k):
        best = np.argsort(-row)[:2]
        assert [c.index for c in classes] == best.tolist()
        assert [c.label for c in classes] == [["zero", "one", "two"][i] for i in best]
        assert [c.score for c in classes] == pytest.approx(row[best].tolist(), abs=1e-6)
    raw = codec.response_arrays(stub.ModelInfer(codec.images_request("tiny", images, top_k=5)))["probabilities"]
    assert raw.shape == (2, 3)  # k is clipped to the 3 classes
    assert all(re.fullmatch(rb"\d\.\d{6}:\d:(zero|one|two)", item) for item in raw.ravel())


def test_one_requested_output(client):
    assert list(client.infer("tiny", random_images(1), outputs=["probabilities"]).outputs) == ["probabilities"]


def test_concurrent_requests_of_mixed_sizes_each_get_their_own_results(client, served_model, batcher, tiny_model):
    sizes = [1, 3, 2, 5, 1, 4, 2, 1]
    inputs = [random_images(n, seed=100 + i) for i, n in enumerate(sizes)]
    with Gate(served_model) as gate, ThreadPoolExecutor(1 + len(sizes)) as pool:
        first = pool.submit(client.infer, "tiny", random_images(1))
        assert gate.entered.wait(10)
        futures = [pool.submit(client.infer, "tiny", images) for images in inputs]
        wait_until(lambda: batcher.queue_depth == len(sizes), what="all requests queued")
        gate.open()
        first.result()
        results = [f.result() for f in futures]
    for images, result in zip(inputs, results):
        np.testing.assert_allclose(result.outputs["logits"], reference_outputs(tiny_model, images)["logits"], rtol=1e-6)
    assert max(r.parameters["batch_size"] for r in results) > max(sizes)  # they were merged
    assert sum(gate.batches) == 1 + sum(sizes)


# --- errors: each answered with the right status, and the server keeps serving ---------------


def _request(change):
    request = codec.images_request("tiny", random_images(1))
    change(request)
    return request


ERRORS = {
    "unknown model": (lambda r: setattr(r, "model_name", "nope"), grpc.StatusCode.NOT_FOUND, "model 'nope' is not served"),
    "unknown version": (lambda r: setattr(r, "model_version", "7"), grpc.StatusCode.NOT_FOUND, "no version '7'"),
    "input name": (lambda r: setattr(r.inputs[0], "name", "x"), grpc.StatusCode.INVALID_ARGUMENT, "UINT8 [n, 8, 8, 1]"),
    "datatype": (lambda r: setattr(r.inputs[0], "datatype", "FP32"), grpc.StatusCode.INVALID_ARGUMENT, "datatype FP32"),
    "shape": (lambda r: r.inputs[0].shape.__setitem__(2, 9), grpc.StatusCode.INVALID_ARGUMENT, "shape [1, 8, 9, 1]"),
    "byte size": (
        lambda r: r.raw_input_contents.__setitem__(0, b"\x00" * 63),
        grpc.StatusCode.INVALID_ARGUMENT,
        "needs 64 bytes",
    ),
    "undecodable image": (
        lambda r: (r.inputs[0].ClearField("shape"), r.inputs[0].shape.append(1), setattr(r.inputs[0], "datatype", "BYTES"),
                   r.raw_input_contents.__setitem__(0, codec.encode_bytes([b"not an image"]))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "image 0: not a PNG or JPEG image",
    ),
    "unknown output": (lambda r: r.outputs.add(name="features"), grpc.StatusCode.INVALID_ARGUMENT, "no output 'features'"),
    "too large": (
        lambda r: r.raw_input_contents.__setitem__(0, b"\x00" * (MAX_MESSAGE_BYTES + 1)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "",
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_have_their_status_and_the_server_keeps_serving(stub, case):
    change, code, message = ERRORS[case]
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(_request(change), timeout=10)
    assert error.value.code() == code
    assert message in error.value.details()
    assert stub.ModelInfer(codec.images_request("tiny", random_images(1)), timeout=10).outputs


def test_model_metadata_of_unknown_model_is_not_found(client):
    with pytest.raises(grpc.RpcError) as error:
        client.model_metadata("nope")
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_deadline_passed_while_queued_is_deadline_exceeded_and_never_computed(client, served_model, batcher):
    with Gate(served_model) as gate, ThreadPoolExecutor(1) as pool:
        running = pool.submit(client.infer, "tiny", random_images(1))
        assert gate.entered.wait(10)
        with pytest.raises(grpc.RpcError) as error:
            client.infer("tiny", random_images(5), timeout=0.3)
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: batcher.queue_depth == 0, what="the expired request to leave the queue")
        gate.open()
        running.result()
    assert gate.batches == [1]


def test_cancelled_request_leaves_the_queue_and_is_never_computed(stub, client, served_model, batcher):
    with Gate(served_model) as gate, ThreadPoolExecutor(1) as pool:
        running = pool.submit(client.infer, "tiny", random_images(1))
        assert gate.entered.wait(10)
        call = stub.ModelInfer.future(codec.images_request("tiny", random_images(5)))
        wait_until(lambda: batcher.queue_depth == 1, what="the request to queue")
        call.cancel()
        wait_until(lambda: batcher.queue_depth == 0, what="the cancelled request to leave the queue")
        gate.open()
        running.result()
    assert gate.batches == [1]


def test_full_queue_is_resource_exhausted(tiny_model):
    with start_server(settings_for(tiny_model, max_queue_size=1, metrics=False)) as server:
        model = server.server.repository.get("tiny")
        batcher = server.server.batchers["tiny", "1"]
        with Gate(model) as gate, ThreadPoolExecutor(2) as pool, InferenceClient(server.address) as client:
            stub = client.stub
            request = codec.images_request("tiny", random_images(1))
            running = pool.submit(stub.ModelInfer, request, timeout=10)
            assert gate.entered.wait(10)
            queued = pool.submit(stub.ModelInfer, request, timeout=10)
            wait_until(lambda: batcher.queue_depth == 1, what="one queued request")
            with pytest.raises(grpc.RpcError) as error:
                stub.ModelInfer(request, timeout=10)
            assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            gate.open()
            running.result(), queued.result()


# --- health, reflection, metrics ---------------------------------------------------------------


def test_health_reports_serving(client):
    health = health_pb2_grpc.HealthStub(client.channel)
    for service in ("", "inference.GRPCInferenceService"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as error:
        health.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(client):
    reflection = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    [answer] = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in answer.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_metrics_endpoint(server, client):
    client.infer("tiny", random_images(2))
    with pytest.raises(grpc.RpcError):
        client.infer("tiny", random_images(1, height=4))
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    for line in (
        'edgecnn_requests_total{model="tiny",status="OK",version="1"}',
        'edgecnn_requests_total{model="tiny",status="INVALID_ARGUMENT",version="1"}',
        'edgecnn_request_seconds_bucket{le="0.001",model="tiny",version="1"}',
        'edgecnn_queue_seconds_count{model="tiny",version="1"}',
        'edgecnn_compute_seconds_count{model="tiny",version="1"}',
        'edgecnn_batch_size_bucket{le="2.0",model="tiny",version="1"}',
        'edgecnn_queue_depth{model="tiny",version="1"} 0.0',
    ):
        assert line in text, line


@pytest.mark.parametrize("taken", ["grpc", "metrics"])
def test_a_server_that_cannot_listen_says_which_address_and_leaves_nothing_running(tiny_model, taken):
    import socket
    import threading

    with socket.socket() as other, socket.socket() as free:
        other.bind(("127.0.0.1", 0))
        other.listen()
        free.bind(("127.0.0.1", 0))
        ports = {"grpc": free.getsockname()[1], "metrics": free.getsockname()[1]}
        ports[taken] = other.getsockname()[1]
        free.close()  # free again: the server may bind it
        before = {t.name for t in threading.enumerate() if t.name.startswith(("edgecnn-compute", "decode"))}
        with pytest.raises(OSError, match=f"127.0.0.1:{ports[taken]}"):
            start_server(settings_for(tiny_model, port=ports["grpc"], metrics_port=ports["metrics"]))
        left = {t.name for t in threading.enumerate() if t.name.startswith(("edgecnn-compute", "decode"))} - before
        assert left == set()
        if taken == "metrics":  # gRPC had its port: it must not be left listening
            with socket.socket() as probe:
                assert probe.connect_ex(("127.0.0.1", ports["grpc"])) != 0
