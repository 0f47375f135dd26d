"""Helpers for the serve tests: a gate that holds onnxruntime runs, encoded images, polling."""

from __future__ import annotations

import io
import threading
import time
from typing import Callable

import numpy as np
from edgecnn.serve.model import Model
from edgecnn.serve.settings import ServeSettings
from PIL import Image

MAX_MESSAGE_BYTES = 1024 * 1024


def settings_for(model, **overrides) -> ServeSettings:
    """Loopback, any free ports, one thread each: the tests share a small machine."""
    values = dict(
        model=model,
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        provider="cpu",
        max_batch_size=8,
        max_queue_delay_us=0,
        instances=1,
        intra_op_threads=1,
        decode_threads=1,
        max_message_bytes=MAX_MESSAGE_BYTES,
        grace=5.0,
    )
    values.update(overrides)
    return ServeSettings(**values)


class Gate:
    """Holds every run of ``model`` until opened, so requests pile up behind it; records batch sizes."""

    def __init__(self, model: Model) -> None:
        self._model = model
        self._run = model.run
        self._open = threading.Event()
        self.entered = threading.Event()  # a run is waiting at the gate
        self.batches: list[int] = []
        model.run = self._gated_run  # type: ignore[method-assign]

    def _gated_run(self, images: np.ndarray, instance: int = 0) -> list[np.ndarray]:
        self.batches.append(len(images))
        self.entered.set()
        self._open.wait(timeout=30)
        return self._run(images, instance)

    def open(self) -> None:
        self._open.set()

    def remove(self) -> None:
        self._open.set()
        self._model.run = self._run  # type: ignore[method-assign]

    def __enter__(self) -> "Gate":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def encode(image: np.ndarray, format: str = "PNG") -> bytes:
    """An HxWxC (C = 1 or 3) uint8 array as PNG/JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buffer, format=format)
    return buffer.getvalue()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
