"""Prebuilt agents out of the box: ``langchain.agents.create_agent``, LangChain's standard agent loop, model profiles.

The agent tests run the catalog's agent model (Qwen2.5-Coder-0.5B-Instruct, installed by
``make setup`` with ``swift-accel pull qwen2.5-coder-0.5b``), which calls tools by itself; the
embedded 135M model does not (see tests/test_langchain_standard.py). They are slow (a 0.5B model
on two cores) and are skipped, saying how to install it, where the model isn't installed.

No ``from __future__ import annotations`` here: LlamaIndex reads a tool function's annotations as
they are, and string annotations would give it string-typed parameters.
"""

import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langchain_tests.integration_tests import ChatModelIntegrationTests

from swift_engine import SearchConfig, SwiftConfig
from swift_engine.loading.catalog import installed
from swift_integrations import SwiftChatModel
from swift_integrations.tool_followup import ANSWER_INSTRUCTION, wants_answer_turn

from .agent_tools import get_weather, multiply

AGENT_MODEL = "qwen2.5-coder-0.5b"
CFG = SwiftConfig(search=SearchConfig(max_opt_iter=6, max_tolerance_iter=3))


def _agent_model_installed() -> bool:
    return installed(AGENT_MODEL) is not None  # never downloads


needs_agent_model = pytest.mark.skipif(
    not _agent_model_installed(), reason=f"agent model not installed: swift-accel pull {AGENT_MODEL}"
)


# ---------------------------------------------------------------------------------- profiles


def test_profile_describes_the_model_without_loading_it():
    llm = SwiftChatModel(max_tokens=8)
    profile = llm.profile
    assert profile is not None
    assert profile["max_input_tokens"] == 8192  # SmolLM2's context, read from the GGUF header
    assert profile["tool_calling"] and profile["tool_choice"] and profile["structured_output"]
    assert profile["reasoning_output"] is False and profile["image_inputs"] is False


def test_profile_from_an_engine(smol):
    assert SwiftChatModel(engine=smol).profile["max_input_tokens"] == smol.runner.context_length


def test_profile_can_be_overridden():
    assert SwiftChatModel(profile={"max_input_tokens": 1000}).profile == {"max_input_tokens": 1000}


def test_summarization_middleware_sizes_itself_from_the_profile(smol):
    """Fractional triggers need ``profile["max_input_tokens"]``; without a profile this raises."""
    from langchain.agents.middleware import SummarizationMiddleware

    llm = SwiftChatModel(engine=smol, max_tokens=16)
    middleware = SummarizationMiddleware(model=llm, trigger=("fraction", 0.5), keep=("messages", 4))
    assert middleware._get_profile_limits() == 8192


# ---------------------------------------------------------------------------------- after tool results


def _answered_conversation():
    from langchain_core.messages import HumanMessage

    call = {"name": "multiply", "args": {"a": 12, "b": 34}, "id": "call_1", "type": "tool_call"}
    return [
        HumanMessage("What is 12 times 34?"),
        AIMessage("", tool_calls=[call]),
        ToolMessage("408", tool_call_id="call_1", name="multiply"),
    ]


@pytest.mark.parametrize(
    ("mode", "model", "asks"),
    [("answer", None, True), ("model", None, False), ("auto", None, False), ("auto", AGENT_MODEL, True)],
)
def test_tool_followup_modes(smol, mode, model, asks):
    from swift_integrations.tool_followup import ANSWER_INSTRUCTION, wants_answer_turn

    llm = SwiftChatModel(engine=smol, tool_followup=mode, max_tokens=8)
    call = llm._prepare(_answered_conversation(), None, None, {"tools": [multiply]})
    question = ANSWER_INSTRUCTION.format(question="What is 12 times 34?")
    if model is None:  # the rendered prompt: the answer turn, and the tools hidden
        assert (question in call.prompt.text) is asks
        assert ("<tools>" in call.prompt.text) is not asks
    neutral = [{"role": "user", "content": "q"}, {"role": "tool", "content": "408"}]
    assert wants_answer_turn(mode, model, neutral, "auto") is asks
    assert not wants_answer_turn(mode, model, neutral, "multiply")  # a forced call is always honoured
    assert not wants_answer_turn(mode, model, neutral[:1], "auto")  # only right after tool results


def test_tool_followup_answers_through_both_adapters(smol):
    from llama_index.core.llms import ChatMessage

    from swift_integrations import SwiftLlamaIndexLLM

    reply = SwiftChatModel(engine=smol, tool_followup="answer", max_tokens=12).bind_tools([multiply])
    out = reply.invoke(_answered_conversation())
    assert not out.tool_calls and out.text
    li = SwiftLlamaIndexLLM(engine=smol, tool_followup="answer", max_tokens=12)
    history = [
        ChatMessage(role="user", content="What is 12 times 34?"),
        ChatMessage(
            role="assistant",
            content="",
            additional_kwargs={"tool_calls": [{"id": "c1", "name": "multiply", "arguments": {"a": 12, "b": 34}}]},
        ),
        ChatMessage(role="tool", content="408", additional_kwargs={"tool_call_id": "c1", "name": "multiply"}),
    ]
    resp = li.chat_with_tools([multiply_fn_tool()], chat_history=history)
    assert "Using the tool results above" in resp.raw["prompt"]


def multiply_fn_tool():
    from llama_index.core.tools import FunctionTool

    def mul(a: int, b: int) -> int:
        """Multiply two integers."""
        return a * b

    return FunctionTool.from_defaults(fn=mul, name="multiply")


# ---------------------------------------------------------------------------------- agents on the agent model


@pytest.fixture(scope="module")
def agent_llm():
    return SwiftChatModel(model=AGENT_MODEL, swift_config=CFG, max_tokens=96)


@pytest.mark.slow
@needs_agent_model
def test_standard_agent_loop_passes_on_the_agent_model(agent_llm):
    """LangChain's own ``test_agent_loop`` (xfailed on the 135M model), with auto tool choice."""
    _AgentModelSuite().test_agent_loop(agent_llm)


class _AgentModelSuite(ChatModelIntegrationTests):
    """LangChain's integration suite on the agent model (not collected: only its agent loop runs here)."""

    @property
    def chat_model_class(self) -> type[SwiftChatModel]:
        return SwiftChatModel

    @property
    def chat_model_params(self) -> dict:
        return {"model": AGENT_MODEL, "swift_config": CFG}


@pytest.mark.slow
@needs_agent_model
def test_create_agent_calls_the_tool_and_answers(agent_llm):
    from langchain.agents import create_agent

    agent = create_agent(agent_llm, [get_weather, multiply])
    out = agent.invoke({"messages": [("user", "What is 12 times 34?")]})
    messages = out["messages"]
    calls = [tc for m in messages if isinstance(m, AIMessage) for tc in m.tool_calls]
    assert calls and calls[0]["name"] == "multiply" and calls[0]["args"] == {"a": 12, "b": 34}
    results = [m for m in messages if isinstance(m, ToolMessage)]
    assert results and results[0].content == "408"
    final = messages[-1]
    assert isinstance(final, AIMessage) and not final.tool_calls
    assert "408" in final.text and "{" not in final.text  # an answer, not a call written as text


@pytest.mark.slow
@needs_agent_model
def test_the_agent_model_is_recognised_however_it_is_loaded(agent_llm):
    """``tool_followup="auto"`` used to be decided from a name or path, so the agent model loaded by its
    GGUF path, from the conversion cache or behind the server repeated its tool call as text: now it is
    recognised by its weights (the same at every dtype)."""
    from swift_engine import SwiftEngine
    from swift_engine.loading.catalog import CATALOG
    from swift_engine.loading.gguf import _default_cache_dir, _gguf_cache_key, gguf_digest
    from swift_integrations.serve.calls import chat_call

    question = ANSWER_INSTRUCTION.format(question="What is 12 times 34?")
    gguf = installed(AGENT_MODEL)
    assert gguf is not None
    engine = agent_llm.swift_engine
    assert engine.weights_identity == CATALOG[AGENT_MODEL].identity
    by_path = SwiftChatModel(model_id=str(gguf.parent), gguf_file=gguf.name, swift_config=CFG)
    call = by_path._prepare(_answered_conversation(), None, None, {"tools": [multiply]})
    assert question in call.prompt.text and "<tools>" not in call.prompt.text
    # the conversion cache's folder (engine.source is the GGUF file where this process converted it)
    cache = _default_cache_dir()
    folder = str(cache / "models" / _gguf_cache_key(gguf_digest(gguf, cache)))
    converted = SwiftEngine.from_pretrained(folder, dtype="bfloat16")
    assert converted.source == folder and converted.weights_identity == engine.weights_identity
    neutral = [{"role": "user", "content": "q"}, {"role": "tool", "content": "408"}]
    assert wants_answer_turn("auto", converted, neutral, "auto")
    body = {
        "messages": [
            {"role": "user", "content": "What is 12 times 34?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "multiply", "arguments": '{"a": 12, "b": 34}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "408"},
        ],
        "tools": [{"type": "function", "function": {"name": "multiply", "parameters": {"type": "object"}}}],
    }
    served = chat_call(engine, body, model_name="anything", step_header=None, timeout=None)
    assert question in served.prompt.text  # behind the server too


@pytest.mark.slow
@needs_agent_model
def test_create_agent_with_tools_and_a_response_format(agent_llm):
    """``response_format`` with tools: the model's profile says structured output, so ProviderStrategy."""
    from langchain.agents import create_agent
    from pydantic import BaseModel

    class Weather(BaseModel):
        city: str
        summary: str

    agent = create_agent(agent_llm, [get_weather], response_format=Weather)
    out = agent.invoke({"messages": [("user", "What is the weather in Paris?")]})
    # the model may call the tool first or answer at once (both allowed); the answer always parses
    answer = out["structured_response"]
    assert isinstance(answer, Weather) and "paris" in answer.city.lower()
    final = out["messages"][-1]
    assert isinstance(final, AIMessage) and Weather.model_validate_json(final.text) == answer


@pytest.mark.slow
@needs_agent_model
def test_llamaindex_function_agent_calls_the_tool_and_answers():
    import asyncio

    from llama_index.core.agent.workflow import FunctionAgent

    from swift_integrations import SwiftLlamaIndexLLM

    def multiply_numbers(a: int, b: int) -> int:
        """Multiply two integers."""
        return a * b

    llm = SwiftLlamaIndexLLM(model=AGENT_MODEL, swift_config=CFG, max_tokens=96)
    agent = FunctionAgent(tools=[multiply_numbers], llm=llm)
    response = asyncio.run(_run(agent, "What is 12 times 34?"))
    calls = response.tool_calls
    assert calls and calls[0].tool_name == "multiply_numbers" and calls[0].tool_kwargs == {"a": 12, "b": 34}
    text = str(response)
    assert "408" in text and "{" not in text


async def _run(agent, question: str):
    return await agent.run(question)


def test_tools_with_a_response_format_give_a_call_or_a_valid_answer(smol):
    """OpenAI's semantics for tools + ``response_format``: one call, or the answer in the schema; never prose."""
    import json

    import jsonschema

    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "summary": {"type": "string"}},
        "required": ["city", "summary"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": schema}}
    llm = SwiftChatModel(engine=smol, max_tokens=48).bind_tools([get_weather], response_format=fmt)
    for question in ("What is the weather in Paris?", "Describe the weather in Oslo as JSON."):
        out = llm.invoke(question)
        if out.tool_calls:
            assert out.tool_calls[0]["name"] == "get_weather" and "city" in out.tool_calls[0]["args"]
        else:
            jsonschema.validate(json.loads(out.text), schema)
    forced = SwiftChatModel(engine=smol, max_tokens=48).bind_tools(
        [get_weather], tool_choice="get_weather", response_format=fmt
    )
    assert forced.invoke("Weather in Rome?").tool_calls[0]["name"] == "get_weather"  # a forced call wins


@pytest.mark.slow
@needs_agent_model
def test_create_agent_over_chat_openai_answers_behind_the_server_in_a_first_and_a_second_process(tmp_path):
    """What a user runs: ``swift-accel serve --model qwen2.5-coder-0.5b`` and LangChain's ``create_agent`` over
    ``ChatOpenAI``. The server is a process of its own, started twice over one fresh profile store: the
    first process measures this machine and searches its profiles, the second finds them. Both answer
    after the tool result (the follow-up is decided from the weights, not from a path or a name)."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx
    from langchain.agents import create_agent

    langchain_openai = pytest.importorskip("langchain_openai")
    env = dict(os.environ)
    env["SWIFT_MEASUREMENT_DIR"] = str(tmp_path / "machine")  # a fresh machine's: measured as a user's first run
    env["SWIFT_PROFILE_DIR"] = str(tmp_path / "profiles")
    for process in ("first", "second"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cli = os.path.join(os.path.dirname(sys.executable), "swift-accel")
        server = subprocess.Popen(
            [cli, "serve", "--model", AGENT_MODEL, "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 600  # generous: only a hung server fails here
            while True:
                assert server.poll() is None, f"the server exited: {server.stderr.read()[-2000:]}"
                try:
                    if httpx.get(base + "/health", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
            llm = langchain_openai.ChatOpenAI(
                base_url=base + "/v1", api_key="unused", model=AGENT_MODEL, temperature=0, max_tokens=96
            )
            out = create_agent(llm, [get_weather, multiply]).invoke({"messages": [("user", "What is 12 times 34?")]})
            messages = out["messages"]
            calls = [tc for m in messages if isinstance(m, AIMessage) for tc in m.tool_calls]
            assert calls and calls[0]["name"] == "multiply" and calls[0]["args"] == {"a": 12, "b": 34}, process
            final = messages[-1]
            assert isinstance(final, AIMessage) and not final.tool_calls, process
            assert "408" in final.text and "{" not in final.text, (process, final.text)
        finally:
            server.terminate()
            server.wait(60)
    assert any((tmp_path / "profiles").rglob("*.json"))  # the second process had the first one's profiles
