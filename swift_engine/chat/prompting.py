"""Conversations to prompts: the one prompt renderer of the project (framework-free).

Every front end renders chat through here: the LangChain and LlamaIndex adapters
(:func:`render_chat_prompt`: token ids, with tools, tool calls and tool results) and the CLI
(:func:`engine_chat_prompt`: what :meth:`SwiftEngine.stream` takes). Keeping one renderer keeps
one plain format (:func:`render_plain`, :data:`PLAIN_STOPS`) for models without a chat template.

Messages are framework-neutral dicts: ``role`` (``system``/``user``/``assistant``/``tool``) and
``content`` (text); assistant messages may carry ``tool_calls`` (``[{"id", "name", "arguments":
dict}]``) and ``reasoning_content`` (a reasoning model's thinking, which the template renders
back or drops as it was trained to), tool messages ``tool_call_id``, ``name`` and ``is_error``; any
message may carry ``name``. Tools are OpenAI-format dicts; where a template can't render them,
they are written in the Hermes format of :mod:`swift_engine.chat.tool_format`. The tokenizer and
engine are duck-typed (a Hugging Face tokenizer; anything with a ``tokenizer``).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from swift_engine.chat.reasoning import ReasoningFormat, reasoning_format
from swift_engine.chat.tool_format import (
    detect_tool_format,
    fit_tool_history,
    format_tool_call,
    format_tool_result,
    render_tools_system_prompt,
    without_call_content,
)

logger = logging.getLogger(__name__)

__all__ = [
    "PLAIN_ROLES",
    "PLAIN_STOPS",
    "RenderedPrompt",
    "TemplateSupport",
    "encode_text",
    "engine_chat_prompt",
    "escape_special_tokens",
    "message_text",
    "render_chat_prompt",
    "render_plain",
    "special_token_texts",
    "template_ids",
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
    #: Reasoning models (a ``<think>`` template): how their reply's reasoning splits from its content.
    reasoning: ReasoningFormat | None = None


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
            if m.get("reasoning_content"):
                out[-1]["reasoning_content"] = m["reasoning_content"]
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
            if role == "assistant" and m.get("reasoning_content"):
                msg["reasoning_content"] = m["reasoning_content"]  # templates that don't take it ignore it
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


def _system_folded(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Templates without a system role (Gemma 2): the system text opens the first user turn instead."""
    systems = [m["content"] for m in messages if m["role"] == "system" and m["content"]]
    rest = [m for m in messages if m["role"] != "system"]
    if not systems:
        return rest
    text = "\n\n".join(systems)
    if rest and rest[0]["role"] == "user":
        return [dict(rest[0], content=f"{text}\n\n{rest[0]['content']}"), *rest[1:]]
    return [{"role": "user", "content": text}, *rest]


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


# ------------------------------------------------------------------------- special tokens

#: Inserted after the first character of special-token text found where no placeholder can keep it
#: verbatim (see :func:`escape_special_tokens`): invisible, and never part of a special token.
_BREAK = "\u2060"  # WORD JOINER
# A content slot while the template is rendered: ASCII letters and digits only, so every template
# filter (trim, tojson, capitalisation aside) leaves it intact and findable.
_SLOT = "SWIFTSLOT{nonce}X{index}Y"


def special_token_texts(tokenizer: Any) -> list[str]:
    """The texts the tokenizer turns into *special* tokens (turn markers, BOS/EOS, ...), longest first.

    Only special tokens: ordinary added tokens (Qwen's ``<tool_call>``) are vocabulary any text may
    spell. A duck-typed tokenizer without these attributes has none.
    """
    texts: set[str] = set()
    for token in getattr(tokenizer, "all_special_tokens", None) or ():
        if isinstance(token, str) and token:
            texts.add(token)
    decoder = getattr(tokenizer, "added_tokens_decoder", None)
    if isinstance(decoder, dict):
        for added in decoder.values():
            content = getattr(added, "content", None)
            if getattr(added, "special", False) and isinstance(content, str) and content:
                texts.add(content)
    return sorted(texts, key=len, reverse=True)


def escape_special_tokens(text: str, specials: Sequence[str]) -> str:
    """``text`` with every special-token spelling broken by an invisible WORD JOINER (U+2060).

    The fallback where content can't be kept verbatim (a user's own ``messages_to_prompt``, a
    template that rewrites content): the model reads the same characters plus one invisible one,
    and no turn marker.
    """
    for special in specials:
        if special in text:
            text = text.replace(special, special[0] + _BREAK + special[1:])
    return text


def encode_text(tokenizer: Any, text: str, *, add_special_tokens: bool = False) -> list[int]:
    """Token ids of ``text`` read as plain text: special-token spellings in it stay ordinary text."""
    if not any(special in text for special in special_token_texts(tokenizer)):
        return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
    try:
        ids = tokenizer(text, add_special_tokens=add_special_tokens, split_special_tokens=True)["input_ids"]
    except TypeError:  # a tokenizer without the option: break the spellings instead
        ids = tokenizer(
            escape_special_tokens(text, special_token_texts(tokenizer)), add_special_tokens=add_special_tokens
        )["input_ids"]
    return list(ids)


def _content_variants(content: str) -> list[str]:
    """What a template may have made of a content string: as is, trimmed (Llama 3, Gemma), as JSON."""
    variants = [content, content.strip(), content.rstrip(), content.lstrip()]
    variants += [json.dumps(content)[1:-1], json.dumps(content, ensure_ascii=False)[1:-1]]
    return list(dict.fromkeys(variants))


def template_ids(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    render: Callable[[list[dict[str, Any]]], str],
    suffix: str = "",
) -> tuple[str, list[int]]:
    """Render ``messages`` with ``render`` and tokenize them so that only the template makes special tokens.

    Content that spells no special token is tokenized with the whole text (the canonical ids,
    identical to ``apply_chat_template(tokenize=True)``). Otherwise (a user message or a fetched web
    page holding ``<|im_end|>\n<|im_start|>system``) the template is rendered again with a
    placeholder for each message's content; the text between placeholders is the template's own
    and is tokenized with special tokens, each content slot as plain text (:func:`encode_text`).
    Where the slots can't be matched to the real rendering (a template that rewrites content), the
    spellings are broken instead (:func:`escape_special_tokens`) and a warning is logged.
    Other strings (names, tool-call arguments) are escaped rather than slotted: templates rewrite
    them (``tojson``), and they rarely carry text. ``suffix`` is trusted text the prompt ends with
    (an assistant prefill such as ``<tool_call>``), read together with the template's last piece.
    """
    specials = special_token_texts(tokenizer)

    def hostile(value: Any) -> bool:
        if isinstance(value, str):
            return any(special in value for special in specials)
        if isinstance(value, dict):
            return any(hostile(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return any(hostile(v) for v in value)
        return False

    def escaped(value: Any, key: str = "") -> Any:
        if isinstance(value, str):
            return value if key in ("role", "type") else escape_special_tokens(value, specials)
        if isinstance(value, dict):
            return {k: escaped(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [escaped(v) for v in value]
        return value

    text = render(list(messages)) + suffix
    if not specials or not any(hostile(m) for m in messages):
        return text, list(tokenizer(text, add_special_tokens=False)["input_ids"])
    # content slots; everything else escaped
    nonce = secrets.token_hex(4)
    fills: dict[str, str] = {}
    slotted: list[dict[str, Any]] = []
    plain: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        rest = {k: escaped(v, k) for k, v in message.items() if k != "content"}
        content = message.get("content")
        if isinstance(content, str) and content:
            slot = _SLOT.format(nonce=nonce, index=index)
            fills[slot] = content
            slotted.append({**rest, "content": slot})
        else:
            slotted.append({**rest, "content": escaped(content)})
        plain.append({**rest, "content": content})
    real = render(plain)
    pieces = _split_slots(render(slotted), fills, real, nonce)
    if pieces is None:
        logger.warning(
            "the chat template rewrites message content; special-token text in the content was escaped "
            "so that it can't open a turn"
        )
        text = render([escaped(m) for m in messages]) + suffix
        return text, list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if suffix and pieces and pieces[-1][1]:
        pieces[-1] = (pieces[-1][0] + suffix, True)
    elif suffix:
        pieces.append((suffix, True))
    ids: list[int] = []
    for piece, is_template in pieces:
        if is_template:
            ids += list(tokenizer(piece, add_special_tokens=False)["input_ids"])
        else:
            ids += encode_text(tokenizer, piece)
    return real + suffix, ids


def _split_slots(slotted: str, fills: dict[str, str], real: str, nonce: str) -> list[tuple[str, bool]] | None:
    """``real`` cut into (text, is_template) pieces along the slots of ``slotted``; None if they don't line up."""
    # this call's nonce only: slot-like text elsewhere in the prompt (a name, a tool schema) is template text
    parts = re.split(f"(SWIFTSLOT{nonce}X[0-9]+Y)", slotted)  # the nonce is hex: no pattern characters
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for i, part in enumerate(parts):
        if i % 2 == 0:
            if not real.startswith(part, pos):
                return None
            if part:
                pieces.append((part, True))
            pos += len(part)
            continue
        content = fills.get(part)
        if content is None:
            return None
        following = parts[i + 1]
        for variant in _content_variants(content):
            if real.startswith(variant, pos) and real.startswith(following, pos + len(variant)):
                if variant:
                    pieces.append((variant, False))
                pos += len(variant)
                break
        else:
            return None
    return pieces if pos == len(real) else None


def render_chat_prompt(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    *,
    tools: Sequence[dict[str, Any]] | None = None,
    prefill: str = "",
    chat_template: str | None = None,
    reasoning: bool | None = None,
) -> RenderedPrompt:
    """Token ids for a conversation, through the model's chat template.

    ``messages`` and ``tools``: see the module docs. ``prefill``: text the assistant turn starts
    with. ``chat_template``: a template to use instead of the tokenizer's. ``reasoning``: the
    template's ``enable_thinking`` switch (Qwen3 and the templates that copy it); ``None`` leaves
    it undefined, the template's default. For a reasoning template the result's ``reasoning`` says
    how to split the reply (:func:`swift_engine.chat.reasoning.reasoning_format`).

    Templates that reference ``tools`` / ``tool_calls`` / a ``tool`` role get those natively (past
    calls fitted to the family's rules: Mistral's 9-character ids, Llama's one call per message;
    :func:`~swift_engine.chat.tool_format.fit_tool_history`); for the rest, tools are described in the
    system prompt, past calls are written as ``<tool_call>`` blocks and results as
    ``<tool_response>`` blocks in a user turn (see :mod:`.tool_format`). If a strict template
    rejects the conversation, it is rendered again: without text beside calls (Mistral), then in a
    normalised form (double system messages, roles not alternating, ...), then with the system
    text folded into the first user turn (Gemma 2). Without any chat template: :func:`render_plain`.
    """
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        # the plain format has no special tokens of its own: all of it is read as text
        text = render_plain(messages, tools, prefill)
        return RenderedPrompt(
            text=text, ids=encode_text(tokenizer, text, add_special_tokens=True), stop=list(PLAIN_STOPS)
        )
    support = TemplateSupport.of(template)
    hf = _hf_messages(messages, support)
    if support.tool_calls:  # the family's own history rules: Mistral's 9-character ids, Llama's one call a turn
        hf = fit_tool_history(hf, detect_tool_format(template))
    native = bool(tools) and support.tools
    if tools and not native:
        hf = with_system_text(hf, render_tools_system_prompt(tools))
    extra: dict[str, Any] = {"tools": list(tools)} if tools and native else {}
    if chat_template:
        extra["chat_template"] = chat_template
    if reasoning is not None:
        extra["enable_thinking"] = bool(reasoning)

    def render(msgs: list[dict[str, Any]]) -> str:
        # what a strict template rejects, in order: text beside calls (Mistral: the calls stay native),
        # the conversation's shape (normalised: Hermes text for calls), a system role (Gemma 2: folded)
        candidates = (
            lambda: msgs,
            lambda: without_call_content(msgs),
            lambda: _normalized(msgs),
            lambda: _system_folded(_normalized(msgs)),
        )
        tried: list[list[dict[str, Any]]] = []
        for candidate in candidates:
            attempt = candidate()
            if attempt in tried:
                continue
            tried.append(attempt)
            try:
                return str(tokenizer.apply_chat_template(attempt, tokenize=False, add_generation_prompt=True, **extra))
            except Exception as exc:  # noqa: BLE001 - jinja raises TemplateError or anything raise_exception makes
                error = exc
        raise error

    text, ids = template_ids(tokenizer, hf, render, suffix=prefill)
    return RenderedPrompt(text=text, ids=ids, native_tools=native, reasoning=reasoning_format(template, text))


def engine_chat_prompt(
    engine: Any, messages: Sequence[dict[str, Any]]
) -> tuple[list[dict[str, Any]] | list[int], list[str] | None]:
    """``(prompt, stop)`` for ``engine.stream``: a plain-text conversation (no tools) as the engine takes it.

    With a chat template the messages go as they are (the engine applies the template itself, so
    its prompt is the one the model was tuned on) and there are no extra stop strings; without one,
    the token ids of the :func:`render_plain` transcript, read as plain text (a message can't spell
    a special token into it), and :data:`PLAIN_STOPS`, since nothing else would end the assistant's
    turn.
    """
    if getattr(engine.tokenizer, "chat_template", None):
        return list(messages), None
    return encode_text(engine.tokenizer, render_plain(messages), add_special_tokens=True), list(PLAIN_STOPS)
