"""SwiftChatModel on the embedded SmolLM2-135M-Instruct: paths, stops, usage, rendering, step keys, tools.

Every test runs the real model (greedy decoding, so outputs are reproducible); the engine is the
process-wide shared one, loaded once.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_core.tools import tool
from pydantic import BaseModel, Field
from typing_extensions import Annotated, TypedDict

from swift_engine import SearchConfig, SwiftConfig, SwiftEngine, swift_step
from swift_engine.chat.prompting import PLAIN_STOPS, render_chat_prompt
from swift_engine.chat.tool_calls import InvalidToolCall, ParsedToolCall
from swift_integrations import SwiftChatModel, SwiftLLM
from swift_integrations._generation import Final
from swift_integrations.engine_cache import get_engine
from swift_integrations.langchain.messages import neutral_messages as _neutral_messages
from swift_integrations.langchain.outputs import ChunkBuilder as _ChunkBuilder
from swift_integrations.langchain.outputs import chat_result as _chat_result

#: The search converges after a few iterations per step key, so tests stay fast but profiles exist.
CFG = SwiftConfig(search=SearchConfig(max_opt_iter=6, max_tolerance_iter=3))


@pytest.fixture(scope="module")
def engine() -> SwiftEngine:
    return get_engine(None, device="cpu", dtype="float32", config=CFG)


def make(**kw: Any) -> SwiftChatModel:
    return SwiftChatModel(**{"device": "cpu", "dtype": "float32", "swift_config": CFG, "max_tokens": 24, **kw})


@pytest.fixture(scope="module")
def hello(engine) -> str:
    """The model's greedy reply to "Hello" (the reference for stop-string tests)."""
    return make().invoke("Hello").content


class Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.ends: list[Any] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.ends.append(response)


def join(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    return full


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is sunny in {city}."


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


# ----------------------------------------------------------------------------------------- engine


def test_construction_is_cheap_and_wrappers_share_one_engine(engine):
    from swift_engine.loading.catalog import embedded_model_path

    models = [make() for _ in range(50)]
    assert all(m._engine_name is None for m in models)  # nothing loaded at construction
    assert {id(m.swift_engine) for m in models} == {id(engine)}
    llm = SwiftLLM(device="cpu", dtype="float32", swift_config=CFG)
    assert llm.swift_engine is engine
    assert make(model=str(embedded_model_path())).swift_engine is engine  # the same file, the same engine
    assert SwiftChatModel(engine=engine).swift_engine is engine
    with pytest.raises(ValueError):
        SwiftChatModel(engine="not an engine")
    with pytest.raises(ValueError):
        SwiftChatModel(not_a_field=1)


def test_identifying_and_langsmith_params():
    m = make(temperature=0.3, stop=["\n\n"])
    assert m._llm_type == "swift-chat"
    assert m._identifying_params["model_name"] == "SmolLM2-135M-Instruct"
    ls = m._get_ls_params()
    assert ls == {
        "ls_provider": "swift",
        "ls_model_name": "SmolLM2-135M-Instruct",
        "ls_model_type": "chat",
        "ls_temperature": 0.3,
        "ls_max_tokens": 24,
        "ls_stop": ["\n\n"],
    }
    assert m._get_ls_params(model="other", max_tokens=5)["ls_model_name"] == "other"
    assert m._get_ls_params(max_tokens=5)["ls_max_tokens"] == 5


def test_the_names_chatollama_users_type(engine) -> None:
    """Switching from ChatOllama: ``num_predict``/``num_ctx``, ``.model``, ``model_provider``."""
    base = {"device": "cpu", "dtype": "float32", "swift_config": CFG}
    m = SwiftChatModel(num_predict=5, **base)
    assert m.max_tokens == 5 and m.model == m.model_name == "SmolLM2-135M-Instruct"
    assert SwiftChatModel(model="qwen2.5-coder-0.5b").model == "qwen2.5-coder-0.5b"  # no load: construction is cheap
    msg = m.invoke("Hello", num_predict=2)
    assert msg.response_metadata["model_provider"] == "swift" and msg.usage_metadata["output_tokens"] <= 2
    prompt_tokens = msg.usage_metadata["input_tokens"]
    capped = SwiftChatModel(num_ctx=prompt_tokens + 3, max_tokens=50, **base).invoke("Hello")
    assert capped.usage_metadata["output_tokens"] <= 3  # prompt and reply within num_ctx
    with pytest.raises(ValueError, match=f"{prompt_tokens} tokens but num_ctx={prompt_tokens}"):
        SwiftChatModel(num_ctx=prompt_tokens, **base).invoke("Hello")
    llm = SwiftLLM(num_predict=3, **base)
    assert llm.max_tokens == 3 and llm.model == "SmolLM2-135M-Instruct"
    assert llm.generate(["Once upon a time"]).generations[0][0].generation_info["model_provider"] == "swift"


# ----------------------------------------------------------------------------------------- paths


def test_invoke_reports_usage_and_swift_statistics(engine, hello):
    msg = make().invoke("Hello")
    assert isinstance(msg, AIMessage) and msg.content == hello and hello
    md = msg.response_metadata
    stats = md["swift_stats"]
    assert md["model_name"] == "SmolLM2-135M-Instruct"
    assert md["finish_reason"] in ("eos", "length")
    assert msg.usage_metadata == {
        "input_tokens": stats["prompt_tokens"],
        "output_tokens": stats["new_tokens"],
        "total_tokens": stats["prompt_tokens"] + stats["new_tokens"],
    }
    for key in ("acceptance_rate", "mean_accepted_per_step", "search_ran", "step_key"):
        assert key in md
    assert md["swift_profile"]["mode"] in ("swift", "plain")
    assert md["mean_accepted_per_step"] >= 1.0


def test_stream_is_token_level_with_callbacks_and_usage(hello):
    handler = Tokens()
    chunks = list(make().stream("Hello", config={"callbacks": [handler]}))
    assert len(chunks) > 3
    full = join(chunks)
    assert full.content == hello
    assert "".join(handler.tokens) == hello and len(handler.tokens) >= len(chunks) - 1
    with_input = [c for c in chunks if c.usage_metadata and c.usage_metadata["input_tokens"]]
    assert len(with_input) == 1
    stats = full.response_metadata["swift_stats"]
    assert full.usage_metadata["output_tokens"] == stats["new_tokens"]
    assert full.usage_metadata["input_tokens"] == stats["prompt_tokens"]
    assert chunks[-1].chunk_position == "last"
    assert [c for c in chunks if c.response_metadata.get("swift_stats")] == [chunks[-1]]


def test_streaming_flag_routes_invoke_through_tokens(hello):
    handler = Tokens()
    msg = make(streaming=True).invoke("Hello", config={"callbacks": [handler]})
    assert msg.content == hello and "".join(handler.tokens) == hello and len(handler.tokens) > 3
    assert msg.usage_metadata["output_tokens"] == msg.response_metadata["swift_stats"]["new_tokens"]


def test_multi_token_stop_strings_are_trimmed_in_every_path(engine, hello):
    words = hello.split(" ")
    assert len(words) >= 4, hello
    stop = " " + words[1] + " " + words[2]
    assert len(engine.tokenizer(stop, add_special_tokens=False)["input_ids"]) > 1
    expected = hello[: hello.index(stop)]
    m = make()
    assert m.invoke("Hello", stop=[stop]).content == expected
    assert m.invoke("Hello", stop=[stop]).response_metadata["finish_reason"] == "stop"
    assert make(stop=[stop]).invoke("Hello").content == expected
    assert m.bind(stop=[stop]).invoke("Hello").content == expected
    assert join(list(m.stream("Hello", stop=[stop]))).content == expected
    assert [r.content for r in m.batch(["Hello", "Hello"], stop=[stop])] == [expected, expected]

    async def run() -> tuple[str, str, list[str]]:
        a = (await m.ainvoke("Hello", stop=[stop])).content
        b = join([c async for c in m.astream("Hello", stop=[stop])]).content
        c = [r.content for r in await m.abatch(["Hello"], stop=[stop])]
        return a, b, c

    assert asyncio.run(run()) == (expected, expected, [expected])


def test_per_call_overrides_through_bind_and_kwargs(hello):
    m = make()
    short = m.bind(max_tokens=3).invoke("Hello")
    assert short.usage_metadata["output_tokens"] == 3 and short.response_metadata["finish_reason"] == "length"
    assert hello.startswith(short.content)
    sampled = [m.invoke("Tell me a story.", temperature=1.0, seed=7, max_tokens=8).content for _ in range(2)]
    assert sampled[0] == sampled[1]
    with pytest.raises(TypeError, match="unexpected keyword"):
        m.invoke("Hello", max_token=3)


def test_async_runs_off_the_event_loop_and_cancellation_stops_generation(engine):
    m = make(max_tokens=400)

    async def run() -> tuple[int, float]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        t = asyncio.create_task(ticker())
        start = time.perf_counter()
        await m.ainvoke("Hello", max_tokens=12)
        elapsed = time.perf_counter() - start
        done.set()
        await t
        return ticks, elapsed

    ticks, elapsed = asyncio.run(run())
    assert elapsed > 0.2 and ticks > 10  # the loop kept running while the model generated

    async def cancel() -> int:
        n = 0
        stream = m.astream("Write a very long story about the sea.")
        async for _ in stream:
            n += 1
            if n == 2:
                break
        await stream.aclose()
        return n

    assert asyncio.run(cancel()) == 2
    deadline = time.time() + 30
    while any(t.name.startswith("swift-chat-stream") for t in threading.enumerate()) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(t.name.startswith("swift-chat-stream") for t in threading.enumerate())
    assert engine._lock.acquire(blocking=False)  # the generation ended and let go of the engine
    engine._lock.release()


# ----------------------------------------------------------------------------------------- messages


def test_tool_histories_and_non_human_last_messages_render_and_run(engine):
    history = [
        SystemMessage("You are a helpful assistant."),
        HumanMessage("What is 1 + 2?"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1", "type": "tool_call"}]),
        ToolMessage("3", tool_call_id="c1"),
    ]
    neutral = _neutral_messages(history)
    assert neutral[3] == {"role": "tool", "content": "3", "tool_call_id": "c1", "name": "add", "is_error": False}
    text = render_chat_prompt(engine.tokenizer, neutral).text
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>' in text
    assert '<tool_response>\n{"name": "add", "content": "3"}\n</tool_response>' in text
    assert text.endswith("<|im_start|>assistant\n")
    m = make(max_tokens=8)
    assert isinstance(m.invoke(history), AIMessage)  # last message is a ToolMessage
    assert isinstance(m.invoke([HumanMessage("Hi"), AIMessage("Hello!")]), AIMessage)  # last message is AI
    blocks = AIMessage(
        content=[{"type": "text", "text": "Let me add."}, {"type": "tool_use", "id": "c1", "name": "add", "input": {}}],
        tool_calls=history[2].tool_calls,
    )
    assert _neutral_messages([blocks])[0]["content"] == "Let me add."
    with pytest.raises(ValueError, match="text only"):
        m.invoke([HumanMessage(content=[{"type": "image", "base64": "AAAA", "mime_type": "image/png"}])])


NATIVE_TEMPLATE = (
    "{% if tools %}TOOLS:{{ tools | tojson }}\n{% endif %}"
    "{% for m in messages %}[{{ m.role }}]"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}"
    "CALL {{ c.function.name }} {{ c.function.arguments | tojson }}{% endfor %}{% endif %}"
    "{% if m.role == 'tool' %}RESULT {{ m.tool_call_id }} {% endif %}{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)
STRICT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m.role == 'system' and not loop.first %}{{ raise_exception('system must be first') }}{% endif %}"
    "{% if loop.index0 > 0 and m.role == messages[loop.index0 - 1].role %}"
    "{{ raise_exception('roles must alternate') }}{% endif %}"
    "<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)


def test_templates_with_native_tool_support_get_tools_natively(engine):
    tools = [
        {
            "type": "function",
            "function": {"name": "add", "description": "Add.", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    msgs = _neutral_messages(
        [
            HumanMessage("1+2?"),
            AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1}, "id": "c1", "type": "tool_call"}]),
            ToolMessage("3", tool_call_id="c1"),
        ]
    )
    rp = render_chat_prompt(engine.tokenizer, msgs, tools=tools, chat_template=NATIVE_TEMPLATE, prefill="<tool_call>")
    assert rp.native_tools
    assert rp.text.startswith('TOOLS:[{"type": "function"') or rp.text.startswith('TOOLS:[{"function"')
    assert 'CALL add {"a": 1}' in rp.text and "[tool]RESULT c1 3" in rp.text
    assert "<tools>" not in rp.text and rp.text.endswith("[assistant]<tool_call>")


def test_strict_templates_get_a_normalised_conversation(engine):
    msgs = _neutral_messages(
        [
            SystemMessage("a"),
            SystemMessage("b"),
            HumanMessage("x"),
            HumanMessage("y"),
            AIMessage("z"),
            ToolMessage("r", tool_call_id="t"),
        ]
    )
    text = render_chat_prompt(engine.tokenizer, msgs, chat_template=STRICT_TEMPLATE).text
    assert text.startswith("<system>a\n\nb</system><user>x\n\ny</user><assistant>z</assistant><user><tool_response>")


def test_models_without_a_chat_template_use_the_plain_format(engine):
    plain_tok = copy.copy(engine.tokenizer)
    plain_tok.chat_template = None
    msgs = _neutral_messages(
        [SystemMessage("Be brief."), HumanMessage("Hi"), AIMessage("Hello."), HumanMessage("Name a colour.")]
    )
    rp = render_chat_prompt(plain_tok, msgs)
    assert rp.text == "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello.\n\nUser: Name a colour.\n\nAssistant:"
    assert rp.stop == PLAIN_STOPS
    plain_engine = SwiftEngine(engine.model, plain_tok, SwiftConfig(speculative=False), model_name="plain")
    msg = SwiftChatModel(engine=plain_engine, max_tokens=16).invoke(
        [SystemMessage("Be brief."), HumanMessage("Name a colour.")]
    )
    assert isinstance(msg, AIMessage) and "User:" not in msg.content
    assert msg.response_metadata["model_name"] == "plain"


# ----------------------------------------------------------------------------------------- step keys


def test_explicit_step_keys_in_order_of_precedence():
    m = make(max_tokens=2)

    def key(model, *args, **kw) -> str:
        return model.invoke("Hi", *args, **kw).response_metadata["step_key"]

    assert key(m.bind(step_key="bound"), config={"metadata": {"swift_step": "meta"}}) == "bound"
    assert key(m, config={"metadata": {"swift_step": "meta", "langgraph_node": "n"}}) == "meta"
    with swift_step("ctx"):
        assert key(m) == "ctx"
        assert key(m, step_key="kw") == "kw"
    assert key(make(max_tokens=2, step_key="field"), config={"metadata": {"langgraph_node": "n"}}) == "field"
    assert key(m, config={"metadata": {"langgraph_node": "n"}, "run_name": "r"}) == "langgraph:n"
    assert key(m.with_config(run_name="named")) == "run:named"
    assert key(m, config={"tags": ["b", "seq:step:1", "a"]}) == "tags:a+b"
    sys_key = m.invoke([SystemMessage("You summarize."), HumanMessage("Hi")]).response_metadata["step_key"]
    assert (
        sys_key.startswith("system:")
        and sys_key == m.invoke([SystemMessage("You  summarize. "), HumanMessage("Yo")]).response_metadata["step_key"]
    )
    assert m.invoke("Hi").response_metadata["step_key"] == "default"


def _profile_keys(engine) -> set[str] | None:
    profiles = getattr(engine, "profiles", None)
    return None if profiles is None else {r.step_key for r in profiles.list()}


def test_two_stage_lcel_chain_gets_two_step_keys_and_stable_reruns(engine):
    llm = make(max_tokens=12)
    summarize = (
        ChatPromptTemplate.from_messages([("system", "Summarize the text in one sentence."), ("human", "{text}")]) | llm
    )
    answer = (
        ChatPromptTemplate.from_messages(
            [
                ("system", "Answer the question using the summary."),
                ("human", "Summary: {summary}\nQuestion: {question}"),
            ]
        )
        | llm
    )
    named = RunnablePassthrough.assign(
        summary=summarize.with_config(run_name="summarize")
    ) | RunnablePassthrough.assign(
        answer=RunnableLambda(lambda d: {"summary": d["summary"].content, "question": d["question"]})
        | answer.with_config(tags=["answer"])
    )
    unnamed = RunnablePassthrough.assign(summary=summarize) | RunnablePassthrough.assign(
        answer=RunnableLambda(lambda d: {"summary": d["summary"].content, "question": d["question"]}) | answer
    )
    inputs = {"text": "The cat sat on the mat all day because it was warm.", "question": "Where was the cat?"}

    def keys(chain) -> tuple[str, str]:
        out = chain.invoke(inputs)
        return out["summary"].response_metadata["step_key"], out["answer"].response_metadata["step_key"]

    first = keys(named)
    assert first == ("run:summarize", "tags:answer")
    assert keys(named) == first
    fp = keys(unnamed)
    assert fp[0] != fp[1] and all(k.startswith("system:") for k in fp)
    assert keys(unnamed) == fp
    stored = _profile_keys(engine)
    if stored is not None:
        assert set(first) | set(fp) <= stored


def test_langgraph_nodes_get_their_own_step_keys_in_invoke_and_stream_paths(engine):
    from langgraph.graph import END, START, MessagesState, StateGraph

    llm = make(max_tokens=10)
    seen: list[tuple[str, str]] = []

    def summarize(state: MessagesState) -> dict:
        msg = llm.invoke([SystemMessage("Summarize."), *state["messages"]])
        seen.append(("summarize", msg.response_metadata["step_key"]))
        return {"messages": [msg]}

    def answer(state: MessagesState) -> dict:
        full = None
        for chunk in llm.stream([SystemMessage("Summarize."), *state["messages"]]):  # the streaming path
            full = chunk if full is None else full + chunk
        seen.append(("answer", full.response_metadata["step_key"]))
        return {"messages": [AIMessage(content=full.content)]}

    graph = StateGraph(MessagesState)
    graph.add_node("summarize", summarize)
    graph.add_node("answer", answer)
    graph.add_edge(START, "summarize")
    graph.add_edge("summarize", "answer")
    graph.add_edge("answer", END)
    app = graph.compile()
    app.invoke({"messages": [HumanMessage("Cats sleep a lot.")]})
    assert seen == [("summarize", "langgraph:summarize"), ("answer", "langgraph:answer")]
    seen.clear()
    streamed = [
        (m, md) for m, md in app.stream({"messages": [HumanMessage("Cats sleep a lot.")]}, stream_mode="messages")
    ]
    assert seen == [("summarize", "langgraph:summarize"), ("answer", "langgraph:answer")]
    assert streamed and {md["langgraph_node"] for _, md in streamed} == {"summarize", "answer"}
    stored = _profile_keys(engine)
    if stored is not None:
        assert {"langgraph:summarize", "langgraph:answer"} <= stored


# ----------------------------------------------------------------------------------------- tools


class Multiply(BaseModel):
    """Multiply two integers."""

    x: int = Field(description="first factor")
    y: int = Field(description="second factor")


def divide(numerator: int, denominator: int) -> float:
    """Divide two integers.

    Args:
        numerator: the number to divide
        denominator: the number to divide by
    """
    return numerator / denominator


OPENAI_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a word up.",
        "parameters": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]},
    },
}


@pytest.mark.slow
def test_forced_tool_calls_for_every_kind_of_tool():
    m = make(max_tokens=24)
    cases = [
        (get_weather, "get_weather", "What is the weather in Paris?", {"city"}),
        (Multiply, "Multiply", "What is 6 times 7?", {"x", "y"}),
        (divide, "divide", "What is 10 divided by 2?", {"numerator", "denominator"}),
        (OPENAI_TOOL, "lookup", "Look up the word cat.", {"word"}),
    ]
    tools = [c[0] for c in cases]
    for _, name, prompt, arg_names in cases:
        msg = m.bind_tools(tools, tool_choice=name).invoke(prompt)
        assert [tc["name"] for tc in msg.tool_calls] == [name], msg
        assert set(msg.tool_calls[0]["args"]) == arg_names
        assert msg.tool_calls[0]["id"].startswith("call_")
        assert msg.response_metadata["finish_reason"] == "tool_calls"
        assert msg.usage_metadata["output_tokens"] == msg.response_metadata["swift_stats"]["new_tokens"]
    weather = m.bind_tools([get_weather], tool_choice="required").invoke("What is the weather in Paris?")
    assert weather.tool_calls[0]["args"] == {"city": "Paris"}
    assert get_weather.invoke(weather.tool_calls[0]).content == "It is sunny in Paris."
    anyone = m.bind_tools([get_weather, add], tool_choice="any").invoke("Add 2 and 3.")
    assert len(anyone.tool_calls) == 1 and anyone.tool_calls[0]["name"] in ("get_weather", "add")


def test_streamed_forced_call_aggregates_to_the_same_call():
    m = make(max_tokens=24).bind_tools([get_weather], tool_choice="get_weather")
    invoked = m.invoke("What is the weather in Paris?")
    full = join(list(m.stream("What is the weather in Paris?")))
    assert [(t["name"], t["args"]) for t in full.tool_calls] == [(t["name"], t["args"]) for t in invoked.tool_calls]
    assert full.usage_metadata["output_tokens"] == invoked.usage_metadata["output_tokens"]


@pytest.mark.slow
def test_tool_choice_none_and_auto_and_bad_choices(engine):
    m = make(max_tokens=16)
    none = m.bind_tools([get_weather], tool_choice="none").invoke("What is the weather in Paris?")
    assert none.tool_calls == [] and none.content
    auto = m.bind_tools([get_weather]).invoke("What is the weather in Paris?")
    assert isinstance(auto, AIMessage)  # whatever the model chose, nothing raised
    assert all(tc["name"] == "get_weather" for tc in auto.tool_calls)
    with pytest.raises(ValueError, match="tool_choice"):
        m.bind_tools([get_weather], tool_choice="nope")
    truncated = make(max_tokens=1).bind_tools([add], tool_choice="add").invoke("Add 2 and 3.")
    # the budget ran out mid-call: the grammar closed it, so it is still a valid call
    assert [tc["name"] for tc in truncated.tool_calls] == ["add"] and truncated.invalid_tool_calls == []
    assert all(isinstance(v, int) for v in truncated.tool_calls[0]["args"].values())
    assert truncated.response_metadata["swift_stats"]["grammar_closing_tokens"] > 0


def test_invalid_calls_stay_invalid_in_messages_and_streams():
    final = Final(
        tail="",
        content="",
        calls=[ParsedToolCall("call_1", "add", {"a": 1, "b": 2})],
        invalid=[
            InvalidToolCall("call_2", "nope", '{"a": 1}', "unknown tool 'nope'"),
            InvalidToolCall("call_3", "add", '{"a": 1', "invalid JSON"),
        ],
        finish_reason="tool_calls",
        model_name="m",
    )
    msg = _chat_result(final).generations[0].message
    assert [t["name"] for t in msg.tool_calls] == ["add"]
    assert [(t["name"], t["error"]) for t in msg.invalid_tool_calls] == [
        ("nope", "unknown tool 'nope'"),
        ("add", "invalid JSON"),
    ]
    chunk = _ChunkBuilder().feed(final).message
    full = AIMessageChunk(content="") + chunk
    assert [t["name"] for t in full.tool_calls] == ["add"]
    assert sorted(t["name"] for t in full.invalid_tool_calls) == ["add", "nope"]


# ----------------------------------------------------------------------------------------- structured output


class Person(BaseModel):
    """A person."""

    name: str = Field(description="the person's name")
    age: int = Field(description="age in years")


class PersonDict(TypedDict):
    """A person."""

    name: Annotated[str, ..., "the person's name"]
    age: Annotated[int, ..., "age in years"]


PROMPT = "Alice is 30 years old. Extract the person."


@pytest.mark.slow
@pytest.mark.parametrize("method", ["function_calling", "json_schema"])
def test_structured_output_with_pydantic_typeddict_and_json_schema(method):
    m = make(max_tokens=24)
    person = m.with_structured_output(Person, method=method).invoke(PROMPT)
    assert person == Person(name="Alice", age=30)
    as_dict = m.with_structured_output(PersonDict, method=method).invoke(PROMPT)
    assert as_dict == {"name": "Alice", "age": 30}
    from_schema = m.with_structured_output(Person.model_json_schema(), method=method).invoke(PROMPT)
    assert from_schema == {"name": "Alice", "age": 30}
    streamed = list(m.with_structured_output(Person, method=method).stream(PROMPT))
    assert streamed[-1] == person


def test_structured_output_json_mode_and_include_raw():
    m = make(max_tokens=40)
    out = m.with_structured_output({"title": "any", "type": "object", "properties": {}}, method="json_mode").invoke(
        'Return a JSON object with keys "name" and "age" for: Alice is 30 years old.'
    )
    assert isinstance(out, dict)
    raw = m.with_structured_output(Person, include_raw=True).invoke(PROMPT)
    assert set(raw) == {"raw", "parsed", "parsing_error"}
    assert (
        isinstance(raw["raw"], AIMessage)
        and raw["parsed"] == Person(name="Alice", age=30)
        and raw["parsing_error"] is None
    )
    with pytest.raises(ValueError):
        m.with_structured_output(Person, method="xml")


class Tree(BaseModel):
    """A labelled tree."""

    value: int
    children: list[Tree] = Field(default_factory=list)


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
def test_structured_output_enforces_a_recursive_model(method: str) -> None:
    """LangChain's conversion inlines ``children: list["Tree"]`` as ``items: {}``; the grammar must keep the recursion
    (pydantic's own schema, with ``$defs``), so what it accepts is what pydantic validates."""
    llm = make(max_tokens=40).with_structured_output(Tree, method=method)
    tree = llm.invoke("Give a tree with value 1 and two children with values 2 and 3, as JSON.")
    assert isinstance(tree, Tree)

    def nodes(t: Tree) -> int:
        return 1 + sum(nodes(c) for c in t.children)

    assert nodes(tree) >= 1
    from swift_integrations.langchain.chat_models import _openai_tool

    params = _openai_tool(Tree)["function"]["parameters"]
    assert params["type"] == "object" and params["properties"]["children"]["items"] == {"$ref": "#/$defs/Tree"}
    assert "Tree" in params["$defs"]
