"""An OpenAI request body read and checked, field by field: each bad field is a 400 that names it.

The readers here know OpenAI's wire format (and the engine's rule for tool names): numbers in range, a
``stop`` string or list, sampling options, ``tools``, ``response_format``, the step key a request
names, ``stream``/``stream_options``, and :func:`neutral_messages`, OpenAI chat messages as the
framework-neutral dicts the prompt renderer takes. :mod:`swift_integrations.serve.calls` puts them
together into a generation call.
"""

import json
from typing import Any

from swift_engine.decoding.constraints import check_tool_name
from swift_integrations.serve.errors import bad_request

__all__ = [
    "CHAT_FIELDS",
    "COMPLETION_FIELDS",
    "MAX_MESSAGES",
    "check_prompt_size",
    "known_fields",
    "max_tokens",
    "neutral_messages",
    "response_schema",
    "sampling",
    "step_key",
    "stops",
    "stream_options",
    "tools",
]

#: The fields of OpenAI's chat completion request (and ``top_k``, an extension as in vLLM); others get a 400, as
#: OpenAI answers them. Some are read and refused when set (``logprobs``, ``n`` > 1), others accepted and ignored.
CHAT_FIELDS = frozenset(
    {
        "messages", "model", "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
        "max_completion_tokens", "max_tokens", "metadata", "modalities", "n", "parallel_tool_calls", "prediction",
        "presence_penalty", "prompt_cache_key", "reasoning_effort", "response_format", "safety_identifier", "seed",
        "service_tier", "stop", "store", "stream", "stream_options", "temperature", "tool_choice", "tools",
        "top_logprobs", "top_p", "user", "verbosity", "web_search_options", "top_k",
    }
)  # fmt: skip
#: The fields of OpenAI's (legacy) completion request, and ``top_k`` and ``metadata`` (the step key).
COMPLETION_FIELDS = frozenset(
    {
        "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n",
        "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix", "temperature", "top_p", "user",
        "top_k", "metadata",
    }
)  # fmt: skip
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float, *, lo_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(f"'{name}' must be a number, got {value!r}", name)
    if not (lo < value <= hi if lo_open else lo <= value <= hi):
        raise bad_request(f"'{name}' must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {value!r}", name)
    return float(value)


def _integer(body: dict[str, Any], name: str, *, minimum: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"'{name}' must be an integer, got {value!r}", name)
    if minimum is not None and value < minimum:
        raise bad_request(f"'{name}' must be at least {minimum}, got {value!r}", name)
    return value


def known_fields(body: dict[str, Any], known: frozenset[str]) -> None:
    """A 400 naming the first field of ``body`` the endpoint does not have (OpenAI refuses them too)."""
    for name in body:
        if name not in known:
            raise bad_request(f"unrecognized request argument supplied: {name}", name)


def max_tokens(body: dict[str, Any], default: int) -> int:
    """``max_completion_tokens`` (OpenAI's newer name), else ``max_tokens``, else ``default``."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = _integer(body, name, minimum=1)
        if value is not None:
            return value
    return default


def stops(body: dict[str, Any]) -> list[str]:
    """``stop``: one string or a list of them, none empty."""
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad_request("'stop' must be a non-empty string or a list of non-empty strings", "stop")
    return list(stops)


def sampling(body: dict[str, Any]) -> dict[str, Any]:
    """Temperature, top_p, top_k (an extension, as in vLLM) and seed, checked."""
    n = _integer(body, "n", minimum=1)
    if n is not None and n != 1:
        raise bad_request("'n' must be 1: one choice per request is supported", "n")
    for name in ("logprobs", "top_logprobs"):
        if body.get(name) not in (None, False):
            raise bad_request(f"'{name}' is not supported", name)
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
                raise bad_request(f"{where}: only text content is supported, got a {kind!r} part", where)
        return "".join(parts)
    raise bad_request(f"{where}: 'content' must be a string or a list of text parts", where)


def _arguments(raw: Any, where: str) -> dict[str, Any]:
    """A past tool call's ``arguments`` (a JSON string in OpenAI's format) as a dict."""
    if isinstance(raw, dict):
        return raw
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, str):
        raise bad_request(f"{where}: 'arguments' must be a JSON string", where)
    try:
        args = json.loads(raw)
    except json.JSONDecodeError:
        raise bad_request(f"{where}: 'arguments' is not valid JSON", where) from None
    if not isinstance(args, dict):
        raise bad_request(f"{where}: 'arguments' must encode a JSON object", where)
    return args


#: The most messages a chat request may hold (each is rendered and tokenized before the request is refused).
MAX_MESSAGES = 2048


def check_prompt_size(chars: int, max_chars: int | None, param: str) -> None:
    """A 400 when ``chars`` characters of text can't fit the context (``max_chars``: the engine's bound), before
    any rendering or tokenizing (see :attr:`~swift_engine.engine.SwiftEngine.max_prompt_chars`)."""
    if max_chars is not None and chars > max_chars:
        raise bad_request(f"the prompt has {chars} characters, more than the model's context can hold", param)


def neutral_messages(messages: Any) -> list[dict[str, Any]]:
    """OpenAI chat messages as the framework-neutral dicts of :func:`~swift_engine.chat.prompting.render_chat_prompt`.

    Almost 1:1; a past call's ``arguments`` string becomes a dict, a tool result gets its tool's
    name from the call it answers (templates that name tool results need it), ``developer`` is a
    system message.
    """
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list of messages", "messages")
    if len(messages) > MAX_MESSAGES:
        raise bad_request(f"'messages' holds {len(messages)} messages; at most {MAX_MESSAGES} allowed", "messages")
    out: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request(f"{where} must be an object", where)
        role = m.get("role")
        if role == "function":  # the legacy function-result role
            out.append({"role": "tool", "content": _text(m.get("content"), where), "name": m.get("name")})
            continue
        if not isinstance(role, str) or role not in _ROLES:
            raise bad_request(f"{where}: unknown role {role!r}; expected one of {sorted(_ROLES)}", f"{where}.role")
        msg: dict[str, Any] = {"role": _ROLES[role], "content": _text(m.get("content"), where)}
        if role == "user" and isinstance(m.get("name"), str):
            msg["name"] = m["name"]
        elif role == "assistant" and m.get("tool_calls"):
            raw_calls = m["tool_calls"]
            if not isinstance(raw_calls, list):
                raise bad_request(f"{where}: 'tool_calls' must be a list", f"{where}.tool_calls")
            calls = []
            for j, tc in enumerate(raw_calls):
                fn = tc.get("function") if isinstance(tc, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise bad_request(f"{where}.tool_calls[{j}] needs a function with a name", f"{where}.tool_calls")
                call_id = tc.get("id")
                if call_id is not None and not isinstance(call_id, str):
                    raise bad_request(f"{where}.tool_calls[{j}].id must be a string", f"{where}.tool_calls")
                call = {"id": call_id, "name": fn["name"], "arguments": _arguments(fn.get("arguments"), where)}
                if call["id"]:
                    call_names[call["id"]] = call["name"]
                calls.append(call)
            msg["tool_calls"] = calls
        elif role == "tool":
            call_id = m.get("tool_call_id")
            if call_id is not None and not isinstance(call_id, str):
                raise bad_request(f"{where}.tool_call_id must be a string", f"{where}.tool_call_id")
            msg["tool_call_id"] = call_id
            msg["name"] = m.get("name") or call_names.get(call_id or "")
        out.append(msg)
    return out


def tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    """``tools``: function tools only, each with a name (and a JSON schema object, if parameters)."""
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise bad_request("'tools' must be a list of function tools", "tools")
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) and t.get("type", "function") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise bad_request(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., ...}}}}", "tools")
        try:  # the engine's rule, checked before the request takes a slot (markup would break the call's parsing)
            check_tool_name(fn["name"])
        except ValueError as exc:
            raise bad_request(f"tools[{i}]: {exc}", "tools") from None
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise bad_request(f"tools[{i}].function.parameters must be a JSON schema object", "tools")
    return [{"type": "function", "function": t["function"]} for t in tools]


def response_schema(response_format: Any) -> tuple[dict[str, Any] | bool | None, str]:
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
            raise bad_request("response_format.json_schema must be an object with a 'schema'", "response_format")
        schema = spec.get("schema", {"type": "object"})
        if not isinstance(schema, (dict, bool)):
            raise bad_request("response_format.json_schema.schema must be a JSON schema object", "response_format")
        return schema, "Reply with a JSON object that follows this JSON schema: " + json.dumps(
            schema, ensure_ascii=False
        )
    raise bad_request("response_format.type must be 'text', 'json_object' or 'json_schema'", "response_format")


def step_key(body: dict[str, Any], header: str | None) -> str | None:
    """``metadata.swift_step`` or the ``X-Swift-Step`` header, if the request names one."""
    from swift_engine.store.records import validate_step_key

    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise bad_request("'metadata' must be an object", "metadata")
    key = (metadata or {}).get("swift_step") or header
    if key is None:
        return None
    if not isinstance(key, str):
        raise bad_request("metadata.swift_step must be a string", "metadata")
    try:
        return validate_step_key(key)
    except ValueError as exc:
        raise bad_request(f"step key: {exc}", "metadata") from None


def stream_options(body: dict[str, Any]) -> tuple[bool, bool]:
    """``(stream, include_usage)`` of a request."""
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", "stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise bad_request("'stream_options' must be an object", "stream_options")
    return bool(stream), bool((opts or {}).get("include_usage"))
