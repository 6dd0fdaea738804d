"""Blocking generations behind async APIs: :func:`aiter_in_thread` and :func:`abatches_in_thread`.

The engine generates synchronously; the adapters' async methods run it in a worker thread and
read its events from the event loop, so a generation never blocks the loop and cancelling the
consumer stops the generation.

The worker appends to a queue and wakes the loop only when the consumer has taken everything it
had: a loop that falls behind (a server streaming to many clients at once, on few cores) takes
what piled up in one wake-up, and :func:`abatches_in_thread` hands it over as one list, which a
streaming response sends as one write.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import itertools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

__all__ = ["abatches_in_thread", "aiter_in_thread"]

T = TypeVar("T")

_thread_ids = itertools.count(1)
_ITEM, _ERROR, _DONE = object(), object(), object()


async def abatches_in_thread(
    factory: Callable[[], Iterator[T]], *, name: str = "swift-generate"
) -> AsyncIterator[list[T]]:
    """Iterate a blocking iterator in a worker thread; each step yields every item ready by then.

    ``factory`` is called in the worker (in a copy of the caller's context, so context variables
    such as the engine's step key follow). Each yielded list holds at least one item, in order.
    When the consumer stops early (``break``, ``aclose()``, task cancellation) the worker stops
    after the item it is on and closes the iterator *in the worker thread*, which ends the
    engine's generation and releases its lock.
    """
    loop = asyncio.get_running_loop()
    ready: collections.deque[tuple[object, Any]] = collections.deque()  # appended by the worker only
    wake = asyncio.Event()
    stop = threading.Event()
    signalled = threading.Event()  # a wake-up is on its way: the worker need not send another
    ctx = contextvars.copy_context()

    def post(kind: object, payload: Any) -> None:
        ready.append((kind, payload))
        if signalled.is_set():
            return
        signalled.set()
        try:
            loop.call_soon_threadsafe(wake.set)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            stop.set()

    def work() -> None:
        try:
            it = factory()
            try:
                for item in it:
                    if stop.is_set():
                        break
                    post(_ITEM, item)
                    if stop.is_set():
                        break
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            post(_ERROR, exc)
        else:
            post(_DONE, None)

    thread = threading.Thread(target=ctx.run, args=(work,), name=f"{name}-{next(_thread_ids)}", daemon=True)
    thread.start()
    try:
        while True:
            await wake.wait()
            # clear before taking: an item posted after this sends a new wake-up, so none is left behind
            wake.clear()
            signalled.clear()
            batch: list[T] = []
            while ready:
                kind, payload = ready.popleft()
                if kind is _ITEM:
                    batch.append(payload)
                    continue
                if batch:
                    yield batch
                if kind is _ERROR:
                    raise payload
                return
            if batch:
                yield batch
    finally:
        stop.set()


async def aiter_in_thread(factory: Callable[[], Iterator[T]], *, name: str = "swift-generate") -> AsyncIterator[T]:
    """:func:`abatches_in_thread`, one item at a time."""
    batches = abatches_in_thread(factory, name=name)
    try:
        async for batch in batches:
            for item in batch:
                yield item
    finally:
        await batches.aclose()  # type: ignore[attr-defined]  # an async generator
