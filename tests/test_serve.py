"""The OpenAI-compatible server (swift_integrations.serve) over real HTTP, with the clients people point at it.

One uvicorn server per app configuration, started once for the module around the session's shared
embedded engine; the ``openai`` SDK, LangChain's ``ChatOpenAI`` and LlamaIndex's ``OpenAILike`` talk
to it. Replies are short (max_tokens 8-48) so the module stays quick on two cores.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

import uvicorn  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from swift_integrations.serve import create_app, main, serve  # noqa: E402

KEY = "test-key"
HELLO = [{"role": "user", "content": "Say hello."}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` on a free localhost port in a background thread; yield its base URL."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def base(smol) -> Iterator[str]:
    """The main server: an API key, a small body limit (for the 413 test)."""
    _ = smol.costs  # the engine's one-off cost measurement, outside any request's timeout
    app = create_app(smol, api_key=KEY, max_queue=4, request_timeout=300, model_name="smol", max_body_bytes=64_000)
    with running(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=300)


def _error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in body["error"]["message"]
    return body["error"]


@contextlib.contextmanager
def finished_calls(engine: Any) -> Iterator[list[Any]]:
    """Results of the engine's calls that ran to their end (a closed stream reports none)."""
    results: list[Any] = []
    engine.add_result_listener(results.append)
    try:
        yield results
    finally:
        engine.remove_result_listener(results.append)


def _idle(engine: Any, url: str) -> None:
    """Wait until the engine runs no call and the server holds no request."""
    deadline = time.monotonic() + 20
    while (engine.active_calls or httpx.get(url + "/health").json()["in_flight"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.active_calls == 0 and httpx.get(url + "/health").json()["in_flight"] == 0


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


# -- the openai SDK ------------------------------------------------------------------------------------


def test_chat_greedy_matches_in_process_generate(smol, client):
    resp = client.chat.completions.create(model="smol", messages=HELLO, max_tokens=16, temperature=0)
    expected = smol.generate(HELLO, max_new_tokens=16)
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected.text
    assert choice.finish_reason == ("length" if expected.finish_reason == "length" else "stop")
    assert resp.model == "smol" and resp.object == "chat.completion"
    assert resp.usage.completion_tokens == expected.stats.new_tokens
    assert resp.usage.prompt_tokens == expected.stats.prompt_tokens
    swift = resp.model_extra["swift"]
    assert {"acceptance_rate", "mean_accepted_per_step", "step_key", "tokens_per_s"} <= set(swift)


def test_chat_stream_with_usage_matches_non_stream(client):
    kwargs: dict[str, Any] = dict(model="smol", messages=HELLO, max_tokens=16, temperature=0)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens > 0
    assert "acceptance_rate" in last.model_extra["swift"]


def test_completions_and_models(client):
    resp = client.completions.create(model="smol", prompt="The capital of France is", max_tokens=8, temperature=0)
    assert resp.choices[0].text and resp.usage.completion_tokens <= 8
    streamed = client.completions.create(
        model="smol", prompt="The capital of France is", max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == resp.choices[0].text
    assert [m.id for m in client.models.list()] == ["smol"]


def test_forced_tool_call(client):
    resp = client.chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice="required",
        max_tokens=48,
        temperature=0,
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    # the call goes back in OpenAI's format (arguments a JSON string) and the conversation continues
    follow = client.chat.completions.create(
        model="smol",
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 C"},
        ],
        tools=[WEATHER_TOOL],
        tool_choice="none",
        max_tokens=8,
        temperature=0,
    )
    assert follow.choices[0].message.content


def test_forced_named_tool_call_streams(client):
    chunks = list(
        client.chat.completions.create(
            model="smol",
            messages=[{"role": "user", "content": "Weather in Rome?"}],
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=48,
            temperature=0,
            stream=True,
        )
    )
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    json.loads(calls[0].function.arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_response_format_json_schema(client):
    schema = {
        "type": "object",
        "properties": {"age": {"type": "integer"}},
        "required": ["age"],
        "additionalProperties": False,
    }
    resp = client.chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": "Alice is 30 years old. How old is Alice?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "Age", "schema": schema}},
        max_tokens=32,
        temperature=0,
    )
    data = json.loads(resp.choices[0].message.content)
    assert isinstance(data["age"], int) and set(data) == {"age"}


def test_step_key_header_and_metadata_reach_the_stats(client):
    resp = client.chat.completions.create(
        model="smol", messages=HELLO, max_tokens=8, temperature=0, extra_headers={"X-Swift-Step": "serve-header"}
    )
    assert resp.model_extra["swift"]["step_key"] == "serve-header"
    resp = client.chat.completions.create(
        model="smol", messages=HELLO, max_tokens=8, temperature=0, extra_body={"metadata": {"swift_step": "serve-md"}}
    )
    assert resp.model_extra["swift"]["step_key"] == "serve-md"


def test_unnamed_steps_are_keyed_by_their_system_prompt(client):
    """ChatOpenAI names no step: calls sharing a system prompt share a profile, others do not."""
    from swift_integrations.step_keys import system_prompt_step_key

    keys = []
    for system in ("You summarize text.", "You plan tool calls.", "You summarize text."):
        messages = [{"role": "system", "content": system}, *HELLO]
        resp = client.chat.completions.create(model="smol", messages=messages, max_tokens=4, temperature=0)
        keys.append(resp.model_extra["swift"]["step_key"])
    assert keys[0] == keys[2] == system_prompt_step_key("You summarize text.") != keys[1]


def test_tool_followup_answer_asks_for_the_answer_after_tool_results(smol):
    """tool_followup='answer': after a tool result the model is asked for the answer, as the adapters do."""
    from swift_integrations.serve.request_fields import neutral_messages
    from swift_integrations.tool_followup import answer_turn

    history = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "18 C, sunny"},
    ]
    body = {"messages": history, "tools": [WEATHER_TOOL], "max_tokens": 12, "temperature": 0}
    neutral = neutral_messages(history)
    expected = smol.generate(answer_turn(neutral), max_new_tokens=12).text
    with running(create_app(smol, tool_followup="answer")) as url:
        answer = httpx.post(url + "/v1/chat/completions", json=body, timeout=300).json()
    with running(create_app(smol, tool_followup="model")) as url:
        as_model = httpx.post(url + "/v1/chat/completions", json=body, timeout=300).json()
    assert answer["choices"][0]["message"]["content"] == expected
    assert answer["choices"][0]["message"].get("tool_calls") is None
    assert as_model["usage"]["prompt_tokens"] > answer["usage"]["prompt_tokens"]  # the tools stayed in its prompt


# -- LangChain and LlamaIndex --------------------------------------------------------------------------


class Age(BaseModel):
    """How old someone is."""

    age: int


def test_langchain_chat_openai(base):
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_core.tools import tool

    llm = langchain_openai.ChatOpenAI(
        base_url=base + "/v1", api_key=KEY, model="smol", max_tokens=16, temperature=0, max_retries=0
    )
    reply = llm.invoke("Say hello.")
    assert reply.content and reply.usage_metadata["output_tokens"] > 0
    assert "".join(c.content for c in llm.stream("Say hello.")) == reply.content

    @tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return "sunny"

    msg = llm.bind_tools([get_weather], tool_choice="any").invoke("Weather in Paris?", max_tokens=48)
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "get_weather"
    assert isinstance(msg.tool_calls[0]["args"]["city"], str)

    structured = llm.bind(max_tokens=32).with_structured_output(Age, method="json_schema")
    out = structured.invoke("Alice is 30 years old. How old is Alice?")
    assert isinstance(out, Age)


def test_llamaindex_openai_like(base):
    openai_like = pytest.importorskip("llama_index.llms.openai_like")
    from llama_index.core.llms import ChatMessage

    llm = openai_like.OpenAILike(
        model="smol",
        api_base=base + "/v1",
        api_key=KEY,
        is_chat_model=True,
        max_tokens=16,
        temperature=0,
        max_retries=0,
    )
    resp = llm.chat([ChatMessage(role="user", content="Say hello.")])
    assert resp.message.content


# -- errors --------------------------------------------------------------------------------------------


def test_bad_json_and_bad_parameters_are_400(base):
    url = base + "/v1/chat/completions"
    err = _error(httpx.post(url, content=b"{not json", headers=_auth()), 400)
    assert err["type"] == "invalid_request_error" and "JSON" in err["message"]
    err = _error(httpx.post(url, json={"messages": HELLO, "temperature": 5}, headers=_auth()), 400)
    assert err["param"] == "temperature"
    err = _error(httpx.post(url, json={"messages": []}, headers=_auth()), 400)
    assert err["param"] == "messages"
    err = _error(httpx.post(url, json={"messages": HELLO, "max_tokens": 0}, headers=_auth()), 400)
    assert err["param"] == "max_tokens"
    err = _error(
        httpx.post(url, json={"messages": HELLO, "tools": [WEATHER_TOOL], "tool_choice": "nope"}, headers=_auth()),
        400,
    )
    assert err["param"] == "tool_choice"
    err = _error(httpx.post(url, json={"messages": HELLO, "response_format": {"type": "xml"}}, headers=_auth()), 400)
    assert err["param"] == "response_format"
    err = _error(httpx.post(url, json={"messages": [{"role": "robot", "content": "hi"}]}, headers=_auth()), 400)
    assert "role" in err["message"]
    err = _error(httpx.post(base + "/v1/completions", json={"prompt": ""}, headers=_auth()), 400)
    assert err["param"] == "prompt"
    err = _error(httpx.post(url, json={"messages": HELLO}, headers={"X-Swift-Step": "x" * 300, **_auth()}), 400)
    assert "step key" in err["message"]
    _error(httpx.post(url, json={"messages": HELLO, "metadata": {"swift_step": "a\x01b"}}, headers=_auth()), 400)


def test_api_key_is_required(base):
    assert httpx.get(base + "/health").status_code == 200  # open for load balancers
    _error(httpx.get(base + "/v1/models"), 401)
    _error(httpx.get(base + "/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    _error(httpx.post(base + "/v1/chat/completions", json={"messages": HELLO}, headers={"Authorization": "x"}), 401)
    bad = openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_oversized_body_is_413(base):
    big = {"messages": [{"role": "user", "content": "x" * 100_000}]}
    err = _error(httpx.post(base + "/v1/chat/completions", json=big, headers=_auth()), 413)
    assert "bytes" in err["message"]


def test_not_found_is_openai_shaped(base):
    _error(httpx.get(base + "/v1/nothing", headers=_auth()), 404)


def test_a_model_the_server_does_not_serve_is_404_model_not_found(smol, client):
    """A client asking for ``gpt-4o`` got Qwen's answer with a 200: a request's ``model`` must be one the
    server serves (its id, its aliases, or the engine's own name), else 404 in OpenAI's shape."""
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=4)
    assert info.value.status_code == 404 and info.value.body["code"] == "model_not_found"
    assert "'smol'" in info.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hi", max_tokens=4)
    own = client.chat.completions.create(model=str(smol.model_name), messages=HELLO, max_tokens=4, temperature=0)
    assert own.model == "smol"  # answered, under the served id
    with running(create_app(smol, model_name=["swift-chat", "alias"])) as url:
        ask = {"messages": HELLO, "max_tokens": 2}
        assert httpx.post(url + "/v1/chat/completions", json={**ask, "model": "alias"}).json()["model"] == "swift-chat"
        assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == "swift-chat"
        _error(httpx.post(url + "/v1/chat/completions", json={**ask, "model": "smol"}), 404)


def test_timeout_is_504(smol):
    with running(create_app(smol, request_timeout=0.001)) as url:
        err = _error(httpx.post(url + "/v1/chat/completions", json={"messages": HELLO, "max_tokens": 8}), 504)
        assert "timed out" in err["message"]
        chunk = httpx.post(url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 8, "stream": True})
        _error(chunk, 504)  # the stream's first step failed: still an HTTP status


def test_full_queue_is_429_and_a_disconnect_stops_the_engine(smol):
    """max_queue=1 with a stream in progress: the next request is refused; leaving the stream frees the model."""
    with running(create_app(smol, max_queue=1, request_timeout=120)) as url:
        body = {"prompt": "Count from 1 to 1000: 1, 2, 3, 4,", "max_tokens": 1000, "temperature": 0, "stream": True}
        with httpx.Client(timeout=60) as http, finished_calls(smol) as finished:
            with http.stream("POST", url + "/v1/completions", json=body) as resp:
                assert resp.status_code == 200
                lines = resp.iter_lines()
                assert next(line for line in lines if line.startswith("data:"))
                assert smol.active_calls == 1
                err = _error(http.post(url + "/v1/chat/completions", json={"messages": HELLO, "max_tokens": 4}), 429)
                assert err["code"] == "rate_limit_exceeded"
                assert http.get(url + "/health").json()["in_flight"] == 1
            # the client left: the engine's stream is closed after its current step and the slot is free
            _idle(smol, url)
            assert finished == []  # closed, not run to its end
        ok = httpx.post(url + "/v1/chat/completions", json={"messages": HELLO, "max_tokens": 4}, timeout=60)
        assert ok.status_code == 200


def test_a_disconnect_stops_a_non_streaming_generation(smol):
    with running(create_app(smol, request_timeout=120)) as url:
        body = {"prompt": "Count from 1 to 1000: 1, 2, 3, 4,", "max_tokens": 1000, "temperature": 0}
        with finished_calls(smol) as finished:
            with pytest.raises(httpx.ReadTimeout):  # the client gives up mid-generation
                httpx.post(url + "/v1/completions", json=body, timeout=httpx.Timeout(10, read=1.5))
            _idle(smol, url)
            assert finished == []  # closed, not run to its end


def test_core_imports_without_fastapi():
    code = (
        "import sys; sys.modules['fastapi'] = sys.modules['uvicorn'] = None; "
        "import swift_engine, swift_integrations.serve, swift_integrations.cli.app; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_load_benchmark_client_measures_a_real_server(smol, monkeypatch):
    """swift-bench --serve's client (serve_bench.run_level) against this module's kind of server."""
    from swift_integrations.bench import serve as serve_bench

    app = create_app(smol, api_key=serve_bench.KEY, max_queue=8, request_timeout=300, model_name="swift")
    with running(app) as url:
        reference = {
            i: smol.generate([{"role": "user", "content": serve_bench.question(i)}], max_new_tokens=8).text
            for i in (3, 4)
        }
        level = serve_bench.run_level(url, 2, 4, 8, reference, first=3)
    assert level["errors"] == 0 and level["mismatched"] == 0, level
    assert sorted(level["outputs"]) == ["3", "4", "5", "6"]
    assert len({serve_bench.question(i) for i in range(96)}) == 96  # no question repeats
    serve_bench.count_mismatches(level, {**reference, 5: "not what it said"})  # a reference taken later
    assert level["mismatched"] == 1
    assert level["requests"] == 4 and level["requests_per_s"] > 0 and level["output_tokens_per_s"] > 0
    assert 0 < level["ttft_p50_s"] <= level["latency_p50_s"] <= level["latency_p95_s"]
    table = serve_bench.render_markdown(
        {
            "machine": {"cpu": "cpu", "cpu_count": 2, "torch": "x", "model": "m"},
            "settings": {"max_tokens": 8, "replicas": 2, "replica_cpus": 1},
            "command": "swift-bench --serve",
            "deployments": {"single": {"levels": [level]}},
        }
    )
    assert "| single | 2 | 4 | 0 | 1 |" in table


def test_bench_serve_rejects_unknown_deployments():
    from typer.testing import CliRunner

    from swift_integrations.bench.command import app

    result = CliRunner().invoke(app, ["--serve", "--deployments", "nope"])
    assert result.exit_code == 1


# -- command line --------------------------------------------------------------------------------------


def test_non_local_host_needs_a_key(monkeypatch):
    monkeypatch.delenv("SWIFT_API_KEY", raising=False)
    with pytest.raises(ValueError, match="API key"):
        serve(host="0.0.0.0")
    with pytest.raises(SystemExit, match="API key"):
        main(["--host", "0.0.0.0"])


def test_batch_rows_reaches_the_served_engine_and_a_negative_one_is_refused(monkeypatch, tmp_path):
    import swift_integrations.serve.command as command

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(app))
    with pytest.raises(SystemExit, match="--batch-rows"):
        main(["--batch-rows", "-1"])
    command.serve(None, profile_dir=str(tmp_path), batch_rows=0)
    engine = served[0].state.engine
    assert engine.config.batch_rows == 0 and not engine.batcher.accepts(engine_request(engine))


def engine_request(engine):
    from swift_engine.decoding.sampling import SamplingParams
    from swift_engine.decoding.stopping import StopStrings
    from swift_engine.request import GenerationRequest

    return GenerationRequest(engine.encode_prompt("Hi"), 4, SamplingParams(0.0, 1.0, 0), StopStrings(None), "default")


def test_cli_has_serve():
    from typer.testing import CliRunner

    from swift_integrations.cli.app import app

    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0 and "--max-queue" in result.output and "--ray" in result.output
    assert "--batch-rows" in result.output
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0"], env={"SWIFT_API_KEY": ""})
    assert result.exit_code == 1 and "API key" in result.output and "Traceback" not in result.output
