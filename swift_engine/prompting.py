"""Conversations to prompts: the one prompt renderer of the project (framework-free).

Every front end renders chat through here: the LangChain and LlamaIndex adapters
(:func:`render_chat_prompt`: token ids, with tools, tool calls and tool results) and the CLI
(:func:`engine_chat_prompt`: what :meth:`SwiftEngine.stream` takes). Keeping one renderer keeps
one plain format (:func:`render_plain`, :data:`PLAIN_STOPS`) for models without a chat template.

Messages are framework-neutral dicts: ``role`` (``system``/``user``/``assistant``/``tool``) and
``content`` (text); assistant messages may carry ``tool_calls`` (``[{"id", "name", "arguments":
dict}]``), tool messages ``tool_call_id``, ``name`` and ``is_error``; any message may carry
``name``. Tools are OpenAI-format dicts; where a template can't render them, they are written in
the Hermes format of :mod:`swift_engine.tool_format`. The tokenizer and engine are duck-typed (a
Hugging Face tokenizer; anything with a ``tokenizer``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .tool_format import format_tool_call, format_tool_result, render_tools_system_prompt

__all__ = [
    "PLAIN_ROLES",
    "PLAIN_STOPS",
    "RenderedPrompt",
    "TemplateSupport",
    "engine_chat_prompt",
    "message_text",
    "render_chat_prompt",
    "render_plain",
    "with_system_text",
]

# A template's source mentions what it renders natively; these read that off the Jinja text.
_TOOLS_RE = re.compile(r"\btools\b")
_TOOL_CALLS_RE = re.compile(r"\btool_calls\b")
_TOOL_ROLE_RE = re.compile(r"""['"]tool['"]""")

#: Role labels of the plain format (models without a chat template).
PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
#: Stop strings that end an assistant turn in the plain format.
PLAIN_STOPS = ["\nUser:", "\nSystem:", "\nTool:"]


@dataclass(frozen=True)
class TemplateSupport:
    """What a chat template renders natively (judged from its source)."""

    tools: bool = False
    tool_calls: bool = False
    tool_role: bool = False

    @classmethod
    def of(cls, template: str | None) -> "TemplateSupport":
        if not template or not isinstance(template, str):
            return cls()
        return cls(
            tools=bool(_TOOLS_RE.search(template)),
            tool_calls=bool(_TOOL_CALLS_RE.search(template)),
            tool_role=bool(_TOOL_ROLE_RE.search(template)),
        )


@dataclass
class RenderedPrompt:
    """A prompt ready for the engine: ``ids``; ``text`` for debugging; ``stop``: extra stop strings."""

    text: str
    ids: list[int]
    stop: list[str] = field(default_factory=list)
    native_tools: bool = False


def _tool_call_text(calls: Sequence[dict[str, Any]]) -> str:
    return "\n".join(format_tool_call(c["name"], c.get("arguments") or {}) for c in calls)


def message_text(message: dict[str, Any]) -> str:
    """A message's content with its tool calls (assistant) or its result (tool) written in as text.

    For renderers that take text only (the plain format, templates without tool support, a user's
    own ``messages_to_prompt``): calls become ``<tool_call>`` blocks after the content, a tool
    result becomes a ``<tool_response>`` block.
    """
    content = message.get("content") or ""
    if message["role"] == "assistant" and message.get("tool_calls"):
        text = _tool_call_text(message["tool_calls"])
        return f"{content}\n{text}" if content else text
    if message["role"] == "tool":
        return format_tool_result(content, name=message.get("name"), is_error=bool(message.get("is_error")))
    return content


def _hf_messages(messages: Sequence[dict[str, Any]], support: TemplateSupport) -> list[dict[str, Any]]:
    """Neutral messages in the shape Hugging Face chat templates take (tool parts native where supported)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            if support.tool_calls:
                out.append(
                    {
                        "role": "assistant",
                        "content": content,
                        "tool_calls": [
                            {
                                "type": "function",
                                "id": c.get("id"),
                                "function": {"name": c["name"], "arguments": c.get("arguments") or {}},
                            }
                            for c in m["tool_calls"]
                        ],
                    }
                )
            else:
                out.append({"role": "assistant", "content": message_text(m)})
        elif role == "tool":
            if support.tool_role:
                msg = {"role": "tool", "content": content}
                for k in ("tool_call_id", "name"):
                    if m.get(k):
                        msg[k] = m[k]
                out.append(msg)
            else:
                out.append({"role": "user", "content": message_text(m)})
        else:
            msg = {"role": role, "content": content}
            if m.get("name"):
                msg["name"] = m["name"]
            out.append(msg)
    return out


def with_system_text(messages: list[dict[str, Any]], extra: str) -> list[dict[str, Any]]:
    """Append ``extra`` to the first system message, or add a system message holding it."""
    out = [dict(m) for m in messages]
    for m in out:
        if m["role"] == "system":
            m["content"] = f"{m['content']}\n\n{extra}" if m["content"] else extra
            return out
    return [{"role": "system", "content": extra}, *out]


def _normalized(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A conservative form strict templates accept: one system message first, no tool role, roles alternating."""
    systems = [m["content"] for m in messages if m["role"] == "system" and m["content"]]
    out: list[dict[str, Any]] = [{"role": "system", "content": "\n\n".join(systems)}] if systems else []
    for m in messages:
        if m["role"] == "system":
            continue
        role = "assistant" if m["role"] == "assistant" else "user"
        content = m.get("content") or ""
        if m["role"] == "tool":
            content = format_tool_result(content, name=m.get("name"))
        if m["role"] == "assistant" and m.get("tool_calls"):
            text = "\n".join(
                format_tool_call(c["function"]["name"], c["function"]["arguments"]) for c in m["tool_calls"]
            )
            content = f"{content}\n{text}" if content else text
        if out and out[-1]["role"] == role:
            out[-1]["content"] = f"{out[-1]['content']}\n\n{content}"
        else:
            out.append({"role": role, "content": content})
    return out


def render_plain(
    messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None, prefill: str = ""
) -> str:
    """The documented plain format for models without a chat template.

    Blocks separated by a blank line, each ``"<Role>: <text>"`` with roles ``System``, ``User``,
    ``Assistant`` and ``Tool``; the tools prompt (:func:`render_tools_system_prompt`) joins the
    system block; past tool calls are written in the ``<tool_call>`` format inside the assistant
    block and tool results as ``<tool_response>`` blocks. The prompt ends with ``"Assistant:"``
    (plus a space and the prefill, if any). Generation stops at :data:`PLAIN_STOPS`.
    """
    msgs = [dict(m) for m in messages]
    if tools:
        msgs = with_system_text(msgs, render_tools_system_prompt(tools))
    blocks = [f"{PLAIN_ROLES.get(m['role'], m['role'].capitalize())}: {message_text(m)}" for m in msgs]
    blocks.append("Assistant:" + (f" {prefill}" if prefill else ""))
    return "\n\n".join(blocks)


def render_chat_prompt(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    *,
    tools: Sequence[dict[str, Any]] | None = None,
    prefill: str = "",
    chat_template: str | None = None,
) -> RenderedPrompt:
    """Token ids for a conversation, through the model's chat template.

    ``messages`` and ``tools``: see the module docs. ``prefill``: text the assistant turn starts
    with. ``chat_template``: a template to use instead of the tokenizer's.

    Templates that reference ``tools`` / ``tool_calls`` / a ``tool`` role get those natively; for
    the rest, tools are described in the system prompt, past calls are written as ``<tool_call>``
    blocks and results as ``<tool_response>`` blocks in a user turn (see :mod:`.tool_format`). If a
    strict template rejects the conversation (double system messages, roles not alternating, ...),
    it is rendered again in a normalised form. Without any chat template: :func:`render_plain`.
    """
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        text = render_plain(messages, tools, prefill)
        return RenderedPrompt(text=text, ids=list(tokenizer(text)["input_ids"]), stop=list(PLAIN_STOPS))
    support = TemplateSupport.of(template)
    hf = _hf_messages(messages, support)
    native = bool(tools) and support.tools
    if tools and not native:
        hf = with_system_text(hf, render_tools_system_prompt(tools))
    extra: dict[str, Any] = {"tools": list(tools)} if tools and native else {}
    if chat_template:
        extra["chat_template"] = chat_template
    try:
        text = tokenizer.apply_chat_template(hf, tokenize=False, add_generation_prompt=True, **extra)
    except Exception:  # noqa: BLE001 - jinja raises TemplateError or anything the template's raise_exception makes
        text = tokenizer.apply_chat_template(_normalized(hf), tokenize=False, add_generation_prompt=True, **extra)
    text += prefill
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return RenderedPrompt(text=text, ids=ids, native_tools=native)


def engine_chat_prompt(
    engine: Any, messages: Sequence[dict[str, Any]]
) -> tuple[str | list[dict[str, Any]], list[str] | None]:
    """``(prompt, stop)`` for ``engine.stream``: a plain-text conversation (no tools) as the engine takes it.

    With a chat template the messages go as they are (the engine applies the template itself, so
    its prompt is the one the model was tuned on) and there are no extra stop strings; without one,
    the :func:`render_plain` transcript and :data:`PLAIN_STOPS`, since nothing else would end the
    assistant's turn.
    """
    if getattr(engine.tokenizer, "chat_template", None):
        return list(messages), None
    return render_plain(messages), list(PLAIN_STOPS)
