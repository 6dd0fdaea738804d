"""How a generation call reaches the client: a whole reply, or an SSE stream, with the engine in a worker thread.

The engine is synchronous, so its events come through
:func:`~swift_integrations.async_bridge.aiter_in_thread`. A generation has a deadline (the call's
``timeout``) so a stuck client cannot hold the model; a client that goes away stops it: a
non-streamed request is abandoned at the disconnect (:func:`generate_while_connected`), and a
stream's task is cancelled, which closes the engine's stream, which stops it after its current
step. Either way the request's admission :class:`~swift_integrations.serve.admission.Slot` is
released. A stream's first event is computed before its headers go, so an early error still gets
its HTTP status; after that an error becomes an error event.
"""

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any, cast

from swift_integrations.serve.admission import Slot
from swift_integrations.serve.errors import engine_error

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import Request
    from fastapi.responses import StreamingResponse

    from swift_integrations._generation import Final, GenerationCall

__all__ = ["generate", "generate_while_connected", "respond", "streamed"]

log = logging.getLogger(__name__)


async def generate(call: "GenerationCall") -> "Final":
    """The call's :class:`Final`, generated in a worker thread."""
    import anyio

    from swift_integrations._generation import Final, generation_events
    from swift_integrations.async_bridge import aiter_in_thread

    events = cast(AsyncGenerator[Any, None], aiter_in_thread(lambda: generation_events(call), name="swift-serve"))
    final = None
    try:
        async for ev in events:
            if isinstance(ev, Final):
                final = ev
    except Exception as exc:  # noqa: BLE001 - mapped to an HTTP error
        raise engine_error(exc) from None
    finally:
        with anyio.CancelScope(shield=True):
            await events.aclose()  # cancelled too (the client left): the engine stops after this step
    assert final is not None
    return final


async def generate_while_connected(request: "Request", call: "GenerationCall") -> "Final | None":
    """:func:`generate`, abandoned when the client disconnects (``None``): nobody would read the reply."""
    import anyio

    outcome: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        async def work() -> None:
            try:
                outcome["final"] = await generate(call)
            except Exception as exc:  # noqa: BLE001 - re-raised below, outside the task group
                outcome["error"] = exc
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        tg.start_soon(work)
    if "error" in outcome:
        raise outcome["error"]
    if "final" not in outcome:
        log.info("client disconnected; generation stopped")
    return outcome.get("final")


async def respond(request: "Request", call: "GenerationCall", slot: Slot, reply: Any) -> Any:
    """A non-streamed answer: ``reply(final)``, or 499 when the client left (nobody would read it)."""
    try:
        final = await generate_while_connected(request, call)
    finally:
        slot.release()
    if final is None:
        from fastapi.responses import Response

        return Response(status_code=499)  # nginx's "client closed request"
    return reply(final)


async def streamed(
    call: "GenerationCall",
    slot: Slot,
    chunk: Any,
    include_usage: bool,
) -> "StreamingResponse":
    """An SSE response; the first event is computed before the headers go, so early errors get a status."""
    import anyio
    from fastapi.responses import StreamingResponse
    from starlette.background import BackgroundTask

    from swift_integrations._generation import Delta, Final, generation_events
    from swift_integrations.async_bridge import aiter_in_thread

    events = cast(
        AsyncGenerator[Any, None], aiter_in_thread(lambda: generation_events(call), name="swift-serve-stream")
    )

    async def next_event() -> Any:
        try:
            return await events.__anext__()
        except StopAsyncIteration:
            return None

    async def first_events() -> list[Any]:
        got: list[Any] = []
        while True:  # Start, then the first Delta or Final (the engine has begun or failed)
            ev = await next_event()
            if ev is None:
                return got
            got.append(ev)
            if isinstance(ev, (Delta, Final)):
                return got

    try:
        primed = await first_events()
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            await events.aclose()
        slot.release()
        raise engine_error(exc) if isinstance(exc, Exception) else exc from None

    def sse(obj: Any) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    async def body() -> AsyncIterator[str]:
        try:
            yield sse(chunk(role=True))
            pending = list(primed)
            while True:
                ev = pending.pop(0) if pending else await next_event()
                if ev is None:
                    break
                if isinstance(ev, Delta) and ev.text:
                    yield sse(chunk(text=ev.text))
                elif isinstance(ev, Final):
                    yield sse(chunk(text=ev.tail, final=ev))
                    if include_usage:
                        yield sse(chunk(usage_of=ev))
            yield "data: [DONE]\n\n"
        except Exception as exc:  # noqa: BLE001 - headers are sent: the error becomes an event
            yield sse(engine_error(exc).body())
            yield "data: [DONE]\n\n"
        finally:
            # a client that left cancels this task: close the engine's stream all the same
            with anyio.CancelScope(shield=True):
                await events.aclose()
            slot.release()

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        background=BackgroundTask(slot.release),
    )
