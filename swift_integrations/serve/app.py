"""An OpenAI-compatible HTTP server around one :class:`~swift_engine.SwiftEngine`.

Run ``python -m swift_integrations.serve`` (or ``swift-accel serve``) and point any OpenAI client at
``http://127.0.0.1:8000/v1``: the ``openai`` SDK, LangChain's ``ChatOpenAI``, LlamaIndex's
``OpenAILike``. Endpoints: ``POST /v1/chat/completions`` (streaming over SSE too),
``POST /v1/completions``, ``GET /v1/models``, ``GET /health``.

The server adds no generation logic of its own: a request becomes the same
:class:`~swift_integrations._generation.GenerationCall` the LangChain adapter builds (tools and
``response_format`` become grammars through :func:`~swift_integrations._generation.output_constraint`,
the prompt comes from :func:`~swift_engine.chat.prompting.render_chat_prompt`), so a reply over HTTP is
the reply the in-process adapters give. SWIFT's statistics ride along in an extension field
``swift`` of each response (and of a stream's last chunk).

Why the robustness parts exist: the engine is one model behind a lock, so requests beyond
``max_queue`` are refused at once (429) instead of piling up; a generation has a deadline
(``request_timeout``, the engine's own ``timeout``) so a stuck client cannot hold the model; a
client that goes away mid-stream closes the engine's stream, which stops it after its current
step; bodies are size-limited before they are parsed. Every error is OpenAI's error shape, never
a traceback. FastAPI and uvicorn are imported here only (the ``serve`` extra). It lives with the adapters
(it is one: OpenAI's wire format over the same generation events) and ``swift_integrations.serve`` is
its command-line entry point.
"""

import argparse
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

    from swift_engine.engine import SwiftEngine
    from swift_integrations._generation import Final, GenerationCall
    from swift_integrations.tool_followup import ToolFollowup

__all__ = ["APIError", "create_app", "main", "serve", "start"]

log = logging.getLogger(__name__)

#: Hosts that may be served without an API key (only this machine can reach them).
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
DEFAULT_MAX_QUEUE = 16
DEFAULT_REQUEST_TIMEOUT = 300.0
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
#: max_tokens when a request names none (OpenAI: the model's limit; ours keeps a small model brief)
DEFAULT_MAX_TOKENS = 512
#: OpenAI's default for ``/v1/completions``
DEFAULT_COMPLETION_MAX_TOKENS = 16

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


class APIError(Exception):
    """A request the server answers with an OpenAI-style error body (``{"error": {...}}``)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bad(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


# -- request parsing ---------------------------------------------------------------------------------


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float, *, lo_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"'{name}' must be a number, got {value!r}", name)
    if not (lo < value <= hi if lo_open else lo <= value <= hi):
        raise _bad(f"'{name}' must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {value!r}", name)
    return float(value)


def _integer(body: dict[str, Any], name: str, *, minimum: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"'{name}' must be an integer, got {value!r}", name)
    if minimum is not None and value < minimum:
        raise _bad(f"'{name}' must be at least {minimum}, got {value!r}", name)
    return value


def _max_tokens(body: dict[str, Any], default: int) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = _integer(body, name, minimum=1)
        if value is not None:
            return value
    return default


def _stops(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise _bad("'stop' must be a non-empty string or a list of non-empty strings", "stop")
    return list(stops)


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    """Temperature, top_p, top_k (an extension, as in vLLM) and seed, checked."""
    n = _integer(body, "n", minimum=1)
    if n is not None and n != 1:
        raise _bad("'n' must be 1: one choice per request is supported", "n")
    if body.get("logprobs"):
        raise _bad("'logprobs' is not supported", "logprobs")
    seed = _integer(body, "seed")
    return {
        "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        "top_k": _integer(body, "top_k", minimum=0) or 0,
        "seed": seed,
    }


def _text(content: Any, where: str) -> str:
    """A message's content as text: a string, ``None``, or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise _bad(f"{where}: only text content is supported, got a {kind!r} part", where)
        return "".join(parts)
    raise _bad(f"{where}: 'content' must be a string or a list of text parts", where)


def _arguments(raw: Any, where: str) -> dict[str, Any]:
    """A past tool call's ``arguments`` (a JSON string in OpenAI's format) as a dict."""
    if isinstance(raw, dict):
        return raw
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, str):
        raise _bad(f"{where}: 'arguments' must be a JSON string", where)
    try:
        args = json.loads(raw)
    except json.JSONDecodeError:
        raise _bad(f"{where}: 'arguments' is not valid JSON", where) from None
    if not isinstance(args, dict):
        raise _bad(f"{where}: 'arguments' must encode a JSON object", where)
    return args


def neutral_messages(messages: Any) -> list[dict[str, Any]]:
    """OpenAI chat messages as the framework-neutral dicts of :func:`~swift_engine.chat.prompting.render_chat_prompt`.

    Almost 1:1; a past call's ``arguments`` string becomes a dict, a tool result gets its tool's
    name from the call it answers (templates that name tool results need it), ``developer`` is a
    system message.
    """
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list of messages", "messages")
    out: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"{where} must be an object", where)
        role = m.get("role")
        if role == "function":  # the legacy function-result role
            out.append({"role": "tool", "content": _text(m.get("content"), where), "name": m.get("name")})
            continue
        if role not in _ROLES:
            raise _bad(f"{where}: unknown role {role!r}; expected one of {sorted(_ROLES)}", f"{where}.role")
        msg: dict[str, Any] = {"role": _ROLES[role], "content": _text(m.get("content"), where)}
        if role == "user" and isinstance(m.get("name"), str):
            msg["name"] = m["name"]
        elif role == "assistant" and m.get("tool_calls"):
            raw_calls = m["tool_calls"]
            if not isinstance(raw_calls, list):
                raise _bad(f"{where}: 'tool_calls' must be a list", f"{where}.tool_calls")
            calls = []
            for j, tc in enumerate(raw_calls):
                fn = tc.get("function") if isinstance(tc, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise _bad(f"{where}.tool_calls[{j}] needs a function with a name", f"{where}.tool_calls")
                call = {"id": tc.get("id"), "name": fn["name"], "arguments": _arguments(fn.get("arguments"), where)}
                if call["id"]:
                    call_names[call["id"]] = call["name"]
                calls.append(call)
            msg["tool_calls"] = calls
        elif role == "tool":
            call_id = m.get("tool_call_id")
            msg["tool_call_id"] = call_id
            msg["name"] = m.get("name") or call_names.get(call_id or "")
        out.append(msg)
    return out


def _tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _bad("'tools' must be a list of function tools", "tools")
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) and t.get("type", "function") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _bad(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., ...}}}}", "tools")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise _bad(f"tools[{i}].function.parameters must be a JSON schema object", "tools")
    return [{"type": "function", "function": t["function"]} for t in tools]


def _response_schema(response_format: Any) -> tuple[dict[str, Any] | bool | None, str]:
    """``(schema, system instruction)`` of ``response_format``; ``(None, "")`` for plain text.

    The same reading as the LangChain adapter's: a ``json_schema`` is described to the model and
    enforced by the grammar; ``json_object`` is any JSON object (OpenAI's JSON mode leaves the
    prompt to describe the keys).
    """
    if response_format is None:
        return None, ""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None, ""
    if kind == "json_object":
        return {"type": "object"}, ""
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise _bad("response_format.json_schema must be an object with a 'schema'", "response_format")
        schema = spec.get("schema", {"type": "object"})
        if not isinstance(schema, (dict, bool)):
            raise _bad("response_format.json_schema.schema must be a JSON schema object", "response_format")
        return schema, "Reply with a JSON object that follows this JSON schema: " + json.dumps(
            schema, ensure_ascii=False
        )
    raise _bad("response_format.type must be 'text', 'json_object' or 'json_schema'", "response_format")


def _step_key(body: dict[str, Any], header: str | None) -> str | None:
    """``metadata.swift_step`` or the ``X-Swift-Step`` header, if the request names one."""
    from swift_engine.store.records import validate_step_key

    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _bad("'metadata' must be an object", "metadata")
    key = (metadata or {}).get("swift_step") or header
    if key is None:
        return None
    if not isinstance(key, str):
        raise _bad("metadata.swift_step must be a string", "metadata")
    try:
        return validate_step_key(key)
    except ValueError as exc:
        raise _bad(f"step key: {exc}", "metadata") from None


def chat_call(
    engine: "SwiftEngine",
    body: dict[str, Any],
    *,
    model_name: str,
    step_header: str | None,
    timeout: float | None,
    tool_followup: "ToolFollowup" = "auto",
) -> "GenerationCall":
    """The :class:`GenerationCall` of a chat request (as the LangChain adapter's ``_prepare`` builds it).

    The step key is the request's (``metadata.swift_step``, ``X-Swift-Step``), else a fingerprint of
    its system prompt, as for the adapters' calls with nothing else to go by: clients over HTTP
    rarely name their steps, and calls sharing a system prompt are usually one pipeline step.
    ``tool_followup``: see :mod:`.tool_followup` (after tool results, ask models that would only
    call again for the answer).
    """
    from swift_engine.chat.prompting import render_chat_prompt, with_system_text
    from swift_engine.chat.tool_calls import tool_function
    from swift_engine.chat.tool_format import tool_call_format
    from swift_integrations._generation import GenerationCall, normalize_tool_choice, output_constraint
    from swift_integrations.step_keys import system_prompt_step_key
    from swift_integrations.tool_followup import answer_turn, wants_answer_turn

    neutral = neutral_messages(body.get("messages"))
    system_text = "\n\n".join(m["content"] for m in neutral if m["role"] == "system")
    step_key = _step_key(body, step_header) or system_prompt_step_key(system_text)
    sampling = _sampling(body)
    tools = _tools(body)
    names = [tool_function(t)["name"] for t in tools]
    try:
        choice = normalize_tool_choice(body.get("tool_choice"), names) if tools else "none"
    except ValueError as exc:
        raise _bad(str(exc), "tool_choice") from None
    if not tools and body.get("tool_choice") not in (None, "none", "auto"):
        raise _bad("'tool_choice' needs 'tools'", "tool_choice")
    if tools and wants_answer_turn(tool_followup, engine.source or engine.model_name, neutral, choice):
        neutral, tools, choice = answer_turn(neutral), [], "none"
    schema, instruction = _response_schema(body.get("response_format"))
    if instruction:
        neutral = with_system_text(neutral, instruction)
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _bad("'parallel_tool_calls' must be a boolean", "parallel_tool_calls")
    try:
        plan = output_constraint(
            tools,
            choice,
            parallel_tool_calls=parallel is not False,
            json_schema=schema,
            tool_format=tool_call_format(engine.tokenizer),
        )
        prompt = render_chat_prompt(
            engine.tokenizer, neutral, tools=tools if plan.show_tools else None, prefill=plan.prefill
        )
        engine.encode_prompt(prompt.ids)  # the engine's checks: not empty, fits the context
    except ValueError as exc:
        raise _bad(str(exc), "messages") from None
    return GenerationCall(
        engine=engine,
        model_name=model_name,
        step_key=step_key,
        sampling=sampling,
        max_new_tokens=_max_tokens(body, DEFAULT_MAX_TOKENS),
        stop=_stops(body),
        prompt=prompt,
        plan=plan,
        timeout=timeout,
    )


def completion_call(
    engine: "SwiftEngine", body: dict[str, Any], *, model_name: str, step_header: str | None, timeout: float | None
) -> "GenerationCall":
    """The :class:`GenerationCall` of a ``/v1/completions`` request: the prompt read as plain text."""
    from swift_engine.chat.prompting import RenderedPrompt, encode_text
    from swift_integrations._generation import GenerationCall

    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise _bad("'prompt' must be a non-empty string", "prompt")
    for name in ("echo", "suffix", "best_of"):
        if body.get(name) not in (None, False, 1):
            raise _bad(f"'{name}' is not supported", name)
    sampling = _sampling(body)
    try:  # untrusted text: special-token spellings stay text
        ids = encode_text(engine.tokenizer, prompt, add_special_tokens=True)
        engine.encode_prompt(ids)
    except ValueError as exc:
        raise _bad(str(exc), "prompt") from None
    return GenerationCall(
        engine=engine,
        model_name=model_name,
        step_key=_step_key(body, step_header),
        sampling=sampling,
        max_new_tokens=_max_tokens(body, DEFAULT_COMPLETION_MAX_TOKENS),
        stop=_stops(body),
        prompt=RenderedPrompt(text=prompt, ids=ids),
        timeout=timeout,
    )


# -- responses ---------------------------------------------------------------------------------------


def swift_stats(final: "Final") -> dict[str, Any]:
    """The extension field ``swift``: what SWIFT did for this reply (see :mod:`swift_integrations.stats`)."""
    s = final.stats
    out: dict[str, Any] = {"step_key": s.step_key if s is not None else final.step_key}
    if s is not None:
        out.update(
            acceptance_rate=s.acceptance_rate,
            mean_accepted_per_step=s.mean_accepted_per_step,
            tokens_per_s=s.tokens_per_s,
            mode=s.mode,
            search_ran=s.search_ran,
        )
    return out


def usage(final: "Final") -> dict[str, int]:
    from swift_integrations.stats import usage_from_stats

    u = usage_from_stats(final.stats)
    return {
        "prompt_tokens": u["input_tokens"],
        "completion_tokens": u["output_tokens"],
        "total_tokens": u["total_tokens"],
    }


def openai_tool_calls(final: "Final") -> list[dict[str, Any]]:
    """Parsed calls in OpenAI's format: ``arguments`` is a JSON string."""
    return [
        {
            "id": c.id,
            "type": "function",
            "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)},
        }
        for c in final.calls
    ]


def _finish_reason(final: "Final") -> str:
    if final.calls:
        return "tool_calls"
    return "length" if final.finish_reason == "length" else "stop"


# -- the app -----------------------------------------------------------------------------------------


class _Slots:
    """Admission control: at most ``limit`` requests in the server at once (running or waiting).

    The engine serves one model step at a time, so queueing more requests only makes every one of
    them slower; past the limit a request is refused at once and the client may retry.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self) -> "_Slot":
        if self.used >= self.limit:
            raise APIError(
                429,
                f"the server is busy ({self.limit} requests in progress); retry later",
                code="rate_limit_exceeded",
                type="rate_limit_error",
            )
        self.used += 1
        return _Slot(self)


class _Slot:
    def __init__(self, slots: _Slots) -> None:
        self.slots: _Slots | None = slots

    def release(self) -> None:
        """Give the slot back (idempotent: a stream's end and its response's cleanup both call it)."""
        if self.slots is not None:
            self.slots.used -= 1
            self.slots = None


def _engine_error(exc: BaseException) -> APIError:
    """What a failure inside the engine means to the client."""
    from swift_engine.request import EngineClosedError, GenerationTimeout

    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, GenerationTimeout):
        return APIError(504, str(exc), code="timeout", type="timeout_error")
    if isinstance(exc, EngineClosedError):
        return APIError(503, "the model was unloaded; the server is shutting down", type="server_error")
    if isinstance(exc, ValueError):  # the engine's argument checks, a grammar that doesn't compile
        return _bad(str(exc))
    log.exception("generation failed", exc_info=exc)
    return APIError(500, f"internal error: {type(exc).__name__}", type="server_error")


def create_app(
    engine: "SwiftEngine",
    *,
    api_key: str | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    model_name: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    tool_followup: "ToolFollowup" = "auto",
) -> "FastAPI":
    """The FastAPI app serving ``engine``; ``uvicorn.run(create_app(engine))`` serves it.

    ``api_key``: required as ``Authorization: Bearer <key>`` on ``/v1`` (``/health`` stays open,
    for load balancers). ``max_queue``: requests admitted at once, 429 past it.
    ``request_timeout``: seconds a generation may take (504, or an error event mid-stream).
    ``model_name``: the id ``/v1/models`` lists and responses carry (default: the engine's).
    ``max_body_bytes``: larger request bodies get 413. ``tool_followup``: what the model is asked
    after tool results (:mod:`.tool_followup`; ``"auto"``: as the catalog measured for the model).
    """
    import functools

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.background import BackgroundTask
    from starlette.exceptions import HTTPException as StarletteHTTPException

    if max_queue < 1:
        raise ValueError(f"max_queue must be at least 1, got {max_queue!r}")
    name = model_name or str(getattr(engine, "model_name", None) or "swift")
    slots = _Slots(max_queue)
    created = int(time.time())
    app = FastAPI(title="swift-accel", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.slots = slots
    app.state.engine = engine

    def error_response(err: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(APIError(exc.status_code, str(exc.detail), type=kind))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_bad(str(exc)))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed", exc_info=exc)
        return error_response(APIError(500, f"internal error: {type(exc).__name__}", type="server_error"))

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "invalid or missing API key", code="invalid_api_key")

    async def read_json(request: Request) -> dict[str, Any]:
        """The body as a JSON object, refused (413) once it exceeds the limit, before it is all read."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise APIError(413, f"request body exceeds {max_body_bytes} bytes", code="request_too_large")
        data = bytearray()
        async for part in request.stream():
            data += part
            if len(data) > max_body_bytes:
                raise APIError(413, f"request body exceeds {max_body_bytes} bytes", code="request_too_large")
        try:
            body = json.loads(bytes(data))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _bad(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise _bad("the request body must be a JSON object")
        return body

    def stream_options(body: dict[str, Any]) -> tuple[bool, bool]:
        stream = body.get("stream", False)
        if stream is not None and not isinstance(stream, bool):
            raise _bad("'stream' must be a boolean", "stream")
        opts = body.get("stream_options")
        if opts is not None and not isinstance(opts, dict):
            raise _bad("'stream_options' must be an object", "stream_options")
        return bool(stream), bool((opts or {}).get("include_usage"))

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
            raise _engine_error(exc) from None
        finally:
            with anyio.CancelScope(shield=True):
                await events.aclose()  # cancelled too (the client left): the engine stops after this step
        assert final is not None
        return final

    async def run(request: Request, call: "GenerationCall") -> "Final | None":
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

    async def respond(request: Request, call: "GenerationCall", slot: _Slot, reply: Any) -> Any:
        """A non-streamed answer: ``reply(final)``, or 499 when the client left (nobody would read it)."""
        try:
            final = await run(request, call)
        finally:
            slot.release()
        if final is None:
            return Response(status_code=499)  # nginx's "client closed request"
        return reply(final)

    async def streamed(
        call: "GenerationCall",
        slot: _Slot,
        chunk: Any,
        include_usage: bool,
    ) -> StreamingResponse:
        """An SSE response; the first event is computed before the headers go, so early errors get a status."""
        import anyio

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
            raise _engine_error(exc) if isinstance(exc, Exception) else exc from None

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
                yield sse(_engine_error(exc).body())
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

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": name, "in_flight": slots.used, "max_queue": slots.limit}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        check_key(request)
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": created, "owned_by": "swift-accel"}],
        }

    async def prepared(request: Request, build: Any) -> tuple[dict[str, Any], "GenerationCall"]:
        import anyio

        check_key(request)
        body = await read_json(request)
        header = request.headers.get("x-swift-step")
        call = await anyio.to_thread.run_sync(  # rendering the prompt is tokenizer work: off the loop
            lambda: build(engine, body, model_name=name, step_header=header, timeout=request_timeout)
        )
        return body, call

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body, call = await prepared(request, functools.partial(chat_call, tool_followup=tool_followup))
        stream, include_usage = stream_options(body)
        rid = "chatcmpl-" + uuid.uuid4().hex
        now = int(time.time())
        slot = slots.take()
        if not stream:

            def reply(final: "Final") -> dict[str, Any]:
                message: dict[str, Any] = {"role": "assistant", "content": final.content or None}
                calls = openai_tool_calls(final)
                if calls:
                    message["tool_calls"] = calls
                elif message["content"] is None:
                    message["content"] = ""
                return {
                    "id": rid,
                    "object": "chat.completion",
                    "created": now,
                    "model": name,
                    "choices": [
                        {"index": 0, "message": message, "finish_reason": _finish_reason(final), "logprobs": None}
                    ],
                    "usage": usage(final),
                    "swift": swift_stats(final),
                }

            return await respond(request, call, slot, reply)

        def chunk(
            text: str = "", *, role: bool = False, final: "Final | None" = None, usage_of: "Final | None" = None
        ) -> dict[str, Any]:
            out: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": name}
            if usage_of is not None:
                out.update(choices=[], usage=usage(usage_of), swift=swift_stats(usage_of))
                return out
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            finish = None
            if final is not None:
                calls = openai_tool_calls(final)
                if calls:
                    delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(calls)]
                finish = _finish_reason(final)
                out["swift"] = swift_stats(final)
            out["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
            if include_usage:
                out["usage"] = None
            return out

        return await streamed(call, slot, chunk, include_usage)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body, call = await prepared(request, completion_call)
        stream, include_usage = stream_options(body)
        rid = "cmpl-" + uuid.uuid4().hex
        now = int(time.time())
        slot = slots.take()
        if not stream:

            def reply(final: "Final") -> dict[str, Any]:
                return {
                    "id": rid,
                    "object": "text_completion",
                    "created": now,
                    "model": name,
                    "choices": [
                        {"index": 0, "text": final.content, "finish_reason": _finish_reason(final), "logprobs": None}
                    ],
                    "usage": usage(final),
                    "swift": swift_stats(final),
                }

            return await respond(request, call, slot, reply)

        def chunk(
            text: str = "", *, role: bool = False, final: "Final | None" = None, usage_of: "Final | None" = None
        ) -> dict[str, Any] | None:
            out: dict[str, Any] = {"id": rid, "object": "text_completion", "created": now, "model": name}
            if usage_of is not None:
                out.update(choices=[], usage=usage(usage_of), swift=swift_stats(usage_of))
                return out
            finish = _finish_reason(final) if final is not None else None
            if final is not None:
                out["swift"] = swift_stats(final)
            out["choices"] = [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]
            return out

        return await streamed(call, slot, chunk, include_usage)

    return app


# -- command line ------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m swift_integrations.serve", description="Serve a model over an OpenAI-compatible HTTP API."
    )
    p.add_argument("--model", default=None, help="catalog short name, folder, .gguf file or hub id (default: embedded)")
    p.add_argument("--gguf-file", default=None, help="the .gguf file inside --model (a folder or hub repo)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="required bearer token (default: $SWIFT_API_KEY)")
    p.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, help="requests admitted at once (429 past it)")
    p.add_argument(
        "--request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT, help="seconds a generation may take"
    )
    p.add_argument("--model-name", default=None, help="the model id clients see (default: the model's name)")
    p.add_argument("--profile-dir", default=None, help="the profile store directory (default: the user cache)")
    p.add_argument(
        "--tool-followup",
        choices=("auto", "answer", "model"),
        default="auto",
        help="after tool results: ask for the answer ('answer'), let the model decide ('model'), or as measured "
        "for catalog models ('auto')",
    )
    ray = p.add_argument_group("scale-out on Ray Serve (the ray extra)")
    ray.add_argument("--ray", action="store_true", help="serve engine replicas on Ray Serve instead of one process")
    ray.add_argument("--replicas", type=int, default=2, help="replicas (the minimum when autoscaling)")
    ray.add_argument("--max-replicas", type=int, default=None, help="autoscale up to this many replicas")
    ray.add_argument("--replica-cpus", type=float, default=1.0, help="Ray CPUs (and torch threads) per replica")
    ray.add_argument(
        "--store",
        choices=("directory", "actor"),
        default="directory",
        help="what replicas share profiles through: --profile-dir (one machine or a shared filesystem) "
        "or a Ray actor on the head node (no shared disk)",
    )
    ray.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: $RAY_ADDRESS, else local)")
    return p


def check_exposure(host: str, api_key: str | None) -> None:
    """Refuse to serve an open model beyond this machine's loopback (``ValueError``)."""
    if api_key is None and host not in LOCAL_HOSTS:
        raise ValueError(f"serving on {host} needs an API key (--api-key or SWIFT_API_KEY)")


def serve(
    model: str | None = None,
    *,
    gguf_file: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    model_name: str | None = None,
    profile_dir: str | None = None,
    tool_followup: "ToolFollowup" = "auto",
) -> None:
    """Load the model and serve it until interrupted (the entry point of the CLI and ``-m``).

    A server reachable from other machines must not run an open model: without an API key
    (``api_key`` or ``$SWIFT_API_KEY``) any host but this machine's loopback is refused
    (``ValueError``, before the model loads).
    """
    try:
        import uvicorn
    except ImportError:  # pragma: no cover - the extra is missing
        raise ImportError("the server needs FastAPI and uvicorn: pip install 'swift-accel[serve]'") from None
    from swift_engine import SwiftEngine
    from swift_integrations.engine_cache import get_engine

    key = api_key or os.environ.get("SWIFT_API_KEY") or None
    check_exposure(host, key)
    if max_queue < 1:
        raise ValueError("--max-queue must be at least 1")
    if request_timeout is not None and not request_timeout > 0:
        raise ValueError("--request-timeout must be a positive number of seconds")
    if tool_followup not in ("auto", "answer", "model"):
        raise ValueError(f"--tool-followup must be auto, answer or model, got {tool_followup!r}")
    if profile_dir is None:  # catalog names, folders, .gguf files, hub ids; shared with in-process adapters
        engine = get_engine(model, gguf_file, device, dtype)
    else:
        engine = SwiftEngine.from_pretrained(
            model, gguf_file=gguf_file, device=device, dtype=dtype, profile_store=profile_dir
        )
    app = create_app(
        engine,
        api_key=key,
        max_queue=max_queue,
        request_timeout=request_timeout,
        model_name=model_name or model,
        tool_followup=tool_followup,
    )
    uvicorn.run(app, host=host, port=port)


def start(
    model: str | None = None,
    *,
    ray: bool = False,
    replicas: int = 2,
    max_replicas: int | None = None,
    replica_cpus: float = 1.0,
    store: str = "directory",
    ray_address: str | None = None,
    **options: Any,
) -> None:
    """Serve in one process (:func:`serve`), or with ``ray=True`` as replicas on Ray Serve.

    ``options`` are :func:`serve`'s (``host``, ``port``, ``api_key``, ``max_queue``, ...); the
    ``ray`` ones are :class:`~swift_integrations.serve.ray_serve.ReplicaSettings` fields. Bad values
    raise ``ValueError`` with one line naming the flag; a missing extra, ``ImportError``.
    """
    if model is not None and model.strip().lower() == "embedded":
        model = None
    if not ray:
        serve(model, **options)
        return
    try:
        from swift_integrations.serve.ray_serve import ReplicaSettings, run
    except ImportError as exc:
        raise ImportError(f"--ray needs Ray Serve: pip install 'swift-accel[ray]' ({exc})") from None
    from pydantic import ValidationError

    host, port = options.pop("host", "127.0.0.1"), options.pop("port", 8000)
    try:
        settings = ReplicaSettings(
            model=model,
            store=store,
            replicas=replicas,
            max_replicas=max_replicas,
            replica_cpus=replica_cpus,
            **options,
        )
    except ValidationError as exc:
        raise ValueError(_validation_message(exc)) from None
    run(settings, host=host, port=port, address=ray_address)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m swift_integrations.serve``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        start(**vars(args))
    except (ValueError, ImportError) as exc:  # a bad flag or a missing extra: one line, no traceback
        raise SystemExit(f"error: {exc}") from None


def _validation_message(exc: Any) -> str:
    """A pydantic error as one line naming the flags: ``--max-replicas: Input should be ...``."""
    parts = []
    for err in exc.errors():
        flag = "--" + "-".join(str(p) for p in err["loc"]).replace("_", "-")
        parts.append(f"{flag}: {err['msg']}")
    return "; ".join(parts)


if __name__ == "__main__":  # pragma: no cover
    main()
