"""How a generation call reaches the client: a whole reply, or an SSE stream, with the engine in a worker thread.

The engine is synchronous, so its events come through
:func:`~swift_integrations.async_bridge.abatches_in_thread`. A generation has a deadline (the call's
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
    from swift_integrations.async_bridge import abatches_in_thread

    batches = cast(AsyncGenerator[Any, None], abatches_in_thread(lambda: generation_events(call), name="swift-serve"))
    final = None
    try:
        async for batch in batches:
            final = next((ev for ev in batch if isinstance(ev, Final)), final)
    except Exception as exc:  # noqa: BLE001 - mapped to an HTTP error
        raise engine_error(exc) from None
    finally:
        with anyio.CancelScope(shield=True):
            await batches.aclose()  # cancelled too (the client left): the engine stops after this step
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
    """An SSE response; the first event is computed before the headers go, so early errors get a status.

    What the engine released while the loop was busy goes out as one write: the content of
    consecutive deltas as one chunk, and the final chunk, the usage and ``[DONE]`` together (see
    :func:`~swift_integrations.async_bridge.abatches_in_thread`). A client sees the same text in
    fewer chunks; on a loaded server each write is a system call the loop makes holding the GIL.
    """
    import anyio
    from fastapi.responses import StreamingResponse
    from starlette.background import BackgroundTask

    from swift_integrations._generation import Delta, Final, generation_events
    from swift_integrations.async_bridge import abatches_in_thread

    batches = cast(
        AsyncGenerator[Any, None], abatches_in_thread(lambda: generation_events(call), name="swift-serve-stream")
    )

    async def first_events() -> list[Any]:
        got: list[Any] = []
        async for batch in batches:  # Start, then the first Delta or Final (the engine has begun or failed)
            got.extend(batch)
            if any(isinstance(ev, (Delta, Final)) for ev in batch):
                break
        return got

    try:
        primed = await first_events()
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            await batches.aclose()
        slot.release()
        raise engine_error(exc) if isinstance(exc, Exception) else exc from None

    def sse(obj: Any) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    def merged(text: list[str], reasoning: list[str]) -> str:
        """One chunk of consecutive deltas (a reply's reasoning all comes before its content, so one
        chunk may hold the end of one and the start of the other); nothing if they were empty."""
        if not text and not reasoning:
            return ""
        thinking = {"reasoning": "".join(reasoning)} if reasoning else {}  # (only chat chunks have it)
        return sse(chunk(text="".join(text), **thinking))

    def events_text(events: list[Any]) -> tuple[str, bool]:
        """The SSE text of ``events`` (consecutive deltas merged), and whether the reply ended."""
        out: list[str] = []
        text: list[str] = []
        reasoning: list[str] = []
        for ev in events:
            if isinstance(ev, Delta):
                text += [ev.text] if ev.text else []
                reasoning += [ev.reasoning] if ev.reasoning else []
            elif isinstance(ev, Final):
                out.append(merged(text, reasoning))
                out.append(sse(chunk(text=ev.tail, final=ev)))
                if include_usage:
                    out.append(sse(chunk(usage_of=ev)))
                out.append("data: [DONE]\n\n")
                return "".join(out), True
        out.append(merged(text, reasoning))
        return "".join(out), False

    async def body() -> AsyncIterator[str]:
        try:
            text, done = events_text(primed)
            yield sse(chunk(role=True)) + text
            while not done:
                try:
                    batch = await batches.__anext__()
                except StopAsyncIteration:
                    yield "data: [DONE]\n\n"
                    break
                text, done = events_text(batch)
                if text:
                    yield text
        except Exception as exc:  # noqa: BLE001 - headers are sent: the error becomes an event
            yield sse(engine_error(exc).body())
            yield "data: [DONE]\n\n"
        finally:
            # a client that left cancels this task: close the engine's stream all the same
            with anyio.CancelScope(shield=True):
                await batches.aclose()
            slot.release()

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        background=BackgroundTask(slot.release),
    )
