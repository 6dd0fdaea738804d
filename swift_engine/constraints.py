"""Grammar-constrained decoding inside SWIFT (xgrammar).

A constraint masks, at every position, the tokens the grammar can't accept there. Inside SWIFT:
the layer-skip draft is masked too (so drafts stay valid and get accepted), every verified node's
target distribution is masked by the grammar state reached *along that node's path*, and the
grammar state only ever advances along the accepted path (drafts are rolled back). So the output
is exactly what constrained plain decoding gives: greedy is token-identical, sampling keeps the
masked distribution.

Specs are small pydantic models; compiled grammars are cached per engine (compiling a JSON schema
takes ~1 s, matching a token ~10 µs).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

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
    """Hermes-style tool calls: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``.

    ``mode="required"``: the output is exactly one call to one of ``tools``; ``"auto"``: free text,
    but once the model opens ``<tool_call>`` the call is constrained to a valid one.
    """

    model_config = ConfigDict(frozen=True)
    kind: Literal["tool_call"] = "tool_call"
    #: OpenAI-format function specs: ``{"name", "description", "parameters"}`` (or ``{"type": "function", "function": {...}}``)
    tools: tuple[dict[str, Any], ...]
    mode: Literal["required", "auto"] = "required"
    #: Text that the prompt already put at the start of the reply (e.g. a prefilled ``<tool_call>\n``).
    prefilled: str = ""

    def key(self) -> str:
        return "tools:" + json.dumps([self.mode, self.prefilled, list(self.tools)], sort_keys=True)


Constraint = JsonSchemaConstraint | ToolCallConstraint


def check_schema(schema: Any, path: str = "$") -> None:
    """Reject constructs that can't be enforced, naming them (xgrammar would ignore some silently)."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise GrammarError(f"schema at {path} must be an object or a boolean, got {type(schema).__name__}")
    for kw, what in _UNSUPPORTED_KEYWORDS.items():
        if kw in schema:
            raise GrammarError(f"unsupported JSON-schema construct {what} at {path}")
    for kw in ("properties", "$defs", "definitions"):
        for name, sub in (schema.get(kw) or {}).items():
            check_schema(sub, f"{path}.{kw}.{name}")
    for kw in ("items", "additionalProperties"):
        if isinstance(schema.get(kw), dict):
            check_schema(schema[kw], f"{path}.{kw}")
    for kw in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for i, sub in enumerate(schema.get(kw) or []):
            check_schema(sub, f"{path}.{kw}[{i}]")


def _function(spec: dict[str, Any]) -> dict[str, Any]:
    fn = spec.get("function", spec) if spec.get("type") == "function" else spec
    if "name" not in fn:
        raise GrammarError(f"tool spec without a name: {json.dumps(spec)[:120]}")
    params = fn.get("parameters") or {"type": "object", "properties": {}}
    check_schema(params, f"tool {fn['name']!r} parameters")
    return {"name": fn["name"], "parameters": params}


def _call_schema(fn: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": fn["name"]}, "arguments": fn["parameters"]},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


class GrammarCache:
    """Per-engine compiler and compiled grammars (the tokenizer's vocabulary is analysed once)."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids: list[int], capacity: int = 64) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_ids = stop_ids
        self.capacity = capacity
        self._compiler = None
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def _get_compiler(self):
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

    def compile(self, spec: Constraint):
        import xgrammar as xgr

        key = spec.key()
        with self._lock:
            if key in self._compiled:
                self._compiled.move_to_end(key)
                return self._compiled[key]
            compiler = self._get_compiler()
            try:
                if isinstance(spec, JsonSchemaConstraint):
                    check_schema(spec.schema_)
                    compiled = compiler.compile_json_schema(json.dumps(spec.schema_), any_whitespace=False)
                else:
                    fns = [_function(t) for t in spec.tools]
                    if not fns:
                        raise GrammarError("a tool-call constraint needs at least one tool")
                    if spec.mode == "required":
                        calls = xgr.Grammar.union(
                            *[xgr.Grammar.from_json_schema(json.dumps(_call_schema(f)), any_whitespace=False) for f in fns]
                        )
                        begin = "<tool_call>\n"
                        if not begin.startswith(spec.prefilled):
                            raise GrammarError(f"prefilled text {spec.prefilled!r} is not a prefix of {begin!r}")
                        parts = []
                        rest = begin[len(spec.prefilled) :]
                        if rest:
                            parts.append(xgr.Grammar.from_ebnf(f"root ::= {json.dumps(rest)}"))
                        parts += [calls, xgr.Grammar.from_ebnf('root ::= "\\n</tool_call>"')]
                        compiled = compiler.compile_grammar(xgr.Grammar.concat(*parts))
                    else:
                        tags = [
                            xgr.StructuralTagItem(begin="<tool_call>\n", schema=_call_schema(f), end="\n</tool_call>")
                            for f in fns
                        ]
                        compiled = compiler.compile_structural_tag(tags, ["<tool_call>"])
            except GrammarError:
                raise
            except Exception as exc:  # xgrammar's own errors: invalid schema or grammar
                raise GrammarError(f"cannot compile the constraint: {exc}") from exc
            self._compiled[key] = compiled
            while len(self._compiled) > self.capacity:
                self._compiled.popitem(last=False)
            return compiled

    def matcher(self, spec: Constraint) -> "GrammarState":
        return GrammarState(self.compile(spec), self.vocab_size)


class GrammarState:
    """The grammar's state during one generation, with the masking the decode loop needs."""

    def __init__(self, compiled, vocab_size: int) -> None:
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
