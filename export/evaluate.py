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
from edgecnn.benchmarks.timing import interleaved_rounds, summarize
from edgecnn.export.cpu import cpu_model, cpu_path, describe_cpu_path
from edgecnn.export.metadata import INPUT_NAME, LOGITS
from edgecnn.export.report import Int8Speed, SideTiming, SpeedupRounds

EVALUATION_BATCH = 256
WARMUP_CALLS = 3  # untimed calls per session before the first round: first runs of a shape allocate


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
        samples = time_rounds(sessions, images, batch_size, rounds)
        stats[batch_size] = {name: summarize(np.concatenate(s), batch_size) for name, s in samples.items()}
    return {
        name: Speed(
            latency_ms=stats[latency_batch][name].p50_ms,
            throughput_ips=stats[throughput_batch][name].items_per_s,
        )
        for name in sessions
    }


def time_rounds(
    sessions: dict[str, ort.InferenceSession], images: np.ndarray, batch_size: int, rounds: int
) -> dict[str, list[np.ndarray]]:
    """Seconds per call of each session at ``batch_size``, interleaved (A B A B ...), each round's samples apart."""
    batch = _batch_of(images, batch_size)
    calls = {name: _caller(session, batch) for name, session in sessions.items()}
    return interleaved_rounds(calls, rounds=rounds, warmup=WARMUP_CALLS)


def time_fp32_vs_int8(
    fp32_path: Path,
    int8_path: Path,
    images: np.ndarray,
    *,
    recipe: str,
    threads: int,
    latency_batch: int,
    throughput_batch: int,
    rounds: int,
) -> Int8Speed:
    """fp32 against one int8 file in new sessions, A B A B at both batch sizes: the int8 figures to report."""
    sessions = {"fp32": open_session(fp32_path, threads), "int8": open_session(int8_path, threads)}
    compared = {}
    for batch_size in dict.fromkeys((latency_batch, throughput_batch)):
        samples = time_rounds(sessions, images, batch_size, rounds)
        compared[batch_size] = compare_rounds(batch_size, samples["fp32"], samples["int8"])
    latency, throughput = compared[latency_batch], compared[throughput_batch]
    return Int8Speed(
        recipe=recipe,
        cpu_path=cpu_path(),
        rounds=rounds,
        latency=latency,
        throughput=throughput,
        never_slower=latency.never_slower and throughput.never_slower,
    )


def compare_rounds(batch_size: int, fp32_rounds: list[np.ndarray], int8_rounds: list[np.ndarray]) -> SpeedupRounds:
    """Judge fp32 vs int8 round by round (seconds per call, one array per round, the rounds paired)."""
    speedups = [float(np.median(fp32) / np.median(int8)) for fp32, int8 in zip(fp32_rounds, int8_rounds, strict=True)]
    return SpeedupRounds(
        batch=batch_size,
        fp32=_side_timing(fp32_rounds, batch_size),
        int8=_side_timing(int8_rounds, batch_size),
        round_speedups=speedups,
        median_speedup=float(np.median(speedups)),
        worst_speedup=min(speedups),
        never_slower=min(speedups) >= 1.0,
    )


def _side_timing(rounds: list[np.ndarray], batch_size: int) -> SideTiming:
    overall = summarize(np.concatenate(rounds), batch_size)
    return SideTiming(
        ms=overall.p50_ms,
        images_per_s=overall.items_per_s,
        round_ms=[float(np.median(r) * 1e3) for r in rounds],
    )


def describe_machine(threads: int) -> dict[str, Any]:
    """The CPU and runtime the timings were taken on: int8 speed depends on the CPU's int8 path above all."""
    path = cpu_path()
    return {
        "cpu": f"{cpu_model()}, {os.cpu_count()} logical cores",
        "cpu_path": path,
        "vnni": describe_cpu_path(path),
        "onnxruntime": ort.__version__,
        "threads": threads or "onnxruntime default (all physical cores)",
    }


def _batch_of(images: np.ndarray, size: int) -> np.ndarray:
    """``size`` real images, cycling through ``images`` when there are fewer."""
    return np.ascontiguousarray(images[np.arange(size) % len(images)])


def _caller(session: ort.InferenceSession, batch: np.ndarray):
    feed = {INPUT_NAME: batch}
    return lambda: session.run(None, feed)
