"""Dynamic batching, per model: compute threads take what is queued, run it as one batch, split.

    infer(images) -> queue (event loop) -> compute thread: take a batch (merge), onnxruntime
                  -> _answer on the event loop (each request gets its rows, in order)

Each model has ``instances`` compute threads (two on 2 cores or more). Each takes its next batch as
soon as one finishes: no round trip through the event loop between batches. The first thread, idle,
wakes on the first request and runs it at once: no added delay at low load. Requests that arrive
while it runs queue up; when it finishes they run together, waiting at most ``max_queue_delay``
(counted from the oldest) for company first, or until the batch is full. The other threads run
batches beside it only while half a full batch or more is queued: big work runs side by side, small
work stays merged.

The event loop only queues requests and answers them; merging, onnxruntime and the batch metrics
happen on the compute threads. Times are ``time.monotonic()`` seconds, as asyncio's loop.time().
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from edgecnn.serve.errors import DeadlinePassed, NotReady, QueueFull, ServeError
from edgecnn.serve.metrics import ModelMetrics
from edgecnn.serve.model import Model

log = logging.getLogger(__name__)
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
    enqueued: float  # time.monotonic()
    deadline: float | None  # time.monotonic()


class Batcher:
    def __init__(
        self,
        model: Model,
        *,
        max_batch_size: int,
        max_queue_delay_us: int,
        max_queue_size: int,
        metrics: ModelMetrics,
        max_queue_bytes: int = 256 * 1024 * 1024,
        instances: int = 1,
        run_slots: RunSlots | None = None,
    ) -> None:
        """``instances`` compute threads take batches from the queue and run them side by side: the first
        whenever there is work, the others only while at least half a full batch is queued (small
        batches go faster merged into one run than split over threads that fight for the GIL).
        ``run_slots``, shared by a process's batchers, caps the runs in flight across models (each run
        already spans its intra-op threads; more runs than instances would fight over the cores)."""
        self.model = model
        self.metrics = metrics
        self._max_batch_size = max_batch_size
        self._max_delay = max_queue_delay_us / 1e6
        self._max_queue_size = max_queue_size
        # Queued work bounded in memory too, not just in requests: bytes of images waiting for a batch.
        self._max_queue_images = max(1, max_queue_bytes // math.prod(model.image_shape))
        self._max_queue_bytes = max_queue_bytes
        self._run_slots = run_slots or RunSlots(instances)
        # Everything below is shared by the event loop and the compute thread: guarded by _lock.
        self._lock = threading.Lock()
        self._work_arrived = threading.Condition(self._lock)  # the first compute thread, idle, waits here
        self._much_work = threading.Condition(self._lock)  # the others wait here for half a batch queued
        self._batch_full = threading.Condition(self._lock)  # a thread waiting for company waits here
        self._idle_threads = 0
        self._idle_helpers = 0
        self._threads_waiting_for_company = 0
        self._helper_from = max(1, max_batch_size // 2)  # queued images that put the other threads to work
        self._queue: deque[_Pending] = deque()
        self._queued_images = 0
        self._closed = False
        self.runs = 0  # batches run so far (read by the idle memory trimmer)
        self._threads = [
            threading.Thread(
                target=self._compute_loop,
                args=(i,),
                name=f"edgecnn-compute-{model.name}-{model.version}-{i}",
                daemon=True,
            )
            for i in range(instances)
        ]
        try:
            for thread in self._threads:
                thread.start()
        except BaseException:  # "can't start new thread": stop those that started, or they wait forever
            self._close()
            for thread in self._threads:
                if thread.is_alive():
                    thread.join()
            raise

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch."""
        return len(self._queue)

    async def infer(self, images: np.ndarray, deadline: float | None = None) -> BatchResult:
        """Queue ``images`` (uint8 NHWC) for the next batch and wait for their outputs.

        ``deadline`` is a time.monotonic() time; a request still queued then is never computed.
        """
        pending = _Pending(images, asyncio.get_running_loop().create_future(), time.monotonic(), deadline)
        with self._lock:
            if self._closed:
                raise NotReady("the server is shutting down")
            if len(self._queue) >= self._max_queue_size:
                raise QueueFull(
                    f"model {self.model.name!r} has {len(self._queue)} requests queued (--max-queue-size); retry later"
                )
            if self._queued_images and self._queued_images + len(images) > self._max_queue_images:
                raise QueueFull(
                    f"model {self.model.name!r} has {self._queued_images} images queued; {len(images)} more would pass "
                    f"--max-queue-bytes {self._max_queue_bytes} ({self._max_queue_images} images); retry later"
                )
            self._queue.append(pending)
            self._queued_images += len(images)
            if self._idle_threads:
                self._work_arrived.notify()
            if self._idle_helpers and self._queued_images >= self._helper_from:
                self._much_work.notify()
            if self._threads_waiting_for_company and self._queued_images >= self._max_batch_size:
                self._batch_full.notify()
        # The queue-depth gauge is set where batches are taken, on the compute thread: not per request here.
        try:
            return await pending.future
        except asyncio.CancelledError:  # the client cancelled or its deadline passed: leave the queue
            self._discard(pending)
            raise

    async def stop(self) -> None:
        """Answer whatever is still queued with UNAVAILABLE (the server drained in-flight requests first)
        and let the compute thread end once its current batch, if any, is answered."""
        for pending in self._close():
            _fail(pending, NotReady("the server is shutting down"))
        for thread in self._threads:
            await asyncio.to_thread(thread.join, 10)

    def _close(self) -> list[_Pending]:
        """Refuse new requests, wake every compute thread to end; the requests that were still queued."""
        with self._lock:
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            self._queued_images = 0
            for condition in (self._work_arrived, self._much_work, self._batch_full):
                condition.notify_all()
        return left

    # --- the compute thread ------------------------------------------------------------------

    def _compute_loop(self, instance: int) -> None:
        # Merged batches are copied into this thread's one buffer: it runs one batch at a time.
        buffer = np.empty((self._max_batch_size, *self.model.image_shape), dtype=np.uint8)
        after_a_batch = False
        while True:
            batch: list[_Pending] = []
            try:
                batch = self._take_batch(after_a_batch, helper=instance > 0)
                if batch is None:
                    return
                after_a_batch = bool(batch)
                if batch:
                    self._run(batch, buffer, instance)
            except Exception as exc:  # noqa: BLE001 - a bug here must not leave the model without this thread
                log.exception("compute thread error", extra={"model": self.model.name})
                if batch:
                    _answer_later(batch, ServeError(f"internal error in the batcher: {exc}"))

    def _take_batch(self, after_a_batch: bool, helper: bool) -> list[_Pending] | None:
        """Wait for work, then take the oldest requests, up to max_batch_size images (a lone larger
        request runs alone, unsplit). None once the batcher is closed."""
        with self._lock:
            if helper:
                after_a_batch = False  # there is plenty to take
                while self._queued_images < self._helper_from and not self._closed:
                    self._idle_helpers += 1
                    self._much_work.wait()
                    self._idle_helpers -= 1
            elif not self._queue:
                after_a_batch = False  # idle: the next request runs at once
                while not self._queue and not self._closed:
                    self._idle_threads += 1
                    self._work_arrived.wait()
                    self._idle_threads -= 1
            if self._closed:
                return None
            if after_a_batch:  # these came while the last batch ran: give them a moment for company
                company_until = self._queue[0].enqueued + self._max_delay
                while self._queue and not self._closed and self._queued_images < self._max_batch_size:
                    remaining = company_until - time.monotonic()
                    if remaining <= 0:
                        break
                    self._threads_waiting_for_company += 1
                    self._batch_full.wait(remaining)
                    self._threads_waiting_for_company -= 1
            batch: list[_Pending] = []
            size = 0
            while self._queue:
                pending = self._queue[0]
                if batch and size + len(pending.images) > self._max_batch_size:
                    break
                self._queue.popleft()
                self._queued_images -= len(pending.images)
                batch.append(pending)
                size += len(pending.images)
            depth = len(self._queue)
        self.metrics.queue_depth.set(depth)
        return _still_wanted(batch, time.monotonic())

    def _run(self, batch: list[_Pending], buffer: np.ndarray, instance: int) -> None:
        """Wait for a run slot, merge (one copy), run (onnxruntime releases the GIL), hand the answers
        to the event loop."""
        with self._run_slots:
            started = time.monotonic()
            batch = _still_wanted(batch, started)  # other models' runs may have kept the slots a while
            if not batch:
                return
            try:
                if len(batch) == 1:
                    images = batch[0].images
                else:
                    size = sum(len(p.images) for p in batch)
                    images = np.concatenate([p.images for p in batch], out=buffer[:size])
                start = time.perf_counter()
                outputs = self.model.run(images, instance)
                compute_s = time.perf_counter() - start
                self.runs += 1
            except Exception as exc:  # noqa: BLE001 - every request of the batch learns why
                _answer_later(batch, ServeError(f"onnxruntime failed on a batch of {len(batch)} requests: {exc}"))
                return
        answers = []
        offset = 0
        for pending in batch:
            count = len(pending.images)
            rows = [output[offset : offset + count] for output in outputs]
            queue_us = int((started - pending.enqueued) * 1e6)
            answers.append(BatchResult(rows, queue_us, int(compute_s * 1e6), len(images)))
            offset += count
        _answer_later(batch, answers)
        # Metrics after the answers are on their way: they are on no request's critical path.
        self.metrics.observe_batch(len(images), compute_s)
        for answer in answers:
            self.metrics.queue_seconds.observe(answer.queue_us / 1e6)

    def _discard(self, pending: _Pending) -> None:
        with self._lock:
            try:
                self._queue.remove(pending)
            except ValueError:  # already taken into a batch
                return
            self._queued_images -= len(pending.images)
            depth = len(self._queue)
        self.metrics.queue_depth.set(depth)


def _still_wanted(batch: list[_Pending], now: float) -> list[_Pending]:
    """``batch`` less the requests cancelled meanwhile and those whose deadline has passed (answered
    DEADLINE_EXCEEDED here: they are never computed)."""
    wanted, expired = [], []
    for pending in batch:
        if pending.future.done():  # cancelled
            continue
        (expired if pending.deadline is not None and pending.deadline <= now else wanted).append(pending)
    if expired:
        _answer_later(expired, DeadlinePassed("the deadline passed while the request was queued"))
    return wanted


class RunSlots:
    """At most ``count`` runs at a time, shared by a process's batchers, granted in the order asked
    for: a thread that just ran cannot take its slot back ahead of another model's waiting thread."""

    def __init__(self, count: int) -> None:
        self._lock = threading.Lock()
        self._free = count
        self._waiting: deque[threading.Lock] = deque()

    def __enter__(self) -> None:
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return
            turn = threading.Lock()
            turn.acquire()
            self._waiting.append(turn)
        turn.acquire()  # released by the run that hands its slot over

    def __exit__(self, *exc) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().release()
            else:
                self._free += 1


def _answer_later(batch: list[_Pending], answers: list[BatchResult] | ServeError) -> None:
    """From the compute thread: one hop to the event loop, which answers every request of ``batch``."""
    try:
        batch[0].future.get_loop().call_soon_threadsafe(_answer, batch, answers)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


def _answer(batch: list[_Pending], answers: list[BatchResult] | ServeError) -> None:
    """On the event loop: results or the error; requests cancelled meanwhile are skipped."""
    if isinstance(answers, ServeError):
        for pending in batch:
            _fail(pending, answers)
        return
    for pending, answer in zip(batch, answers):
        if not pending.future.done():
            pending.future.set_result(answer)


def _fail(pending: _Pending, error: ServeError) -> None:
    if not pending.future.done():
        pending.future.set_exception(error)
