"""Generation events as the parts of LlamaIndex responses that carry more than text.

A response's ``raw`` (:func:`response_raw`) and ``additional_kwargs`` (:func:`response_kwargs`) hold
the SWIFT statistics (:func:`swift_integrations.stats.stats_metadata`), the token counts under
OpenAI's names (``prompt_tokens``/``completion_tokens``/``total_tokens``, in ``raw["usage"]`` too,
where LlamaIndex's ``TokenCountingHandler`` reads them) and the ``finish_reason``; ``raw`` adds the
prompt as the model saw it, the thinking and the tool calls. Stream items carry their new thinking
where LlamaIndex's agents read it (:func:`thinking_delta`).
"""

from __future__ import annotations

from typing import Any

from swift_engine.chat.tool_calls import InvalidToolCall
from swift_integrations._generation import Delta, Final
from swift_integrations.stats import usage_from_stats

__all__ = ["invalid_call_dict", "response_kwargs", "response_raw", "thinking_delta"]


def _usage(final: Final) -> dict[str, int]:
    u = usage_from_stats(final.stats)
    return {
        "prompt_tokens": u["input_tokens"],
        "completion_tokens": u["output_tokens"],
        "total_tokens": u["total_tokens"],
    }


def response_raw(final: Final) -> dict[str, Any]:
    """A response's ``raw``: the SWIFT statistics, usage, the prompt as the model saw it, the calls."""
    raw = final.metadata()
    raw["usage"] = _usage(final)
    raw["prompt"] = final.prompt_text
    raw["text"] = final.content
    if final.reasoning:
        raw["thinking"] = final.reasoning
    if final.calls:
        raw["tool_calls"] = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in final.calls]
    if final.invalid:
        raw["invalid_tool_calls"] = [invalid_call_dict(c) for c in final.invalid]
    return raw


def thinking_delta(ev: Delta) -> dict[str, Any]:
    """A stream item's new thinking, where LlamaIndex's agents read it (``AgentStream.thinking_delta``)."""
    return {"thinking_delta": ev.reasoning} if ev.reasoning else {}


def response_kwargs(final: Final) -> dict[str, Any]:
    """A response's ``additional_kwargs``: the token counts and the SWIFT statistics."""
    return {**_usage(final), **final.metadata()}


def invalid_call_dict(c: InvalidToolCall) -> dict[str, Any]:
    """A call the model wrote that did not parse, with the reason (``raw`` and ``additional_kwargs``)."""
    return {"id": c.id, "name": c.name, "arguments": c.arguments, "error": c.error}
