"""Blocking generations behind async APIs: :func:`aiter_in_thread`.

The engine generates synchronously; the adapters' async methods run it in a worker thread and
read its events from the event loop, so a generation never blocks the loop and cancelling the
consumer stops the generation.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

__all__ = ["aiter_in_thread"]

T = TypeVar("T")

_thread_ids = itertools.count(1)
_ITEM, _ERROR, _DONE = object(), object(), object()


async def aiter_in_thread(factory: Callable[[], Iterator[T]], *, name: str = "swift-generate") -> AsyncIterator[T]:
    """Iterate a blocking iterator in a worker thread without blocking the event loop.

    ``factory`` is called in the worker (in a copy of the caller's context, so context variables
    such as the engine's step key follow). When the consumer stops early (``break``, ``aclose()``,
    task cancellation) the worker stops after the item it is on and closes the iterator *in the
    worker thread*, which ends the engine's generation and releases its lock.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[object, Any]] = asyncio.Queue()
    stop = threading.Event()
    ctx = contextvars.copy_context()

    def post(kind: object, payload: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, payload))
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
            kind, payload = await queue.get()
            if kind is _ITEM:
                yield payload
            elif kind is _ERROR:
                raise payload
            else:
                return
    finally:
        stop.set()
