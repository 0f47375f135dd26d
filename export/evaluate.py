"""Exported models under onnxruntime: accuracy on the test set, parity with PyTorch, and speed.

Every variant runs in this one process with the same session options, the ones serve/ uses
(full graph optimisation, sequential execution, no spinning threads), so the figures compare.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgecnn.benchmarks import inprocess
from edgecnn.benchmarks.device import cpu_model
from edgecnn.benchmarks.timing import interleaved, summarize
from edgecnn.export.metadata import INPUT_NAME, LOGITS

EVALUATION_BATCH = 256


@dataclass(frozen=True)
class Parity:
    """How closely one model's logits follow the reference's (PyTorch's) on the same images."""

    max_abs_logit_diff: float
    top1_agreement: float  # share of images where both pick the same class


@dataclass(frozen=True)
class Speed:
    latency_ms: float  # median per call at the latency batch (1 image by default)
    throughput_ips: float  # images per second at the median call of the throughput batch


def open_session(path: Path, threads: int) -> ort.InferenceSession:
    """A CPU session configured as `edgecnn serve` configures its own (benchmarks' one definition)."""
    return inprocess.open_session(path, "CPUExecutionProvider", threads)


def predict_logits(session: ort.InferenceSession, images: np.ndarray) -> np.ndarray:
    """Logits for uint8 NHWC ``images``, in batches."""
    parts = [
        session.run([LOGITS], {INPUT_NAME: images[start : start + EVALUATION_BATCH]})[0]
        for start in range(0, len(images), EVALUATION_BATCH)
    ]
    return np.concatenate(parts).astype(np.float32, copy=False)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


def parity(logits: np.ndarray, reference: np.ndarray) -> Parity:
    return Parity(
        max_abs_logit_diff=float(np.abs(logits - reference).max()),
        top1_agreement=float((logits.argmax(axis=1) == reference.argmax(axis=1)).mean()),
    )


def time_sessions(
    sessions: dict[str, ort.InferenceSession],
    images: np.ndarray,
    *,
    latency_batch: int,
    throughput_batch: int,
    rounds: int,
) -> dict[str, Speed]:
    """Median speed of each session at both batch sizes, the sessions interleaved (A B A B ...)."""
    stats = {}
    for batch_size in dict.fromkeys((latency_batch, throughput_batch)):  # once when both are the same size
        batch = _batch_of(images, batch_size)
        calls = {name: _caller(session, batch) for name, session in sessions.items()}
        samples = interleaved(calls, rounds=rounds)
        stats[batch_size] = {name: summarize(s, batch_size) for name, s in samples.items()}
    return {
        name: Speed(
            latency_ms=stats[latency_batch][name].p50_ms,
            throughput_ips=stats[throughput_batch][name].items_per_s,
        )
        for name in sessions
    }


def describe_machine(threads: int) -> dict[str, Any]:
    """The CPU and runtime the timings were taken on: int8 speed depends on VNNI above all."""
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                flags = set(value.split())
                break
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        vnni = "VNNI int8 dot products (" + ", ".join(sorted(flags & {"avx512_vnni", "avx_vnni"})) + ")"
    elif "avx2" in flags:
        vnni = "AVX2 without VNNI: int8 convolutions gain at most about 2x over float32"
    else:
        vnni = "no AVX2/VNNI flags seen"
    return {
        "cpu": f"{cpu_model()}, {os.cpu_count()} logical cores",
        "vnni": vnni,
        "onnxruntime": ort.__version__,
        "threads": threads or "onnxruntime default (all physical cores)",
    }


def _batch_of(images: np.ndarray, size: int) -> np.ndarray:
    """``size`` real images, cycling through ``images`` when there are fewer."""
    return np.ascontiguousarray(images[np.arange(size) % len(images)])


def _caller(session: ort.InferenceSession, batch: np.ndarray):
    feed = {INPUT_NAME: batch}
    return lambda: session.run(None, feed)
