"""The ONNX metadata contract between export/ (writes) and serve/ (reads).

An exported model is self-describing: everything a server needs to accept images and
name its outputs lives in the model's ``metadata_props``. This module is torch-free and
onnx-free at import, so the edge install (onnxruntime only) can read it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "edgecnn."
SCHEMA_VERSION = 1

# The one wire format every exported graph takes: uint8 pixels, NHWC, dynamic batch.
INPUT_NAME = "images"
INPUT_LAYOUT = "NHWC"
INPUT_DATATYPE = "UINT8"
LOGITS = "logits"
PROBABILITIES = "probabilities"


class MetadataError(ValueError):
    """The model file lacks edgecnn metadata or holds a malformed value."""


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    version: str
    labels: list[str]
    height: int
    width: int
    channels: int
    input_name: str = INPUT_NAME
    layout: str = INPUT_LAYOUT
    input_datatype: str = INPUT_DATATYPE
    output_names: list[str] = field(default_factory=lambda: [LOGITS, PROBABILITIES])
    architecture: str = ""
    variant: str = "fp32"  # fp32 | int8 | fp16 | dynamic
    source_run: str = ""
    test_accuracy: float | None = None
    # int8 files: the recipe the export chose and the CPU it was timed on (export/cpu.py): on another
    # CPU path another recipe may be faster. Empty in files written before these keys existed.
    int8_recipe: str = ""
    cpu_path: str = ""
    cpu_model: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_props(self) -> dict[str, str]:
        """Flat string map for ONNX ``metadata_props``: lists and numbers as JSON."""
        return {PREFIX + k: v if isinstance(v, str) else json.dumps(v) for k, v in asdict(self).items()}

    @classmethod
    def from_props(cls, props: dict[str, str]) -> "ModelMetadata":
        ours = {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}
        if not ours:
            raise MetadataError(
                "no edgecnn metadata in this model: import it with `edgecnn export MODEL.onnx -o OUT_DIR` "
                "(it records labels, input layout and image size in the file, preprocessing in the graph)"
            )
        values: dict[str, Any] = {}
        for f in cls.__dataclass_fields__.values():
            if f.name not in ours:
                continue
            raw = ours[f.name]
            try:
                values[f.name] = raw if f.type == "str" else json.loads(raw)
            except json.JSONDecodeError as exc:
                raise MetadataError(f"metadata key {PREFIX}{f.name} is not valid JSON: {raw!r}") from exc
        missing = [k for k in ("name", "version", "labels", "height", "width", "channels") if k not in values]
        if missing:
            raise MetadataError(f"model metadata is missing {', '.join(PREFIX + m for m in missing)}")
        return cls(**values)


def write_metadata(model_proto: Any, meta: ModelMetadata) -> None:
    """Set our keys on an ``onnx.ModelProto`` in place, keeping any foreign keys."""
    props = meta.to_props()
    kept = [p for p in model_proto.metadata_props if p.key not in props]
    del model_proto.metadata_props[:]
    for p in kept:
        model_proto.metadata_props.add(key=p.key, value=p.value)
    for key, value in props.items():
        model_proto.metadata_props.add(key=key, value=value)


def read_metadata(path: str | Path) -> ModelMetadata:
    """Read the metadata of an ONNX file with onnxruntime alone (no onnx, no torch)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    try:
        return metadata_of_session(session)
    except MetadataError as exc:
        raise MetadataError(f"{path}: {exc}") from exc


def metadata_of_session(session: Any) -> ModelMetadata:
    """Metadata of an already-open ``onnxruntime.InferenceSession``."""
    return ModelMetadata.from_props(dict(session.get_modelmeta().custom_metadata_map))
