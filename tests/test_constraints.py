"""Grammar-constrained decoding inside SWIFT on the embedded model: always valid, still exact."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from swift_engine import SwiftConfig, SwiftEngine
from swift_engine.decoding.constraints import (
    CALL_BEGIN,
    CALL_END,
    GrammarError,
    JsonSchemaConstraint,
    ToolCallConstraint,
    call_head,
)

pytestmark = pytest.mark.slow

SCHEMAS = {
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
        },
        "required": ["name", "age"],
    },
    "nested_enum_array": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "day": {"type": "string", "enum": ["mon", "tue", "wed"]},
                        "high": {"type": "integer", "minimum": -50, "maximum": 60},
                    },
                    "required": ["day", "high"],
                },
                "minItems": 1,
                "maxItems": 2,
            },
        },
        "required": ["city", "unit", "days"],
    },
    "optional_fields": {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 40},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
            "draft": {"type": "boolean"},
        },
        "required": ["title"],
    },
    "unicode": {
        "type": "object",
        "properties": {
            "greeting": {"type": "string", "enum": ["héllo", "こんにちは", "привет"]},
            "note": {"type": "string", "maxLength": 16},
        },
        "required": ["greeting"],
    },
}
PROMPTS = {
    "person": "Extract the person as JSON: Marie Curie was 66 years old when she died.",
    "nested_enum_array": "Give a 2-day weather forecast for Paris in celsius as JSON.",
    "optional_fields": "Describe a blog post about Python packaging as JSON with a title and tags.",
    "unicode": "Greet me in Japanese, as JSON.",
}


def _msgs(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def engine(smol) -> SwiftEngine:
    # layer-skip drafts forced on, so the constraint is exercised inside drafting and trees too
    return SwiftEngine(
        smol.model, smol.tokenizer, SwiftConfig(skip_ratio=0.2, search={"enabled": False}), model_name=smol.model_name
    )


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_constrained_output_parses_validates_and_matches_plain_constrained_decoding(engine, name) -> None:
    from xgrammar.contrib.hf import LogitsProcessor

    schema = SCHEMAS[name]
    spec = JsonSchemaConstraint(schema)
    res = engine.generate(_msgs(PROMPTS[name]), max_new_tokens=128, constraint=spec)
    assert res.finish_reason == "eos", f"{name}: grammar did not complete within budget: {res.text!r}"
    data = json.loads(res.text)
    jsonschema.validate(data, schema)

    ids = engine.encode_prompt(_msgs(PROMPTS[name]))
    compiled = engine.grammars.compile(spec)
    ref = engine.model.generate(
        torch.tensor([ids]), max_new_tokens=128, do_sample=False, logits_processor=[LogitsProcessor(compiled)]
    )[0, len(ids) :].tolist()
    assert res.token_ids == ref, f"{name}: constrained SWIFT != constrained plain decoding"


@pytest.mark.parametrize(
    "prompt",
    [
        "What's the weather in Oslo?",
        "Multiply 12 by 7.",
        "Tell me a joke.",  # no natural tool: the call must still be well-formed
        "Convert 5 km to miles and tell me the weather in Rome.",
    ],
)
def test_required_tool_call_is_well_formed(engine, prompt) -> None:
    tools = (
        {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20}},
                "required": ["city"],
            },
        },
        {
            "name": "multiply",
            "parameters": {
                "type": "object",
                # bounded: a 135M model can otherwise write digits until max_new_tokens runs out
                "properties": {
                    "a": {"type": "integer", "minimum": -9999, "maximum": 9999},
                    "b": {"type": "integer", "minimum": -9999, "maximum": 9999},
                },
                "required": ["a", "b"],
            },
        },
    )
    res = engine.generate(_msgs(prompt), max_new_tokens=64, constraint=ToolCallConstraint(tools=tools))
    assert res.text.startswith("<tool_call>\n") and res.text.endswith("\n</tool_call>"), res.text
    call = json.loads(res.text[len("<tool_call>\n") : -len("\n</tool_call>")])
    spec = {t["name"]: t["parameters"] for t in tools}
    assert call["name"] in spec
    jsonschema.validate(call["arguments"], spec[call["name"]])


def test_single_tool_call_prefilled_up_to_its_arguments_is_exact(engine) -> None:
    """What the adapters do for a forced single tool: the prompt holds the call's head."""
    from xgrammar.contrib.hf import LogitsProcessor

    params = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
        },
        "required": ["city", "days"],
    }
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Forecast.", "parameters": params}}
    head = call_head("get_weather")
    text = (
        engine.tokenizer.apply_chat_template(
            _msgs("Weather in Oslo for 3 days?"), tokenize=False, add_generation_prompt=True
        )
        + head
    )
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    spec = ToolCallConstraint(tools=(tool,), prefilled=head)
    res = engine.generate(ids, max_new_tokens=48, constraint=spec)
    assert res.text.endswith("}" + CALL_END), res.text
    call = json.loads((head + res.text)[len(CALL_BEGIN) : -len(CALL_END)])
    assert call["name"] == "get_weather"
    jsonschema.validate(call["arguments"], params)
    ref = engine.model.generate(
        torch.tensor([ids]),
        max_new_tokens=48,
        do_sample=False,
        logits_processor=[LogitsProcessor(engine.grammars.compile(spec))],
    )[0, len(ids) :].tolist()
    assert res.token_ids == ref[: len(res.token_ids)] and len(ref) - len(res.token_ids) <= 1  # HF also emits the EOS
    with pytest.raises(GrammarError, match="does not start a call"):
        engine.generate(ids, max_new_tokens=4, constraint=ToolCallConstraint(tools=(tool, tool), prefilled=head))


def test_a_reply_cut_by_the_budget_is_closed_so_it_still_validates(engine) -> None:
    from xgrammar.contrib.hf import LogitsProcessor

    schema = {
        "type": "object",
        "properties": {
            "story": {"type": "string"},
            "rating": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["story", "rating", "tags"],
    }
    spec = JsonSchemaConstraint(schema)
    msgs = _msgs("Tell me a long story about a dragon, as JSON.")
    res = engine.generate(msgs, max_new_tokens=12, constraint=spec)
    assert res.finish_reason == "length" and res.stats.grammar_closing_tokens > 0
    jsonschema.validate(json.loads(res.text), schema)
    assert res.stats.new_tokens == len(res.token_ids) == 12 + res.stats.grammar_closing_tokens
    ids = engine.encode_prompt(msgs)
    ref = engine.model.generate(
        torch.tensor([ids]),
        max_new_tokens=12,
        do_sample=False,
        logits_processor=[LogitsProcessor(engine.grammars.compile(spec))],
    )[0, len(ids) :].tolist()
    assert res.token_ids[:12] == ref  # the model's part is constrained plain decoding's


def test_auto_mode_allows_text(engine) -> None:
    tools = ({"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},)
    res = engine.generate(
        _msgs("Say hello."), max_new_tokens=16, constraint=ToolCallConstraint(tools=tools, mode="auto")
    )
    assert res.stats.new_tokens > 0


@pytest.mark.parametrize(
    "schema, construct",
    [
        ({"type": "object", "not": {"required": ["a"]}}, "not"),
        ({"type": "object", "properties": {"x": {"if": {"type": "string"}, "then": {}}}}, "if"),
        ({"type": "object", "patternProperties": {"^a": {"type": "string"}}}, "patternProperties"),
    ],
)
def test_unsupported_schema_names_the_construct(engine, schema, construct) -> None:
    with pytest.raises(GrammarError, match=construct):
        engine.generate(_msgs("hi"), max_new_tokens=4, constraint=JsonSchemaConstraint(schema))
    assert engine.generate(_msgs("hi"), max_new_tokens=4).stats.new_tokens == 4
