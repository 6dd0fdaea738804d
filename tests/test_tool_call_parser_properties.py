"""Model output is untrusted input: the tool-call parser never raises, caps what it reads, and ids stay unique.

Property-based (hypothesis) over arbitrary text, tagged blocks of arbitrary JSON, and the shapes a
broken or hostile reply takes (deep nesting, many calls, repeated or odd ids).
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from swift_engine.chat.tool_calls import (
    MAX_TOOL_CALLS,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    parse_tool_calls,
)

NAMES = ["add", "ping"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
call_objects = st.fixed_dictionaries(
    {"name": st.sampled_from(NAMES + ["", "nope"]) | st.integers()},
    optional={"arguments": json_values | st.text(max_size=20), "id": st.text(max_size=80) | st.integers()},
)
blocks = st.one_of(
    call_objects.map(lambda o: TOOL_CALL_OPEN + json.dumps(o) + TOOL_CALL_CLOSE),
    json_values.map(lambda v: TOOL_CALL_OPEN + json.dumps(v) + TOOL_CALL_CLOSE),
    st.text(max_size=30).map(lambda t: TOOL_CALL_OPEN + t),  # unclosed, anything inside
    st.text(max_size=30),
    st.sampled_from([TOOL_CALL_OPEN, TOOL_CALL_CLOSE, "{", "[", '{"name": "add", "arguments": {']),
)


def _check(text: str, names: list[str] | None) -> None:
    calls, invalid, content = parse_tool_calls(text, names)
    ids = [c.id for c in calls] + [c.id for c in invalid]
    assert len(ids) == len(set(ids)), "every call has its own id"
    assert len(calls) + len(invalid) <= MAX_TOOL_CALLS + 1
    assert all(isinstance(c.arguments, dict) for c in calls)
    if names is not None:
        assert all(c.name in names for c in calls)
    assert isinstance(content, str)


@settings(max_examples=300, deadline=None)
@given(st.lists(blocks, max_size=8), st.sampled_from([NAMES, None]))
def test_any_reply_parses_without_raising(parts: list[str], names: list[str] | None) -> None:
    _check("".join(parts), names)


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_parses_without_raising(text: str) -> None:
    _check(text, NAMES)


def test_deeply_nested_json_is_invalid_not_a_crash() -> None:
    for text in (
        "[" * 100_000,
        "{" * 100_000,
        TOOL_CALL_OPEN + '{"name": "add", "arguments": ' + "[" * 100_000 + TOOL_CALL_CLOSE,
        TOOL_CALL_OPEN + json.dumps({"name": "add", "arguments": "[" * 100_000 + "]" * 100_000}) + TOOL_CALL_CLOSE,
    ):
        calls, invalid, _ = parse_tool_calls(text, NAMES)
        assert not calls
    assert invalid and "nested too deeply" in invalid[0].error


def test_calls_past_the_cap_are_one_invalid_call() -> None:
    one = TOOL_CALL_OPEN + '{"name": "ping", "arguments": {}}' + TOOL_CALL_CLOSE
    calls, invalid, _ = parse_tool_calls(one * (MAX_TOOL_CALLS + 50), NAMES)
    assert len(calls) == MAX_TOOL_CALLS
    assert len(invalid) == 1 and str(MAX_TOOL_CALLS) in invalid[0].error


def test_model_chosen_ids_are_kept_only_when_plain_and_unique() -> None:
    def block(call_id: object) -> str:
        return TOOL_CALL_OPEN + json.dumps({"name": "ping", "id": call_id}) + TOOL_CALL_CLOSE

    calls, _, _ = parse_tool_calls(block("call_1") + block("call_1") + block("x" * 500) + block("a\x1b[2Jb"), NAMES)
    assert calls[0].id == "call_1" and calls[1].id != "call_1"  # a repeat gets a fresh id
    assert len(calls[2].id) < 100 and "\x1b" not in calls[3].id  # huge or control-character ids are replaced
    assert len({c.id for c in calls}) == 4
