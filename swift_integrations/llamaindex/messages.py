"""LlamaIndex messages and tools in the framework-neutral forms of :mod:`swift_engine.chat.prompting`,
and back.

:func:`neutral_messages` turns chat messages into the role/content dicts that
:func:`~swift_engine.chat.prompting.render_chat_prompt` renders through the model's chat template
(text only: other blocks are refused rather than silently dropped); past tool calls
(``ToolCallBlock`` s, or OpenAI-style ``additional_kwargs["tool_calls"]``) and thinking travel apart
from the text, so the template renders them as the model was trained to see them.
:func:`as_llama_messages` goes back to text-only messages for a user's ``messages_to_prompt``, and
:func:`tool_spec` turns a LlamaIndex tool into the OpenAI-format dict the engine's grammars read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock, ThinkingBlock, ToolCallBlock

from swift_engine.chat.prompting import escape_special_tokens, message_text
from swift_engine.chat.tool_calls import tool_function

__all__ = ["as_llama_messages", "message_tool_calls", "neutral_messages", "tool_spec"]


_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.TOOL: "tool",
    MessageRole.FUNCTION: "tool",
}


def _message_text(m: ChatMessage, where: str) -> str:
    parts: list[str] = []
    for block in m.blocks:
        if isinstance(block, TextBlock):
            parts.append(block.text)
        elif isinstance(block, (ToolCallBlock, ThinkingBlock)) or getattr(block, "block_type", None) in (
            "cache",
            "cache_point",
        ):
            continue  # tool calls are rendered from the calls; reasoning goes apart (_message_thinking)
        else:
            raise ValueError(
                f"SwiftLlamaIndexLLM reads text only; {where} has a "
                f"{getattr(block, 'block_type', type(block).__name__)!r} block"
            )
    return "\n".join(parts)


def _call_arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}
    return {}


def message_tool_calls(m: ChatMessage) -> list[dict[str, Any]]:
    """Tool calls of an assistant message: ``ToolCallBlock`` blocks, else OpenAI-style ``additional_kwargs``."""
    calls = [
        {"id": b.tool_call_id, "name": b.tool_name, "arguments": _call_arguments(b.tool_kwargs)}
        for b in m.blocks
        if isinstance(b, ToolCallBlock)
    ]
    if calls:
        return calls
    for tc in m.additional_kwargs.get("tool_calls") or []:
        if isinstance(tc, dict):
            function = tc.get("function")
            fn = function if isinstance(function, dict) else tc
            name = fn.get("name")
            args = fn.get("arguments", fn.get("args"))
            call_id = tc.get("id")
        else:  # an SDK object (e.g. openai's ChatCompletionMessageToolCall)
            fn = getattr(tc, "function", tc)
            name, args, call_id = getattr(fn, "name", None), getattr(fn, "arguments", None), getattr(tc, "id", None)
        if isinstance(name, str) and name:
            calls.append({"id": call_id, "name": name, "arguments": _call_arguments(args)})
    return calls


def _message_thinking(m: ChatMessage) -> str:
    """An assistant message's reasoning: its ``ThinkingBlock`` s, else ``additional_kwargs["reasoning_content"]``."""
    parts = [b.content for b in m.blocks if isinstance(b, ThinkingBlock) and b.content]
    if parts:
        return "\n".join(parts)
    kept = m.additional_kwargs.get("reasoning_content")
    return kept if isinstance(kept, str) else ""


def neutral_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """LlamaIndex messages as the framework-neutral dicts of :func:`~swift_engine.chat.prompting.render_chat_prompt`."""
    out: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for i, m in enumerate(messages):
        role = _ROLES.get(m.role)
        if role is None:
            raise ValueError(f"unsupported message role {m.role!r} at message {i}")
        where = f"message {i} ({m.role.value})"
        msg: dict[str, Any] = {"role": role, "content": _message_text(m, where)}
        if role == "assistant":
            calls = message_tool_calls(m)
            for c in calls:
                if c["id"]:
                    call_names[c["id"]] = c["name"]
            if calls:
                msg["tool_calls"] = calls
            thinking = _message_thinking(m)
            if thinking:
                msg["reasoning_content"] = thinking  # the template renders it back or drops it
        elif role == "tool":
            kw = m.additional_kwargs
            call_id = kw.get("tool_call_id")
            msg["tool_call_id"] = call_id
            msg["name"] = kw.get("name") or kw.get("tool_name") or call_names.get(call_id or "")
            msg["is_error"] = bool(kw.get("is_error"))
        out.append(msg)
    return out


def as_llama_messages(neutral: Sequence[dict[str, Any]], specials: Sequence[str]) -> list[ChatMessage]:
    """Neutral dicts back to text-only ChatMessages (for a user's ``messages_to_prompt``).

    Past tool calls become ``<tool_call>`` text in the assistant message, tool results
    ``<tool_response>`` text in a ``tool`` message. The user's function writes the turn markers and
    we read its text with special tokens, so special-token spellings inside the messages are broken
    first (:func:`~swift_engine.chat.prompting.escape_special_tokens`): content can't open a turn.
    """
    return [
        ChatMessage(role=MessageRole(m["role"]), content=escape_special_tokens(message_text(m), specials))
        for m in neutral
    ]


def tool_spec(tool: Any) -> dict[str, Any]:
    """An OpenAI-format tool dict from a LlamaIndex tool or a dict."""
    if isinstance(tool, dict):
        tool_function(tool)  # validates
        return tool
    meta = getattr(tool, "metadata", None)
    if meta is not None and hasattr(meta, "to_openai_tool"):
        return meta.to_openai_tool(skip_length_check=True)
    raise TypeError(f"tools must be LlamaIndex tools or OpenAI-format dicts, got {type(tool).__name__}")
