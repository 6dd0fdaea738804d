"""The tool-call text format shared by every framework adapter (LangChain, LlamaIndex): the reading side.

Framework-neutral on purpose: tools are OpenAI-format function dicts, calls are plain dataclasses,
and nothing here imports a framework. The adapters convert to and from their own types.

The format (Hermes-style, what Qwen/Hermes chat templates use natively) is written by the core,
since prompt rendering needs it (:mod:`swift_engine.tool_format`, re-exported here:
:func:`render_tools_system_prompt`, :func:`format_tool_call`, :func:`format_tool_result`,
:func:`tool_function`):

* a call is ``<tool_call>\\n{"name": "<tool>", "arguments": {...}}\\n</tool_call>``; several calls
  are several blocks;
* a tool's result is ``<tool_response>\\n{"name": "<tool>", "content": "..."}\\n</tool_response>``.

Reading it back
---------------
:func:`parse_tool_calls` reads calls back from generated text: tagged blocks (closed or not), or
a reply that is nothing but a bare JSON object ``{"name": ..., "arguments": ...}`` (also accepted:
``"parameters"`` for ``"arguments"``, arguments given as a JSON string, a list of such objects,
a ```json fence around it). Anything unparsable becomes an :class:`InvalidToolCall` with the
error text, never an exception. :class:`ToolCallStreamFilter` does the same while text streams.

Constraining calls
------------------
Forced calls and calls the model opens on its own are grammar-constrained to this format and the
tools' JSON schemas (:mod:`swift_integrations._generation`, :mod:`swift_engine.constraints`), so
the parser's lenient paths matter only for unconstrained text (e.g. replayed history).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from swift_engine.tool_format import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    format_tool_call,
    format_tool_result,
    render_tools_system_prompt,
    tool_function,
)

__all__ = [
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "MAX_TOOL_CALLS",
    "InvalidToolCall",
    "ParsedToolCall",
    "ToolCallStreamFilter",
    "format_tool_call",
    "format_tool_result",
    "new_tool_call_id",
    "parse_tool_calls",
    "render_tools_system_prompt",
    "resolve_tool_name",
    "tool_function",
]

_DECODER = json.JSONDecoder()
#: At most this many calls are read from one reply; what follows is reported as one invalid call.
MAX_TOOL_CALLS = 64
#: A model-chosen call id longer than this (or not a plain token) is replaced by a fresh one.
_MAX_ID_LENGTH = 64
_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")
_FENCE_RE = re.compile(r"^```(?:json|JSON)?\s*\n?(.*?)\n?```$", re.DOTALL)


# --------------------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class ParsedToolCall:
    """A well-formed call: ``arguments`` is always a dict."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class InvalidToolCall:
    """A call the model tried to make but that could not be parsed or is not allowed.

    ``name`` and ``arguments`` (raw text) are whatever could be recovered; ``error`` says why.
    """

    id: str
    name: str | None
    arguments: str | None
    error: str


def new_tool_call_id() -> str:
    """A fresh id in the OpenAI style (``call_`` + 24 hex digits)."""
    return f"call_{uuid.uuid4().hex[:24]}"


# --------------------------------------------------------------------------------------- parsing


def _raw_decode(text: str) -> tuple[Any, int]:
    """``JSONDecoder.raw_decode`` that fails only with ``JSONDecodeError``.

    Model output is untrusted: deeply nested JSON (``"[" * 100_000``) makes the decoder recurse
    past Python's limit, which must read as invalid JSON, not crash the caller.
    """
    try:
        return _DECODER.raw_decode(text)
    except RecursionError:
        raise json.JSONDecodeError("JSON nested too deeply", text, 0) from None


def _loads(text: str) -> Any:
    """``json.loads`` that fails only with ``JSONDecodeError`` (see :func:`_raw_decode`)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("JSON nested too deeply", text, 0) from None


def _model_id(value: Any) -> str:
    """The model's own call id when it is a short plain token, else a fresh one."""
    if isinstance(value, str) and 0 < len(value) <= _MAX_ID_LENGTH and _ID_RE.match(value):
        return value
    return new_tool_call_id()


def _call_from_obj(obj: Any, tool_names: Collection[str] | None) -> ParsedToolCall | InvalidToolCall | None:
    """Interpret a decoded JSON value as a call; ``None`` if it doesn't look like one at all."""
    if not isinstance(obj, dict) or "name" not in obj:
        return None
    name = obj.get("name")
    raw_args = obj.get("arguments", obj.get("parameters", {}))
    call_id = _model_id(obj.get("id"))
    raw_text = raw_args if isinstance(raw_args, str) else json.dumps(raw_args, ensure_ascii=False)
    if not isinstance(name, str) or not name:
        return InvalidToolCall(call_id, None, raw_text, f"tool call has no valid name: {obj.get('name')!r}")
    if tool_names is not None and name not in tool_names:
        return InvalidToolCall(
            call_id, name, raw_text, f"unknown tool {name!r}; available: {', '.join(sorted(tool_names)) or 'none'}"
        )
    args = raw_args
    if isinstance(args, str):  # OpenAI style: arguments as a JSON string
        try:
            args = _loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            return InvalidToolCall(call_id, name, raw_text, f"arguments are not valid JSON: {exc}")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return InvalidToolCall(call_id, name, raw_text, f"arguments must be a JSON object, got {type(args).__name__}")
    return ParsedToolCall(call_id, name, args)


def _bare_calls(text: str, tool_names: Collection[str] | None) -> list[ParsedToolCall | InvalidToolCall] | None:
    """Calls if ``text`` is nothing but a JSON call (or a list of them), else ``None``."""
    body = text.strip()
    fence = _FENCE_RE.match(body)
    if fence:
        body = fence.group(1).strip()
    if not body.startswith(("{", "[")):
        return None
    try:
        obj, end = _raw_decode(body)
    except json.JSONDecodeError:
        return None
    if body[end:].strip():
        return None
    items = obj if isinstance(obj, list) else [obj]
    if len(items) > MAX_TOOL_CALLS:
        return None  # a long JSON list is content, not a batch of calls
    calls = [_call_from_obj(item, tool_names) for item in items]
    if not calls or any(c is None for c in calls):
        return None
    # A bare object naming an unknown tool is ordinary JSON content, not a failed call.
    if tool_names is not None and any(isinstance(c, InvalidToolCall) and c.name not in tool_names for c in calls):
        return None
    return calls  # type: ignore[return-value]


def _split_tagged(
    text: str, tool_names: Collection[str] | None
) -> tuple[list[ParsedToolCall | InvalidToolCall], list[str]]:
    """Tagged calls in order, and the text segments around them (in order, not stripped)."""
    calls: list[ParsedToolCall | InvalidToolCall] = []
    segments: list[str] = []
    pos = 0
    while True:
        start = text.find(TOOL_CALL_OPEN, pos)
        if start < 0:
            segments.append(text[pos:])
            break
        segments.append(text[pos:start])
        if len(calls) >= MAX_TOOL_CALLS:
            rest = text[start:]
            calls.append(
                InvalidToolCall(
                    new_tool_call_id(), None, rest[:200], f"more than {MAX_TOOL_CALLS} tool calls; the rest is not read"
                )
            )
            break
        body_start = start + len(TOOL_CALL_OPEN)
        close = text.find(TOOL_CALL_CLOSE, body_start)
        block_end = len(text) if close < 0 else close + len(TOOL_CALL_CLOSE)
        body = text[body_start : block_end if close < 0 else close]
        stripped = body.lstrip()
        try:
            obj, end = _raw_decode(stripped)
        except json.JSONDecodeError as exc:
            calls.append(
                InvalidToolCall(
                    new_tool_call_id(), _guess_name(body), body.strip(), f"invalid JSON in tool call: {exc}"
                )
            )
            pos = block_end
            continue
        call = _call_from_obj(obj, tool_names)
        if call is None:
            call = InvalidToolCall(new_tool_call_id(), None, stripped[:end], "tool call JSON has no 'name'")
        calls.append(call)
        if close < 0:
            # Unclosed block: the call ends with its JSON; whatever follows is content again,
            # except a closing tag cut short by the token budget.
            block_end = body_start + (len(body) - len(stripped)) + end
            rest = text[block_end:]
            if rest.strip() and TOOL_CALL_CLOSE.startswith(rest.strip()):
                block_end = len(text)
        pos = block_end
    return calls, segments


_NAME_RE = re.compile(r'"name"\s*:\s*"([^"]*)"')


def _guess_name(body: str) -> str | None:
    m = _NAME_RE.search(body)
    return m.group(1) if m else None


def parse_tool_calls(
    text: str, tool_names: Collection[str] | None = None
) -> tuple[list[ParsedToolCall], list[InvalidToolCall], str]:
    """Read tool calls out of generated text.

    Returns ``(calls, invalid_calls, content)``: the well-formed calls in order, the ones that
    could not be used (bad JSON, no name, arguments not an object, or a name outside
    ``tool_names`` when given), and the remaining text with the call blocks removed (stripped).
    Never raises on model output.
    """
    calls, segments = _split_tagged(text, tool_names)
    if not calls:
        bare = _bare_calls(text, tool_names)
        if bare is not None:
            calls, segments = bare, []
    calls = _with_unique_ids(calls)
    valid = [c for c in calls if isinstance(c, ParsedToolCall)]
    invalid = [c for c in calls if isinstance(c, InvalidToolCall)]
    content = "".join(segments).strip() if calls else text.strip()
    return valid, invalid, content


def _with_unique_ids(calls: Sequence[ParsedToolCall | InvalidToolCall]) -> list[ParsedToolCall | InvalidToolCall]:
    """A repeated model-chosen id would pair two results with one call: later repeats get fresh ids."""
    seen: set[str] = set()
    out: list[ParsedToolCall | InvalidToolCall] = []
    for call in calls:
        if call.id in seen:
            call = dataclasses.replace(call, id=new_tool_call_id())
        seen.add(call.id)
        out.append(call)
    return out


def resolve_tool_name(generated: str, names: Sequence[str]) -> str:
    """The tool a (possibly mangled) generated name most plausibly means; always one of ``names``."""
    if not names:
        raise ValueError("no tools to choose from")
    g = generated.strip().strip('"').strip()
    if g in names:
        return g
    lower = {n.lower(): n for n in names}
    if g.lower() in lower:
        return lower[g.lower()]
    prefixed = [n for n in names if g and (n.startswith(g) or g.startswith(n))]
    if len(prefixed) == 1:
        return prefixed[0]
    close = difflib.get_close_matches(g, list(names), n=1, cutoff=0.0)
    return close[0] if close else names[0]


# --------------------------------------------------------------------------------------- streaming


class ToolCallStreamFilter:
    """Decides, while text streams in, what is safe to show as content.

    Text before a ``<tool_call>`` tag is released as it comes (a tail that could be the start of
    the tag is held back); from the tag on everything is held. A reply that *starts* with ``{``
    (maybe a bare JSON call) is held until the end. :meth:`finish` parses what was held.
    """

    def __init__(self, tool_names: Collection[str] | None = None, prefill: str = "") -> None:
        self.tool_names = tool_names
        self.text = prefill
        self.released = 0
        self.in_call = TOOL_CALL_OPEN in prefill

    def push(self, delta: str) -> str:
        self.text += delta
        if self.in_call:
            return ""
        pending = self.text[self.released :]
        i = pending.find(TOOL_CALL_OPEN)
        if i >= 0:
            self.in_call = True
            return self._release(i)
        if self.released == 0 and (not pending.strip() or pending.lstrip()[:1] in ("{", "[", "`")):
            return ""  # maybe a bare JSON call: hold until the end
        keep = 0
        for k in range(min(len(TOOL_CALL_OPEN) - 1, len(pending)), 0, -1):
            if pending.endswith(TOOL_CALL_OPEN[:k]):
                keep = k
                break
        return self._release(len(pending) - keep)

    def _release(self, n: int) -> str:
        out = self.text[self.released : self.released + n]
        self.released += n
        return out

    def finish(self) -> tuple[list[ParsedToolCall], list[InvalidToolCall], str]:
        """``(calls, invalid, rest)``: ``rest`` is the content not released yet (not stripped)."""
        calls, segments = _split_tagged(self.text, self.tool_names)
        if not calls:
            bare = _bare_calls(self.text, self.tool_names)
            if bare is not None:
                calls, segments = bare, []
        content = "".join(segments) if calls else self.text
        released = self.text[: self.released]
        rest = content[len(released) :] if content.startswith(released) else content
        if calls and not rest.strip():
            rest = ""
        valid = [c for c in calls if isinstance(c, ParsedToolCall)]
        invalid = [c for c in calls if isinstance(c, InvalidToolCall)]
        self.released = len(self.text)
        return valid, invalid, rest
