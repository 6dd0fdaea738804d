"""The framework-neutral tool-call format: rendering, parsing, stream filtering and steering (no model)."""

from __future__ import annotations

import json

import pytest

from swift_integrations.tool_calls import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    InvalidToolCall,
    JsonObjectFilter,
    JsonSchemaSteering,
    ParsedToolCall,
    ToolCallStreamFilter,
    ToolCallSteering,
    format_tool_call,
    format_tool_result,
    parse_tool_calls,
    render_tools_system_prompt,
    resolve_tool_name,
    tool_call_prefill,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather at a place.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city", "days"]},
    },
}
NOARGS = {"type": "function", "function": {"name": "ping", "description": "Ping.", "parameters": {"type": "object", "properties": {}}}}
ADD = {"name": "add", "description": "Add.", "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}


def run_steering(steering, outputs):
    """Drive a Steering with scripted model outputs; return (text, prefills seen)."""
    outputs = list(outputs)
    prefills = []
    step = steering.start()
    while step is not None:
        prefills.append(step)
        step = steering.advance(outputs.pop(0))
    assert not outputs, "steering finished before using every scripted output"
    return steering.text, prefills


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


def test_prefill_forms():
    assert tool_call_prefill() == '<tool_call>\n{"name": "'
    assert tool_call_prefill("get_weather") == '<tool_call>\n{"name": "get_weather", "arguments": '


# --------------------------------------------------------------------------------------- parsing


def test_several_calls_and_text_between_them():
    text = f'A {TOOL_CALL_OPEN}{{"name": "add", "arguments": {{"a": 1, "b": 2}}}}{TOOL_CALL_CLOSE} B {TOOL_CALL_OPEN}\n{{"name": "ping"}}\n{TOOL_CALL_CLOSE} C'
    calls, invalid, content = parse_tool_calls(text, ["add", "ping"])
    assert [(c.name, c.arguments) for c in calls] == [("add", {"a": 1, "b": 2}), ("ping", {})]
    assert len({c.id for c in calls}) == 2
    assert invalid == [] and content == "A  B  C"


def test_unclosed_block_ends_with_its_json():
    calls, invalid, content = parse_tool_calls(f'{TOOL_CALL_OPEN}\n{{"name": "add", "arguments": {{"a": 1, "b": 2}}}}\nThe sum is coming.')
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


def test_json_object_filter_cuts_after_the_object():
    f = JsonObjectFilter()
    assert feed(f, '{"a": "}{", "b": [1, {"c": "\\""}]} and then chatter', size=4) == '{"a": "}{", "b": [1, {"c": "\\""}]}'
    assert f.done


# --------------------------------------------------------------------------------------- steering


def test_forced_call_fills_required_arguments_one_value_per_step():
    steering = ToolCallSteering([WEATHER], "get_weather")
    text, steps = run_steering(steering, ["Paris", "3"])
    assert steps[0].prefill == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "'
    assert steps[0].stop[0] == '"'
    assert steps[1].prefill.endswith('{"city": "Paris", "days": ')
    calls, invalid, content = parse_tool_calls(text, ["get_weather"])
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris", "days": 3})]
    assert invalid == [] and content == ""


def test_open_choice_generates_the_name_first():
    steering = ToolCallSteering([WEATHER, ADD], None)
    text, steps = run_steering(steering, ["add_numbers", "1", "2.5"])
    assert steps[0].prefill == tool_call_prefill(None) and steps[0].max_tokens is not None
    assert json.loads(text.split("\n")[1]) == {"name": "add", "arguments": {"a": 1, "b": 2.5}}


def test_single_tool_any_and_no_argument_tool_need_no_name_step():
    text, steps = run_steering(ToolCallSteering([NOARGS], None), [])
    assert steps == []
    calls, _, _ = parse_tool_calls(text, ["ping"])
    assert [(c.name, c.arguments) for c in calls] == [("ping", {})]


def test_values_are_decoded_and_coerced():
    text, _ = run_steering(ToolCallSteering([WEATHER], "get_weather"), ['Q\\"uote', '"4"'])
    calls, _, _ = parse_tool_calls(text)
    assert calls[0].arguments == {"city": 'Q"uote', "days": 4}


def test_unparsable_value_or_spent_budget_gives_an_invalid_call():
    text, _ = run_steering(ToolCallSteering([WEATHER], "get_weather"), ["Paris", "many"])
    calls, invalid, _ = parse_tool_calls(text, ["get_weather"])
    assert calls == [] and invalid[0].name == "get_weather"
    steering = ToolCallSteering([WEATHER], "get_weather")
    steering.start()
    steering.abort()
    calls, invalid, _ = parse_tool_calls(steering.text, ["get_weather"])
    assert calls == [] and len(invalid) == 1


def test_forcing_an_unknown_tool_is_a_usage_error():
    with pytest.raises(ValueError, match="not among the tools"):
        ToolCallSteering([WEATHER], "nope")


def test_json_schema_steering_with_optional_and_nullable_fields():
    schema = {
        "title": "Joke",
        "type": "object",
        "properties": {
            "setup": {"type": "string"},
            "rating": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "punchline": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        },
        "required": ["setup", "rating"],
    }
    text, steps = run_steering(JsonSchemaSteering(schema), ["Why?", "7"])
    assert steps[0].prefill == '{"setup": "'
    assert json.loads(text) == {"setup": "Why?", "rating": 7}
    assert isinstance(ParsedToolCall("x", "y", {}), ParsedToolCall)
