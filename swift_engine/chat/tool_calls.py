"""The tool-call text format shared by every framework adapter (LangChain, LlamaIndex): the reading side.

Framework-neutral on purpose: tools are OpenAI-format function dicts, calls are plain dataclasses,
and nothing here imports a framework. The adapters convert to and from their own types.

The format (Hermes-style, what Qwen/Hermes chat templates use natively) is written by the core,
since prompt rendering needs it (:mod:`swift_engine.chat.tool_format`, re-exported here:
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

Models whose template teaches another syntax (:class:`~swift_engine.chat.tool_format.ToolCallFormat`:
Mistral's ``[TOOL_CALLS][...]`` lists, Llama 3's ``{"name": ..., "parameters": ...}`` objects,
optionally after ``<|python_tag|>``) are read in that syntax first, then as Hermes. Where the
tokenizer ships a ``response_template`` (transformers' declarative reply format), its own
``parse_response`` reads the reply before any of these (:func:`parse_response_calls`): the model's
authors know its format best, and transformers' parser covers syntaxes ours doesn't (Python call
lists, Gemma 4's). Special-token markers, which the engine's text leaves out, are put back by token
id (:func:`hidden_marker_ids`) before any of this reads the text.

Constraining calls
------------------
Forced calls and calls the model opens on its own are grammar-constrained to the model's format and
the tools' JSON schemas (:mod:`swift_integrations._generation`, :mod:`swift_engine.decoding.constraints`), so
the parser's lenient paths matter only for unconstrained text (e.g. replayed history).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from swift_engine.chat.tool_format import (
    HERMES,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    ToolCallFormat,
    format_tool_call,
    format_tool_result,
    render_tools_system_prompt,
    tool_call_format,
    tool_function,
)

__all__ = [
    "HERMES",
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "MAX_TOOL_CALLS",
    "InvalidToolCall",
    "ParsedToolCall",
    "ToolCallFormat",
    "ToolCallStreamFilter",
    "format_tool_call",
    "format_tool_result",
    "hidden_marker_ids",
    "new_tool_call_id",
    "parse_response_calls",
    "parse_tool_calls",
    "render_tools_system_prompt",
    "resolve_tool_name",
    "tool_call_format",
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


def _split_listed(
    text: str, tool_names: Collection[str] | None, marker: str
) -> tuple[list[ParsedToolCall | InvalidToolCall], list[str]]:
    """Mistral: ``marker`` (``[TOOL_CALLS]``) followed by a JSON list of calls (or one call object)."""
    calls: list[ParsedToolCall | InvalidToolCall] = []
    segments: list[str] = []
    pos = 0
    while True:
        start = text.find(marker, pos)
        if start < 0:
            segments.append(text[pos:])
            break
        segments.append(text[pos:start])
        if len(calls) >= MAX_TOOL_CALLS:
            calls.append(_too_many(text[start:]))
            break
        body_start = start + len(marker)
        body = text[body_start:].lstrip()
        skipped = len(text) - body_start - len(body)
        try:
            obj, end = _raw_decode(body)
        except json.JSONDecodeError as exc:
            following = text.find(marker, body_start)
            stop = len(text) if following < 0 else following
            raw = text[body_start:stop].strip()
            error = f"invalid JSON in tool call: {exc}"
            calls.append(InvalidToolCall(new_tool_call_id(), _guess_name(raw), raw, error))
            pos = stop
            continue
        items = obj if isinstance(obj, list) else [obj]
        room = MAX_TOOL_CALLS - len(calls)
        for item in items[:room]:
            call = _call_from_obj(item, tool_names)
            if call is None:
                raw = json.dumps(item, ensure_ascii=False)[:200]
                call = InvalidToolCall(new_tool_call_id(), None, raw, "tool call JSON has no 'name'")
            calls.append(call)
        if len(items) > room:
            calls.append(_too_many(body[:end]))
            segments.append(text[body_start + skipped + end :])
            break
        if not items:
            calls.append(InvalidToolCall(new_tool_call_id(), None, "[]", f"no tool call after {marker}"))
        pos = body_start + skipped + end
    return calls, segments


_LLAMA_CALL_RE = re.compile(r'<\|python_tag\|>|\{\s*"name"\s*:')
_LLAMA_SEPARATOR_RE = re.compile(r'\s*;\s*(?=<\|python_tag\|>|\{\s*"name"\s*:)')
_PYTHON_TAG = "<|python_tag|>"


def _split_llama(
    text: str, tool_names: Collection[str] | None
) -> tuple[list[ParsedToolCall | InvalidToolCall], list[str]]:
    """Llama 3.x: ``{"name": ..., "parameters": {...}}`` objects, each optionally after ``<|python_tag|>``.

    An object counts as a call when it has a ``"parameters"`` (or ``"arguments"``) key and, with
    ``tool_names``, names one of them: ``{"name": "Bob", "age": 3}`` in a reply is content. After
    ``<|python_tag|>`` anything is a call: one that isn't JSON (the built-in tools' Python form)
    is invalid. Calls separated by ``;`` (how vLLM reads several) are read one by one.
    """
    calls: list[ParsedToolCall | InvalidToolCall] = []
    segments: list[str] = []
    pos = 0
    candidates = 0
    for m in _LLAMA_CALL_RE.finditer(text):
        start = m.start()
        if start < pos:
            continue
        candidates += 1
        if candidates > 4 * MAX_TOOL_CALLS or len(calls) > MAX_TOOL_CALLS:
            break  # untrusted text: a bounded number of decode attempts
        tagged = m.group(0) == _PYTHON_TAG
        body_start = m.end() if tagged else start
        body = text[body_start:].lstrip()
        skipped = len(text) - body_start - len(body)
        try:
            obj, end = _raw_decode(body)
        except json.JSONDecodeError as exc:
            if tagged or not text[:start].strip():  # a reply that opens a call it can't finish
                raw = body.strip()
                segments.append(text[pos:start])
                calls.append(InvalidToolCall(new_tool_call_id(), _guess_name(raw), raw, f"invalid tool call: {exc}"))
                pos = len(text)
                break
            continue
        is_call = isinstance(obj, dict) and "name" in obj and ("parameters" in obj or "arguments" in obj)
        call = _call_from_obj(obj, tool_names) if is_call or tagged else None
        unknown = tool_names is not None and isinstance(call, InvalidToolCall) and call.name not in tool_names
        if not tagged and (call is None or unknown):
            continue  # JSON in the text, not a call
        if call is None:
            raw = json.dumps(obj, ensure_ascii=False)[:200]
            call = InvalidToolCall(new_tool_call_id(), None, raw, "tool call JSON has no 'name'")
        segments.append(text[pos:start])
        calls.append(call)
        pos = body_start + skipped + end
        sep = _LLAMA_SEPARATOR_RE.match(text, pos)
        if sep:
            pos = sep.end()
    segments.append(text[pos:])
    if len(calls) > MAX_TOOL_CALLS:
        calls = [*calls[:MAX_TOOL_CALLS], _too_many(text[pos:])]
    return calls, segments


def _too_many(rest: str) -> InvalidToolCall:
    return InvalidToolCall(
        new_tool_call_id(), None, rest[:200], f"more than {MAX_TOOL_CALLS} tool calls; the rest is not read"
    )


def _read_calls(
    text: str, tool_names: Collection[str] | None, fmt: ToolCallFormat = HERMES
) -> tuple[list[ParsedToolCall | InvalidToolCall], list[str]]:
    """Calls and the content around them: the format's own syntax first, then Hermes (tagged or bare JSON)."""
    calls: list[ParsedToolCall | InvalidToolCall] = []
    segments: list[str] = []
    if fmt.name == "mistral":
        calls, segments = _split_listed(text, tool_names, fmt.triggers[0])
    elif fmt.name == "llama3_json":
        calls, segments = _split_llama(text, tool_names)
    if not calls:
        calls, segments = _split_tagged(text, tool_names)
    if not calls:
        bare = _bare_calls(text, tool_names)
        if bare is not None:
            calls, segments = bare, []
    return calls, segments


_NAME_RE = re.compile(r'"name"\s*:\s*"([^"]*)"')


def _guess_name(body: str) -> str | None:
    m = _NAME_RE.search(body)
    return m.group(1) if m else None


def parse_tool_calls(
    text: str, tool_names: Collection[str] | None = None, tool_format: ToolCallFormat = HERMES
) -> tuple[list[ParsedToolCall], list[InvalidToolCall], str]:
    """Read tool calls out of generated text.

    Returns ``(calls, invalid_calls, content)``: the well-formed calls in order, the ones that
    could not be used (bad JSON, no name, arguments not an object, or a name outside
    ``tool_names`` when given), and the remaining text with the call blocks removed (stripped).
    ``tool_format``: the model's own syntax (:mod:`swift_engine.chat.tool_format`), read first; the
    Hermes syntax is read when it finds nothing. Never raises on model output.
    """
    calls, segments = _read_calls(text, tool_names, tool_format)
    calls = _with_unique_ids(calls)
    valid = [c for c in calls if isinstance(c, ParsedToolCall)]
    invalid = [c for c in calls if isinstance(c, InvalidToolCall)]
    content = "".join(segments).strip() if calls else text.strip()
    return valid, invalid, content


def parse_response_calls(
    tokenizer: Any,
    text: str,
    *,
    prefix: str = "",
    tools: Sequence[dict[str, Any]] = (),
    tool_names: Collection[str] | None = None,
) -> tuple[list[ParsedToolCall | InvalidToolCall], str] | None:
    """``(calls, content)`` read by ``transformers``' own parser, or ``None`` where it has none or finds no call.

    A tokenizer whose config ships a ``response_template`` (transformers >= 5: a declarative
    description of the model's reply, tool calls included) knows its format better than any
    guess here, so it is asked first: ``tokenizer.parse_response(text, prefix=prompt)``, the
    prompt telling it what the template pre-wrote. Its calls are checked like ours (names
    against ``tool_names``, arguments an object). Anything it can't read (it raises on bad
    JSON) or a reply without calls falls back to the format's own parser.
    """
    if not getattr(tokenizer, "response_template", None) or not callable(getattr(tokenizer, "parse_response", None)):
        return None
    try:
        message = tokenizer.parse_response(text, prefix=prefix, tools=list(tools) or None)
    except Exception:  # noqa: BLE001 - its parsers raise ValueError, KeyError, ...; ours reads the text instead
        return None
    raw_calls = message.get("tool_calls") if isinstance(message, dict) else None
    if not isinstance(raw_calls, list) or not raw_calls:
        return None
    calls: list[ParsedToolCall | InvalidToolCall] = []
    for item in raw_calls[:MAX_TOOL_CALLS]:
        fn = item.get("function", item) if isinstance(item, dict) else None
        call = None
        if isinstance(fn, dict):
            obj = {"name": fn.get("name"), "arguments": fn.get("arguments") or {}, "id": item.get("id")}
            call = _call_from_obj(obj, tool_names)
        calls.append(call or InvalidToolCall(new_tool_call_id(), None, str(item)[:200], "unreadable tool call"))
    content = message.get("content") if isinstance(message.get("content"), str) else ""
    return calls, content or ""


def hidden_marker_ids(tokenizer: Any, tool_format: ToolCallFormat) -> dict[int, str]:
    """The format's markers that are special tokens, which the engine's text leaves out: id -> text.

    The engine decodes replies without special tokens; a Mistral ``[TOOL_CALLS]`` or Llama
    ``<|python_tag|>`` token would vanish from the text, and with it the sign that a call starts.
    :func:`~swift_integrations._generation.generation_events` puts them back by token id.
    """
    out: dict[int, str] = {}
    for marker in tool_format.triggers:
        try:
            tid = tokenizer.convert_tokens_to_ids(marker)
            if not isinstance(tid, int) or tid < 0 or tid == getattr(tokenizer, "unk_token_id", None):
                continue
            if tokenizer.decode([tid], skip_special_tokens=False) != marker:
                continue
            if tokenizer.decode([tid], skip_special_tokens=True) == "":
                out[tid] = marker
        except Exception:  # noqa: BLE001 - a duck-typed tokenizer without these: nothing hidden
            continue
    return out


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

    Text before a call's opening marker (``<tool_call>``; for other formats also their own:
    ``[TOOL_CALLS]``, ``<|python_tag|>``, a Llama call's ``{"name": ``) is released as it comes (a
    tail that could be the start of a marker is held back); from the marker on everything is
    held. A reply that *starts* with ``{`` (maybe a bare JSON call) is held until the end.
    :meth:`finish` parses what was held: with ``response_parser`` (transformers'
    ``parse_response``, see :func:`parse_response_calls`) first, then the format's own parser.
    """

    def __init__(
        self,
        tool_names: Collection[str] | None = None,
        prefill: str = "",
        tool_format: ToolCallFormat = HERMES,
        response_parser: Callable[[str], tuple[list[ParsedToolCall | InvalidToolCall], str] | None] | None = None,
    ) -> None:
        self.tool_names = tool_names
        self.tool_format = tool_format
        self.response_parser = response_parser
        # a JSON trigger (Llama's '{"name": ') is held from '{"name"': unconstrained text spaces it either way
        self.markers = tuple(dict.fromkeys(t.rstrip(": ") for t in (*tool_format.triggers, TOOL_CALL_OPEN)))
        self.text = prefill
        self.released = 0
        self.in_call = any(m in prefill for m in self.markers)

    def push(self, delta: str) -> str:
        self.text += delta
        if self.in_call:
            return ""
        pending = self.text[self.released :]
        found = [i for i in (pending.find(m) for m in self.markers) if i >= 0]
        if found:
            self.in_call = True
            return self._release(min(found))
        if self.released == 0 and (not pending.strip() or pending.lstrip()[:1] in ("{", "[", "`")):
            return ""  # maybe a bare JSON call: hold until the end
        keep = 0
        for marker in self.markers:
            for k in range(min(len(marker) - 1, len(pending)), keep, -1):
                if pending.endswith(marker[:k]):
                    keep = k
                    break
        return self._release(len(pending) - keep)

    def _release(self, n: int) -> str:
        out = self.text[self.released : self.released + n]
        self.released += n
        return out

    def finish(self) -> tuple[list[ParsedToolCall], list[InvalidToolCall], str]:
        """``(calls, invalid, rest)``: ``rest`` is the content not released yet (not stripped)."""
        read = self.response_parser(self.text) if self.response_parser is not None else None
        if read is not None:
            calls, segments = read[0], [read[1]]
        else:
            calls, segments = _read_calls(self.text, self.tool_names, self.tool_format)
        calls = _with_unique_ids(calls)
        content = "".join(segments) if calls else self.text
        released = self.text[: self.released]
        if content.startswith(released):
            rest = content[len(released) :]
        elif content.strip().startswith(released.strip()):  # a parser that trims the content
            rest = content.strip()[len(released.strip()) :]
        else:
            rest = content
        if calls and not rest.strip():
            rest = ""
        valid = [c for c in calls if isinstance(c, ParsedToolCall)]
        invalid = [c for c in calls if isinstance(c, InvalidToolCall)]
        self.released = len(self.text)
        return valid, invalid, rest
