"""Grammar-constrained decoding inside SWIFT (xgrammar).

A constraint masks, at every position, the tokens the grammar can't accept there. Inside SWIFT:
the layer-skip draft is masked too (so drafts stay valid and get accepted), every verified node's
target distribution is masked by the grammar state reached *along that node's path*, and the
grammar state only ever advances along the accepted path (drafts are rolled back). So the output
is exactly what constrained plain decoding gives: greedy is token-identical, sampling keeps the
masked distribution.

Specs are small pydantic models; compiled grammars are cached per engine (compiling a JSON schema
is slow, matching a token cheap; figures: docs/bench/measurements.md#decoding).
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

from swift_engine.chat.tool_format import HERMES, ToolCallFormat

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
    from xgrammar import CompiledGrammar, Grammar, GrammarCompiler

#: JSON-schema keywords xgrammar ignores or can't express; rejected up front with the construct named.
_UNSUPPORTED_KEYWORDS = {
    "not": "negation ('not')",
    "if": "conditional subschemas ('if'/'then'/'else')",
    "dependentSchemas": "'dependentSchemas'",
    "dependentRequired": "'dependentRequired'",
    "patternProperties": "'patternProperties'",
    "propertyNames": "'propertyNames'",
    "unevaluatedProperties": "'unevaluatedProperties'",
    "contains": "'contains'",
    "$dynamicRef": "'$dynamicRef'",
}


class GrammarError(ValueError):
    """A schema or grammar that can't be enforced; the message names the construct."""


class JsonSchemaConstraint(BaseModel):
    """The output is one JSON value matching ``schema``."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["json_schema"] = "json_schema"
    schema_: dict[str, Any] | bool

    def __init__(self, schema: dict[str, Any] | str | bool | None = None, **data: Any) -> None:
        if schema is not None:
            data["schema_"] = json.loads(schema) if isinstance(schema, str) else schema
        super().__init__(**data)

    def key(self) -> str:
        return "json:" + json.dumps(self.schema_, sort_keys=True)


class ToolCallConstraint(BaseModel):
    """Tool calls in the model's own format (``tool_format``, :mod:`swift_engine.chat.tool_format`).

    Hermes by default: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``.

    ``mode="required"``: the output is exactly one call to one of ``tools``; ``"auto"``: free text,
    but once the model writes its format's opening marker (``<tool_call>``, ``[TOOL_CALLS]``,
    ``<|python_tag|>`` or a Llama call's ``{"name": ``) the call is constrained to a valid one.
    ``parallel=False`` allows one call per reply (formats whose calls form a list: a list of one).
    """

    model_config = ConfigDict(frozen=True)
    kind: Literal["tool_call"] = "tool_call"
    #: OpenAI-format function specs: ``{"name", "description", "parameters"}``
    #: (or ``{"type": "function", "function": {...}}``)
    tools: tuple[dict[str, Any], ...]
    mode: Literal["required", "auto"] = "required"
    #: Text that the prompt already put at the start of the reply (e.g. a prefilled ``<tool_call>\n``):
    #: ``required`` grammars leave it out, ``auto`` ones start after it (a call it opened is continued).
    prefilled: str = ""
    tool_format: ToolCallFormat = HERMES
    parallel: bool = True
    #: ``mode="auto"`` with a response format (OpenAI's tools + ``response_format``): the reply is
    #: either one call or a JSON value matching this schema, nothing else.
    answer_schema: dict[str, Any] | bool | None = None

    def key(self) -> str:
        parts: list[Any] = [self.mode, self.prefilled, list(self.tools)]
        if self.tool_format != HERMES or not self.parallel:  # Hermes keys stay what they were
            parts += [self.tool_format.model_dump(), self.parallel]
        if self.answer_schema is not None:
            parts += [{"answer_schema": self.answer_schema}]
        return "tools:" + json.dumps(parts, sort_keys=True)


Constraint = JsonSchemaConstraint | ToolCallConstraint


#: The largest repetition a schema may ask for (a pattern's ``{m,n}``, ``minLength``/``maxLength``,
#: ``minItems``/``maxItems``): compiling expands repetitions, in time growing with the square of the
#: bound (a pattern's ``{1,24000}`` compiled for ~90 s while every constrained call waited).
MAX_REPETITION = 1000
#: The most values an ``enum`` may list, and the deepest a schema may nest.
MAX_ENUM = 4096
MAX_SCHEMA_DEPTH = 32
_REPEAT = re.compile(r"(?<!\\)\{(\d+)(?:,(\d*))?\}")
_BOUNDS = ("minLength", "maxLength", "minItems", "maxItems")


def check_schema(schema: Any, path: str = "$", depth: int = 0) -> None:
    """Reject constructs that can't be enforced, naming them (xgrammar would ignore some silently), and
    schemas that would take long to compile (:data:`MAX_REPETITION`, :data:`MAX_ENUM`, :data:`MAX_SCHEMA_DEPTH`)."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise GrammarError(f"schema at {path} must be an object or a boolean, got {type(schema).__name__}")
    if depth > MAX_SCHEMA_DEPTH:
        raise GrammarError(f"schema nested deeper than {MAX_SCHEMA_DEPTH} levels at {path}")
    for kw, what in _UNSUPPORTED_KEYWORDS.items():
        if kw in schema:
            raise GrammarError(f"unsupported JSON-schema construct {what} at {path}")
    _check_bounds(schema, path)
    for kw in ("properties", "$defs", "definitions"):
        subs = schema.get(kw) or {}
        if not isinstance(subs, dict):
            raise GrammarError(f"'{kw}' at {path} must be an object")
        for name, sub in subs.items():
            check_schema(sub, f"{path}.{kw}.{name}", depth + 1)
    for kw in ("items", "additionalProperties"):
        if isinstance(schema.get(kw), dict):
            check_schema(schema[kw], f"{path}.{kw}", depth + 1)
    for kw in ("anyOf", "oneOf", "allOf", "prefixItems"):
        subs = schema.get(kw) or []
        if not isinstance(subs, list):
            raise GrammarError(f"'{kw}' at {path} must be a list")
        for i, sub in enumerate(subs):
            check_schema(sub, f"{path}.{kw}[{i}]", depth + 1)


def _check_bounds(schema: dict[str, Any], path: str) -> None:
    """A 400's worth of reason when ``schema`` asks for a repetition or an enum too large to compile quickly."""
    for kw in _BOUNDS:
        value = schema.get(kw)
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_REPETITION:
            raise GrammarError(f"'{kw}': {value} at {path} exceeds the largest repetition supported, {MAX_REPETITION}")
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        for match in _REPEAT.finditer(pattern):
            bound = max(int(n) for n in match.groups() if n)
            if bound > MAX_REPETITION:
                raise GrammarError(
                    f"pattern repetition {match.group(0)} at {path} exceeds the largest supported, {MAX_REPETITION}"
                )
    enum = schema.get("enum")
    if isinstance(enum, list) and len(enum) > MAX_ENUM:
        raise GrammarError(f"'enum' at {path} lists {len(enum)} values; at most {MAX_ENUM} are supported")


#: A tool name the call formats can carry: OpenAI's rule, and ``.`` (``module.function``). Markup in a name
#: (``</tool_call>``, ``[TOOL_CALLS]``) would end the call early when the reply is parsed.
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_tool_name(name: Any) -> None:
    """:class:`GrammarError` unless ``name`` is a tool name the call formats can carry (see ``_TOOL_NAME``)."""
    if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
        raise GrammarError(f"tool name {name!r} must be 1-64 of a-z, A-Z, 0-9, '_', '.' and '-'")


def _function(spec: dict[str, Any]) -> dict[str, Any]:
    fn = spec.get("function", spec) if spec.get("type") == "function" else spec
    if "name" not in fn:
        raise GrammarError(f"tool spec without a name: {json.dumps(spec)[:120]}")
    check_tool_name(fn["name"])
    params = fn.get("parameters") or {"type": "object", "properties": {}}
    check_schema(params, f"tool {fn['name']!r} parameters")
    return {"name": fn["name"], "parameters": params}


def _call_schema(fn: dict[str, Any], arguments_key: str = "arguments") -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": fn["name"]}, arguments_key: fn["parameters"]},
        "required": ["name", arguments_key],
        "additionalProperties": False,
    }


def _calls_schema(fns: list[dict[str, Any]], fmt: ToolCallFormat, max_calls: int | None) -> dict[str, Any]:
    """One call to one of ``fns`` in ``fmt``'s shape, or (list formats) a list of 1 to ``max_calls`` of them."""
    calls = [_call_schema(f, fmt.arguments_key) for f in fns]
    one: dict[str, Any] = calls[0] if len(calls) == 1 else {"anyOf": calls}
    if not fmt.json_list:
        return one
    schema: dict[str, Any] = {"type": "array", "items": one, "minItems": 1}
    if max_calls is not None:
        schema["maxItems"] = max_calls
    return schema


CALL_BEGIN = "<tool_call>\n"
CALL_END = "\n</tool_call>"


def call_head(name: str) -> str:
    """The text of a call to ``name`` up to its arguments (what a forced single-tool reply prefills)."""
    return CALL_BEGIN + '{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": '


def _literal(xgr: ModuleType, text: str) -> Grammar:
    return xgr.Grammar.from_ebnf(f"root ::= {json.dumps(text)}")


def _required_call_grammar(
    xgr: ModuleType, fns: list[dict[str, Any]], prefilled: str, fmt: ToolCallFormat = HERMES
) -> Grammar:
    """Exactly one call to one of ``fns`` in ``fmt``, minus the ``prefilled`` text the prompt already holds.

    ``prefilled`` may be a prefix of the format's opening (``<tool_call>\n``, ``[TOOL_CALLS][``,
    nothing for Llama), or (one tool) a prefix of its whole :meth:`~ToolCallFormat.call_head`:
    then only the arguments and the closing text are left to generate.
    """
    parts: list[Grammar] = []
    begin, end = fmt.begin, fmt.end
    head = fmt.call_head(fns[0]["name"]) if len(fns) == 1 else None
    if begin.startswith(prefilled):
        calls = xgr.Grammar.union(
            *[
                xgr.Grammar.from_json_schema(json.dumps(_call_schema(f, fmt.arguments_key)), any_whitespace=False)
                for f in fns
            ]
        )
        rest = begin[len(prefilled) :]
        tail = end
    elif head is not None and head.startswith(prefilled):
        calls = xgr.Grammar.from_json_schema(json.dumps(fns[0]["parameters"]), any_whitespace=False)
        rest = head[len(prefilled) :]
        tail = "}" + end
    else:
        raise GrammarError(f"prefilled text {prefilled!r} does not start a call to {[f['name'] for f in fns]}")
    if not tail:  # xgrammar has no empty literal
        return xgr.Grammar.concat(_literal(xgr, rest), calls) if rest else calls
    if rest:
        parts.append(_literal(xgr, rest))
    return xgr.Grammar.concat(*parts, calls, _literal(xgr, tail))


def _auto_call_tag(fns: list[dict[str, Any]], fmt: ToolCallFormat, parallel: bool) -> Any:
    """Free text until one of ``fmt``'s triggers, then a valid call block (the ``auto`` mode of non-Hermes formats).

    Llama: a call object per tool, opened by ``{"name": "<tool>", "parameters": `` or the same
    after ``<|python_tag|>``; Mistral: ``[TOOL_CALLS]`` and a list of calls. A format with one call
    per reply (Llama), a list format (Mistral: one list per reply) or ``parallel=False`` ends the
    reply at the end of its block. Whitespace inside the JSON comes in runs of one character at
    most: the templates write calls compactly, as the forced grammar does, and a model that drifts
    into whitespace (a random test model does, with tabs) can't pad a call until the budget ends.
    """
    from xgrammar.structural_tag import JSONSchemaFormat, StructuralTag, TagFormat, TriggeredTagsFormat

    tags: list[TagFormat] = []
    if fmt.json_list:
        content = JSONSchemaFormat(json_schema=_calls_schema(fns, fmt, None if parallel else 1), max_whitespace_cnt=1)
        for trigger in fmt.triggers:
            begin = fmt.open if fmt.open.startswith(trigger) else trigger
            tags.append(TagFormat(begin=begin, content=content, end=fmt.close))
    else:
        for trigger in fmt.triggers:
            prefix = "" if fmt.call_head("").startswith(trigger) else trigger
            for fn in fns:
                content = JSONSchemaFormat(json_schema=fn["parameters"], max_whitespace_cnt=1)
                tags.append(TagFormat(begin=prefix + fmt.call_head(fn["name"]), content=content, end="}" + fmt.close))
    stop = fmt.one_call or fmt.json_list or not parallel
    return StructuralTag(format=TriggeredTagsFormat(triggers=list(fmt.triggers), tags=tags, stop_after_first=stop))


class GrammarTimeout(TimeoutError):
    """A grammar still compiling when its call's deadline came (it goes on compiling, for the cache)."""


class GrammarCache:
    """Per-engine compiler and compiled grammars (the tokenizer's vocabulary is analysed once).

    A compilation runs in a thread of its own, outside the cache's lock: a call waits only for its
    own schema (and shares a compilation of the same schema already under way), never for another
    call's, and gives up at its deadline (:class:`GrammarTimeout`) while the compilation finishes
    into the cache. :func:`check_schema` bounds what a schema may ask first, so none runs for long.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, stop_ids: list[int], capacity: int = 64
    ) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_ids = stop_ids
        self.capacity = capacity
        self._compiler: GrammarCompiler | None = None
        self._compiled: OrderedDict[str, CompiledGrammar] = OrderedDict()
        self._pending: dict[str, Future[CompiledGrammar]] = {}
        self._closing: ClosingVocab | None = None
        self._lock = threading.Lock()  # the two dicts above
        self._compiler_lock = threading.Lock()  # building the compiler (the vocabulary's analysis), once

    def _get_compiler(self) -> GrammarCompiler:
        with self._compiler_lock:
            if self._compiler is None:
                try:
                    import xgrammar as xgr
                except ImportError as exc:  # pragma: no cover - xgrammar is a dependency
                    raise GrammarError("grammar-constrained decoding needs the `xgrammar` package") from exc
                info = xgr.TokenizerInfo.from_huggingface(
                    self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.stop_ids or None
                )
                self._compiler = xgr.GrammarCompiler(info)
            return self._compiler

    def compile(self, spec: Constraint, timeout: float | None = None) -> CompiledGrammar:
        """``spec`` compiled (cached per spec); :class:`GrammarTimeout` past ``timeout`` seconds."""
        key = spec.key()
        with self._lock:
            if key in self._compiled:
                self._compiled.move_to_end(key)
                return self._compiled[key]
            future = self._pending.get(key)
            if future is None:
                future = self._pending[key] = Future()
                thread = threading.Thread(target=self._compile_into, args=(spec, key, future), daemon=True)
                thread.name = "swift-grammar-compile"
                thread.start()
        try:
            return future.result(timeout)
        except FutureTimeout:
            raise GrammarTimeout(f"the grammar was still compiling after {timeout:.1f} s") from None

    def _compile_into(self, spec: Constraint, key: str, future: Future[CompiledGrammar]) -> None:
        try:
            compiled = self._compile(spec)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting calls
            with self._lock:
                self._pending.pop(key, None)
            future.set_exception(exc)
            return
        with self._lock:
            self._pending.pop(key, None)
            self._compiled[key] = compiled
            while len(self._compiled) > self.capacity:
                self._compiled.popitem(last=False)
        future.set_result(compiled)

    def _compile(self, spec: Constraint) -> CompiledGrammar:
        import xgrammar as xgr

        compiler = self._get_compiler()
        try:
            if isinstance(spec, JsonSchemaConstraint):
                check_schema(spec.schema_)
                return compiler.compile_json_schema(json.dumps(spec.schema_), any_whitespace=False)
            fns = [_function(t) for t in spec.tools]
            if not fns:
                raise GrammarError("a tool-call constraint needs at least one tool")
            if spec.mode == "required":
                return compiler.compile_grammar(_required_call_grammar(xgr, fns, spec.prefilled, spec.tool_format))
            if spec.answer_schema is not None:  # one call, or the answer in its schema
                check_schema(spec.answer_schema)
                call = _required_call_grammar(xgr, fns, "", spec.tool_format)
                answer = xgr.Grammar.from_json_schema(json.dumps(spec.answer_schema), any_whitespace=False)
                return compiler.compile_grammar(xgr.Grammar.union(call, answer))
            if spec.tool_format.name != "hermes":
                return compiler.compile_structural_tag(_auto_call_tag(fns, spec.tool_format, spec.parallel))
            tags = [xgr.StructuralTagItem(begin=CALL_BEGIN, schema=_call_schema(f), end=CALL_END) for f in fns]
            return compiler.compile_structural_tag(tags, ["<tool_call>"])
        except GrammarError:
            raise
        except Exception as exc:  # xgrammar's own errors: invalid schema or grammar
            raise GrammarError(f"cannot compile the constraint: {exc}") from exc

    def matcher(self, spec: Constraint, timeout: float | None = None) -> "GrammarState":
        state = GrammarState(self.compile(spec, timeout), self.vocab_size)
        if isinstance(spec, ToolCallConstraint) and spec.mode == "auto" and spec.prefilled:
            # an auto reply that the prompt already opened (e.g. with [TOOL_CALLS]): continue from there
            if not state.matcher.accept_string(spec.prefilled):
                raise GrammarError(f"prefilled text {spec.prefilled!r} is not a valid start of the reply")
        return state

    def closing_vocab(self) -> "ClosingVocab":
        """What :meth:`GrammarState.close` picks from (built once, on the first truncated reply)."""
        with self._lock:
            if self._closing is None:
                self._closing = ClosingVocab.build(self.tokenizer, self.vocab_size, self.stop_ids)
            return self._closing


#: Most tokens :meth:`GrammarState.close` adds to a truncated reply (each costs a mask of the vocabulary, ~1 ms).
CLOSING_MAX_TOKENS = 4096

#: Texts that close or shortly complete a JSON value, most closing first; tried before anything else.
_CLOSERS = ('"}}', '"}', '"]', '"', "}}", "}", "]}", "]", ",", "0", " 0", "false", "null", "[]", "{}")


@dataclass(frozen=True)
class ClosingVocab:
    """Token choices for closing a truncated constrained reply: preferred closers, then the best-ranked token."""

    preferred: tuple[int, ...]
    #: [V] the token's characters, less 1000 for each bracket it opens beyond those it closes, 500 if it ends
    #: in a comma and, outside a string, 2000 if it has a quote (each would add to the value, not end it: a
    #: fuzzed schema's empty-allowed array of 102-character strings was filled with them); -inf for special
    #: and unused ids
    rank: torch.Tensor
    stop_ids: tuple[int, ...]
    #: [V] ``rank`` inside an open string, where a quote closes it
    rank_in_string: torch.Tensor
    #: which of ``preferred`` begin with a quote (they open a string where none is open)
    quoted: frozenset[int]
    #: a token allowed only inside a string ("x": no JSON literal or number starts with it), or -1
    probe: int

    @classmethod
    def build(cls, tokenizer: PreTrainedTokenizerBase, vocab_size: int, stop_ids: list[int]) -> "ClosingVocab":
        def single(text: str) -> int:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            return int(ids[0]) if len(ids) == 1 and ids[0] < vocab_size else -1

        preferred = {text: token for text in _CLOSERS if (token := single(text)) >= 0}
        rank = torch.full((vocab_size,), float("-inf"))
        in_string = torch.full((vocab_size,), float("-inf"))
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        for i, tok in enumerate(tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), vocab_size))))):
            if tok is not None and i not in special:
                opens = max(0, tok.count("[") + tok.count("{") - tok.count("]") - tok.count("}"))
                in_string[i] = len(tok) - 1000.0 * opens - 500.0 * tok.endswith(",")
                rank[i] = in_string[i] - 2000.0 * ('"' in tok)
        quoted = frozenset(t for text, t in preferred.items() if text.startswith('"'))
        return cls(tuple(dict.fromkeys(preferred.values())), rank, tuple(stop_ids), in_string, quoted, single("x"))


class GrammarState:
    """The grammar's state during one generation, with the masking the decode loop needs."""

    def __init__(self, compiled: CompiledGrammar, vocab_size: int) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self.matcher = xgr.GrammarMatcher(compiled)  # rollback depth is unlimited in xgrammar >= 0.2
        self.vocab_size = vocab_size
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def allowed(self, device: torch.device) -> torch.Tensor:
        """Bool mask ``[V]`` of tokens the grammar accepts next."""
        self.matcher.fill_next_token_bitmask(self._bitmask)
        z = torch.zeros(1, self.vocab_size)
        self._xgr.apply_token_bitmask_inplace(z, self._bitmask)
        return torch.isfinite(z[0]).to(device)

    def mask_(self, logits: torch.Tensor) -> torch.Tensor:
        """Mask a ``[V]`` float logits row in place."""
        self.matcher.fill_next_token_bitmask(self._bitmask)
        row = logits.view(1, -1)
        if row.device.type == "cpu":
            self._xgr.apply_token_bitmask_inplace(row, self._bitmask)
        else:
            self._xgr.apply_token_bitmask_inplace(row, self._bitmask.to(row.device))
        return logits

    def advance(self, token: int) -> bool:
        return bool(self.matcher.accept_token(int(token)))

    def rollback(self, n: int) -> None:
        if n > 0:
            self.matcher.rollback(n)

    @property
    def terminated(self) -> bool:
        return bool(self.matcher.is_terminated())

    def close(self, vocab: ClosingVocab, max_tokens: int = CLOSING_MAX_TOKENS) -> list[int]:
        """Tokens that take the grammar from here to a point where it may end ([] when it may already).

        For a reply that ``max_new_tokens`` cut short: closing the open strings, adding the
        required keys with minimal values, the items a ``minItems`` still asks for, the characters
        of a ``minLength`` and the closing brackets makes it parse and validate. Greedy, not the
        shortest possible completion: at each step the first allowed closer of :data:`_CLOSERS`,
        else the longest allowed token that opens no more brackets than it closes and ends in no comma
        (`` [],`` would add items forever; forced text such as a required key or a ``minLength``
        advances fastest with long tokens); a quote only where a string is open, unless nothing else may
        come. The state advances by the returned tokens.

        Raises :class:`GrammarError` when no end is reached within ``max_tokens`` (a schema that
        only infinite recursion satisfies, or one asking for more than that): a reply is closed or
        the call fails, never an unparseable reply reported as closed.
        """
        out: list[int] = []
        for _ in range(max_tokens + 1):
            allowed = self.allowed(torch.device("cpu"))
            if self.terminated or any(allowed[s] for s in vocab.stop_ids if s < allowed.numel()):
                return out
            if len(out) == max_tokens:
                break
            # inside an open string (a letter may come next) a quote closes it; elsewhere it would open one
            in_string = vocab.probe >= 0 and bool(allowed[vocab.probe])
            tok = next((t for t in vocab.preferred if allowed[t] and (in_string or t not in vocab.quoted)), None)
            if tok is None:
                ranked = torch.where(allowed, vocab.rank_in_string if in_string else vocab.rank, float("-inf"))
                tok = int(ranked.argmax())
                if ranked[tok] == float("-inf"):
                    break
            if not self.advance(tok):
                break
            out.append(tok)
        self.rollback(len(out))
        raise GrammarError(
            f"the reply was cut at its token budget and the grammar has no end within {max_tokens} more tokens; "
            "allow more tokens (max_tokens) or a schema that asks for less"
        )
