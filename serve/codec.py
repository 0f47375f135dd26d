"""Open Inference Protocol tensors <-> numpy, shared by the server, the client and the benchmarks.

- Tensors travel in ``raw_input_contents`` / ``raw_output_contents`` (little-endian, row-major);
  typed ``contents`` are accepted too.
- BYTES tensors are raw as a 4-byte little-endian length before each element.
- The classification extension: a requested output with parameter ``classification = k``
  comes back as a BYTES tensor ``[batch, k]`` of ``"score:index:label"`` (Triton's format).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from edgecnn.export.metadata import INPUT_NAME, PROBABILITIES, ModelMetadata
from edgecnn.protos import grpc_predict_v2_pb2 as pb
from edgecnn.serve.errors import InvalidInput, shown

CLASSIFICATION = "classification"

# OIP datatype -> numpy dtype and the typed-contents field carrying it.
DATATYPES: dict[str, tuple[np.dtype, str]] = {
    "BOOL": (np.dtype(np.bool_), "bool_contents"),
    "UINT8": (np.dtype(np.uint8), "uint_contents"),
    "UINT16": (np.dtype(np.uint16), "uint_contents"),
    "UINT32": (np.dtype(np.uint32), "uint_contents"),
    "UINT64": (np.dtype(np.uint64), "uint64_contents"),
    "INT8": (np.dtype(np.int8), "int_contents"),
    "INT16": (np.dtype(np.int16), "int_contents"),
    "INT32": (np.dtype(np.int32), "int_contents"),
    "INT64": (np.dtype(np.int64), "int64_contents"),
    "FP16": (np.dtype(np.float16), ""),  # raw only
    "FP32": (np.dtype(np.float32), "fp32_contents"),
    "FP64": (np.dtype(np.float64), "fp64_contents"),
}
DATATYPE_OF = {dtype: name for name, (dtype, _) in DATATYPES.items()}


@dataclass(frozen=True)
class Classification:
    score: float
    index: int
    label: str


# --- BYTES tensors -----------------------------------------------------------------------------


def encode_bytes(items: Sequence[bytes]) -> bytes:
    """Raw BYTES tensor: each element as a little-endian uint32 length, then its bytes."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def decode_bytes(raw: bytes, max_items: int | None = None) -> list[bytes]:
    """The elements of a raw BYTES tensor; more than ``max_items`` is an error found before reading on."""
    items = []
    offset = 0
    while offset < len(raw):
        if max_items is not None and len(items) == max_items:
            raise ValueError(f"holds more than the {max_items} elements its shape declares")
        if offset + 4 > len(raw):
            raise ValueError(f"BYTES tensor ends inside a length prefix at byte {offset}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ValueError(f"BYTES element at byte {offset - 4} claims {length} bytes; {len(raw) - offset} remain")
        items.append(raw[offset : offset + length])
        offset += length
    return items


# --- classification extension ------------------------------------------------------------------


def top_k_strings(scores: np.ndarray, k: int, labels: Sequence[str]) -> list[bytes]:
    """``[batch, min(k, classes)]`` strings "score:index:label", best first, row-major."""
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    # "%f" is how Triton's std::to_string prints the score.
    return [f"{row[i]:f}:{i}:{labels[i]}".encode() for row, best in zip(scores, order) for i in best]


def parse_classifications(strings: np.ndarray) -> list[list[Classification]]:
    """A ``[batch, k]`` BYTES array of "score:index:label" -> per image, best first."""
    parsed = []
    for row in np.asarray(strings, dtype=object).reshape(len(strings), -1):
        entries = []
        for item in row:
            score, index, *label = (item.decode() if isinstance(item, bytes) else str(item)).split(":", 2)
            entries.append(Classification(float(score), int(index), label[0] if label else ""))
        parsed.append(entries)
    return parsed


# --- requests (client side) --------------------------------------------------------------------


def images_request(
    model: str,
    images: np.ndarray,
    *,
    version: str = "",
    top_k: int | None = None,
    outputs: Sequence[str] | None = None,
    request_id: str = "",
    input_name: str = INPUT_NAME,
) -> pb.ModelInferRequest:
    """A ModelInfer request for uint8 pixels ``[n, H, W, C]`` (one ``[H, W, C]`` image becomes n = 1)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8 NHWC pixels, got {images.dtype}")
    if images.ndim == 3:
        images = images[np.newaxis]
    if images.ndim != 4:
        raise ValueError(f"images must be [n, height, width, channels], got shape {images.shape}")
    return _request(model, version, request_id, input_name, "UINT8", images.shape, images.tobytes(), top_k, outputs)


def encoded_images_request(
    model: str,
    images: Sequence[bytes],
    *,
    version: str = "",
    top_k: int | None = None,
    outputs: Sequence[str] | None = None,
    request_id: str = "",
    input_name: str = INPUT_NAME,
) -> pb.ModelInferRequest:
    """A ModelInfer request for encoded images (PNG, JPEG, ...) as a BYTES input ``[n]``; the server decodes."""
    raw = encode_bytes([bytes(image) for image in images])
    return _request(model, version, request_id, input_name, "BYTES", [len(images)], raw, top_k, outputs)


def _request(model, version, request_id, input_name, datatype, shape, raw, top_k, outputs) -> pb.ModelInferRequest:
    """One input in raw_input_contents. No outputs named and no top_k: the server returns every output;
    top_k asks for the classification of the probabilities."""
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    request.inputs.add(name=input_name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    names = list(outputs or [])
    if top_k is not None:
        if PROBABILITIES in names:
            raise ValueError(f"{PROBABILITIES!r} cannot be both a raw output and the top-k classification")
        classified = request.outputs.add(name=PROBABILITIES)
        classified.parameters[CLASSIFICATION].int64_param = top_k
    for name in names:
        request.outputs.add(name=name)
    return request


# --- responses (client side) -------------------------------------------------------------------


def response_arrays(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Every output of a ModelInfer response as numpy (BYTES as an object array of bytes)."""
    arrays = {}
    for i, tensor in enumerate(response.outputs):
        raw = response.raw_output_contents[i] if response.raw_output_contents else None
        shape = tuple(tensor.shape)
        if tensor.datatype == "BYTES":
            items = decode_bytes(raw) if raw is not None else list(tensor.contents.bytes_contents)
            array = np.empty(len(items), dtype=object)
            array[:] = items
        elif raw is not None:
            array = np.frombuffer(raw, dtype=DATATYPES[tensor.datatype][0])
        else:
            dtype, field = DATATYPES[tensor.datatype]
            array = np.array(getattr(tensor.contents, field), dtype=dtype)
        arrays[tensor.name] = array.reshape(shape)
    return arrays


def response_parameters(response: pb.ModelInferResponse) -> dict[str, int | str | bool]:
    return {key: getattr(p, p.WhichOneof("parameter_choice")) for key, p in response.parameters.items()}


# --- requests (server side) --------------------------------------------------------------------


def request_images(request: pb.ModelInferRequest, meta: ModelMetadata, max_images: int) -> np.ndarray | list[bytes]:
    """The request's images: a uint8 NHWC view of its bytes, or encoded images (BYTES) to decode.

    Raises InvalidInput saying what the model expects. Shapes and counts are checked against the
    bytes and against ``max_images`` before anything is copied or parsed element by element.
    """
    if len(request.inputs) != 1 or request.inputs[0].name != meta.input_name:
        got = ", ".join(shown(t.name) for t in request.inputs[:8]) or "none"
        raise InvalidInput(f"model {meta.name!r} takes one input {_expected(meta)}; got inputs: {got}")
    tensor = request.inputs[0]
    raw = None
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidInput(f"1 input but {len(request.raw_input_contents)} raw_input_contents")
        raw = request.raw_input_contents[0]
    if tensor.datatype == "UINT8":
        return _pixels(tensor, raw, meta, max_images)
    if tensor.datatype == "BYTES":
        return _encoded(tensor, raw, max_images)
    raise InvalidInput(f"input {shown(tensor.name)} has datatype {shown(tensor.datatype, quote=False) if tensor.datatype else '(empty)'}; expected {_expected(meta)}")


def _expected(meta: ModelMetadata) -> str:
    return (
        f"{meta.input_name!r} as UINT8 [n, {meta.height}, {meta.width}, {meta.channels}] ({meta.layout} pixels) "
        f"or BYTES [n] (encoded PNG/JPEG images)"
    )


def _check_image_count(tensor, count: int, max_images: int) -> None:
    if count > max_images:
        raise InvalidInput(
            f"input {shown(tensor.name)} carries {count} images; the limit is {max_images} per request "
            f"(--max-request-images): split it into several requests"
        )


def _pixels(tensor, raw: bytes | None, meta: ModelMetadata, max_images: int) -> np.ndarray:
    shape = tuple(tensor.shape)
    if len(shape) != 4 or shape[1:] != (meta.height, meta.width, meta.channels) or shape[0] < 1:
        raise InvalidInput(f"input {shown(tensor.name)} has shape {shown(list(shape))}; expected {_expected(meta)}")
    _check_image_count(tensor, shape[0], max_images)
    count = math.prod(shape)
    if raw is not None:
        if len(raw) != count:
            raise InvalidInput(
                f"input {shown(tensor.name)} of shape {shown(list(shape))} needs {count} bytes of UINT8 data, got {len(raw)}"
            )
        return np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    if len(tensor.contents.uint_contents) != count:  # before converting: counting is free
        raise InvalidInput(
            f"input {shown(tensor.name)} of shape {shown(list(shape))} needs {count} values (raw_input_contents or "
            f"contents.uint_contents), got {len(tensor.contents.uint_contents)}"
        )
    values = np.array(tensor.contents.uint_contents, dtype=np.uint32)
    if values.max() > 255:
        raise InvalidInput(f"input {shown(tensor.name)} is UINT8 but holds {values.max()}")
    return values.astype(np.uint8).reshape(shape)


def _encoded(tensor, raw: bytes | None, max_images: int) -> list[bytes]:
    shape = tuple(tensor.shape)
    if len(shape) not in (1, 2) or shape[0] < 1 or shape[1:] not in ((), (1,)):
        raise InvalidInput(f"BYTES input {shown(tensor.name)} has shape {shown(list(shape))}; expected [n] or [n, 1] encoded images")
    _check_image_count(tensor, shape[0], max_images)
    if raw is None:  # typed contents: count them before copying them
        count = len(tensor.contents.bytes_contents)
        items = list(tensor.contents.bytes_contents) if count == shape[0] else []
    else:
        try:
            items = decode_bytes(raw, max_items=shape[0])
        except ValueError as exc:
            raise InvalidInput(f"BYTES input {shown(tensor.name)} is malformed: {exc}") from exc
        count = len(items)
    if count != shape[0]:
        raise InvalidInput(f"BYTES input {shown(tensor.name)} of shape {shown(list(shape))} holds {count} elements")
    return items


class RequestedOutput(NamedTuple):
    name: str
    index: int  # position in the model's outputs
    top_k: int | None  # the classification extension


def requested_outputs(request: pb.ModelInferRequest, meta: ModelMetadata) -> list[RequestedOutput]:
    """What to return: the named outputs (maybe classified), or every output when none is named."""
    if not request.outputs:
        return [RequestedOutput(name, i, None) for i, name in enumerate(meta.output_names)]
    wanted = []
    for output in request.outputs:
        if output.name not in meta.output_names:
            outputs = ", ".join(meta.output_names)
            raise InvalidInput(f"model {meta.name!r} has no output {shown(output.name)}; outputs: {outputs}")
        top_k = None
        if CLASSIFICATION in output.parameters:
            param = output.parameters[CLASSIFICATION]
            if param.WhichOneof("parameter_choice") != "int64_param" or param.int64_param < 1:
                raise InvalidInput(f"output {shown(output.name)}: parameter 'classification' must be an int64 >= 1")
            top_k = param.int64_param
        wanted.append(RequestedOutput(output.name, meta.output_names.index(output.name), top_k))
    return wanted


def output_tensor(rows: np.ndarray, top_k: int | None, labels: Sequence[str]) -> tuple[str, list[int], bytes]:
    """(datatype, shape, raw bytes) of one output: the rows themselves or their top-k classification."""
    if top_k is None:
        return DATATYPE_OF[rows.dtype], list(rows.shape), rows.tobytes()
    strings = top_k_strings(rows, top_k, labels)
    return "BYTES", [len(rows), len(strings) // len(rows)], encode_bytes(strings)
