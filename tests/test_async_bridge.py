"""The bridge from the engine's blocking iterators to the event loop (swift_integrations.async_bridge).

No model here: the bridge moves whatever the iterator yields, and what it guarantees is about
threads and order: every item once and in order, what piled up while the loop was busy in one
batch, errors after the items before them, and a consumer that stops closing the iterator in its
worker thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Iterator

import pytest

from swift_integrations.async_bridge import abatches_in_thread, aiter_in_thread

WAIT = 30  # seconds: only a liveness bound (a stuck worker), never a speed goal


def test_items_arrive_once_in_order() -> None:
    async def main() -> tuple[list[int], list[list[int]]]:
        one = [x async for x in aiter_in_thread(lambda: iter(range(500)))]
        batches = [b async for b in abatches_in_thread(lambda: iter(range(500)))]
        return one, batches

    one, batches = asyncio.run(main())
    assert one == list(range(500))
    assert all(batches) and [x for b in batches for x in b] == list(range(500))


def test_what_piles_up_while_the_loop_is_busy_comes_as_one_batch() -> None:
    posted = threading.Event()

    def produce() -> Iterator[int]:
        yield from range(5)
        posted.set()

    async def main() -> list[list[int]]:
        batches = abatches_in_thread(produce)
        first = asyncio.ensure_future(batches.__anext__())
        await asyncio.sleep(0)  # the generator starts its worker and waits for a wake-up
        assert posted.wait(WAIT)  # the loop is blocked while the worker posts all five
        return [await first] + [b async for b in batches]

    assert asyncio.run(main()) == [[0, 1, 2, 3, 4]]


def test_an_error_comes_after_the_items_before_it() -> None:
    def produce() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("boom")

    async def main() -> list[int]:
        got: list[int] = []
        with pytest.raises(ValueError, match="boom"):
            async for x in aiter_in_thread(produce):
                got.append(x)
        return got

    assert asyncio.run(main()) == [1, 2]


@pytest.mark.parametrize("bridge", [aiter_in_thread, abatches_in_thread])
def test_a_consumer_that_stops_closes_the_iterator_in_its_worker(bridge) -> None:
    closed_in: list[str] = []
    closed = threading.Event()
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []

    def produce() -> Iterator[int]:
        seen.append(var.get())
        try:
            i = 0
            while True:  # endless: only the consumer's stop ends it
                yield i
                i += 1
        finally:
            closed_in.append(threading.current_thread().name)
            closed.set()

    async def main() -> None:
        var.set("caller's")
        stream = bridge(produce, name="bridge-test")
        async for _ in stream:
            break
        await stream.aclose()

    asyncio.run(main())
    assert closed.wait(WAIT)
    assert closed_in[0].startswith("bridge-test-") and seen == ["caller's"]


def test_cancelling_the_consumer_stops_the_worker() -> None:
    closed = threading.Event()
    started = threading.Event()

    def produce() -> Iterator[int]:
        try:
            while True:
                started.set()
                yield 0
        finally:
            closed.set()

    async def main() -> None:
        async def consume() -> None:
            async for _ in aiter_in_thread(produce):
                await asyncio.sleep(0)

        task = asyncio.ensure_future(consume())
        await asyncio.to_thread(started.wait, WAIT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert closed.wait(WAIT)
