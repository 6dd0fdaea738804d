"""The framework-neutral tool-call format: rendering, parsing, stream filtering, output plans (no model)."""

from __future__ import annotations

import json

import pytest

from swift_engine.chat.tool_calls import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    InvalidToolCall,
    ParsedToolCall,
    ToolCallStreamFilter,
    format_tool_call,
    format_tool_result,
    parse_tool_calls,
    render_tools_system_prompt,
    resolve_tool_name,
)
from swift_engine.decoding.constraints import JsonSchemaConstraint, ToolCallConstraint
from swift_integrations._generation import FORCED_CALL_PREFILL, normalize_tool_choice, output_constraint

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather at a place.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
NOARGS = {
    "type": "function",
    "function": {"name": "ping", "description": "Ping.", "parameters": {"type": "object", "properties": {}}},
}
ADD = {
    "name": "add",
    "description": "Add.",
    "parameters": {
        "type": "object",
        "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
        "required": ["a", "b"],
    },
}


# --------------------------------------------------------------------------------------- rendering


def test_system_prompt_lists_every_tool_in_both_dict_shapes():
    text = render_tools_system_prompt([WEATHER, ADD])
    assert "<tools>" in text and "</tools>" in text
    lines = text.split("<tools>\n")[1].split("\n</tools>")[0].splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["get_weather", "add"]
    assert json.loads(lines[0])["parameters"]["required"] == ["city", "days"]
    assert TOOL_CALL_OPEN in text and '"arguments"' in text


def test_format_and_parse_round_trip_with_unicode():
    text = "Let me check.\n" + format_tool_call("get_weather", {"city": "東京", "days": 2})
    calls, invalid, content = parse_tool_calls(text)
    assert invalid == []
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "東京", "days": 2})]
    assert calls[0].id.startswith("call_")
    assert content == "Let me check."


def test_tool_result_format():
    text = format_tool_result("It's sunny.", name="get_weather", tool_call_id="abc", is_error=False)
    assert text.startswith("<tool_response>\n") and text.endswith("\n</tool_response>")
    assert json.loads(text.splitlines()[1]) == {"name": "get_weather", "content": "It's sunny."}
    err = format_tool_result("boom", is_error=True)
    assert json.loads(err.splitlines()[1]) == {"content": "boom", "status": "error"}


# --------------------------------------------------------------------------------------- parsing


def test_several_calls_and_text_between_them():
    text = (
        f'A {TOOL_CALL_OPEN}{{"name": "add", "arguments": {{"a": 1, "b": 2}}}}{TOOL_CALL_CLOSE} '
        f'B {TOOL_CALL_OPEN}\n{{"name": "ping"}}\n{TOOL_CALL_CLOSE} C'
    )
    calls, invalid, content = parse_tool_calls(text, ["add", "ping"])
    assert [(c.name, c.arguments) for c in calls] == [("add", {"a": 1, "b": 2}), ("ping", {})]
    assert len({c.id for c in calls}) == 2
    assert invalid == [] and content == "A  B  C"


def test_unclosed_block_ends_with_its_json():
    calls, invalid, content = parse_tool_calls(
        f'{TOOL_CALL_OPEN}\n{{"name": "add", "arguments": {{"a": 1, "b": 2}}}}\nThe sum is coming.'
    )
    assert [c.name for c in calls] == ["add"] and invalid == []
    assert content == "The sum is coming."


@pytest.mark.parametrize(
    "body, error",
    [
        ('{"name": "add", "arguments": {"a": 1', "invalid JSON"),
        ('{"arguments": {"a": 1}}', "no 'name'"),
        ('{"name": "add", "arguments": [1, 2]}', "must be a JSON object"),
        ('{"name": "add", "arguments": "{not json"}', "not valid JSON"),
        ('{"name": "nope", "arguments": {}}', "unknown tool"),
    ],
)
def test_bad_calls_become_invalid_never_raise(body, error):
    calls, invalid, _ = parse_tool_calls(f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}", ["add"])
    assert calls == []
    assert len(invalid) == 1 and isinstance(invalid[0], InvalidToolCall)
    assert error in invalid[0].error
    assert invalid[0].id.startswith("call_")


def test_invalid_call_keeps_name_and_raw_text():
    _, invalid, _ = parse_tool_calls(f'{TOOL_CALL_OPEN}{{"name": "add", "arguments": {{"a": 1{TOOL_CALL_CLOSE}')
    assert invalid[0].name == "add" and '"a": 1' in invalid[0].arguments


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "add", "arguments": {"a": 1, "b": 2}}',
        '  {"name": "add", "parameters": {"a": 1, "b": 2}}\n',
        '{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}',
        '```json\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n```',
        '[{"name": "add", "arguments": {"a": 1, "b": 2}}]',
    ],
)
def test_bare_json_calls(text):
    calls, invalid, content = parse_tool_calls(text, ["add"])
    assert [(c.name, c.arguments) for c in calls] == [("add", {"a": 1, "b": 2})]
    assert invalid == [] and content == ""


def test_json_that_is_not_a_call_stays_content():
    for text in ['{"name": "Bob", "age": 3}', '{"setup": "x"}', "Just words {not json}", '{"name": "add"} and more']:
        calls, invalid, content = parse_tool_calls(text, ["add"])
        assert calls == [] and invalid == [] and content == text.strip()


def test_resolve_tool_name():
    names = ["magic_function", "get_weather"]
    assert resolve_tool_name("get_weather", names) == "get_weather"
    assert resolve_tool_name("GET_WEATHER", names) == "get_weather"
    assert resolve_tool_name("magic", names) == "magic_function"
    assert resolve_tool_name("get_wether", names) == "get_weather"
    assert resolve_tool_name("San Francisco", names) in names


# --------------------------------------------------------------------------------------- streaming


def feed(filt, text, size=1):
    out = []
    for i in range(0, len(text), size):
        out.append(filt.push(text[i : i + size]))
    return "".join(out)


def test_stream_filter_releases_text_before_the_call_only():
    call = format_tool_call("add", {"a": 1, "b": 2})
    text = "Sure, adding now. " + call + " done"
    filt = ToolCallStreamFilter(["add"])
    shown = feed(filt, text)
    assert shown == "Sure, adding now. "
    calls, invalid, rest = filt.finish()
    assert [c.name for c in calls] == ["add"] and invalid == []
    assert rest == " done"


def test_stream_filter_holds_back_a_partial_tag_then_releases_it():
    filt = ToolCallStreamFilter(["add"])
    assert filt.push("a <tool") == "a "
    assert filt.push("box> b") == "<toolbox> b"
    calls, invalid, rest = filt.finish()
    assert (calls, invalid, rest) == ([], [], "")


def test_stream_filter_plain_text_and_bare_json():
    filt = ToolCallStreamFilter(["add"])
    assert feed(filt, "Hello there, friend.", size=3) == "Hello there, friend."
    assert filt.finish() == ([], [], "")
    filt = ToolCallStreamFilter(["add"])
    assert feed(filt, '{"name": "add", "arguments": {"a": 1, "b": 2}}') == ""
    calls, _, rest = filt.finish()
    assert [c.arguments for c in calls] == [{"a": 1, "b": 2}] and rest == ""
    filt = ToolCallStreamFilter(["add"])
    assert feed(filt, '{"x": 1} is JSON') == ""
    assert filt.finish() == ([], [], '{"x": 1} is JSON')


# --------------------------------------------------------------------------------------- output plans


def test_tool_choice_spellings():
    names = ["get_weather", "add"]
    assert normalize_tool_choice(None, names) == normalize_tool_choice("auto", names) == "auto"
    assert normalize_tool_choice(False, names) == normalize_tool_choice("none", names) == "none"
    assert (
        normalize_tool_choice(True, names)
        == normalize_tool_choice("required", names)
        == normalize_tool_choice("any", names)
        == "any"
    )
    assert normalize_tool_choice({"type": "function", "function": {"name": "add"}}, names) == "add"
    with pytest.raises(ValueError, match="tool_choice"):
        normalize_tool_choice("nope", names)


def test_forced_choices_constrain_to_exactly_one_call_of_the_allowed_tools():
    plan = output_constraint([WEATHER, ADD], "any")
    assert isinstance(plan.constraint, ToolCallConstraint) and plan.constraint.mode == "required"
    assert [t.get("function", t)["name"] for t in plan.constraint.tools] == ["get_weather", "add"]
    assert plan.prefill == FORCED_CALL_PREFILL == plan.constraint.prefilled and plan.stops == (TOOL_CALL_CLOSE,)
    named = output_constraint([WEATHER, ADD], "add")
    assert [t["name"] for t in named.constraint.tools] == ["add"] and named.tool_names == ("get_weather", "add")
    assert (
        named.prefill == named.constraint.prefilled == '<tool_call>\n{"name": "add", "arguments": '
    )  # one tool: prefilled up to its arguments
    with pytest.raises(ValueError, match="names none of the tools"):
        output_constraint([WEATHER], "add")


def test_auto_constrains_only_calls_and_none_hides_tools():
    auto = output_constraint([WEATHER], "auto", parallel_tool_calls=False)
    assert auto.constraint.mode == "auto" and auto.prefill == "" and auto.show_tools
    assert auto.stops == (TOOL_CALL_CLOSE,)  # the reply ends with its first call
    assert output_constraint([WEATHER], "auto").stops == ()
    none = output_constraint([WEATHER], "none")
    assert none.constraint is None and not none.show_tools and none.tool_names is None


def test_json_schema_plans_and_the_unconstrained_variant():
    plan = output_constraint(json_schema={"type": "object"})
    assert isinstance(plan.constraint, JsonSchemaConstraint) and plan.constraint.schema_ == {"type": "object"}
    loose = output_constraint([WEATHER, ADD], "any", constrain=False)
    assert loose.constraint is None and loose.prefill == FORCED_CALL_PREFILL
    # tools with a response format (OpenAI's semantics): auto = one call or the answer in the schema,
    # none = the schema alone, a forced call wins
    both = output_constraint([WEATHER], "auto", json_schema={"type": "object"})
    assert both.constraint.mode == "auto" and both.constraint.answer_schema == {"type": "object"}
    assert both.tool_names == ("get_weather",) and both.show_tools
    hidden = output_constraint([WEATHER], "none", json_schema={"type": "object"})
    assert isinstance(hidden.constraint, JsonSchemaConstraint) and not hidden.show_tools
    forced = output_constraint([WEATHER], "any", json_schema={"type": "object"})
    assert forced.constraint.mode == "required" and forced.constraint.answer_schema is None
    assert isinstance(ParsedToolCall("x", "y", {}), ParsedToolCall)


def test_a_closing_tag_cut_by_the_budget_is_not_content():
    calls, invalid, content = parse_tool_calls(
        '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_c', ["add"]
    )
    assert [c.name for c in calls] == ["add"] and invalid == [] and content == ""
    calls, _, content = parse_tool_calls('<tool_call>\n{"name": "add", "arguments": {}}\nSo: done.', ["add"])
    assert len(calls) == 1 and content.strip() == "So: done."
