"""One ONNX model: its onnxruntime session, its metadata, and the call that runs a batch."""

from __future__ import annotations

import logging
import math
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort

from edgecnn.export.cpu import cpu_path
from edgecnn.export.metadata import ModelMetadata, metadata_of_session
from edgecnn.serve.settings import ServeSettings
from edgecnn.serve.userfiles import open_session

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


# A batch-1 run at least this long makes the intra-op pool's per-node wake-ups (tens of microseconds)
# negligible: such models get no single-threaded session for small batches.
PARALLEL_ALWAYS_PAYS_S = 0.002
# Room in a request message for everything but its pixels (names, shapes, parameters).
MESSAGE_OVERHEAD = 64 * 1024


class ProviderUnavailable(RuntimeError):
    """`--provider cuda` on a machine where onnxruntime cannot use CUDA."""


@dataclass
class Model:
    name: str
    version: str
    path: Path
    metadata: ModelMetadata
    session: ort.InferenceSession  # on every intra-op thread
    provider: str  # the execution provider actually running the graph
    # Batches smaller than ``single_thread_below`` run on this one-thread session of the same graph:
    # on small batches, waking onnxruntime's thread pool for every node costs more than it saves.
    single_thread_session: ort.InferenceSession | None = None
    single_thread_below: int = 1
    # Sessions of instances 1, 2, ... (instance 0 runs on ``session``): each its own intra-op thread
    # pool, since runs side by side on one session would share one pool.
    instance_sessions: list[ort.InferenceSession] = field(default_factory=list)

    @property
    def platform(self) -> str:
        return f"{PLATFORM}:{self.provider}"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        m = self.metadata
        return (m.height, m.width, m.channels)

    def output_datatypes(self) -> dict[str, str]:
        return {o.name: DATATYPE_OF_ORT.get(o.type, o.type) for o in self.session.get_outputs()}

    def run(self, images: np.ndarray, instance: int = 0) -> list[np.ndarray]:
        """Outputs (in ``metadata.output_names`` order) for a uint8 NHWC batch; call from a worker thread."""
        if len(images) < self.single_thread_below:
            session = self.single_thread_session
        else:
            # Instances without a session of their own (single-threaded runs) share the first: sessions are thread-safe.
            session = self.instance_sessions[instance - 1] if 0 < instance <= len(self.instance_sessions) else self.session
        return session.run(self.metadata.output_names, {self.metadata.input_name: images})

    def open_instance_sessions_in_background(self, settings: ServeSettings) -> None:
        """On CPU with several threads a run, instances 1, 2, ... get sessions of their own, opened after
        the server is up (a big model takes a second or more to open); until then, and on CUDA (one
        copy of the weights on the GPU), they share the first session, which is thread-safe."""
        if settings.instances_resolved < 2 or settings.intra_op_threads_resolved < 2 or self.provider != CPU:
            return

        def open_sessions() -> None:
            try:
                sessions = [
                    ort.InferenceSession(str(self.path), _session_options(settings), providers=[CPU])
                    for _ in range(settings.instances_resolved - 1)
                ]
                self.warm_up(*sessions)
            except Exception:  # noqa: BLE001 - serving goes on, on the first session
                log.exception("could not open the other instances' sessions; they share the first",
                              extra={"model": self.name})
                return
            self.instance_sessions = sessions
            log.info("instance sessions ready", extra={"model": self.name, "version": self.version, "count": len(sessions)})

        try:
            threading.Thread(target=open_sessions, name=f"edgecnn-open-{self.name}", daemon=True).start()
        except RuntimeError:  # "can't start new thread": serving goes on, on the first session
            log.exception("could not start opening the other instances' sessions; they share the first",
                          extra={"model": self.name})

    def warm_up(self, *sessions: ort.InferenceSession) -> float:
        """One run on a blank image per session (default: the model's), so the first request does not pay
        for allocations; seconds taken."""
        start = time.perf_counter()
        for session in sessions or (self.session, self.single_thread_session):
            if session is not None:
                self.timed_run(session, self.blank_feed())
        return time.perf_counter() - start

    def blank_feed(self, count: int = 1) -> dict[str, np.ndarray]:
        """``count`` black images as the graph's input: for warm-up and load-time timing."""
        return {self.metadata.input_name: np.zeros((count, *self.image_shape), dtype=np.uint8)}

    def timed_run(self, session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> float:
        """Seconds one run of ``session`` takes on ``feed``."""
        start = time.perf_counter()
        session.run(self.metadata.output_names, feed)
        return time.perf_counter() - start


def largest_request_bytes(model: Model, max_request_images: int) -> int:
    """The largest ModelInfer message ``model`` can be sent: ``max_request_images`` raw images, and room
    for the rest (the server derives its receive limit from this, and checks later loads against it)."""
    return math.prod(model.image_shape) * max_request_images + MESSAGE_OVERHEAD


def load_model(path: Path, settings: ServeSettings, *, name: str | None = None, version: str | None = None,
               check: Callable[[Model], None] | None = None) -> Model:
    """Open ``path`` on the provider ``settings`` ask for, check its metadata and warm it up.

    ``name``/``version`` (from a repository's folders) override the ones recorded in the file;
    ``check``, called once the metadata is read and before any run, refuses the model by raising.
    """
    start = time.perf_counter()
    providers = _providers(settings.provider)
    # Whatever onnxruntime raises (InvalidProtobuf, InvalidGraph, NoSuchFile, Fail, ...) names the file in one line.
    session = open_session(path, _session_options(settings), providers, catching=(Exception,))
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
    if check is not None:
        check(model)
    _warn_if_int8_chosen_on_another_cpu(model)
    warm_s = model.warm_up()
    if provider == CPU and settings.intra_op_threads_resolved > 1:
        _add_single_thread_session(model, settings)
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
            "single_thread_below": model.single_thread_below,
            "load_ms": round((time.perf_counter() - start) * 1e3, 1),
            "warmup_ms": round(warm_s * 1e3, 1),
        },
    )
    return model


def _warn_if_int8_chosen_on_another_cpu(model: Model) -> None:
    """An int8 recipe is chosen for the CPU path it was timed on; on another path another recipe may be
    faster, or int8 slower than fp32. Files without the record (older exports) say nothing."""
    m = model.metadata
    if m.variant != "int8" or not m.cpu_path:
        return
    here = cpu_path()
    if m.cpu_path == here:
        return
    log.warning(
        f"model {model.name} version {model.version}: its int8 recipe {m.int8_recipe or '(unrecorded)'} was chosen "
        f"on CPU path {m.cpu_path}, this machine's is {here}, so its int8 speed here is unmeasured (another recipe "
        "may be faster, or int8 slower than fp32); re-export it on this CPU (edgecnn export) to re-run the recipe search",
        extra={"model": model.name, "version": model.version, "exported_on": m.cpu_path, "serving_on": here},
    )


def session_options(
    intra_op_threads: int, inter_op_threads: int = 1, spinning: bool = False, arena: bool = True
) -> ort.SessionOptions:
    """The one onnxruntime session set-up: the server's, and the in-process timing of bench and export,
    so a served figure over its compute floor measures what serving adds. 0 threads: onnxruntime's default."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    # Spinning idle intra-op threads steal the cores the gRPC event loop needs under load.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.enable_cpu_mem_arena = arena
    return options


def _session_options(settings: ServeSettings, intra_op_threads: int | None = None) -> ort.SessionOptions:
    threads = intra_op_threads or settings.intra_op_threads_resolved
    return session_options(threads, settings.inter_op_threads, settings.ort_spinning, settings.ort_arena)


def _add_single_thread_session(model: Model, settings: ServeSettings) -> None:
    """Batches below ``--single-thread-below`` (0: measured here) run on a single-threaded session."""
    if settings.single_thread_below == 1:
        return
    if not settings.single_thread_below and _batch_of_one_seconds(model) >= PARALLEL_ALWAYS_PAYS_S:
        return  # a heavy model: the pool's wake-ups are noise even at batch 1; skip the second session
    model.single_thread_session = ort.InferenceSession(str(model.path), _session_options(settings, 1), providers=[CPU])
    model.warm_up(model.single_thread_session)
    model.single_thread_below = settings.single_thread_below or _single_thread_wins_below(model, settings.max_batch_size)
    if model.single_thread_below <= 1:
        model.single_thread_session = None  # never used: let it go


def _batch_of_one_seconds(model: Model, repeats: int = 3) -> float:
    return statistics.median(model.timed_run(model.session, model.blank_feed()) for _ in range(repeats))


def _single_thread_wins_below(model: Model, max_batch_size: int, budget_s: float = 0.5, repeats: int = 7) -> int:
    """The smallest batch size (1, 2, 4, ...) at which the multi-threaded session beats the single-threaded
    one, timed side by side (A B A B ...) on blank images within about ``budget_s``; batches below it
    run single-threaded. max_batch_size + 1 when the single thread wins throughout."""
    give_up = time.perf_counter() + budget_s
    size = 1
    while size <= max_batch_size:
        feed = model.blank_feed(size)
        sessions = {"single": model.single_thread_session, "every core": model.session}
        for session in sessions.values():
            model.timed_run(session, feed)  # untimed: the first run of a new shape allocates
        seconds: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(repeats):
            for name, session in sessions.items():
                seconds[name].append(model.timed_run(session, feed))
        if statistics.median(seconds["every core"]) < statistics.median(seconds["single"]):
            return size
        size *= 2
        if time.perf_counter() > give_up:
            return min(size, max_batch_size + 1)  # the single thread won up to here; larger batches keep every thread
    return max_batch_size + 1


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
