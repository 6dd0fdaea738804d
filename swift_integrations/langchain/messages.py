"""LangChain inputs in the framework-neutral forms of :mod:`swift_engine.chat.prompting`.

Messages become the role/content dicts that :func:`~swift_engine.chat.prompting.render_chat_prompt`
renders through the model's chat template (text only: media is refused rather than silently
dropped); past tool calls and a reply's reasoning travel apart from the text, so the template
renders them as the model was trained to see them. Tools become OpenAI-format dicts, and an
OpenAI-style ``response_format`` the JSON schema that constrains the reply.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.utils.function_calling import convert_to_openai_tool

__all__ = ["as_openai_tools", "neutral_messages", "response_schema"]


def _text_of(content: Any, where: str) -> str:
    """The text of a message's content (a string or content blocks); media is refused."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content or []:
        if isinstance(block, str):
            parts.append(block)
            continue
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append(str(block.get("text", "")))
        elif kind in (
            "tool_use",
            "tool_call",
            "tool_call_chunk",
            "invalid_tool_call",
            "thinking",
            "redacted_thinking",
            "reasoning",
            "server_tool_call",
            "server_tool_result",
        ):
            continue  # tool calls are rendered from .tool_calls; reasoning goes apart (_reasoning_of)
        else:
            raise ValueError(f"SwiftChatModel reads text only; {where} has a {kind!r} content block")
    return "\n".join(p for p in parts if p)


def _reasoning_of(message: AIMessage) -> str:
    """A reply's reasoning, for the chat template to render back (or drop) as the model expects.

    ``additional_kwargs["reasoning_content"]`` (what this model, ChatOllama and DeepSeek return),
    else the text of reasoning content blocks (v1 ``reasoning``, Anthropic-style ``thinking``).
    """
    kept = message.additional_kwargs.get("reasoning_content")
    if isinstance(kept, str):
        return kept
    if isinstance(message.content, str):
        return ""
    parts = []
    for block in message.content:
        if isinstance(block, dict) and block.get("type") in ("reasoning", "thinking"):
            text = block.get(block["type"])
            if isinstance(text, str) and text:
                parts.append(text)
    return "\n".join(parts)


_ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "ai": "assistant",
    "assistant": "assistant",
    "system": "system",
    "developer": "system",
    "tool": "tool",
    "function": "tool",
}


def neutral_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as the framework-neutral dicts of :func:`~swift_engine.chat.prompting.render_chat_prompt`.

    A tool result without a name takes the name of the call it answers (from an earlier message).
    """
    out: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for i, m in enumerate(messages):
        where = f"message {i} ({m.type})"
        if isinstance(m, SystemMessage):
            out.append({"role": "system", "content": _text_of(m.content, where)})
        elif isinstance(m, HumanMessage):
            out.append({"role": "user", "content": _text_of(m.content, where), **({"name": m.name} if m.name else {})})
        elif isinstance(m, AIMessage):
            calls: list[dict[str, Any]] = [
                {"id": tc.get("id"), "name": tc["name"], "arguments": tc.get("args") or {}} for tc in m.tool_calls
            ]
            for tc in calls:
                if tc["id"]:
                    call_names[tc["id"]] = tc["name"]
            msg: dict[str, Any] = {"role": "assistant", "content": _text_of(m.content, where)}
            if calls:
                msg["tool_calls"] = calls
            reasoning = _reasoning_of(m)
            if reasoning:
                msg["reasoning_content"] = reasoning
            out.append(msg)
        elif isinstance(m, ToolMessage):
            out.append(
                {
                    "role": "tool",
                    "content": _text_of(m.content, where),
                    "tool_call_id": m.tool_call_id,
                    "name": m.name or call_names.get(m.tool_call_id),
                    "is_error": getattr(m, "status", "success") == "error",
                }
            )
        elif isinstance(m, FunctionMessage):
            out.append({"role": "tool", "content": _text_of(m.content, where), "name": m.name})
        elif isinstance(m, ChatMessage):
            role = _ROLE_ALIASES.get(m.role.lower(), m.role)
            out.append({"role": role, "content": _text_of(m.content, where)})
        else:
            raise ValueError(f"unsupported message type {type(m).__name__} at {where}")
    return out


def response_schema(response_format: Any) -> tuple[dict[str, Any] | bool, str]:
    """``(schema, system instruction)`` of an OpenAI-style ``response_format``.

    ``json_schema``: that schema, described to the model. ``json_object``: any JSON object, or the
    schema under the ``"schema"`` key that ``SwiftChatModel.with_structured_output`` adds in JSON
    mode; the prompt is left to describe the keys, as in OpenAI's JSON mode.
    """
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema", spec)
        return schema, "Reply with a JSON object that follows this JSON schema: " + json.dumps(
            schema, ensure_ascii=False
        )
    if kind == "json_object":
        return response_format.get("schema") or {"type": "object"}, ""
    raise ValueError(f"response_format type must be 'json_schema' or 'json_object', got {response_format!r}")


def as_openai_tools(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """Bound tools as OpenAI-format dicts (``bind_tools`` already converted them; call-time tools may not be)."""
    out = []
    for t in tools:
        if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict):
            out.append(t)
        else:
            out.append(convert_to_openai_tool(t))
    return out
