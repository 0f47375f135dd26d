"""The dynamic batcher on a real onnxruntime session: merging, order, limits, deadlines, cancellation."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from edgecnn.serve.batcher import Batcher, RunSlots
from edgecnn.serve.errors import DeadlinePassed, QueueFull
from edgecnn.serve.metrics import Metrics
from edgecnn.serve.model import load_model

from tests.helpers.models import random_images, reference_outputs
from tests.helpers.serving import Gate, settings_for, wait_until


@pytest.fixture(scope="module")
def model(tiny_model):
    return load_model(tiny_model, settings_for(tiny_model))


def run_with_batcher(model, scenario, **limits):
    """Run ``scenario(batcher, gate)`` on a fresh event loop with a started batcher and a closed gate."""
    options = dict(max_batch_size=8, max_queue_delay_us=0, max_queue_size=16) | limits

    async def main():
        with Gate(model) as gate:
            batcher = Batcher(model, metrics=Metrics().for_model("tiny", "1"), **options)
            try:
                return await scenario(batcher, gate)
            finally:
                gate.open()
                await batcher.stop()

    return asyncio.run(main())


async def hold_a_batch(batcher, gate) -> asyncio.Future:
    """A one-image request, running and held at the gate: later requests queue behind it."""
    running = asyncio.ensure_future(batcher.infer(random_images(1)))
    await asyncio.get_running_loop().run_in_executor(None, gate.entered.wait, 10)
    return running


async def until(condition, what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` on the event loop until it holds; fail after a generous ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


async def queued(batcher, count: int) -> None:
    await until(lambda: batcher.queue_depth == count, f"{count} queued requests")


def test_idle_batcher_runs_a_request_at_once_even_with_a_long_queue_delay(model, tiny_model):
    images = random_images(2)

    async def scenario(batcher, gate):
        gate.open()
        # An idle batcher must not wait max_queue_delay (60 s here) for company.
        return await asyncio.wait_for(batcher.infer(images), timeout=30)

    result = run_with_batcher(model, scenario, max_queue_delay_us=60_000_000)
    assert result.batch_size == 2
    np.testing.assert_allclose(result.outputs[0], reference_outputs(tiny_model, images)["logits"], rtol=1e-6)


def test_requests_queued_behind_a_running_batch_merge_and_split_in_order(model, tiny_model):
    later = [random_images(n, seed=10 + n) for n in (2, 3, 1)]

    async def scenario(batcher, gate):
        running = await hold_a_batch(batcher, gate)
        tasks = [asyncio.ensure_future(batcher.infer(images)) for images in later]
        await queued(batcher, 3)
        gate.open()
        return await running, await asyncio.gather(*tasks)

    held, results = run_with_batcher(model, scenario)
    assert held.batch_size == 1
    for images, result in zip(later, results):
        assert result.batch_size == 6
        reference = reference_outputs(tiny_model, images)
        np.testing.assert_allclose(result.outputs[0], reference["logits"], rtol=1e-6)
        np.testing.assert_allclose(result.outputs[1], reference["probabilities"], rtol=1e-6)


def test_batches_respect_max_batch_size_and_a_larger_request_runs_alone(model):
    async def scenario(batcher, gate):
        running = await hold_a_batch(batcher, gate)
        tasks = [asyncio.ensure_future(batcher.infer(random_images(n))) for n in (3, 2, 6, 1)]
        await queued(batcher, 4)
        gate.open()
        await running
        return [r.batch_size for r in await asyncio.gather(*tasks)], gate.batches

    sizes, batches = run_with_batcher(model, scenario, max_batch_size=4)
    assert batches == [1, 3, 2, 6, 1]
    assert sizes == [3, 2, 6, 1]


def test_busy_batcher_waits_for_company_up_to_the_queue_delay(model):
    async def scenario(batcher, gate):
        running = await hold_a_batch(batcher, gate)
        waiting = asyncio.ensure_future(batcher.infer(random_images(1)))
        await queued(batcher, 1)
        gate.open()
        await running
        # The batch that ran is done; the queued request now waits (60 s allowed) for a second one.
        await until(lambda: batcher._threads_waiting_for_company == 1, "the queued request to wait for company")
        company = asyncio.ensure_future(batcher.infer(random_images(1)))
        return (await waiting).batch_size, (await company).batch_size

    assert run_with_batcher(model, scenario, max_batch_size=2, max_queue_delay_us=60_000_000) == (2, 2)


def test_full_queue_is_refused(model):
    async def scenario(batcher, gate):
        running = await hold_a_batch(batcher, gate)
        queued_tasks = [asyncio.ensure_future(batcher.infer(random_images(1))) for _ in range(2)]
        await queued(batcher, 2)
        with pytest.raises(QueueFull, match="max-queue-size"):
            await batcher.infer(random_images(1))
        gate.open()
        await asyncio.gather(running, *queued_tasks)

    run_with_batcher(model, scenario, max_queue_size=2)


def test_request_whose_deadline_passed_in_the_queue_is_never_computed(model):
    async def scenario(batcher, gate):
        running = await hold_a_batch(batcher, gate)
        expired = asyncio.ensure_future(batcher.infer(random_images(5), deadline=time.monotonic() + 0.01))
        await asyncio.sleep(0.05)
        gate.open()
        await running
        with pytest.raises(DeadlinePassed):
            await expired
        return gate.batches

    assert run_with_batcher(model, scenario) == [1]


def test_cancelled_request_leaves_the_queue_and_is_never_computed(model):
    async def scenario(batcher, gate):
        running = await hold_a_batch(batcher, gate)
        cancelled = asyncio.ensure_future(batcher.infer(random_images(5)))
        await queued(batcher, 1)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        assert batcher.queue_depth == 0 and batcher._queued_images == 0
        gate.open()
        await running
        # A request after it runs after anything still queued: the cancelled one would merge into its batch.
        marker = await asyncio.wait_for(batcher.infer(random_images(2)), timeout=30)
        return gate.batches, marker.batch_size

    assert run_with_batcher(model, scenario) == ([1, 2], 2)


async def runs_at_the_gate(gate, count: int) -> None:
    await until(lambda: len(gate.batches) >= count, f"{count} runs at the gate")


def test_a_second_instance_runs_a_big_batch_beside_the_first(model, tiny_model):
    big = [random_images(4, seed=s) for s in (1, 2)]

    async def scenario(batcher, gate):
        first = asyncio.ensure_future(batcher.infer(big[0]))
        await runs_at_the_gate(gate, 1)
        second = asyncio.ensure_future(batcher.infer(big[1]))  # half a batch or more: the second thread takes it
        await asyncio.wait_for(runs_at_the_gate(gate, 2), timeout=10)
        gate.open()
        return await first, await second, list(gate.batches)

    first, second, batches = run_with_batcher(model, scenario, max_batch_size=4, instances=2)
    assert batches == [4, 4]
    for images, result in zip(big, (first, second)):
        np.testing.assert_allclose(result.outputs[0], reference_outputs(tiny_model, images)["logits"], rtol=1e-6)


def test_small_work_waits_for_the_first_instance_to_merge_it(model):
    async def scenario(batcher, gate):
        running = await hold_a_batch(batcher, gate)
        small = [asyncio.ensure_future(batcher.infer(random_images(1))) for _ in range(2)]
        await queued(batcher, 2)
        await asyncio.sleep(0.05)
        held = list(gate.batches)  # 2 images queued, under half of 8: the second thread stays idle
        gate.open()
        await running
        return held, [r.batch_size for r in await asyncio.gather(*small)]

    held, sizes = run_with_batcher(model, scenario, max_batch_size=8, instances=2)
    assert held == [1]
    assert sizes == [2, 2]


def test_a_request_that_waited_for_another_models_run_slot_past_its_deadline_is_never_computed(model):
    async def scenario(batcher, gate):
        slots = RunSlots(1)
        other = Batcher(model, max_batch_size=8, max_queue_delay_us=0, max_queue_size=16,
                        metrics=Metrics().for_model("other", "1"), run_slots=slots)
        mine = Batcher(model, max_batch_size=8, max_queue_delay_us=0, max_queue_size=16,
                       metrics=Metrics().for_model("tiny", "1"), run_slots=slots)
        try:
            running = asyncio.ensure_future(other.infer(random_images(1)))  # holds the only slot at the gate
            await runs_at_the_gate(gate, 1)
            late = asyncio.ensure_future(mine.infer(random_images(2), deadline=time.monotonic() + 0.05))
            cancelled = asyncio.ensure_future(mine.infer(random_images(3)))
            await asyncio.sleep(0.1)
            cancelled.cancel()
            await asyncio.sleep(0.01)
            gate.open()
            await running
            with pytest.raises(DeadlinePassed):
                await late
            # A request after them runs after anything of mine still queued, which would merge into its batch.
            marker = await asyncio.wait_for(mine.infer(random_images(4)), timeout=30)
            return list(gate.batches), marker.batch_size
        finally:
            await other.stop()
            await mine.stop()

    assert run_with_batcher(model, scenario) == ([1, 4], 4)  # the other model's run, then only the marker


def test_run_slots_are_handed_over_in_the_order_asked_for():
    import threading

    slots, order = RunSlots(1), []
    slots.__enter__()
    waiters = []
    for position, name in enumerate(("first", "second"), start=1):

        def wait(name=name):
            with slots:
                order.append(name)

        thread = threading.Thread(target=wait)
        thread.start()
        # It has asked once it is queued for a turn; only then does the next one ask.
        wait_until(lambda position=position: len(slots._waiting) == position, timeout=30,
                   what=f"{name} to queue for a slot")
        waiters.append(thread)
    slots.__exit__(None, None, None)
    with slots:  # asks after both: must come last
        order.append("third")
    for thread in waiters:
        thread.join(30)
    assert order[:2] == ["first", "second"] and order[-1] == "third"


def test_an_error_in_the_batch_metrics_does_not_stop_the_compute_thread(model):
    async def scenario(batcher, gate):
        gate.open()
        calls = []

        class MetricsFailingOnce:
            def __getattr__(self, name):
                return getattr(metrics, name)

            def observe_batch(self, size, seconds):
                calls.append(size)
                if len(calls) == 1:
                    raise RuntimeError("metrics store unavailable")

        metrics = batcher.metrics
        batcher.metrics = MetricsFailingOnce()
        first = await asyncio.wait_for(batcher.infer(random_images(1)), timeout=10)
        second = await asyncio.wait_for(batcher.infer(random_images(2)), timeout=10)
        return first.batch_size, second.batch_size, calls

    assert run_with_batcher(model, scenario) == (1, 2, [1, 2])
