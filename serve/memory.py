"""Give memory back to the system once a burst is over.

After a burst of large requests, glibc's malloc keeps the freed heap (request buffers, merged batches,
decoded images) mapped: the process's RSS stays at its peak. ``IdleTrimmer`` watches for the end of
a burst (no batch run for ``idle_s``) and then calls ``malloc_trim(0)`` once, off every request's
path. Measured effect and the onnxruntime arena trade-off: benchmarks/RESULTS.md ("Issue 9").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[], None] | None:
    """glibc's malloc_trim(0), or None where the C library has none (musl, macOS).

    The C library is already loaded, so ``CDLL(None)`` (the process's own symbols) finds it without
    ``find_library``, which runs ldconfig in a subprocess: the trimmer starts after serving has, on
    the event loop. The lookup by name is only the fallback."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        try:
            trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            return None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


class IdleTrimmer:
    """A daemon thread: every ``idle_s`` seconds it reads ``work_done()`` (a counter of batches run);
    when the counter moved since the last trim and then stood still for a whole interval, it trims."""

    def __init__(self, work_done: Callable[[], int], idle_s: float) -> None:
        self._work_done = work_done
        self._idle_s = idle_s
        self._trim = _malloc_trim()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="edgecnn-trim", daemon=True)
        if self._trim is not None and idle_s > 0:
            self._thread.start()

    def _watch(self) -> None:
        trimmed_at = last = self._work_done()
        while not self._stop.wait(self._idle_s):
            now = self._work_done()
            if now == last and now != trimmed_at:  # a burst ran, and the last interval was idle
                self._trim()
                trimmed_at = now
                log.debug("memory trimmed after a burst")
            last = now

    def stop(self) -> None:
        self._stop.set()
