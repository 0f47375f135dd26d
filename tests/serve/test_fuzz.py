"""Protobuf-level fuzzing of ModelInfer against one real server, over one channel, one call at a time.

Whatever a client sends, the answer is a status that blames the request (INVALID_ARGUMENT,
NOT_FOUND, RESOURCE_EXHAUSTED, ...) or a result (OK); never INTERNAL or UNKNOWN, which say the
server broke. Afterwards the server is alive and serves a valid request.

At least 10,000 requests in all: each fuzzer asserts that it sent its own share, the shares add up
to 10,000, and each fuzzer checks afterwards that the server still serves, so every test stands on its
own, in any order or alone:

- ``test_structured_requests``: hypothesis builds ModelInferRequests field by field (any names,
  the OIP datatypes and junk, shapes of any int64 including negative and huge, raw contents that
  fit the shape or not, encoded images (good, corrupted, truncated, other formats, bombs), typed
  contents, parameters, requested outputs with classification parameters of any type).
- ``test_mutated_bytes_hypothesis``: hypothesis picks byte-level mutations (flips, overwrites,
  inserts, deletes, truncation) of valid serialized requests, sent raw.
- ``test_mutated_bytes_seeded``: the same kind of mutation from a seeded ``random.Random`` in a
  plain loop. Hypothesis spends a few milliseconds per example generating and tracking it; this
  loop sends several times as many requests in the same time, so it carries half of the 10,000.

Raw requests go through ``channel.unary_unary(".../ModelInfer")`` with no serializer: the bytes
reach the server exactly as mutated, including bytes that do not parse as a ModelInferRequest.
The status distribution of each test is printed (``pytest -s``) and included in failure messages.
"""

from __future__ import annotations

import io
import random
import struct
from collections import Counter

import grpc
import numpy as np
import pytest
from edgecnn.protos import grpc_predict_v2_pb2 as pb
from edgecnn.protos import grpc_predict_v2_pb2_grpc as pb_grpc
from edgecnn.serve import codec
from edgecnn.serve.client import CHANNEL_OPTIONS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.helpers.models import random_images, reference_outputs
from tests.helpers.serving import encode

BROKEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"

STRUCTURED = 3_000
HYPOTHESIS_MUTATIONS = 1_000
SEEDED_MUTATIONS = 6_000
TOTAL = 10_000

FUZZ_SETTINGS = dict(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

SENT: Counter[str] = Counter()  # requests sent, per test
STATUSES: dict[str, Counter[str]] = {}  # status names, per test


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        yield channel


@pytest.fixture(scope="module")
def fuzz_stub(channel):
    return pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def send_raw(channel):
    return channel.unary_unary(MODEL_INFER)  # no serializers: bytes in, bytes out


def _status(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def _record(test: str, code: grpc.StatusCode) -> None:
    SENT[test] += 1
    STATUSES.setdefault(test, Counter())[code.name] += 1


def _start(test: str) -> None:
    """Count this test's requests from zero: a rerun does not count the last run's."""
    SENT[test] = 0
    STATUSES[test] = Counter()


def _assert_serves(server, fuzz_stub, tiny_model) -> None:
    """After a fuzzer: the server is alive and ready, answers a valid request correctly, holds nothing."""
    assert fuzz_stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    assert fuzz_stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    images = random_images(3, seed=4)
    arrays = codec.response_arrays(fuzz_stub.ModelInfer(codec.images_request("tiny", images), timeout=10))
    np.testing.assert_allclose(arrays["logits"], reference_outputs(tiny_model, images)["logits"], rtol=1e-6)
    batcher = server.server.batchers["tiny", "1"]
    assert (batcher.queue_depth, server.server.service.drain.in_flight) == (0, 0)


def _distribution(test: str) -> str:
    return ", ".join(f"{name}: {count}" for name, count in STATUSES.get(test, Counter()).most_common())


# --- encoded images: good ones, odd ones, broken ones ----------------------------------------------


def _save(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def _image_pool() -> list[bytes]:
    rng = np.random.default_rng(5)
    grey = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)
    colour = rng.integers(0, 256, (24, 16, 3), dtype=np.uint8)
    png, jpeg = encode(grey, "PNG"), encode(colour, "JPEG")
    return [
        png,
        jpeg,
        encode(colour, "PNG"),
        _save(Image.fromarray(colour).convert("RGBA"), "PNG"),
        _save(Image.fromarray(colour).convert("P"), "PNG"),
        _save(Image.fromarray(colour).convert("LA"), "PNG"),
        _save(Image.fromarray(colour).convert("1"), "PNG"),
        _save(Image.fromarray(colour.astype(np.uint16)[..., 0] * 257), "PNG"),  # 16-bit grey
        _save(Image.fromarray(colour).convert("CMYK"), "JPEG"),
        _save(Image.fromarray(colour), "JPEG", progressive=True),
        _save(Image.fromarray(colour), "JPEG", quality=5, subsampling=2),
        _save(Image.new("1", (5000, 5000)), "PNG"),  # over --max-image-pixels
        _save(Image.new("L", (1, 4000)), "PNG"),  # a thin one, within the limit
        _save(Image.fromarray(colour), "GIF"),
        _save(Image.fromarray(colour), "BMP"),
        _save(Image.fromarray(colour), "TIFF"),
        _save(Image.fromarray(colour), "WEBP"),
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n",
        png[: len(png) // 2],
        jpeg[: len(jpeg) // 2],
        png[:8],
        jpeg[:2],
        b"",
    ]


IMAGES = _image_pool()
DECODABLE = IMAGES[:11]  # the PNGs and JPEGs above that the server decodes


# --- structured requests (hypothesis) -------------------------------------------------------------

DATATYPES = list(codec.DATATYPES) + ["BYTES", "BF16"]
JUNK_DATATYPES = ["", "uint8", "STRING", "UINT8 ", "TYPE_UINT8", "FP8", "\x00"]
text = st.text(max_size=24)
names = st.one_of(st.sampled_from(["images", "tiny", "", "logits", "probabilities", "classification"]), text)
int64s = st.integers(-(2**63), 2**63 - 1)
dims = st.one_of(st.sampled_from([1, 2, 8, 9, 0, -1, 3, 2**31, 2**32 + 1, 2**40, 2**63 - 1, -(2**63)]), int64s)
shapes = st.one_of(
    st.sampled_from([[1, 8, 8, 1], [2, 8, 8, 1], [8, 8, 8, 1], [9, 8, 8, 1], [1], [2], [8], [9], [1, 1], [3, 1], []]),
    st.lists(dims, max_size=6),
)
parameters = st.one_of(
    st.builds(pb.InferParameter, bool_param=st.booleans()),
    st.builds(pb.InferParameter, int64_param=st.one_of(st.integers(-3, 5), int64s)),
    st.builds(pb.InferParameter, string_param=st.one_of(st.sampled_from(["1", "3", "-1", ""]), text)),
    st.just(pb.InferParameter()),
)
parameter_maps = st.dictionaries(st.one_of(st.just("classification"), text), parameters, max_size=3)
uint32s = st.integers(0, 2**32 - 1)
contents = st.builds(
    pb.InferTensorContents,
    bool_contents=st.lists(st.booleans(), max_size=4),
    int_contents=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=4),
    int64_contents=st.lists(int64s, max_size=4),
    uint_contents=st.one_of(
        st.lists(uint32s, max_size=4),
        st.lists(st.integers(0, 255), min_size=64, max_size=64),
        st.lists(st.integers(0, 300), min_size=63, max_size=65),
        st.lists(st.integers(0, 255), min_size=128, max_size=128),
    ),
    uint64_contents=st.lists(st.integers(0, 2**64 - 1), max_size=4),
    fp32_contents=st.lists(st.floats(width=32, allow_nan=True), max_size=4),
    fp64_contents=st.lists(st.floats(allow_nan=True), max_size=4),
    bytes_contents=st.lists(st.one_of(st.sampled_from(IMAGES), st.binary(max_size=32)), max_size=3),
)


@st.composite
def images(draw) -> bytes:
    """One encoded image: from the pool, maybe corrupted at a few bytes."""
    data = bytearray(draw(st.sampled_from(IMAGES)))
    for _ in range(draw(st.integers(0, 3)) if data else 0):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@st.composite
def raw_contents(draw, shape: list[int]) -> bytes:
    """Bytes that fit ``shape`` as UINT8 pixels, encoded images (maybe with lying length prefixes), or noise."""
    count = int(np.prod(shape, dtype=object)) if shape else 0
    choices = ["noise", "encoded", "prefixes"] + (["pixels", "pixels"] if 0 < count <= 1024 else [])
    kind = draw(st.sampled_from(choices))
    if kind == "pixels":
        return draw(st.binary(min_size=count, max_size=count))
    if kind == "encoded":
        return codec.encode_bytes(draw(st.lists(images(), max_size=4)))
    if kind == "prefixes":
        items = draw(st.lists(st.tuples(st.one_of(uint32s, st.integers(0, 40)), st.binary(max_size=40)), max_size=4))
        return b"".join(struct.pack("<I", length) + body for length, body in items)
    return draw(st.binary(max_size=128))


@st.composite
def input_tensors(draw, request: pb.ModelInferRequest) -> None:
    """A wild input tensor (any name, datatype, shape, contents), maybe with raw contents."""
    datatype = draw(st.one_of(st.sampled_from(["UINT8", "BYTES"]), st.sampled_from(DATATYPES + JUNK_DATATYPES), text))
    shape = draw(shapes)
    tensor = request.inputs.add(name=draw(st.one_of(st.just("images"), names)), datatype=datatype, shape=shape)
    for key, value in draw(parameter_maps).items():
        tensor.parameters[key].CopyFrom(value)
    if draw(st.booleans()):
        tensor.contents.CopyFrom(draw(contents))
    if draw(st.integers(0, 3)):  # mostly raw contents, as clients send them
        request.raw_input_contents.append(draw(raw_contents(shape)))


@st.composite
def valid_requests(draw) -> pb.ModelInferRequest:
    """A request the server answers OK: pixels (raw or typed) or encoded images, maybe classified."""
    count = draw(st.integers(1, 8))
    kind = draw(st.sampled_from(["raw", "raw", "typed", "encoded"]))
    name, version = draw(st.sampled_from(["tiny", ""])), draw(st.sampled_from(["", "1"]))
    if kind == "encoded":
        items = draw(st.lists(st.sampled_from(DECODABLE), min_size=1, max_size=count))
        request = codec.encoded_images_request(name, items, version=version)
    else:
        pixels = np.frombuffer(draw(st.binary(min_size=64 * count, max_size=64 * count)), np.uint8)
        request = codec.images_request(name, pixels.reshape(count, 8, 8, 1), version=version)
        if kind == "typed":
            request.ClearField("raw_input_contents")
            request.inputs[0].contents.uint_contents.extend(pixels.tolist())
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        output = request.outputs.add(name=draw(st.sampled_from(["logits", "probabilities"])))
        if draw(st.booleans()):
            output.parameters["classification"].int64_param = draw(st.one_of(st.integers(1, 4), st.just(2**63 - 1)))
    return request


def _set(message, field: str, value) -> None:
    setattr(message, field, value)


@st.composite
def perturbed_requests(draw) -> pb.ModelInferRequest:
    """A valid request with 0-3 fields changed to anything: most requests get deep into the server."""
    request = draw(valid_requests())
    tensor = request.inputs[0]
    perturbations = {
        "model name": lambda: _set(request, "model_name", draw(names)),
        "model version": lambda: _set(request, "model_version", draw(st.one_of(st.sampled_from(["2", "01", "1 "]), text))),
        "id": lambda: _set(request, "id", draw(text)),
        "request parameters": lambda: [request.parameters[k].CopyFrom(v) for k, v in draw(parameter_maps).items()],
        "input name": lambda: _set(tensor, "name", draw(names)),
        "datatype": lambda: _set(tensor, "datatype", draw(st.sampled_from(DATATYPES + JUNK_DATATYPES))),
        "shape": lambda: (tensor.ClearField("shape"), tensor.shape.extend(draw(shapes))),
        "one dim": lambda: tensor.shape.__setitem__(draw(st.integers(0, len(tensor.shape) - 1)), draw(dims))
        if tensor.shape else tensor.shape.append(draw(dims)),  # an earlier change may have left no dims
        "tensor parameters": lambda: [tensor.parameters[k].CopyFrom(v) for k, v in draw(parameter_maps).items()],
        "typed contents": lambda: tensor.contents.CopyFrom(draw(contents)),
        "raw contents": lambda: (request.ClearField("raw_input_contents"),
                                 request.raw_input_contents.append(draw(raw_contents(list(tensor.shape))))),
        "no raw contents": lambda: request.ClearField("raw_input_contents"),
        "extra raw contents": lambda: request.raw_input_contents.append(draw(st.binary(max_size=64))),
        "extra input": lambda: draw(input_tensors(request)),
        "output": lambda: [
            output.parameters[k].CopyFrom(v)
            for output in [request.outputs.add(name=draw(names))]
            for k, v in draw(parameter_maps).items()
        ],
        "classification": lambda: request.outputs.add(name="probabilities").parameters["classification"].CopyFrom(
            draw(parameters)
        ),
    }
    for change in draw(st.lists(st.sampled_from(sorted(perturbations)), max_size=3)):
        perturbations[change]()
    return request


@st.composite
def wild_requests(draw) -> pb.ModelInferRequest:
    """Every field drawn from scratch."""
    request = pb.ModelInferRequest(
        model_name=draw(st.one_of(st.sampled_from(["tiny", ""]), names)),
        model_version=draw(st.one_of(st.sampled_from(["", "1", "2"]), text)),
        id=draw(text),
    )
    for key, value in draw(parameter_maps).items():
        request.parameters[key].CopyFrom(value)
    for _ in range(draw(st.sampled_from([1, 1, 0, 2, 3]))):
        draw(input_tensors(request))
    for _ in range(draw(st.integers(0, 2))):  # stray raw contents beyond the inputs
        request.raw_input_contents.append(draw(st.binary(max_size=64)))
    for _ in range(draw(st.sampled_from([0, 1, 2]))):
        output = request.outputs.add(name=draw(st.one_of(st.sampled_from(["logits", "probabilities"]), names)))
        for key, value in draw(parameter_maps).items():
            output.parameters[key].CopyFrom(value)
    return request


requests = st.one_of(perturbed_requests(), perturbed_requests(), wild_requests())


def test_structured_requests(server, fuzz_stub, tiny_model):
    test = "structured"
    _start(test)

    @settings(max_examples=STRUCTURED, **FUZZ_SETTINGS)
    @given(requests)
    def send(request):
        code = _status(lambda: fuzz_stub.ModelInfer(request, timeout=30))
        _record(test, code)
        assert code not in BROKEN, f"{code.name} for {request}"

    send()
    print(f"\n{test}: {SENT[test]} requests: {_distribution(test)}")
    assert SENT[test] >= STRUCTURED, _distribution(test)
    assert STATUSES[test]["OK"] > 0, "the fuzzer never reached inference"
    assert STATUSES[test]["INVALID_ARGUMENT"] > 0 and STATUSES[test]["NOT_FOUND"] > 0
    _assert_serves(server, fuzz_stub, tiny_model)


# --- byte-level mutation of valid serialized requests -------------------------------------------


def _seeds() -> list[bytes]:
    """Valid ModelInferRequests, serialized: the starting points of the mutations."""
    grey = random_images(2, seed=1)
    typed = pb.ModelInferRequest(model_name="tiny", id="typed")
    typed.inputs.add(name="images", datatype="UINT8", shape=[1, 8, 8, 1]).contents.uint_contents.extend(
        grey[0].ravel().tolist()
    )
    with_parameters = codec.images_request("tiny", grey[:1], version="1", outputs=["logits"], request_id="p")
    with_parameters.parameters["priority"].int64_param = 1
    with_parameters.inputs[0].parameters["binary_data_size"].int64_param = 64
    return [
        request.SerializeToString()
        for request in (
            codec.images_request("tiny", grey),
            codec.images_request("tiny", grey[:1], top_k=2),
            codec.encoded_images_request("tiny", [IMAGES[0], IMAGES[1]], top_k=1),
            codec.encoded_images_request("tiny", [IMAGES[0]], outputs=["probabilities"]),
            typed,
            with_parameters,
        )
    ]


SEEDS = _seeds()
INTERESTING = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0x08, 0x0A, 0x12, 0x1A, 0x2A, 0x3A]
HUGE_VARINT = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"


def mutate(data: bytes, rng: random.Random) -> bytes:
    """1-4 byte-level mutations of ``data``: flips, overwrites, inserts, deletes, duplicates, splices."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        position = rng.randrange(len(data) + 1)
        operation = rng.randrange(9)
        if operation == 0 and data:  # flip one bit
            position = min(position, len(data) - 1)
            data[position] ^= 1 << rng.randrange(8)
        elif operation == 1 and data:  # an interesting byte
            data[min(position, len(data) - 1)] = rng.choice(INTERESTING)
        elif operation == 2 and data:  # a random byte
            data[min(position, len(data) - 1)] = rng.randrange(256)
        elif operation == 3:  # insert random bytes
            data[position:position] = rng.randbytes(rng.randint(1, 8))
        elif operation == 4:  # delete a range
            del data[position : position + rng.randint(1, 16)]
        elif operation == 5:  # duplicate a range
            data[position:position] = data[position : position + rng.randint(1, 32)]
        elif operation == 6:  # truncate
            del data[position:]
        elif operation == 7:  # a huge varint (a length or a tag)
            data[position:position] = HUGE_VARINT[rng.randrange(len(HUGE_VARINT)) :]
        else:  # splice in a piece of another seed
            other = rng.choice(SEEDS)
            start = rng.randrange(len(other))
            data[position:position] = other[start : start + rng.randint(1, 64)]
    return bytes(data)


def _parses(data: bytes) -> bool:
    try:
        pb.ModelInferRequest.FromString(data)
    except Exception:  # noqa: BLE001 - DecodeError, or whatever protobuf raises on junk
        return False
    return True


class Mutants:
    """Per test: statuses split by whether the bytes parse as a ModelInferRequest, and the first broken ones."""

    def __init__(self, test: str) -> None:
        self.test = test
        _start(test)
        self.by_parse: Counter[tuple[bool, str]] = Counter()
        self.broken: list[tuple[bool, str, bytes]] = []

    def send(self, send_raw, data: bytes) -> None:
        code = _status(lambda: send_raw(data, timeout=30))
        _record(self.test, code)
        parses = _parses(data)
        self.by_parse[parses, code.name] += 1
        if code in BROKEN and len(self.broken) < 5:
            self.broken.append((parses, code.name, data))

    def check(self, planned: int) -> None:
        print(f"\n{self.test}: {SENT[self.test]} requests: {_distribution(self.test)}")
        print(f"  by (parses as ModelInferRequest, status): {dict(self.by_parse)}")
        assert SENT[self.test] >= planned
        examples = "\n".join(f"  parses={p} {name}: {data[:48].hex()}" for p, name, data in self.broken)
        parsed_broken = [b for b in self.broken if b[0]]
        assert not parsed_broken, f"requests that parse got INTERNAL/UNKNOWN:\n{examples}\n{dict(self.by_parse)}"
        assert not self.broken, (
            f"bytes that are no ModelInferRequest got INTERNAL/UNKNOWN, not INVALID_ARGUMENT:\n{examples}\n"
            f"{dict(self.by_parse)}"
        )


@st.composite
def mutated(draw) -> bytes:
    seed = draw(st.sampled_from(SEEDS))
    return mutate(seed, random.Random(draw(st.integers(0, 2**32 - 1))))


def test_mutated_bytes_hypothesis(send_raw, server, fuzz_stub, tiny_model):
    mutants = Mutants("hypothesis mutations")

    @settings(max_examples=HYPOTHESIS_MUTATIONS, **FUZZ_SETTINGS)
    @given(st.one_of(mutated(), st.binary(max_size=256)))
    def send(data):
        mutants.send(send_raw, data)

    send()
    mutants.check(HYPOTHESIS_MUTATIONS)
    _assert_serves(server, fuzz_stub, tiny_model)


def test_mutated_bytes_seeded(send_raw, server, fuzz_stub, tiny_model):
    mutants = Mutants("seeded mutations")
    rng = random.Random(20240601)
    for i in range(SEEDED_MUTATIONS):
        for _ in range(4):  # most mutants do not parse: try a few times for one that does
            data = SEEDS[i % len(SEEDS)]
            for _ in range(rng.choice([1, 1, 1, 2, 3])):  # sometimes mutants of mutants
                data = mutate(data, rng)
            if _parses(data):
                break
        mutants.send(send_raw, data)
    mutants.check(SEEDED_MUTATIONS)
    _assert_serves(server, fuzz_stub, tiny_model)


def test_the_fuzzers_send_at_least_10000_requests_in_all():
    """Each fuzzer asserts that it sent its share (and that the server serves afterwards); the shares
    add up to the 10,000, whichever order the tests run in."""
    assert STRUCTURED + HYPOTHESIS_MUTATIONS + SEEDED_MUTATIONS >= TOTAL
