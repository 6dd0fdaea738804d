"""Generation events as LangChain outputs: a :class:`~langchain_core.outputs.ChatResult` for a whole
reply (:func:`chat_result`) and message chunks for a stream (:class:`ChunkBuilder`).

Both carry the same things: the text, the reasoning in ``additional_kwargs["reasoning_content"]``,
tool calls (valid and invalid ones apart, as LangChain keeps them), token usage (with the prompt
tokens the engine's prefix cache supplied) and ``response_metadata`` with the ``finish_reason`` and
the SWIFT statistics (:func:`swift_integrations.stats.stats_metadata`).
"""

from __future__ import annotations

import json
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.utils.json import parse_partial_json

from swift_integrations._generation import Delta, Final, Start
from swift_integrations.stats import usage_from_stats

__all__ = ["ChunkBuilder", "chat_result"]


def _usage(input_tokens: int, output_tokens: int, cache_read: int = 0) -> UsageMetadata:
    """LangChain's usage record; ``cache_read``: prompt tokens the engine's prefix cache supplied."""
    usage = UsageMetadata(
        input_tokens=input_tokens, output_tokens=output_tokens, total_tokens=input_tokens + output_tokens
    )
    if cache_read:
        usage["input_token_details"] = {"cache_read": cache_read}
    return usage


def _cache_read(stats: Any) -> int:
    return int(getattr(stats, "cached_prompt_tokens", 0) or 0)


def _lc_tool_calls(final: Final) -> tuple[list[Any], list[Any]]:
    calls = [tool_call(name=c.name, args=c.arguments, id=c.id) for c in final.calls]
    invalid = [invalid_tool_call(name=c.name, args=c.arguments, id=c.id, error=c.error) for c in final.invalid]
    return calls, invalid


def chat_result(final: Final) -> ChatResult:
    calls, invalid = _lc_tool_calls(final)
    message = AIMessage(
        content=final.content,
        additional_kwargs=_reasoning_kwargs(final.reasoning),
        tool_calls=calls,
        invalid_tool_calls=invalid,
        usage_metadata=_usage(
            **{k: usage_from_stats(final.stats)[k] for k in ("input_tokens", "output_tokens")},
            cache_read=_cache_read(final.stats),
        ),
        response_metadata=final.metadata(),
    )
    return ChatResult(
        generations=[ChatGeneration(message=message, generation_info={"finish_reason": final.finish_reason})]
    )


def _reasoning_kwargs(reasoning: str) -> dict[str, Any]:
    """Where reasoning goes on a message: ``additional_kwargs["reasoning_content"]``, as ChatOllama and
    langchain-deepseek put it; langchain-core makes it a leading reasoning block of ``content_blocks``
    (and of ``content`` with ``output_version="v1"``), and chunk merging concatenates it."""
    return {"reasoning_content": reasoning} if reasoning else {}


class ChunkBuilder:
    """Events → message chunks: usage is attached to the next chunk that carries text (or the last)."""

    def __init__(self) -> None:
        self.pending_in = 0
        self.pending_out = 0

    def feed(self, ev: Start | Delta | Final) -> ChatGenerationChunk | None:
        if isinstance(ev, Start):
            self.pending_in += ev.input_tokens
            return None
        if isinstance(ev, Delta):
            self.pending_out += ev.output_tokens
            if not ev.text and not ev.reasoning:
                return None
            msg = AIMessageChunk(
                content=ev.text, additional_kwargs=_reasoning_kwargs(ev.reasoning), usage_metadata=self._take()
            )
            return ChatGenerationChunk(message=msg)
        chunks = [
            tool_call_chunk(name=c.name, args=json.dumps(c.arguments, ensure_ascii=False), id=c.id, index=i)
            for i, c in enumerate(ev.calls)
        ]
        for j, c in enumerate(ev.invalid, start=len(chunks)):
            chunks.append(tool_call_chunk(name=c.name, args=_invalid_args_text(c.arguments), id=c.id, index=j))
        msg = AIMessageChunk(
            content=ev.tail,
            tool_call_chunks=chunks,
            usage_metadata=self._take(cache_read=_cache_read(ev.stats)),
            response_metadata=ev.metadata(),
            chunk_position="last",
        )
        return ChatGenerationChunk(message=msg, generation_info={"finish_reason": ev.finish_reason})

    def _take(self, cache_read: int = 0) -> UsageMetadata:
        u = _usage(self.pending_in, self.pending_out, cache_read)
        self.pending_in = self.pending_out = 0
        return u


def _invalid_args_text(raw: str | None) -> str:
    """Args text of an invalid call in a stream that LangChain's chunk merging can't read as valid."""
    text = raw or ""
    try:
        parsed = parse_partial_json(text) if text else {}
    except Exception:  # noqa: BLE001 - any failure means it already reads as invalid
        return text
    return json.dumps(text) if isinstance(parsed, dict) else text
