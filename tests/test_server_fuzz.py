"""The server fuzzed: generated bodies, near-valid and not, never get a 5xx, and the server stays healthy.

The bodies start from a valid request and replace fields with arbitrary JSON (and add unknown ones),
in the spirit of schemathesis (the routes read raw bodies, so there is no OpenAPI schema to derive
them from; the strategies below are that schema). Replies are kept to a few tokens so the example
count, not generation, bounds the time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from swift_integrations.serve import create_app  # noqa: E402

from .test_serve import KEY, WEATHER_TOOL, running  # noqa: E402

pytestmark = pytest.mark.slow  # the embedded model behind a real server

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FEW_TOKENS = st.integers(1, 4) | JSON.filter(lambda v: not isinstance(v, int) or isinstance(v, bool))
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "developer", "function"]) | JSON},
    optional={"content": st.text(max_size=40) | JSON, "name": JSON, "tool_call_id": JSON, "tool_calls": JSON},
)
SCHEMA = st.just({"type": "object"}) | st.just(WEATHER_TOOL["function"]["parameters"]) | JSON
CHAT_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "messages": st.lists(MESSAGE, min_size=1, max_size=3) | JSON,
    "temperature": st.floats(0, 2) | JSON,
    "top_p": st.floats(0, 1) | JSON,
    "top_k": st.integers(-1, 50) | JSON,
    "seed": st.integers() | JSON,
    "stop": st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=3) | JSON,
    "stream": st.booleans() | JSON,
    "stream_options": st.just({"include_usage": True}) | JSON,
    "tools": st.just([WEATHER_TOOL]) | st.lists(JSON, max_size=2),
    "tool_choice": st.sampled_from(["auto", "none", "required"]) | JSON,
    "response_format": st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "json_object", "json_schema"]) | JSON},
        optional={"json_schema": st.fixed_dictionaries({"schema": SCHEMA})},
    )
    | JSON,
    "metadata": st.fixed_dictionaries({"swift_step": st.text(max_size=12) | JSON}) | JSON,
    "n": st.integers(0, 2) | JSON,
    "logprobs": JSON,
    "parallel_tool_calls": st.booleans() | JSON,
}


@st.composite
def chat_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2}
    for name in draw(st.sets(st.sampled_from(sorted(CHAT_FIELDS)), max_size=4)):
        body[name] = draw(CHAT_FIELDS[name])
    body[draw(st.sampled_from(["max_tokens", "max_completion_tokens"]))] = draw(FEW_TOKENS)
    if draw(st.booleans()) and draw(st.booleans()):
        body[draw(st.text(min_size=1, max_size=10))] = draw(JSON)  # a field the endpoint may not have
    return body


@st.composite
def completion_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": draw(st.text(max_size=30) | st.lists(st.text(max_size=10), max_size=2) | JSON)}
    body["max_tokens"] = draw(FEW_TOKENS)
    for name in draw(st.sets(st.sampled_from(["temperature", "stop", "stream", "seed", "top_p"]), max_size=3)):
        body[name] = draw(CHAT_FIELDS[name])
    return body


@pytest.fixture(scope="module")
def base(smol) -> Iterator[str]:
    _ = smol.costs
    with running(create_app(smol, api_key=KEY, max_queue=4, request_timeout=120)) as url:
        yield url


def _check(base: str, path: str, body: dict[str, Any]) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    resp = httpx.post(base + path, content=json.dumps(body), headers=headers, timeout=120)
    assert resp.status_code < 500, (resp.status_code, resp.text[:300], body)
    if resp.status_code >= 400:
        error = resp.json()["error"]
        assert error["message"] and "Traceback" not in error["message"]
    elif body.get("stream") is True:
        assert resp.text.rstrip().endswith("data: [DONE]")
        assert '"server_error"' not in resp.text, resp.text[:300]  # an error event mid-stream is a 5xx too
    deadline = time.monotonic() + 60  # a stream's slot is released just after its last event: poll a moment
    while (health := httpx.get(base + "/health", timeout=30).json())["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert health["status"] == "ok" and health["in_flight"] == 0, health


FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(body=chat_bodies())
def test_fuzzed_chat_requests_never_get_a_5xx(base, body) -> None:
    _check(base, "/v1/chat/completions", body)


@FUZZ
@given(body=completion_bodies())
def test_fuzzed_completion_requests_never_get_a_5xx(base, body) -> None:
    _check(base, "/v1/completions", body)
