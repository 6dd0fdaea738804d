"""The FastAPI app of the OpenAI-compatible server around one :class:`~swift_engine.SwiftEngine`: :func:`create_app`.

Run ``python -m swift_integrations.serve`` (or ``swift-accel serve``) and point any OpenAI client at
``http://127.0.0.1:8000/v1``: the ``openai`` SDK, LangChain's ``ChatOpenAI``, LlamaIndex's
``OpenAILike``. Endpoints: ``POST /v1/chat/completions`` (streaming over SSE too),
``POST /v1/completions``, ``GET /v1/models``, ``GET /health``.

This module is the HTTP side only: the API key, the body's size limit, admission, and the routes.
A request becomes a generation call in :mod:`swift_integrations.serve.calls`, runs and reaches
the client through :mod:`swift_integrations.serve.delivery`, in the shapes of
:mod:`swift_integrations.serve.response_bodies`.

Why the robustness parts exist: the engine is one model behind a lock, so requests beyond
``max_queue`` are refused at once (429, :mod:`swift_integrations.serve.admission`) instead of piling
up; a generation has a deadline (``request_timeout``, the engine's own ``timeout``) so a stuck
client cannot hold the model; a client that goes away mid-stream closes the engine's stream, which
stops it after its current step; bodies are size-limited before they are parsed. Every error is
OpenAI's error shape, never a traceback. FastAPI is imported when an app is created, never at
import time (it is the ``serve`` extra).
"""

import functools
import hmac
import logging
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from swift_integrations.serve.admission import Slot, Slots
from swift_integrations.serve.calls import chat_call, completion_call
from swift_integrations.serve.delivery import respond, streamed
from swift_integrations.serve.errors import APIError, bad_request
from swift_integrations.serve.json_body import parse_body
from swift_integrations.serve.request_fields import stream_options
from swift_integrations.serve.response_bodies import (
    chat_completion,
    chat_completion_chunk,
    text_completion,
    text_completion_chunk,
)
from swift_integrations.serve.settings import DEFAULT_MAX_QUEUE, DEFAULT_REQUEST_TIMEOUT

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from swift_engine.engine import SwiftEngine
    from swift_integrations._generation import GenerationCall
    from swift_integrations.tool_followup import ToolFollowup

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app"]

log = logging.getLogger(__name__)

#: Request bodies larger than this get 413 (before they are all read).
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


def error_response(err: APIError) -> "JSONResponse":
    """``err`` as OpenAI's error body with its status (a 401 names the scheme it wants)."""
    from fastapi.responses import JSONResponse

    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def add_error_handlers(app: "FastAPI") -> None:
    """Every error ``app`` answers in OpenAI's shape: ours, the framework's (404, 422), and crashes (500)."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(APIError(exc.status_code, str(exc.detail), type=kind))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(bad_request(str(exc)))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed", exc_info=exc)
        return error_response(APIError(500, f"internal error: {type(exc).__name__}", type="server_error"))


def check_key(request: "Request", api_key: str | None) -> None:
    """401 unless the request carries ``Authorization: Bearer <api_key>`` (anything goes without a key)."""
    if api_key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise APIError(401, "invalid or missing API key", code="invalid_api_key")


async def read_json(request: "Request", max_body_bytes: int) -> dict[str, Any]:
    """The body as a JSON object, refused (413) once it exceeds the limit, before it is all read (400: see
    :func:`~swift_integrations.serve.json_body.parse_body`)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        raise APIError(413, f"request body exceeds {max_body_bytes} bytes", code="request_too_large")
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > max_body_bytes:
            raise APIError(413, f"request body exceeds {max_body_bytes} bytes", code="request_too_large")
    return parse_body(bytes(data))


def check_model(asked: Any, name: str, served: frozenset[str]) -> None:
    """A request's ``model``: one this server serves, else 404 in OpenAI's shape (non-strings are 400s later)."""
    if isinstance(asked, str) and asked not in served:
        raise APIError(
            404,
            f"The model '{asked}' does not exist here: this server serves '{name}' (GET /v1/models lists it)",
            param="model",
            code="model_not_found",
        )


def create_app(
    engine: "SwiftEngine",
    *,
    api_key: str | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    model_name: str | Sequence[str] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    tool_followup: "ToolFollowup" = "auto",
) -> "FastAPI":
    """The FastAPI app serving ``engine``; ``uvicorn.run(create_app(engine))`` serves it.

    ``api_key``: required as ``Authorization: Bearer <key>`` on ``/v1`` (``/health`` stays open,
    for load balancers). ``max_queue``: requests admitted at once, 429 past it.
    ``request_timeout``: seconds a generation may take (504, or an error event mid-stream).
    ``model_name``: the id ``/v1/models`` lists and responses carry (default: the engine's); several
    names (vLLM's ``--served-model-name``): the first is the id, the others are aliases. A request's
    ``model`` must be one of them or the engine's own name, else 404 ``model_not_found`` (a client
    asking for ``gpt-4o`` must not get another model's answer); a request without one is served.
    ``max_body_bytes``: larger request bodies get 413. ``tool_followup``: what the model is asked
    after tool results (:mod:`swift_integrations.tool_followup`; ``"auto"``: as the catalog measured
    for the model).
    """
    # the routes' annotations are read by FastAPI at definition: real classes, imported here
    from fastapi import FastAPI, Request

    if max_queue < 1:
        raise ValueError(f"max_queue must be at least 1, got {max_queue!r}")
    own = str(getattr(engine, "model_name", None) or "swift")
    names = [model_name] if isinstance(model_name, str) else list(model_name or [])
    name = names[0] if names else own
    served = frozenset([*names, own])
    slots = Slots(max_queue)
    created = int(time.time())
    app = FastAPI(title="swift-accel", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.slots = slots
    app.state.engine = engine
    add_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": name, "in_flight": slots.used, "max_queue": slots.limit}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        check_key(request, api_key)
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": created, "owned_by": "swift-accel"}],
        }

    async def admitted(request: Request, build: Any) -> tuple[bool, bool, "GenerationCall", Slot]:
        """``(stream, include_usage, call, slot)`` of a request: read, admitted, then rendered within its deadline.

        The slot is taken before the prompt is rendered and tokenized (that is work too: a huge
        prompt took seconds), and the time it takes counts against the request's timeout.
        """
        import anyio

        check_key(request, api_key)
        body = await read_json(request, max_body_bytes)
        check_model(body.get("model"), name, served)
        stream, include_usage = stream_options(body)
        header = request.headers.get("x-swift-step")
        slot = slots.take()
        try:
            started = time.monotonic()
            call = await anyio.to_thread.run_sync(  # rendering the prompt is tokenizer work: off the loop
                lambda: build(engine, body, model_name=name, step_header=header, timeout=request_timeout)
            )
            if request_timeout is not None:
                left = request_timeout - (time.monotonic() - started)
                if left <= 0:
                    raise APIError(504, "the request timed out while its prompt was prepared", type="timeout_error")
                call.timeout = left
        except BaseException:
            slot.release()
            raise
        return stream, include_usage, call, slot

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        stream, include_usage, call, slot = await admitted(
            request, functools.partial(chat_call, tool_followup=tool_followup)
        )
        rid = "chatcmpl-" + uuid.uuid4().hex
        now = int(time.time())
        if not stream:
            reply = functools.partial(chat_completion, rid=rid, created=now, model=name)
            return await respond(request, call, slot, reply)
        chunk = functools.partial(chat_completion_chunk, rid=rid, created=now, model=name, include_usage=include_usage)
        return await streamed(call, slot, chunk, include_usage)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        stream, include_usage, call, slot = await admitted(request, completion_call)
        rid = "cmpl-" + uuid.uuid4().hex
        now = int(time.time())
        if not stream:
            reply = functools.partial(text_completion, rid=rid, created=now, model=name)
            return await respond(request, call, slot, reply)
        chunk = functools.partial(text_completion_chunk, rid=rid, created=now, model=name)
        return await streamed(call, slot, chunk, include_usage)

    return app
