"""Response bodies in OpenAI's format: whole replies, stream chunks, ``usage``, and the ``swift`` extension field.

SWIFT's statistics ride along in an extension field ``swift`` of each response (and of a stream's
last chunk), so an OpenAI client sees a standard reply and a SWIFT-aware one can read what the
acceleration did. The builders take the response's ``rid``, ``created`` time and ``model`` name
explicitly; the route handlers of :mod:`swift_integrations.serve.app` bind them per request.
"""

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from swift_integrations._generation import Final

__all__ = [
    "chat_completion",
    "chat_completion_chunk",
    "finish_reason",
    "openai_tool_calls",
    "swift_stats",
    "text_completion",
    "text_completion_chunk",
    "usage",
]


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
    """OpenAI's ``usage`` block of a reply."""
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


def finish_reason(final: "Final") -> str:
    """OpenAI's ``finish_reason``: ``tool_calls``, ``length`` or ``stop``."""
    if final.calls:
        return "tool_calls"
    return "length" if final.finish_reason == "length" else "stop"


# -- /v1/chat/completions -------------------------------------------------------------------------


def chat_completion(final: "Final", *, rid: str, created: int, model: str) -> dict[str, Any]:
    """A whole ``chat.completion``: the reply's text, or its tool calls; a reasoning model's thinking in
    ``reasoning_content`` (the field vLLM and DeepSeek's API use; clients that don't know it skip it)."""
    message: dict[str, Any] = {"role": "assistant", "content": final.content or None}
    if final.reasoning:
        message["reasoning_content"] = final.reasoning
    calls = openai_tool_calls(final)
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(final), "logprobs": None}],
        "usage": usage(final),
        "swift": swift_stats(final),
    }


def chat_completion_chunk(
    text: str = "",
    *,
    reasoning: str = "",
    role: bool = False,
    final: "Final | None" = None,
    usage_of: "Final | None" = None,
    rid: str,
    created: int,
    model: str,
    include_usage: bool,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``: the role (first), a delta (a reasoning model's thinking in
    ``reasoning_content``, which comes before any content), the final one, or the usage one."""
    out: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
    if usage_of is not None:
        out.update(choices=[], usage=usage(usage_of), swift=swift_stats(usage_of))
        return out
    delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
    if reasoning:
        delta["reasoning_content"] = reasoning
    if text:
        delta["content"] = text
    finish = None
    if final is not None:
        calls = openai_tool_calls(final)
        if calls:
            delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(calls)]
        finish = finish_reason(final)
        out["swift"] = swift_stats(final)
    out["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    if include_usage:
        out["usage"] = None
    return out


# -- /v1/completions ------------------------------------------------------------------------------


def text_completion(final: "Final", *, rid: str, created: int, model: str) -> dict[str, Any]:
    """A whole ``text_completion``."""
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": final.content, "finish_reason": finish_reason(final), "logprobs": None}],
        "usage": usage(final),
        "swift": swift_stats(final),
    }


def text_completion_chunk(
    text: str = "",
    *,
    role: bool = False,
    final: "Final | None" = None,
    usage_of: "Final | None" = None,
    rid: str,
    created: int,
    model: str,
) -> dict[str, Any]:
    """One streamed ``text_completion``: a text piece, the final one, or the usage one (``role`` adds nothing)."""
    out: dict[str, Any] = {"id": rid, "object": "text_completion", "created": created, "model": model}
    if usage_of is not None:
        out.update(choices=[], usage=usage(usage_of), swift=swift_stats(usage_of))
        return out
    finish = finish_reason(final) if final is not None else None
    if final is not None:
        out["swift"] = swift_stats(final)
    out["choices"] = [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]
    return out
