"""Dynamic batching, per model: take what is queued, run it as one batch on a worker thread, split.

    infer(images) -> queued -> _start_batch (merge) -> _compute (worker thread: onnxruntime)
                  -> _finish (split the outputs in order, answer each request) -> next batch

One batch runs at a time per model. An idle model starts a request's batch at once, inside the
request's own handler: no added delay, no extra hop through the event loop. Requests that arrive
while a batch runs queue up; when it finishes they run together, waiting at most
``max_queue_delay`` (counted from the oldest) for company first.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from edgecnn.serve.errors import DeadlinePassed, NotReady, QueueFull, ServeError
from edgecnn.serve.metrics import ModelMetrics
from edgecnn.serve.model import Model


@dataclass(slots=True)
class BatchResult:
    """One request's share of a batch run."""

    outputs: list[np.ndarray]  # this request's rows of each output, in ``metadata.output_names`` order
    queue_us: int
    compute_us: int
    batch_size: int


@dataclass(slots=True, eq=False)
class _Pending:
    images: np.ndarray
    future: asyncio.Future
    enqueued: float  # event-loop time
    deadline: float | None  # event-loop time


class Batcher:
    def __init__(
        self,
        model: Model,
        *,
        max_batch_size: int,
        max_queue_delay_us: int,
        max_queue_size: int,
        executor: Executor,
        metrics: ModelMetrics,
    ) -> None:
        self.model = model
        self.metrics = metrics
        self._max_batch_size = max_batch_size
        self._max_delay = max_queue_delay_us / 1e6
        self._max_queue_size = max_queue_size
        self._executor = executor
        self._queue: deque[_Pending] = deque()
        self._queued_images = 0
        self._running = False
        self._company_timer: asyncio.TimerHandle | None = None
        # Merged batches are copied into this one buffer: one batch runs at a time per model.
        self._buffer = np.empty((max_batch_size, *model.image_shape), dtype=np.uint8)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch."""
        return len(self._queue)

    async def infer(self, images: np.ndarray, deadline: float | None = None) -> BatchResult:
        """Queue ``images`` (uint8 NHWC) for the next batch and wait for their outputs."""
        if len(self._queue) >= self._max_queue_size:
            raise QueueFull(
                f"model {self.model.name!r} has {len(self._queue)} requests queued (--max-queue-size); retry later"
            )
        self._loop = loop = asyncio.get_running_loop()
        pending = _Pending(images, loop.create_future(), loop.time(), deadline)
        self._queue.append(pending)
        self._queued_images += len(images)
        self.metrics.queue_depth.set(len(self._queue))
        if not self._running:
            if self._company_timer is None:
                self._start_batch()  # idle: run now
            elif self._queued_images >= self._max_batch_size:
                self._company_timer.cancel()  # the wait for company is over: the batch is full
                self._company_timer = None
                self._start_batch()
        try:
            return await pending.future
        except asyncio.CancelledError:  # the client cancelled or its deadline passed: leave the queue
            self._discard(pending)
            raise

    async def stop(self) -> None:
        """Answer whatever is still queued with UNAVAILABLE (the server drained in-flight requests first)."""
        if self._company_timer is not None:
            self._company_timer.cancel()
        while self._queue:
            self._fail(self._queue.popleft(), NotReady("the server is shutting down"))

    def _start_batch(self) -> None:
        self._company_timer = None
        batch = self._take_batch()
        if not batch:
            return
        self._running = True
        started = self._loop.time()
        self._executor.submit(self._compute, batch, started)

    def _take_batch(self) -> list[_Pending]:
        """Oldest first, up to max_batch_size images; a lone larger request runs alone, unsplit."""
        now = self._loop.time()
        batch: list[_Pending] = []
        size = 0
        while self._queue:
            pending = self._queue[0]
            if batch and size + len(pending.images) > self._max_batch_size:
                break
            self._queue.popleft()
            self._queued_images -= len(pending.images)
            if pending.future.done():  # cancelled while queued
                continue
            if pending.deadline is not None and pending.deadline <= now:
                self._fail(pending, DeadlinePassed("the deadline passed while the request was queued"))
                continue
            batch.append(pending)
            size += len(pending.images)
        self.metrics.queue_depth.set(len(self._queue))
        return batch

    def _compute(self, batch: list[_Pending], started: float) -> None:
        """On the worker thread: merge (one copy), run (onnxruntime releases the GIL), hand back to the loop."""
        try:
            if len(batch) == 1:
                images = batch[0].images
            else:
                size = sum(len(p.images) for p in batch)
                images = np.concatenate([p.images for p in batch], out=self._buffer[:size])
            start = time.perf_counter()
            outputs = self.model.run(images)
            result = (outputs, time.perf_counter() - start, len(images))
        except Exception as exc:  # noqa: BLE001 - every request of the batch learns why
            result = exc
        self._loop.call_soon_threadsafe(self._finish, batch, started, result)

    def _finish(self, batch: list[_Pending], started: float, result) -> None:
        """On the loop: answer each request with its rows, then start the next batch."""
        self._running = False
        if isinstance(result, Exception):
            for pending in batch:
                self._fail(pending, ServeError(f"onnxruntime failed on a batch of {len(batch)} requests: {result}"))
        else:
            outputs, compute_s, size = result
            self.metrics.observe_batch(size, compute_s)
            compute_us = int(compute_s * 1e6)
            offset = 0
            for pending in batch:
                count = len(pending.images)
                queue_s = started - pending.enqueued
                self.metrics.queue_seconds.observe(queue_s)
                if not pending.future.done():
                    rows = [output[offset : offset + count] for output in outputs]
                    pending.future.set_result(BatchResult(rows, int(queue_s * 1e6), compute_us, size))
                offset += count
        if self._queue:
            self._next_batch()

    def _next_batch(self) -> None:
        """These requests arrived while the last batch ran: they may wait a little for company."""
        company_until = self._queue[0].enqueued + self._max_delay
        if self._queued_images >= self._max_batch_size or self._loop.time() >= company_until:
            self._start_batch()
        else:
            self._company_timer = self._loop.call_at(company_until, self._start_batch)

    def _discard(self, pending: _Pending) -> None:
        try:
            self._queue.remove(pending)
        except ValueError:  # already taken into a batch
            return
        self._queued_images -= len(pending.images)
        self.metrics.queue_depth.set(len(self._queue))

    @staticmethod
    def _fail(pending: _Pending, error: ServeError) -> None:
        if not pending.future.done():
            pending.future.set_exception(error)
