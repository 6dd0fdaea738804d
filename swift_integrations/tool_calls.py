"""The tool-call text format shared by every framework adapter (LangChain, LlamaIndex).

Framework-neutral on purpose: tools are OpenAI-format function dicts, calls are plain dataclasses,
and nothing here imports a framework. The adapters convert to and from their own types.

The format (Hermes-style, what Qwen/Hermes chat templates use natively)
---------------------------------------------------------------------
* Tools are described to the model in a system prompt (:func:`render_tools_system_prompt`) when the
  chat template has no ``tools`` support of its own.
* A call is ``<tool_call>\\n{"name": "<tool>", "arguments": {...}}\\n</tool_call>``
  (:func:`format_tool_call`); several calls are several blocks.
* A tool's result is ``<tool_response>\\n{"name": "<tool>", "content": "..."}\\n</tool_response>``
  (:func:`format_tool_result`), used where the template has no ``tool`` role.
* :func:`parse_tool_calls` reads calls back from generated text: tagged blocks (closed or not), or
  a reply that is nothing but a bare JSON object ``{"name": ..., "arguments": ...}`` (also accepted:
  ``"parameters"`` for ``"arguments"``, arguments given as a JSON string, a list of such objects,
  a ```json fence around it). Anything unparsable becomes an :class:`InvalidToolCall` with the
  error text, never an exception.

Steering small models into a call
---------------------------------
``tool_choice`` "any"/"required"/<name> must produce a call even from a 135M model that was never
trained on tools. :func:`tool_call_prefill` is the minimal form (start the assistant turn inside a
call). :class:`ToolCallSteering` and :class:`JsonSchemaSteering` go further with a *staged
prefill*: the name, then each required argument value, is generated in its own short step that
stops at the end of that JSON value, and the adapter re-prefills the next step with the text so
far. Both implement the :class:`Steering` protocol, which is the plug-in point for a
grammar-constrained decoder later: an implementation that constrains tokens would simply answer
:meth:`Steering.start` with a single step and :meth:`Steering.advance` with ``None``.
"""

from __future__ import annotations

import difflib
import json
import re
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "InvalidToolCall",
    "JsonObjectFilter",
    "JsonSchemaSteering",
    "ParsedToolCall",
    "SteerStep",
    "Steering",
    "ToolCallStreamFilter",
    "ToolCallSteering",
    "format_tool_call",
    "format_tool_result",
    "new_tool_call_id",
    "parse_tool_calls",
    "render_tools_system_prompt",
    "resolve_tool_name",
    "tool_call_prefill",
    "tool_function",
]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
TOOL_RESPONSE_OPEN = "<tool_response>"
TOOL_RESPONSE_CLOSE = "</tool_response>"

_DECODER = json.JSONDecoder()
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


# --------------------------------------------------------------------------------------- rendering


def render_tools_system_prompt(tools: Sequence[dict[str, Any]]) -> str:
    """The system-prompt text that describes ``tools`` to a model whose template can't.

    ``tools`` are OpenAI-format function dicts. The text is the Hermes function-calling prompt:
    one JSON line per tool inside ``<tools></tools>``, then the call format. The adapters append
    it to the conversation's system message (or add a system message holding only this).
    """
    lines = []
    for tool in tools:
        fn = tool_function(tool)
        entry = {"name": fn["name"], "description": fn.get("description", ""), "parameters": fn.get("parameters") or {"type": "object", "properties": {}}}
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


def tool_call_prefill(forced_name: str | None = None) -> str:
    """Text that starts the assistant turn inside a tool call.

    ``None``: the model still picks the tool (``'<tool_call>\\n{"name": "'``); a name: the call is
    to that tool and the model continues with its arguments
    (``'<tool_call>\\n{"name": "NAME", "arguments": '``). :class:`ToolCallSteering` builds on this.
    """
    if forced_name is None:
        return f'{TOOL_CALL_OPEN}\n{{"name": "'
    return f'{TOOL_CALL_OPEN}\n{{"name": {json.dumps(forced_name, ensure_ascii=False)}, "arguments": '


# --------------------------------------------------------------------------------------- parsing


def _call_from_obj(obj: Any, tool_names: Collection[str] | None) -> ParsedToolCall | InvalidToolCall | None:
    """Interpret a decoded JSON value as a call; ``None`` if it doesn't look like one at all."""
    if not isinstance(obj, dict) or "name" not in obj:
        return None
    name = obj.get("name")
    raw_args = obj.get("arguments", obj.get("parameters", {}))
    call_id = obj.get("id") if isinstance(obj.get("id"), str) and obj.get("id") else new_tool_call_id()
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
            args = json.loads(args) if args.strip() else {}
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
        obj, end = _DECODER.raw_decode(body)
    except json.JSONDecodeError:
        return None
    if body[end:].strip():
        return None
    items = obj if isinstance(obj, list) else [obj]
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
        body_start = start + len(TOOL_CALL_OPEN)
        close = text.find(TOOL_CALL_CLOSE, body_start)
        block_end = len(text) if close < 0 else close + len(TOOL_CALL_CLOSE)
        body = text[body_start : block_end if close < 0 else close]
        stripped = body.lstrip()
        try:
            obj, end = _DECODER.raw_decode(stripped)
        except json.JSONDecodeError as exc:
            calls.append(InvalidToolCall(new_tool_call_id(), _guess_name(body), body.strip(), f"invalid JSON in tool call: {exc}"))
            pos = block_end
            continue
        call = _call_from_obj(obj, tool_names)
        if call is None:
            call = InvalidToolCall(new_tool_call_id(), None, stripped[:end], "tool call JSON has no 'name'")
        calls.append(call)
        if close < 0:
            # Unclosed block: the call ends with its JSON; whatever follows is content again.
            block_end = body_start + (len(body) - len(stripped)) + end
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
    valid = [c for c in calls if isinstance(c, ParsedToolCall)]
    invalid = [c for c in calls if isinstance(c, InvalidToolCall)]
    content = "".join(segments).strip() if calls else text.strip()
    return valid, invalid, content


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


class JsonObjectFilter:
    """Streams a JSON object and drops whatever the model writes after it closes (JSON mode).

    String-aware brace counting; ``done`` turns true when the top-level value is complete.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.started = False
        self.done = False

    def push(self, delta: str) -> str:
        if self.done:
            return ""
        out = []
        for ch in delta:
            out.append(ch)
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif ch == "\\":
                    self.escape = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
                self.started = True
            elif ch in "}]":
                self.depth -= 1
                if self.started and self.depth <= 0:
                    self.done = True
                    break
        return "".join(out)


# --------------------------------------------------------------------------------------- steering


@dataclass(frozen=True)
class SteerStep:
    """One generation of a steered reply.

    ``prefill`` is the whole assistant text so far (the turn starts with it); generate at most
    ``max_tokens`` (``None``: the caller's remaining budget) and stop at any of ``stop`` (the stop
    string itself is not part of the result). ``steps_after`` is how many steps at least will
    follow, so a caller can keep some of its token budget for them.
    """

    prefill: str
    stop: tuple[str, ...]
    max_tokens: int | None = None
    steps_after: int = 0


class Steering(Protocol):
    """A reply produced in prefilled steps; the plug-in point for constrained decoding.

    The adapter loop::

        step = steering.start()
        while step is not None:
            generated = run_model(prompt + step.prefill, stop=step.stop, max_tokens=...)
            step = steering.advance(generated)
        text = steering.text   # the whole reply, e.g. a tool call block; then parse it

    ``abort()`` ends early (budget spent); ``text`` then holds the incomplete reply, which parses
    into an invalid call rather than raising.
    """

    def start(self) -> SteerStep | None: ...

    def advance(self, generated: str) -> SteerStep | None: ...

    def abort(self) -> None: ...

    @property
    def text(self) -> str: ...


def _schema_type(schema: dict[str, Any]) -> str:
    """The JSON type a value of ``schema`` most likely has (``"any"`` when unclear)."""
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), None)
    if isinstance(t, str):
        return t
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list):
            kinds = [_schema_type(o) for o in options if isinstance(o, dict) and o.get("type") != "null"]
            if len(kinds) == 1:
                return kinds[0]
            if "string" in kinds:
                return "string"
    if "enum" in schema and all(isinstance(v, str) for v in schema["enum"]):
        return "string"
    if "properties" in schema:
        return "object"
    return "any"


_VALUE_STOPS: dict[str, tuple[str, ...]] = {
    "string": ('"', "\n"),
    "integer": (",", "}", "\n"),
    "number": (",", "}", "\n"),
    "boolean": (",", "}", "\n"),
    "null": (",", "}", "\n"),
}


def _parse_value(kind: str, generated: str) -> tuple[bool, Any]:
    """Decode one generated JSON value of type ``kind`` (its opening quote was prefilled for strings)."""
    if kind == "string":
        try:
            return True, json.loads(f'"{generated}"')
        except json.JSONDecodeError:
            return True, generated  # unescaped characters: the raw text is the best reading
    text = generated.strip().rstrip(",").strip()
    if not text:
        return False, None
    try:
        value, _ = _DECODER.raw_decode(text)
    except json.JSONDecodeError:
        return False, None
    if kind in ("integer", "number") and isinstance(value, str):
        try:
            value = int(value) if kind == "integer" else float(value)
        except ValueError:
            return False, None
    return True, value


class _ObjectFiller:
    """Fills a JSON object's required properties one value per step."""

    def __init__(self, schema: dict[str, Any] | None, head: str, tail: str) -> None:
        schema = schema or {}
        props = schema.get("properties") or {}
        self.props: dict[str, dict[str, Any]] = {k: (v if isinstance(v, dict) else {}) for k, v in props.items()}
        required = [k for k in (schema.get("required") or []) if k in self.props]
        self.keys = [k for k in self.props if k in required]  # schema order
        self.head = head  # text before the object's first key, ending with "{"
        self.tail = tail  # text after the object's closing "}"
        self.values: dict[str, Any] = {}
        self.current: str | None = None
        self.prefix = ""
        self.text = ""
        self.failed = False

    def _body(self) -> str:
        return ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {json.dumps(v, ensure_ascii=False)}" for k, v in self.values.items())

    def next_step(self) -> SteerStep | None:
        pending = [k for k in self.keys if k not in self.values]
        if not pending:
            self.text = self.head + self._body() + "}" + self.tail
            return None
        key = pending[0]
        self.current = key
        kind = _schema_type(self.props[key])
        body = self._body()
        self.prefix = self.head + body + (", " if body else "") + json.dumps(key, ensure_ascii=False) + ": "
        if kind == "string":
            self.prefix += '"'
        return SteerStep(self.prefix, _VALUE_STOPS.get(kind, ("\n",)), steps_after=len(pending) - 1)

    def advance(self, generated: str) -> SteerStep | None:
        assert self.current is not None
        kind = _schema_type(self.props[self.current])
        ok, value = _parse_value(kind, generated)
        if not ok:
            self.failed = True
            self.text = self.prefix + generated  # incomplete: parses as an invalid call / bad JSON
            return None
        self.values[self.current] = value
        return self.next_step()

    def abort(self) -> None:
        self.failed = True
        self.text = self.prefix


class ToolCallSteering:
    """Staged prefill of a forced tool call (``tool_choice`` any/required/<name>).

    Steps: the tool's name (only when the choice is open among several tools; the generated name is
    mapped onto a real one with :func:`resolve_tool_name`), then each required argument's value,
    each stopping where that JSON value ends. A tool without required arguments needs no model
    step at all. :attr:`text` is a ``<tool_call>`` block for :func:`parse_tool_calls`.
    """

    def __init__(self, tools: Sequence[dict[str, Any]], forced_name: str | None = None) -> None:
        self.functions = {fn["name"]: fn for fn in (tool_function(t) for t in tools)}
        if not self.functions:
            raise ValueError("a forced tool call needs at least one tool")
        if forced_name is not None and forced_name not in self.functions:
            raise ValueError(f"tool_choice names {forced_name!r}, which is not among the tools {sorted(self.functions)}")
        self.name = forced_name if forced_name is not None else (next(iter(self.functions)) if len(self.functions) == 1 else None)
        self._filler: _ObjectFiller | None = None
        self._text = ""

    def start(self) -> SteerStep | None:
        if self.name is None:
            self._text = tool_call_prefill(None)
            return SteerStep(self._text, ('"', "\n"), max_tokens=24)
        return self._begin_arguments()

    def _begin_arguments(self) -> SteerStep | None:
        assert self.name is not None
        head = tool_call_prefill(self.name) + "{"
        self._filler = _ObjectFiller(self.functions[self.name].get("parameters"), head, f"}}\n{TOOL_CALL_CLOSE}")
        return self._filler.next_step()

    def advance(self, generated: str) -> SteerStep | None:
        if self._filler is None:
            self.name = resolve_tool_name(generated, list(self.functions))
            return self._begin_arguments()
        return self._filler.advance(generated)

    def abort(self) -> None:
        if self._filler is not None:
            self._filler.abort()

    @property
    def text(self) -> str:
        return self._filler.text if self._filler is not None else self._text


class JsonSchemaSteering:
    """Staged prefill of a JSON object for a JSON schema (structured output, ``json_schema`` method)."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self._filler = _ObjectFiller(schema, "{", "")

    def start(self) -> SteerStep | None:
        return self._filler.next_step()

    def advance(self, generated: str) -> SteerStep | None:
        return self._filler.advance(generated)

    def abort(self) -> None:
        self._filler.abort()

    @property
    def text(self) -> str:
        return self._filler.text

