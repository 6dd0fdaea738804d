"""The tool-call text format, writing side: how tools, past calls and results appear in a prompt.

The format is Hermes-style (what Qwen/Hermes chat templates use natively):

* Tools are described to the model in a system prompt (:func:`render_tools_system_prompt`) when the
  chat template has no ``tools`` support of its own.
* A call is ``<tool_call>\\n{"name": "<tool>", "arguments": {...}}\\n</tool_call>``
  (:func:`format_tool_call`); several calls are several blocks.
* A tool's result is ``<tool_response>\\n{"name": "<tool>", "content": "..."}\\n</tool_response>``
  (:func:`format_tool_result`), used where the template has no ``tool`` role.

It lives in the core because prompt rendering (:mod:`swift_engine.prompting`) writes it; reading
calls back from generated text is the adapters' business (:mod:`swift_integrations.tool_calls`),
and so is constraining them (:mod:`swift_engine.constraints` holds the grammar side).
Framework-neutral: tools are OpenAI-format function dicts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

__all__ = [
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "TOOL_RESPONSE_CLOSE",
    "TOOL_RESPONSE_OPEN",
    "format_tool_call",
    "format_tool_result",
    "render_tools_system_prompt",
    "tool_function",
]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
TOOL_RESPONSE_OPEN = "<tool_response>"
TOOL_RESPONSE_CLOSE = "</tool_response>"


def tool_function(tool: dict[str, Any]) -> dict[str, Any]:
    """The ``{"name", "description", "parameters"}`` part of an OpenAI-format tool dict.

    Accepts both ``{"type": "function", "function": {...}}`` and the bare function dict.
    """
    if not isinstance(tool, dict):
        raise TypeError(f"tools must be OpenAI-format dicts, got {type(tool).__name__}")
    fn = tool.get("function", tool) if tool.get("type", "function") == "function" else tool
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise ValueError(f"tool has no function name: {tool!r}")
    return fn


def render_tools_system_prompt(tools: Sequence[dict[str, Any]]) -> str:
    """The system-prompt text that describes ``tools`` to a model whose template can't.

    ``tools`` are OpenAI-format function dicts. The text is the Hermes function-calling prompt:
    one JSON line per tool inside ``<tools></tools>``, then the call format. The renderers append
    it to the conversation's system message (or add a system message holding only this).
    """
    lines = []
    for tool in tools:
        fn = tool_function(tool)
        entry = {
            "name": fn["name"],
            "description": fn.get("description", ""),
            "parameters": fn.get("parameters") or {"type": "object", "properties": {}},
        }
        lines.append(json.dumps(entry, ensure_ascii=False))
    return (
        "You are a function calling AI model. You may call one or more functions to assist with the "
        "user query. Here are the available tools:\n<tools>\n"
        + "\n".join(lines)
        + "\n</tools>\nFor each function call, return a JSON object with the function name and arguments "
        f"within {TOOL_CALL_OPEN}{TOOL_CALL_CLOSE} tags:\n{TOOL_CALL_OPEN}\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n'
        f"{TOOL_CALL_CLOSE}"
    )


def format_tool_call(name: str, args: dict[str, Any] | None) -> str:
    """One past call as the model should see it in history (the same text it is asked to write)."""
    body = json.dumps({"name": name, "arguments": args or {}}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def format_tool_result(
    content: str, *, name: str | None = None, tool_call_id: str | None = None, is_error: bool = False
) -> str:
    """A tool's result as message text, for templates without a ``tool`` role.

    ``tool_call_id`` is accepted for symmetry but not shown: ids are noise to a small model and the
    name identifies the tool well enough in a sequential loop.
    """
    del tool_call_id
    body: dict[str, Any] = {}
    if name:
        body["name"] = name
    body["content"] = content
    if is_error:
        body["status"] = "error"
    return f"{TOOL_RESPONSE_OPEN}\n{json.dumps(body, ensure_ascii=False)}\n{TOOL_RESPONSE_CLOSE}"
