"""Hostile ModelInfer requests, one table row each (in the spirit of Triton's qa/L0_input_validation).

Every row is a request a careless or malicious client can send. Each must be answered with one
precise gRPC status whose message names the limit or the problem (never INTERNAL or UNKNOWN, which
say "the server broke"), and the server must serve a valid request right after it.

The limits that depend on load (queued images, the decode backlog, concurrent RPCs) get a server of
their own each, with the compute or the decode thread held by a gate so the limit is reached
deterministically.
"""

from __future__ import annotations

import functools
import io
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import grpc
import numpy as np
import pytest
from edgecnn.protos import grpc_predict_v2_pb2 as pb
from edgecnn.serve import codec
from edgecnn.serve.client import InferenceClient
from edgecnn.serve.server import start_server
from PIL import Image

from tests.helpers.models import random_images, reference_outputs
from tests.helpers.serving import MAX_MESSAGE_BYTES, Gate, encode, settings_for, wait_until

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
BROKEN = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"

MAX_REQUEST_IMAGES = 8  # settings_for's max_batch_size, which --max-request-images defaults to
PIXELS = 8 * 8 * 1  # bytes of one tiny-model image


# --- encoded images, made once ------------------------------------------------------------------


def _save(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


@functools.cache
def colour() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)


@functools.cache
def png() -> bytes:
    return encode(colour(), "PNG")


@functools.cache
def jpeg() -> bytes:
    return encode(colour(), "JPEG")


@functools.cache
def other_format(format: str) -> bytes:
    return _save(Image.fromarray(colour()), format)


@functools.cache
def png_bomb(side: int) -> bytes:
    """A side x side bilevel PNG of one colour: a few KB on the wire, side**2 pixels decoded."""
    return _save(Image.new("1", (side, side)), "PNG", optimize=False)


def _with_jpeg_size(data: bytes, height: int, width: int) -> bytes:
    """``data`` (a baseline JPEG) whose frame header (SOF) claims ``height`` x ``width``."""
    offset = 2
    while offset < len(data):
        marker, length = data[offset + 1], struct.unpack_from(">H", data, offset + 2)[0]
        if 0xC0 <= marker <= 0xC3:  # SOF: length(2) precision(1) height(2) width(2)
            return data[: offset + 5] + struct.pack(">HH", height, width) + data[offset + 9 :]
        offset += 2 + length
    raise AssertionError("no SOF marker")


@functools.cache
def jpeg_bomb(side: int) -> bytes:
    return _with_jpeg_size(jpeg(), side, side)


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\nnewpath 0 0 moveto 32 32 lineto stroke showpage\n%%EOF\n"


# --- requests -------------------------------------------------------------------------------------


def uint8(shape, raw: bytes | None = None, *, model: str = "tiny") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="images", datatype="UINT8", shape=list(shape))
    if raw is not None:
        request.raw_input_contents.append(raw)
    return request


def valid() -> pb.ModelInferRequest:
    return codec.images_request("tiny", random_images(1, seed=11))


def encoded(shape, raw: bytes) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="images", datatype="BYTES", shape=list(shape))
    request.raw_input_contents.append(raw)
    return request


def images(*items: bytes) -> pb.ModelInferRequest:
    return codec.encoded_images_request("tiny", list(items))


def changed(build: Callable[[], pb.ModelInferRequest], change: Callable[[pb.ModelInferRequest], object]):
    def make() -> pb.ModelInferRequest:
        request = build()
        change(request)
        return request

    return make


def typed_uint8(values: list[int]) -> pb.ModelInferRequest:
    request = uint8([1, 8, 8, 1])
    request.inputs[0].contents.uint_contents.extend(values)
    return request


def typed_bytes(shape, items: list[bytes]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="tiny")
    tensor = request.inputs.add(name="images", datatype="BYTES", shape=list(shape))
    tensor.contents.bytes_contents.extend(items)
    return request


def classification(param: pb.InferParameter) -> pb.ModelInferRequest:
    request = valid()
    request.outputs.add(name="probabilities").parameters["classification"].CopyFrom(param)
    return request


@dataclass(frozen=True)
class Row:
    build: Callable[[], pb.ModelInferRequest | bytes]  # bytes go out as they are, unserialized
    code: grpc.StatusCode
    fragment: str  # in the status message: names the limit or the problem
    metadata: tuple[tuple[str, str], ...] = field(default=())


def _serialized_with_bad_utf8_name() -> bytes:
    """A valid request but for its model name: 2 bytes that are not UTF-8 (field 1, length 2)."""
    request = valid()
    request.model_name = ""  # not serialized: the name below is the only one
    return b"\x0a\x02\xff\xfe" + request.SerializeToString()


BIG = 100 * 1024  # a name this long is within the message limit but not within any header limit

ROWS: dict[str, Row] = {
    # --- forged shapes: the shape and the bytes disagree, or the shape is absurd ---------------
    "shape 4 images, bytes for 1": Row(
        lambda: uint8([4, 8, 8, 1], bytes(PIXELS)), INVALID, "of shape [4, 8, 8, 1] needs 256 bytes of UINT8 data, got 64"
    ),
    "shape 1 image, bytes for 4": Row(lambda: uint8([1, 8, 8, 1], bytes(4 * PIXELS)), INVALID, "needs 64 bytes of UINT8 data, got 256"),
    "batch dim 2**40": Row(
        lambda: uint8([2**40, 8, 8, 1], bytes(PIXELS)), INVALID,
        "carries 1099511627776 images; the limit is 8 per request (--max-request-images)",
    ),
    "batch dim int64 max": Row(lambda: uint8([2**63 - 1, 8, 8, 1], bytes(PIXELS)), INVALID, "(--max-request-images)"),
    "inner dim 2**40": Row(
        lambda: uint8([1, 2**40, 8, 1], bytes(PIXELS)), INVALID, "has shape [1, 1099511627776, 8, 1]; expected 'images' as UINT8 [n, 8, 8, 1]"
    ),
    "negative batch dim": Row(lambda: uint8([-1, 8, 8, 1], bytes(PIXELS)), INVALID, "has shape [-1, 8, 8, 1]"),
    "int64 min batch dim": Row(lambda: uint8([-(2**63), 8, 8, 1], bytes(PIXELS)), INVALID, f"has shape [{-(2**63)}, 8, 8, 1]"),
    "negative dims, product matches the bytes": Row(lambda: uint8([-1, -8, 8, 1], bytes(PIXELS)), INVALID, "has shape [-1, -8, 8, 1]"),
    "zero images": Row(lambda: uint8([0, 8, 8, 1], b""), INVALID, "has shape [0, 8, 8, 1]"),
    "rank 3": Row(lambda: uint8([8, 8, 1], bytes(PIXELS)), INVALID, "has shape [8, 8, 1]; expected"),
    "rank 5": Row(lambda: uint8([1, 1, 8, 8, 1], bytes(PIXELS)), INVALID, "has shape [1, 1, 8, 8, 1]; expected"),
    "no shape": Row(lambda: uint8([], bytes(PIXELS)), INVALID, "has shape []; expected"),
    "BYTES batch dim 2**40": Row(
        lambda: encoded([2**40], codec.encode_bytes([png()])), INVALID, "carries 1099511627776 images; the limit is 8 per request (--max-request-images)"
    ),
    "BYTES negative dim": Row(lambda: encoded([-1], codec.encode_bytes([png()])), INVALID, "BYTES input 'images' has shape [-1]"),
    "BYTES rank 3": Row(lambda: encoded([1, 1, 1], codec.encode_bytes([png()])), INVALID, "has shape [1, 1, 1]; expected [n] or [n, 1]"),
    "BYTES [1, 2]": Row(lambda: encoded([1, 2], codec.encode_bytes([png(), png()])), INVALID, "has shape [1, 2]; expected [n] or [n, 1]"),
    # --- more images than --max-request-images ------------------------------------------------
    "UINT8 over the image limit": Row(
        lambda: codec.images_request("tiny", random_images(MAX_REQUEST_IMAGES + 1)), INVALID,
        "carries 9 images; the limit is 8 per request (--max-request-images)",
    ),
    "BYTES over the image limit": Row(
        lambda: images(*[png()] * (MAX_REQUEST_IMAGES + 1)), INVALID,
        "carries 9 images; the limit is 8 per request (--max-request-images)",
    ),
    # --- decompression bombs: refused from the header, before any pixel is decoded --------------
    "PNG bomb 20000x20000": Row(lambda: images(png_bomb(20000)), INVALID, "(--max-image-pixels)"),
    "JPEG header 20000x20000": Row(lambda: images(jpeg_bomb(20000)), INVALID, "(--max-image-pixels)"),
    "PNG bomb 5000x5000": Row(
        lambda: images(png_bomb(5000)), INVALID,
        "image 0: PNG of 5000x5000 = 25,000,000 pixels is over the limit of 16,000,000 (--max-image-pixels)",
    ),
    "JPEG header 5000x5000": Row(
        lambda: images(jpeg_bomb(5000)), INVALID,
        "image 0: JPEG of 5000x5000 = 25,000,000 pixels is over the limit of 16,000,000 (--max-image-pixels)",
    ),
    "bomb behind a good image": Row(lambda: images(png(), png_bomb(5000)), INVALID, "image 1: PNG of 5000x5000"),
    # --- truncated and empty images -------------------------------------------------------------
    "truncated PNG": Row(lambda: images(png()[: len(png()) // 2]), INVALID, "image 0: not a decodable image"),
    "truncated JPEG": Row(lambda: images(jpeg()[: len(jpeg()) // 2]), INVALID, "image 0: not a decodable image"),
    "PNG signature only": Row(lambda: images(png()[:8]), INVALID, "image 0: not a PNG or JPEG image (8 bytes)"),
    "empty image": Row(lambda: images(b""), INVALID, "image 0: not a PNG or JPEG image (0 bytes)"),
    # --- formats the server does not decode ------------------------------------------------------
    **{
        f"{format} image": Row(functools.partial(lambda f: images(other_format(f)), format), INVALID, "image 0: not a PNG or JPEG image")
        for format in ("GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO")
    },
    "EPS (Ghostscript) header": Row(lambda: images(EPS), INVALID, "image 0: not a PNG or JPEG image"),
    # --- BYTES length prefixes that lie -----------------------------------------------------------
    "prefix longer than the rest": Row(
        lambda: encoded([1], struct.pack("<I", 100) + b"abc"), INVALID, "is malformed: BYTES element at byte 0 claims 100 bytes; 3 remain"
    ),
    "prefix 0xFFFFFFFF": Row(
        lambda: encoded([1], struct.pack("<I", 0xFFFFFFFF) + png()), INVALID, "claims 4294967295 bytes"
    ),
    "prefix cut short": Row(lambda: encoded([1], b"\x05\x00"), INVALID, "ends inside a length prefix at byte 0"),
    "more elements than the shape": Row(
        lambda: encoded([1], codec.encode_bytes([png(), png()])), INVALID, "holds more than the 1 elements its shape declares"
    ),
    "fewer elements than the shape": Row(
        lambda: encoded([2], codec.encode_bytes([png()])), INVALID, "BYTES input 'images' of shape [2] holds 1 elements"
    ),
    "no elements": Row(lambda: encoded([1], b""), INVALID, "of shape [1] holds 0 elements"),
    # --- typed contents with the wrong count ------------------------------------------------------
    "uint_contents one short": Row(lambda: typed_uint8([0] * (PIXELS - 1)), INVALID, "needs 64 values (raw_input_contents or contents.uint_contents), got 63"),
    "uint_contents one over": Row(lambda: typed_uint8([0] * (PIXELS + 1)), INVALID, "needs 64 values"),
    "uint_contents over 255": Row(lambda: typed_uint8([0] * (PIXELS - 1) + [256]), INVALID, "is UINT8 but holds 256"),
    "contents in the wrong field": Row(
        changed(lambda: uint8([1, 8, 8, 1]), lambda r: r.inputs[0].contents.fp32_contents.extend([0.0] * PIXELS)),
        INVALID, "needs 64 values (raw_input_contents or contents.uint_contents), got 0",
    ),
    "bytes_contents fewer than the shape": Row(lambda: typed_bytes([2], [png()]), INVALID, "of shape [2] holds 1 elements"),
    "bytes_contents more than the shape": Row(lambda: typed_bytes([2], [png()] * 3), INVALID, "of shape [2] holds 3 elements"),
    "two raw_input_contents for one input": Row(
        changed(valid, lambda r: r.raw_input_contents.append(bytes(PIXELS))), INVALID, "1 input but 2 raw_input_contents"
    ),
    # --- datatypes and inputs ----------------------------------------------------------------------
    "datatype FP32": Row(
        changed(lambda: uint8([1, 8, 8, 1], bytes(4 * PIXELS)), lambda r: setattr(r.inputs[0], "datatype", "FP32")),
        INVALID, "input 'images' has datatype FP32; expected 'images' as UINT8 [n, 8, 8, 1]",
    ),
    "datatype lower case": Row(changed(valid, lambda r: setattr(r.inputs[0], "datatype", "uint8")), INVALID, "has datatype uint8"),
    "datatype empty": Row(changed(valid, lambda r: setattr(r.inputs[0], "datatype", "")), INVALID, "has datatype (empty)"),
    "datatype junk": Row(changed(valid, lambda r: setattr(r.inputs[0], "datatype", "\x00\u2603")), INVALID, "has datatype \x00\u2603"),
    "two inputs": Row(
        changed(valid, lambda r: (r.inputs.add(name="images", datatype="UINT8", shape=[1, 8, 8, 1]),
                                  r.raw_input_contents.append(bytes(PIXELS)))),
        INVALID, "model 'tiny' takes one input 'images' as UINT8 [n, 8, 8, 1]",
    ),
    "no input": Row(lambda: pb.ModelInferRequest(model_name="tiny"), INVALID, "got inputs: none"),
    "wrong input name": Row(changed(valid, lambda r: setattr(r.inputs[0], "name", "pixels")), INVALID, "got inputs: 'pixels'"),
    # --- models and outputs ------------------------------------------------------------------------
    "unknown model": Row(changed(valid, lambda r: setattr(r, "model_name", "nope")), NOT_FOUND, "model 'nope' is not served; models: tiny"),
    "unknown version": Row(changed(valid, lambda r: setattr(r, "model_version", "2")), NOT_FOUND, "model 'tiny' has no version '2'"),
    "unknown output": Row(changed(valid, lambda r: r.outputs.add(name="features")), INVALID, "has no output 'features'"),
    "classification as a string": Row(
        lambda: classification(pb.InferParameter(string_param="3")), INVALID, "parameter 'classification' must be an int64 >= 1"
    ),
    "classification 0": Row(lambda: classification(pb.InferParameter(int64_param=0)), INVALID, "must be an int64 >= 1"),
    "classification negative": Row(lambda: classification(pb.InferParameter(int64_param=-(2**63))), INVALID, "must be an int64 >= 1"),
    "classification unset": Row(lambda: classification(pb.InferParameter()), INVALID, "must be an int64 >= 1"),
    # --- client-chosen strings far longer than any header: the status must still reach the client ----
    "100 KiB model name": Row(changed(valid, lambda r: setattr(r, "model_name", "m" * BIG)), NOT_FOUND, "is not served"),
    "100 KiB model version": Row(changed(valid, lambda r: setattr(r, "model_version", "9" * BIG)), NOT_FOUND, "has no version"),
    "100 KiB datatype": Row(changed(valid, lambda r: setattr(r.inputs[0], "datatype", "D" * BIG)), INVALID, "has datatype"),
    "100 KiB output name": Row(changed(valid, lambda r: r.outputs.add(name="o" * BIG)), INVALID, "has no output"),
    "shape of 50,000 dims": Row(lambda: uint8([1] * 50_000, bytes(PIXELS)), INVALID, "has shape"),
    # --- bytes that are no ModelInferRequest: the client's fault (any message) ----------------------
    "bytes that do not parse": Row(lambda: b"\xff\xff\xff\xff", INVALID, ""),
    "model name not UTF-8": Row(_serialized_with_bad_utf8_name, INVALID, ""),
    "length of a field past the end": Row(lambda: valid().SerializeToString()[:-10], INVALID, ""),
    # --- transport limits --------------------------------------------------------------------------
    "64 KiB header": Row(valid, EXHAUSTED, "metadata size exceeds hard limit", metadata=(("x-hostile", "a" * 64 * 1024),)),
    "message over the receive limit": Row(
        lambda: uint8([1, 8, 8, 1], bytes(MAX_MESSAGE_BYTES + 1)), EXHAUSTED, "Received message larger than max"
    ),
}


@pytest.fixture(scope="module")
def expected(tiny_model):
    return reference_outputs(tiny_model, random_images(1, seed=11))


def assert_served(stub, expected) -> None:
    """The server still answers a valid request, with the right numbers."""
    response = stub.ModelInfer(valid(), timeout=10)
    np.testing.assert_allclose(codec.response_arrays(response)["logits"], expected["logits"], rtol=1e-6)


@pytest.mark.parametrize("case", list(ROWS))
def test_hostile_request_gets_its_precise_status_and_the_server_keeps_serving(client, stub, expected, case):
    row = ROWS[case]
    request = row.build()
    send = client.channel.unary_unary(MODEL_INFER) if isinstance(request, bytes) else stub.ModelInfer
    with pytest.raises(grpc.RpcError) as error:
        send(request, metadata=row.metadata, timeout=30)
    code, details = error.value.code(), error.value.details() or ""
    assert code not in BROKEN, f"{case}: {code.name}: {details[:500]}"
    assert code == row.code, f"{case}: {code.name}: {details[:500]}"
    assert row.fragment in details, f"{case}: {code.name}: {details[:500]}"
    assert_served(stub, expected)


# --- load-dependent limits, each on a server of its own ---------------------------------------


def test_queue_over_max_queue_bytes_is_resource_exhausted_and_counted_in_images(tiny_model):
    # Room for 4 tiny images (64 bytes each) waiting per model.
    with start_server(settings_for(tiny_model, max_queue_bytes=4 * PIXELS, metrics=False)) as running:
        model = running.server.repository.get("tiny")
        batcher = running.server.batchers["tiny", "1"]
        with Gate(model) as gate, ThreadPoolExecutor(3) as pool, InferenceClient(running.address, timeout=30) as client:
            computing = pool.submit(client.infer, "tiny", random_images(1))
            assert gate.entered.wait(10)
            three = pool.submit(client.infer, "tiny", random_images(3, seed=1))
            wait_until(lambda: batcher.queue_depth == 1, what="3 images queued")
            with pytest.raises(grpc.RpcError) as error:
                client.infer("tiny", random_images(2, seed=2))  # 3 + 2 > 4
            assert error.value.code() == EXHAUSTED
            assert "has 3 images queued; 2 more would pass --max-queue-bytes 256 (4 images)" in error.value.details()
            one = pool.submit(client.infer, "tiny", random_images(1, seed=3))  # 3 + 1 <= 4: admitted
            wait_until(lambda: batcher.queue_depth == 2, what="4 images queued")
            gate.open()
            assert [f.result().outputs["logits"].shape for f in (computing, three, one)] == [(1, 3), (3, 3), (1, 3)]
        assert client_serves(running.address)


def test_decode_backlog_over_max_decode_backlog_is_resource_exhausted(tiny_model):
    settings = settings_for(tiny_model, decode_threads=1, max_decode_backlog=2, metrics=False)
    with start_server(settings) as running, InferenceClient(running.address, timeout=30) as client:
        release = threading.Event()
        blocker = running.server._decode.submit(release.wait, 30)  # the one decode thread is busy
        try:
            with ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(client.infer, "tiny", [png(), jpeg()])
                wait_until(lambda: running.server.service._decode_backlog == 2, what="2 images waiting to decode")
                with pytest.raises(grpc.RpcError) as error:
                    client.infer("tiny", [png()])
                assert error.value.code() == EXHAUSTED
                assert "2 encoded images are waiting to be decoded; 1 more would pass --max-decode-backlog 2" in (
                    error.value.details()
                )
                release.set()
                assert waiting.result().outputs["logits"].shape == (2, 3)
        finally:
            release.set()
            blocker.result()
        assert client.infer("tiny", [png()]).outputs["logits"].shape == (1, 3)
        assert client_serves(running.address)


def test_rpcs_over_max_concurrent_rpcs_are_resource_exhausted(tiny_model):
    with start_server(settings_for(tiny_model, max_concurrent_rpcs=2, metrics=False)) as running:
        model = running.server.repository.get("tiny")
        batcher = running.server.batchers["tiny", "1"]
        with Gate(model) as gate, ThreadPoolExecutor(2) as pool, InferenceClient(running.address, timeout=30) as client:
            computing = pool.submit(client.infer, "tiny", random_images(1))
            assert gate.entered.wait(10)
            queued = pool.submit(client.infer, "tiny", random_images(2))
            wait_until(lambda: batcher.queue_depth == 1, what="the second RPC queued")
            with pytest.raises(grpc.RpcError) as error:
                client.infer("tiny", random_images(1))
            assert error.value.code() == EXHAUSTED
            assert "Concurrent RPC limit exceeded" in error.value.details()
            gate.open()
            assert [f.result().outputs["logits"].shape for f in (computing, queued)] == [(1, 3), (2, 3)]
        assert client_serves(running.address)


def client_serves(address: str) -> bool:
    """A valid request is answered. gRPC frees a finished RPC's concurrency slot just after the client
    has its answer, so a RESOURCE_EXHAUSTED from the concurrency limit is retried (briefly)."""
    with InferenceClient(address, timeout=10) as client:
        for _ in range(100):
            try:
                return client.infer("tiny", random_images(1)).outputs["logits"].shape == (1, 3)
            except grpc.RpcError as error:
                if error.code() != EXHAUSTED or "Concurrent RPC limit" not in (error.details() or ""):
                    raise
                threading.Event().wait(0.01)
    return False
