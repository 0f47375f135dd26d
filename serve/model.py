"""One ONNX model: its onnxruntime session, its metadata, and the call that runs a batch."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgecnn.export.metadata import ModelMetadata, metadata_of_session
from edgecnn.serve.settings import ServeSettings

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# Triton's platform name for ONNX models, so OIP tooling recognises it; the provider follows a colon.
PLATFORM = "onnxruntime_onnx"
# onnxruntime's tensor types as OIP datatypes (what ModelMetadata reports).
DATATYPE_OF_ORT = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(uint8)": "UINT8",
    "tensor(int8)": "INT8",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
}


class ProviderUnavailable(RuntimeError):
    """`--provider cuda` on a machine where onnxruntime cannot use CUDA."""


@dataclass
class Model:
    name: str
    version: str
    path: Path
    metadata: ModelMetadata
    session: ort.InferenceSession
    provider: str  # the execution provider actually running the graph

    @property
    def platform(self) -> str:
        return f"{PLATFORM}:{self.provider}"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        m = self.metadata
        return (m.height, m.width, m.channels)

    def output_datatypes(self) -> dict[str, str]:
        return {o.name: DATATYPE_OF_ORT.get(o.type, o.type) for o in self.session.get_outputs()}

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        """Outputs (in ``metadata.output_names`` order) for a uint8 NHWC batch; call from a worker thread."""
        return self.session.run(self.metadata.output_names, {self.metadata.input_name: images})

    def warm_up(self) -> float:
        """One run on a blank image so the first request does not pay for allocations; seconds taken."""
        start = time.perf_counter()
        self.run(np.zeros((1, *self.image_shape), dtype=np.uint8))
        return time.perf_counter() - start


def load_model(path: Path, settings: ServeSettings, *, name: str | None = None, version: str | None = None) -> Model:
    """Open ``path`` on the provider ``settings`` ask for, check its metadata and warm it up.

    ``name``/``version`` (from a repository's folders) override the ones recorded in the file.
    """
    start = time.perf_counter()
    session = ort.InferenceSession(str(path), _session_options(settings), providers=_providers(settings.provider))
    provider = _provider_in_use(session, settings.provider)
    metadata = metadata_of_session(session)
    model = Model(
        name=name or metadata.name,
        version=version or metadata.version,
        path=path,
        metadata=metadata,
        session=session,
        provider=provider,
    )
    _check_signature(model)
    warm_s = model.warm_up()
    log.info(
        "model loaded",
        extra={
            "model": model.name,
            "version": model.version,
            "path": str(path),
            "provider": provider,
            "variant": metadata.variant,
            "input": [metadata.input_name, metadata.input_datatype, [-1, *model.image_shape]],
            "classes": metadata.num_classes,
            "load_ms": round((time.perf_counter() - start) * 1e3, 1),
            "warmup_ms": round(warm_s * 1e3, 1),
        },
    )
    return model


def session_options(intra_op_threads: int, inter_op_threads: int = 1, spinning: bool = False) -> ort.SessionOptions:
    """The one onnxruntime session set-up: the server's, and the in-process timing of bench and export,
    so a served figure over its compute floor measures what serving adds. 0 threads: onnxruntime's default."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    # Spinning idle intra-op threads steal the cores the gRPC event loop needs under load.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


def _session_options(settings: ServeSettings) -> ort.SessionOptions:
    return session_options(settings.intra_op_threads_resolved, settings.inter_op_threads, settings.ort_spinning)


def _providers(requested: str) -> list[str]:
    available = ort.get_available_providers()
    if requested == "cpu":
        return [CPU]
    if requested == "cuda" and CUDA not in available:
        raise ProviderUnavailable(
            f"--provider cuda: onnxruntime here offers only {', '.join(available)}; "
            "install onnxruntime-gpu with a working CUDA, or use --provider cpu"
        )
    if CUDA in available:  # cuda, or auto with CUDA present
        return [CUDA, CPU]
    return [CPU]


def _provider_in_use(session: ort.InferenceSession, requested: str) -> str:
    """onnxruntime quietly drops CUDA when its libraries fail to load: refuse that for `cuda`."""
    in_use = session.get_providers()[0]
    if requested == "cuda" and in_use != CUDA:
        raise ProviderUnavailable(
            f"--provider cuda: onnxruntime lists CUDA but could not start it (the session runs on {in_use}); "
            "check the CUDA/cuDNN libraries onnxruntime-gpu needs, or use --provider cpu"
        )
    if requested == "auto" and CUDA in ort.get_available_providers() and in_use != CUDA:
        log.warning("CUDA is installed but unusable; --provider auto runs on %s", in_use)
    return in_use


def _check_signature(model: Model) -> None:
    """The graph must take and give what its metadata promises, or every request would fail later."""
    m = model.metadata
    inputs = {i.name: i for i in model.session.get_inputs()}
    outputs = {o.name: o for o in model.session.get_outputs()}
    problems = []
    if m.input_name not in inputs:
        problems.append(f"no input named {m.input_name!r} (graph inputs: {sorted(inputs)})")
    elif inputs[m.input_name].type != "tensor(uint8)" or m.layout != "NHWC":
        problems.append(f"input {m.input_name!r} is {inputs[m.input_name].type} {m.layout}; serve needs uint8 NHWC")
    missing = [name for name in m.output_names if name not in outputs]
    if missing:
        problems.append(f"no outputs named {missing} (graph outputs: {sorted(outputs)})")
    for name in set(m.output_names) & set(outputs):
        classes = outputs[name].shape[-1]
        if isinstance(classes, int) and classes != m.num_classes:
            problems.append(f"output {name!r} has {classes} classes but the metadata lists {m.num_classes} labels")
    if problems:
        raise ValueError(f"{model.path}: " + "; ".join(problems))
