"""A constrained reply cut short by its token budget is closed: it parses and validates, whatever the schema asks.

The property test drives the grammar the way a model would (any allowed token at each step, for
a random number of steps), cuts there, closes, and checks the result against the schema with
``jsonschema``: over generated schemas with ``minItems``, ``minLength``, many required fields and
nesting. The issue's reproductions run on the embedded model.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from swift_engine.decoding.constraints import GrammarError, JsonSchemaConstraint

jsonschema = pytest.importorskip("jsonschema")

pytestmark = pytest.mark.slow  # the embedded model's tokenizer and engine


def _leaf() -> st.SearchStrategy[dict]:
    return st.one_of(
        st.just({"type": "integer"}),
        st.just({"type": "boolean"}),
        st.just({"type": "number"}),
        st.integers(0, 300).map(lambda n: {"type": "string", "minLength": n}),
        st.just({"enum": ["red", "green", 3]}),
    )


def _schemas() -> st.SearchStrategy[dict]:
    def extend(inner: st.SearchStrategy[dict]) -> st.SearchStrategy[dict]:
        # nested minItems multiply (12 x 12 x 12 items at most here); the top-level 40 is the issue's case below
        arrays = st.tuples(inner, st.integers(0, 12)).map(lambda t: {"type": "array", "items": t[0], "minItems": t[1]})
        objects = st.lists(inner, min_size=1, max_size=30).flatmap(
            lambda subs: st.sets(st.integers(0, len(subs) - 1)).map(
                lambda req: {
                    "type": "object",
                    "properties": {f"field_{i}": s for i, s in enumerate(subs)},
                    "required": sorted(f"field_{i}" for i in req),
                    "additionalProperties": False,
                }
            )
        )
        return st.one_of(arrays, objects)

    return st.recursive(_leaf(), extend, max_leaves=40).filter(lambda s: s.get("type") in ("object", "array"))


def _min_chars(schema: dict) -> int:
    """About the most characters the closer writes for a value of ``schema`` (its budget is 4096 tokens).

    An object's properties come in declaration order (xgrammar's JSON grammar), and the closer, which
    cannot look ahead, writes the optional ones before the last required one too.
    """
    if schema.get("type") == "string":
        return schema.get("minLength", 0) + 2
    if schema.get("type") == "array":
        return 2 + schema.get("minItems", 0) * (_min_chars(schema["items"]) + 2)
    if schema.get("type") == "object":
        keys = list(schema["properties"])
        required = schema.get("required", [])
        last = max((keys.index(k) for k in required), default=-1)
        return 2 + sum(len(k) + 4 + _min_chars(schema["properties"][k]) for k in keys[: last + 1])
    return 5


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema=_schemas(), data=st.data())
def test_any_truncated_reply_is_closed_to_a_valid_value(smol, schema, data) -> None:
    assume(_min_chars(schema) < 2000)  # closable within the budget at a character or more a token
    grammars = smol.grammars
    vocab = grammars.closing_vocab()
    state = grammars.matcher(JsonSchemaConstraint(schema))
    tokens: list[int] = []
    for _ in range(data.draw(st.integers(0, 40), label="tokens before the cut")):
        # a model's text tokens (xgrammar leaves special ones in some masks; they decode to nothing)
        allowed = (state.allowed(torch.device("cpu")) & (vocab.rank > float("-inf"))).nonzero().flatten().tolist()
        if state.terminated or not allowed:
            break
        token = allowed[data.draw(st.integers(0, len(allowed) - 1), label="token")]
        assert state.advance(token)
        tokens.append(token)
    closing = state.close(vocab)
    text = smol.tokenizer.decode(tokens + closing)
    # strict=False: xgrammar's JSON strings admit raw control characters, as LangChain's parsers do
    jsonschema.validate(json.loads(text, strict=False), schema)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "array", "items": {"type": "integer"}, "minItems": 40},
        {"type": "object", "properties": {"summary": {"type": "string", "minLength": 300}}, "required": ["summary"]},
        {
            "type": "object",
            "properties": {f"field_{i}": {"type": "integer"} for i in range(30)},
            "required": [f"field_{i}" for i in range(30)],
        },
        # found by the property test below on a fresh clone: the closer filled the empty-allowed innermost
        # arrays with 102-character strings (a quote opened one) and overran its budget
        {
            "type": "array",
            "minItems": 11,
            "items": {
                "type": "array",
                "minItems": 7,
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "array", "minItems": 0, "items": {"type": "string", "minLength": 102}},
                },
            },
        },
    ],
    ids=["minItems-40", "minLength-300", "30-required", "nested-empty-arrays"],
)
def test_the_issues_truncated_replies_parse_and_validate(smol, schema) -> None:
    messages = [{"role": "user", "content": "Reply in JSON."}]
    res = smol.generate(messages, max_new_tokens=6, constraint=JsonSchemaConstraint(schema))
    assert res.finish_reason == "length" and res.stats.grammar_closing_tokens > 0
    jsonschema.validate(json.loads(res.text), schema)


def test_a_schema_only_infinite_recursion_satisfies_fails_clearly(smol) -> None:
    schema = {"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}, "required": ["next"]}}}
    schema["$ref"] = "#/$defs/n"
    with pytest.raises(GrammarError, match="no end within"):
        smol.generate([{"role": "user", "content": "JSON"}], max_new_tokens=4, constraint=JsonSchemaConstraint(schema))
    assert smol.generate([{"role": "user", "content": "Hi"}], max_new_tokens=2).token_ids  # still usable
