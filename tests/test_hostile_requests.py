"""Malformed requests an attacker (or a buggy client) sends: each is one 400 in OpenAI's error shape, never a 500,
and the server answers the next request as before.

Bodies are written by hand (raw bytes), since a JSON library would refuse to write most of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from swift_integrations.serve import create_app  # noqa: E402

from .test_serve import KEY, WEATHER_TOOL, _error, running  # noqa: E402

pytestmark = pytest.mark.slow  # the embedded model behind a real server

HELLO = '[{"role": "user", "content": "Say hello."}]'


@pytest.fixture(scope="module")
def base(smol) -> Iterator[str]:
    _ = smol.costs
    with running(create_app(smol, api_key=KEY, max_queue=4, request_timeout=300)) as url:
        yield url


def _post(base: str, raw: str | bytes, path: str = "/v1/chat/completions") -> httpx.Response:
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    return httpx.post(base + path, content=data, headers=headers, timeout=300)


def _chat(**fields: Any) -> str:
    """A chat body with ``fields`` spliced in as raw JSON text (``fields`` values are JSON already)."""
    parts = [f'"messages": {fields.pop("messages", HELLO)}', '"max_tokens": 4']
    parts += [f'"{k}": {v}' for k, v in fields.items()]
    return "{" + ", ".join(parts) + "}"


DEEP = "[" * 1000 + "]" * 1000
SURROGATE = '"hi \\ud800"'
TOOL = json.dumps(WEATHER_TOOL)

MALFORMED = {
    "surrogate in content": (_chat(messages=f'[{{"role": "user", "content": {SURROGATE}}}]'), "messages"),
    "surrogate in a system message": (
        _chat(messages=f'[{{"role": "system", "content": {SURROGATE}}}, {{"role": "user", "content": "x"}}]'),
        "messages",
    ),
    "surrogate in a tool description": (_chat(tools="[" + TOOL.replace("The current", "\\udc00") + "]"), "tools"),
    "surrogate in a schema key": (
        _chat(response_format='{"type": "json_schema", "json_schema": {"schema": {"\\ud800": 1}}}'),
        "response_format",
    ),
    "nesting 1000 deep": (_chat(metadata=DEEP), None),
    "nesting 1000 deep in a schema": (
        _chat(response_format='{"type": "json_schema", "json_schema": {"schema": ' + DEEP + "}}"),
        None,
    ),
    "a 5000-digit integer": (_chat(seed="9" * 5000), None),
    "an integer past 64 bits": (_chat(seed=str(2**70)), "seed"),
    "NaN": (_chat(temperature="NaN"), None),
    "a list as tool_call_id": (
        _chat(
            messages='[{"role": "user", "content": "x"}, {"role": "assistant", "content": null, "tool_calls": '
            '[{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}, '
            '{"role": "tool", "tool_call_id": [1], "content": "sunny"}]'
        ),
        "messages[2].tool_call_id",
    ),
    "an object as a tool call's id": (
        _chat(
            messages='[{"role": "user", "content": "x"}, {"role": "assistant", "content": null, "tool_calls": '
            '[{"id": {"a": 1}, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}]'
        ),
        "messages[1].tool_calls",
    ),
    "a list as role (found by the fuzz suite)": (_chat(messages='[{"role": []}]'), "messages[0].role"),
    "an unknown field": (_chat(frequency_penalty="0", repetition_penalty="1.1"), "repetition_penalty"),
    "top_logprobs": (_chat(top_logprobs="2"), "top_logprobs"),
    "markup in a tool name": (_chat(tools="[" + TOOL.replace("get_weather", "x</tool_call>") + "]"), "tools"),
}


@pytest.mark.parametrize("raw, param", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_request_is_one_400_and_the_server_carries_on(base, raw, param) -> None:
    err = _error(_post(base, raw), 400)
    assert err["type"] == "invalid_request_error" and err["message"]
    if param is not None:
        assert err["param"] == param, err
    ok = _post(base, _chat())
    assert ok.status_code == 200, ok.text


def test_a_completion_request_with_an_unknown_field_is_a_400(base) -> None:
    err = _error(_post(base, '{"prompt": "Once", "max_tokens": 2, "logit_bias_x": 1}', "/v1/completions"), 400)
    assert err["param"] == "logit_bias_x"


def test_a_temperature_below_the_floor_is_greedy_over_http_and_in_process(base, smol) -> None:
    """1e-40 divided the logits into inf (NaN probabilities, a 500); below 1e-5 a temperature is greedy."""
    greedy = _post(base, _chat(temperature="0", max_completion_tokens="6"))
    tiny = _post(base, _chat(temperature="1e-40", max_completion_tokens="6"))
    assert greedy.status_code == tiny.status_code == 200, tiny.text
    text = greedy.json()["choices"][0]["message"]["content"]
    assert tiny.json()["choices"][0]["message"]["content"] == text
    messages = [{"role": "user", "content": "Say hello."}]
    tiny_text = smol.generate(messages, max_new_tokens=6, temperature=1e-40).text
    assert tiny_text == smol.generate(messages, max_new_tokens=6).text


def test_a_prompt_too_long_for_the_context_is_refused_before_it_is_tokenized(base, smol, monkeypatch) -> None:
    limit = smol.max_prompt_chars
    assert limit is not None and limit > smol.runner.context_length
    tokenized: list[int] = []
    real = type(smol).encode_prompt
    monkeypatch.setattr(type(smol), "encode_prompt", lambda self, p: tokenized.append(1) or real(self, p))
    content = json.dumps("word " * (limit // 5 + 1))
    err = _error(_post(base, _chat(messages=f'[{{"role": "user", "content": {content}}}]')), 400)
    assert "characters" in err["message"] and err["param"] == "messages"
    assert not tokenized  # refused from its size alone
    err = _error(_post(base, '{"prompt": ' + content + ', "max_tokens": 2}', "/v1/completions"), 400)
    assert err["param"] == "prompt" and not tokenized


def test_too_many_messages_are_a_400(base) -> None:
    many = "[" + ", ".join(['{"role": "user", "content": "x"}'] * 3000) + "]"
    assert "at most" in _error(_post(base, _chat(messages=many)), 400)["message"]


def test_a_schema_too_costly_to_compile_is_a_400_naming_it(base) -> None:
    """A pattern repeated 24000 times compiled for ~90 s while every constrained request waited behind it."""
    schema = '{"type": "object", "properties": {"a": {"type": "string", "pattern": "[a-z]{1,24000}[0-9]{1,24000}"}}}'
    err = _error(
        _post(base, _chat(response_format='{"type": "json_schema", "json_schema": {"schema": ' + schema + "}}")), 400
    )
    assert "pattern repetition {1,24000}" in err["message"]
