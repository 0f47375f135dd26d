"""In-process onnxruntime latency and throughput: the compute floor of every served figure.

For each model file x provider x batch size: warm up, then time back-to-back runs in windows of
``window_s`` until the last three windows' throughputs agree within ``stability`` (or ``max_seconds``
pass). Statistics come from those last three windows.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.benchmarks.settings import BenchSettings
from edgecnn.benchmarks.stats import LatencyStats, is_stable, summarize
from edgecnn.benchmarks.timing import time_calls

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
STABLE_WINDOWS = 3

# onnxruntime type strings -> numpy dtypes, for random inputs of any model.
ORT_DTYPES = {
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(uint16)": np.uint16,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(float16)": np.float16,
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(bool)": np.bool_,
}


@dataclass
class InProcessResult:
    model: str  # file path
    variant: str  # fp32 | int8 | fp16 ... from the model's metadata, else the file name
    provider: str
    batch_size: int
    threads: int
    stable: bool
    window_images_per_s: list[float]
    images_per_s: float  # over the last three windows: images / seconds spent in run()
    latency: LatencyStats
    latencies_s: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "latencies_s"}


def resolve_provider(name: str) -> str:
    """`cpu`, `cuda`, `auto` or a full provider name -> an available provider; never a silent fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if name == "auto":
        return "CUDAExecutionProvider" if "CUDAExecutionProvider" in available else "CPUExecutionProvider"
    full = PROVIDER_ALIASES.get(name.lower(), name)
    if full not in available:
        raise ValueError(f"provider {name!r} ({full}) is not available here; available: {', '.join(available)}")
    return full


def open_session(model: str | Path, provider: str, threads: int = 0) -> Any:
    """A session configured as `edgecnn serve` configures its own (and export's timing does), so a
    served figure over its compute floor measures what serving adds, not a different session setup."""
    import onnxruntime as ort

    from edgecnn.serve.model import session_options

    return ort.InferenceSession(str(model), session_options(threads), providers=[provider])


def random_feed(session: Any, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the session's declared shapes, with the (dynamic) first axis set to ``batch_size``."""
    rng = np.random.default_rng(seed)
    feed = {}
    for tensor in session.get_inputs():
        dims = list(tensor.shape)
        if any(not isinstance(d, int) for d in dims[1:]):
            raise ValueError(f"input {tensor.name!r} has dynamic non-batch dimensions {dims}; cannot make up a shape")
        shape = [batch_size, *dims[1:]]
        dtype = ORT_DTYPES.get(tensor.type)
        if dtype is None:
            raise ValueError(f"input {tensor.name!r} has type {tensor.type}, which random inputs do not cover")
        feed[tensor.name] = random_array(rng, shape, dtype)
    return feed


def random_array(rng: np.random.Generator, shape: list[int], dtype: Any) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, 0), min(info.max, 255), shape, endpoint=True).astype(dtype)
    return rng.random(shape, dtype=np.float32).astype(dtype)


def variant_of(session: Any, model: str | Path) -> str:
    from edgecnn.export.metadata import MetadataError, metadata_of_session

    try:
        return metadata_of_session(session).variant
    except MetadataError:
        return Path(model).stem


def measure(
    session: Any, feed: dict[str, np.ndarray], batch_size: int, settings: BenchSettings
) -> tuple[bool, list[float], np.ndarray]:
    """Windows of back-to-back runs until stable: (stable, images/s per window, latencies of the last three)."""
    deadline = time.perf_counter() + settings.warmup_s
    while time.perf_counter() < deadline:
        session.run(None, feed)
    started = time.perf_counter()
    windows: list[np.ndarray] = []
    throughputs: list[float] = []
    while not is_stable(throughputs, settings.stability, STABLE_WINDOWS):
        if time.perf_counter() - started > settings.max_seconds and len(windows) >= STABLE_WINDOWS:
            break
        window = time_calls(lambda: session.run(None, feed), warmup=0, min_calls=3, min_seconds=settings.window_s)
        windows.append(window)
        throughputs.append(batch_size * window.size / float(window.sum()))
    stable = is_stable(throughputs, settings.stability, STABLE_WINDOWS)
    return stable, throughputs, np.concatenate(windows[-STABLE_WINDOWS:])


def benchmark_model(
    model: str | Path, session: Any, full_provider: str, batch_size: int, settings: BenchSettings
) -> InProcessResult:
    feed = random_feed(session, batch_size, settings.seed)
    stable, throughputs, latencies = measure(session, feed, batch_size, settings)
    return InProcessResult(
        model=str(model),
        variant=variant_of(session, model),
        provider=full_provider,
        batch_size=batch_size,
        threads=settings.threads,
        stable=stable,
        window_images_per_s=[round(t, 2) for t in throughputs],
        images_per_s=batch_size * latencies.size / float(latencies.sum()),
        latency=summarize(latencies, batch_size),
        latencies_s=latencies,
    )


def run_inprocess(
    models: list[Path], settings: BenchSettings, batch_sizes: tuple[int, ...] | None = None
) -> list[InProcessResult]:
    """Every model x provider x batch size; one session per model and provider."""
    results = []
    for model in models:
        for provider in settings.providers:
            full_provider = resolve_provider(provider)
            session = open_session(model, full_provider, settings.threads)
            for batch_size in batch_sizes or settings.batch_sizes:
                results.append(benchmark_model(model, session, full_provider, batch_size, settings))
    return results
