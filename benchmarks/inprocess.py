"""In-process onnxruntime latency and throughput: the compute floor of every served figure.

For each model file x provider x batch size x layout: warm up, then time back-to-back runs in windows
of ``window_s`` until the last three windows' throughputs agree within ``stability`` (or
``max_seconds`` pass). Statistics come from those last three windows.

Layouts: one caller on ``threads`` intra-op threads, and (CPU only) the server's own layout, several
one-thread callers side by side, as `edgecnn serve` runs by default. The compute floor a served
figure is held against is the best layout, never only the single caller.
"""

from __future__ import annotations

import threading
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
    images_per_s: float  # the median of the last three windows' images / wall seconds
    latency: LatencyStats
    callers: int = 1  # runs side by side, each on ``threads`` intra-op threads
    int8_recipe: str = ""  # an int8 file's recipe and the CPU path it was chosen on, from its metadata
    recipe_cpu_path: str = ""
    latencies_s: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))

    @property
    def layout(self) -> str:
        return layout_name(self.callers, self.threads)

    def as_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "latencies_s"}, "layout": self.layout}


def layout_name(callers: int, threads: int) -> str:
    threads_text = "onnxruntime's default threads" if threads == 0 else f"{threads} thread{'s' * (threads > 1)}"
    if callers == 1:
        return f"1 caller, {threads_text}"
    return f"{callers} callers side by side, {threads_text} each"


def server_layout_callers(provider: str) -> int:
    """How many one-thread runs `edgecnn serve` puts side by side by default here (1 off the CPU)."""
    from edgecnn.serve.settings import ServeSettings

    if provider != "CPUExecutionProvider":
        return 1
    settings = ServeSettings(model=Path("model.onnx"))  # the layout does not depend on the model
    return settings.instances_resolved if settings.intra_op_threads_resolved == 1 else 1


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


def provenance_of(session: Any, model: str | Path) -> tuple[str, str, str]:
    """(variant, int8 recipe, CPU path the recipe was chosen on) from the model's metadata; the file
    name and two blanks for models without our metadata."""
    from edgecnn.export.metadata import MetadataError, metadata_of_session

    try:
        meta = metadata_of_session(session)
    except MetadataError:
        return Path(model).stem, "", ""
    return meta.variant, meta.int8_recipe, meta.cpu_path


def measure(
    session: Any, feed: dict[str, np.ndarray], batch_size: int, settings: BenchSettings, callers: int = 1
) -> tuple[bool, list[float], np.ndarray]:
    """Windows of back-to-back runs until stable: (stable, images/s per window, latencies of the last three).
    With ``callers`` > 1 that many threads run the session side by side in every window."""
    deadline = time.perf_counter() + settings.warmup_s
    while time.perf_counter() < deadline:
        session.run(None, feed)
    started = time.perf_counter()
    windows: list[np.ndarray] = []
    throughputs: list[float] = []
    while not is_stable(throughputs, settings.stability, STABLE_WINDOWS):
        if time.perf_counter() - started > settings.max_seconds and len(windows) >= STABLE_WINDOWS:
            break
        window, images_per_s = timed_window(session, feed, batch_size, callers, settings.window_s)
        windows.append(window)
        throughputs.append(images_per_s)
    stable = is_stable(throughputs, settings.stability, STABLE_WINDOWS)
    return stable, throughputs, np.concatenate(windows[-STABLE_WINDOWS:])


def timed_window(session: Any, feed: dict[str, np.ndarray], batch_size: int, callers: int, seconds: float,
                 warmup: int = 0) -> tuple[np.ndarray, float]:
    """One window of back-to-back runs by ``callers`` (one: this thread; more: side by side): every call's
    seconds and the window's images/s."""
    if callers == 1:
        window = time_calls(lambda: session.run(None, feed), warmup=warmup, min_calls=3, min_seconds=seconds)
        return window, batch_size * window.size / float(window.sum())
    for _ in range(warmup):
        session.run(None, feed)
    window, elapsed = side_by_side(session, feed, callers, seconds)
    return window, batch_size * window.size / elapsed


def side_by_side(session: Any, feed: dict[str, np.ndarray], callers: int, seconds: float) -> tuple[np.ndarray, float]:
    """``callers`` threads running the session back to back for ``seconds``: every call's seconds and the
    wall time from the first start to the last finish (onnxruntime releases the GIL inside run())."""
    per_caller: list[list[float]] = [[] for _ in range(callers)]
    go = threading.Barrier(callers + 1)

    def caller(samples: list[float]) -> None:
        go.wait()
        stop_at = time.perf_counter() + seconds
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            session.run(None, feed)
            samples.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=caller, args=(samples,)) for samples in per_caller]
    for thread in threads:
        thread.start()
    go.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return np.asarray([t for samples in per_caller for t in samples]), time.perf_counter() - start


def benchmark_model(
    model: str | Path, session: Any, full_provider: str, batch_size: int, settings: BenchSettings,
    threads: int | None = None, callers: int = 1,
) -> InProcessResult:
    feed = random_feed(session, batch_size, settings.seed)
    stable, throughputs, latencies = measure(session, feed, batch_size, settings, callers)
    variant, recipe, recipe_cpu_path = provenance_of(session, model)
    return InProcessResult(
        model=str(model),
        variant=variant,
        int8_recipe=recipe,
        recipe_cpu_path=recipe_cpu_path,
        provider=full_provider,
        batch_size=batch_size,
        threads=settings.threads if threads is None else threads,
        stable=stable,
        callers=callers,
        window_images_per_s=[round(t, 2) for t in throughputs],
        images_per_s=throughputs_over_last_windows(throughputs),
        latency=summarize(latencies, batch_size),
        latencies_s=latencies,
    )


def throughputs_over_last_windows(throughputs: list[float]) -> float:
    return float(np.median(throughputs[-STABLE_WINDOWS:]))


def run_inprocess(
    models: list[Path], settings: BenchSettings, batch_sizes: tuple[int, ...] | None = None
) -> list[InProcessResult]:
    """Every model x provider x batch size x layout: one caller on ``settings.threads`` threads, then
    (CPU) the server's layout of one-thread callers side by side; one session per model, provider and
    thread count."""
    results = []
    for model in models:
        for provider in settings.providers:
            full_provider = resolve_provider(provider)
            session = open_session(model, full_provider, settings.threads)
            for batch_size in batch_sizes or settings.batch_sizes:
                results.append(benchmark_model(model, session, full_provider, batch_size, settings))
            callers = settings.side_by_side or server_layout_callers(full_provider)
            if callers > 1:
                single_thread = open_session(model, full_provider, 1)
                for batch_size in batch_sizes or settings.batch_sizes:
                    results.append(benchmark_model(model, single_thread, full_provider, batch_size, settings,
                                                   threads=1, callers=callers))
    return results


def best_floor(results: list[InProcessResult]) -> InProcessResult:
    """The in-process result with the most images/s: the compute floor for served throughput."""
    return max(results, key=lambda r: r.images_per_s)


class ComputeFloor:
    """One model's in-process floors for scripts that interleave them with served windows: the
    sessions open once, and each call times one window of every layout (A B A B with the served side)."""

    def __init__(self, model: str | Path, provider: str = "CPUExecutionProvider", callers: int = 0,
                 batch_sizes: tuple[int, ...] = (1, 64)):
        self.callers = callers or server_layout_callers(provider)
        thread_counts = (0, 1) if provider == "CPUExecutionProvider" else (0,)
        self.sessions = {threads: open_session(model, provider, threads) for threads in thread_counts}
        self.feeds = {batch: random_feed(self.sessions[0], batch) for batch in batch_sizes}

    def images_per_s(self, batch: int, seconds: float) -> dict[str, float]:
        """Images/s of every layout at this batch size, by layout name."""
        feed = self.feeds[batch]
        figures = {layout_name(1, threads): timed_window(session, feed, batch, 1, seconds, warmup=2)[1]
                   for threads, session in self.sessions.items()}
        if self.callers > 1 and 1 in self.sessions:
            figures[layout_name(self.callers, 1)] = timed_window(self.sessions[1], feed, batch, self.callers, seconds,
                                                                 warmup=1)[1]
        return figures

    def p50_ms(self, batch: int, seconds: float) -> float:
        """The lowest median latency of one caller at this batch size, over the sessions' thread counts."""
        feed = self.feeds[batch]
        return min(float(np.median(time_calls(lambda s=session: s.run(None, feed), warmup=2, min_seconds=seconds)))
                   for session in self.sessions.values()) * 1e3


def best_of(figures: dict[str, float]) -> tuple[str, float]:
    """(layout, images/s) of the fastest layout."""
    return max(figures.items(), key=lambda item: item[1])
