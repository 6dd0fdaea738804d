"""SwiftLlamaIndexLLM: prompts, options, statistics, step keys, async, tool calling, FunctionAgent.

Most tests are about the adapter, not the model: they run on :class:`ScriptedEngine`, which has
the embedded model's real tokenizer and chat template but answers with scripted text (fast and
deterministic). The tests marked ``slow`` generate with the embedded SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock  # noqa: E402
from llama_index.core.instrumentation import get_dispatcher  # noqa: E402
from llama_index.core.instrumentation.dispatcher import instrument_tags  # noqa: E402
from llama_index.core.prompts import PromptTemplate, PromptType  # noqa: E402
from llama_index.core.tools import FunctionTool  # noqa: E402

from swift_engine import GenerationResult, GenerationStats, StreamChunk, swift_step  # noqa: E402
from swift_engine.chat.tool_calls import format_tool_call  # noqa: E402
from swift_integrations import SwiftLlamaIndexLLM  # noqa: E402
from swift_integrations.engine_cache import get_engine  # noqa: E402
from swift_integrations.step_keys import system_prompt_step_key  # noqa: E402

dispatcher = get_dispatcher(__name__)


class ScriptedEngine:
    """A stand-in for SwiftEngine: the real tokenizer and chat template, scripted replies.

    Each ``stream`` call takes the next reply (default ``"ok"``), streams it in 3-character chunks
    (one "token" each), honours ``stop`` and ``max_new_tokens`` like the engine, and records what
    it was asked (``calls``) and how far it got (``pulled`` chunks, ``closed`` generators).
    """

    def __init__(self, real: Any, replies: list[str] | None = None, delay: float = 0.0) -> None:
        self._real = real
        self.tokenizer = real.tokenizer
        self.model = real.model
        self.runner = real.runner
        self.model_name = real.model_name
        self.replies = list(replies or [])
        self.delay = delay
        self.calls: list[dict[str, Any]] = []
        self.pulled = 0
        self.closed = 0
        self.threads: set[str] = set()

    def encode_prompt(self, prompt: Any) -> list[int]:
        return self._real.encode_prompt(prompt)

    def stream(self, prompt: Any, **kwargs: Any):
        ids = (
            list(prompt)
            if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)
            else self.encode_prompt(prompt)
        )
        self.calls.append({"prompt": self.tokenizer.decode(ids, skip_special_tokens=False), "ids": ids, **kwargs})
        reply = self.replies.pop(0) if self.replies else "ok"
        return self._gen(ids, reply, kwargs)

    def _gen(self, ids: list[int], reply: str, kw: dict[str, Any]):
        try:
            self.threads.add(threading.current_thread().name)
            finish = "eos"
            stops = kw.get("stop") or []
            cut = min([reply.find(s) for s in stops if s in reply], default=-1)
            if cut >= 0:
                reply, finish = reply[:cut], "stop"
            pieces = [reply[i : i + 3] for i in range(0, len(reply), 3)]
            if len(pieces) > kw["max_new_tokens"]:
                pieces, finish = pieces[: kw["max_new_tokens"]], "length"
            for p in pieces:
                if self.delay:
                    time.sleep(self.delay)
                self.pulled += 1
                yield StreamChunk(text=p, token_ids=[1])
            n = len(pieces)
            stats = GenerationStats(
                prompt_tokens=len(ids),
                new_tokens=n,
                verify_steps=max(1, n // 2),
                drafted_tokens=n,
                accepted_drafted_tokens=n // 2,
                step_key=kw.get("step_key") or "default",
                wall_time_s=0.01,
            ).finalize()
            yield StreamChunk(
                result=GenerationResult(text="".join(pieces), token_ids=[1] * n, finish_reason=finish, stats=stats)
            )
        finally:
            self.closed += 1


def multiply(a: int, b: int) -> int:
    """Multiply two integers a and b and return the product."""
    return a * b


def add(a: int, b: int) -> int:
    """Add two integers a and b."""
    return a + b


@pytest.fixture(scope="module")
def real(smol):
    return smol


@pytest.fixture
def scripted(real):
    def make(*replies: str, delay: float = 0.0) -> ScriptedEngine:
        return ScriptedEngine(real, list(replies), delay)

    return make


def user(text: str) -> ChatMessage:
    return ChatMessage(role=MessageRole.USER, content=text)


# ---------------------------------------------------------------------------------- metadata, sharing


def test_metadata_comes_from_the_model(real) -> None:
    llm = SwiftLlamaIndexLLM(engine=real, max_tokens=77)
    md = llm.metadata
    assert md.context_window == real.model.config.max_position_embeddings == 8192
    assert md.num_output == 77
    assert md.is_chat_model and md.is_function_calling_model
    assert md.model_name == real.model_name == "SmolLM2-135M-Instruct"
    assert SwiftLlamaIndexLLM(engine=real, context_window=1024).metadata.context_window == 1024
    assert SwiftLlamaIndexLLM(model="some/model").model_id == "some/model"


def test_construction_is_cheap_and_engines_are_shared_with_langchain() -> None:
    a = SwiftLlamaIndexLLM(device="cpu", dtype="float32")
    b = SwiftLlamaIndexLLM(model_id=None, device="cpu", dtype="float32", max_tokens=5)
    assert a._engine_name is None  # nothing loaded yet
    engine = get_engine(None, None, "cpu", "float32")
    assert a.swift_engine is engine and b.swift_engine is engine
    lc = pytest.importorskip("swift_integrations.langchain.chat_models")
    assert lc.SwiftChatModel(device="cpu", dtype="float32").swift_engine is engine


def test_engine_must_be_an_engine() -> None:
    with pytest.raises(ValueError, match="SwiftEngine"):
        SwiftLlamaIndexLLM(engine=object())


# ---------------------------------------------------------------------------------- prompts and options


def test_chat_goes_through_the_chat_template_with_stats_and_usage(scripted) -> None:
    eng = scripted("Paris is the capital.")
    llm = SwiftLlamaIndexLLM(engine=eng)
    resp = llm.chat([ChatMessage(role="system", content="Be brief."), user("Capital of France?")])
    sent = eng.calls[0]["prompt"]
    assert sent.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>")
    assert sent.endswith("<|im_start|>assistant\n")
    assert resp.message.role == MessageRole.ASSISTANT and resp.message.content == "Paris is the capital."
    raw, kw = resp.raw, resp.additional_kwargs
    assert raw["prompt"] == sent and raw["text"] == resp.message.content
    assert raw["usage"] == {
        "prompt_tokens": len(eng.calls[0]["ids"]),
        "completion_tokens": 7,
        "total_tokens": len(eng.calls[0]["ids"]) + 7,
    }
    assert kw["prompt_tokens"] == raw["usage"]["prompt_tokens"] and kw["completion_tokens"] == 7
    for d in (raw, kw):
        assert d["finish_reason"] == "eos" and d["model_name"] == "SmolLM2-135M-Instruct"
        assert d["swift_stats"]["new_tokens"] == 7 and d["acceptance_rate"] == pytest.approx(3 / 7)
        assert d["step_key"] == system_prompt_step_key("Be brief.")


def test_complete_uses_the_template_unless_formatted_or_overridden(scripted) -> None:
    eng = scripted()
    llm = SwiftLlamaIndexLLM(engine=eng, system_prompt="You are terse.")
    llm.complete("Name a colour.")
    assert (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>"
        in eng.calls[-1]["prompt"]
    )
    llm.complete("Once upon a time", formatted=True)
    assert eng.calls[-1]["prompt"] == "Once upon a time"
    raw = SwiftLlamaIndexLLM(engine=eng, completion_to_prompt=lambda s: s)
    raw.complete("The sky is")
    assert eng.calls[-1]["prompt"] == "The sky is"


def _all_paths(llm: SwiftLlamaIndexLLM, kind: str) -> None:
    """Every entry point of one kind (chat or complete): sync, streaming, async, async streaming."""
    if kind == "chat":
        msgs = [user("hello")]
        llm.chat(msgs)
        list(llm.stream_chat(msgs))

        async def go() -> None:
            await llm.achat(msgs)
            async for _ in await llm.astream_chat(msgs):
                pass

    else:
        llm.complete("hello")
        list(llm.stream_complete("hello"))

        async def go() -> None:
            await llm.acomplete("hello")
            async for _ in await llm.astream_complete("hello"):
                pass

    asyncio.run(go())


def test_messages_to_prompt_is_honoured_everywhere(scripted) -> None:
    eng = scripted()
    llm = SwiftLlamaIndexLLM(
        engine=eng, messages_to_prompt=lambda ms: "".join(f"[{m.role.value}] {m.content}\n" for m in ms) + "[assistant]"
    )
    _all_paths(llm, "chat")
    llm.predict(PromptTemplate("Say {x}."), x="hello")  # predict goes through chat (a chat model)
    list(llm.stream(PromptTemplate("Say {x}."), x="hello"))
    assert [c["prompt"] for c in eng.calls] == ["[user] hello\n[assistant]"] * 4 + [
        "[user] Say hello.\n[assistant]"
    ] * 2


def test_completion_to_prompt_is_honoured_everywhere(scripted) -> None:
    eng = scripted()
    llm = SwiftLlamaIndexLLM(engine=eng, completion_to_prompt=lambda p: f"Q: {p}\nA:")
    _all_paths(llm, "complete")
    assert [c["prompt"] for c in eng.calls] == ["Q: hello\nA:"] * 4


def test_options_reach_the_engine(scripted) -> None:
    eng = scripted("one two. three", "one two. three")
    llm = SwiftLlamaIndexLLM(engine=eng, temperature=0.7, max_tokens=9, top_p=0.9, top_k=40, seed=3, stop=["never"])
    llm.complete("x")
    c = eng.calls[-1]
    assert (c["temperature"], c["max_new_tokens"], c["top_p"], c["top_k"], c["seed"], c["stop"]) == (
        0.7,
        9,
        0.9,
        40,
        3,
        ["never"],
    )
    resp = llm.complete("x", temperature=0.0, max_tokens=2, stop=["."], seed=5)
    c = eng.calls[-1]
    assert (c["temperature"], c["max_new_tokens"], c["seed"], c["stop"]) == (0.0, 2, 5, ["."])
    assert resp.raw["finish_reason"] == "length"
    resp = SwiftLlamaIndexLLM(engine=scripted("one two. three")).complete("x", stop=".")
    assert resp.text == "one two" and resp.raw["finish_reason"] == "stop"
    with pytest.raises(ValueError, match="max_tokens"):
        llm.complete("x", max_tokens=0)


def test_streaming_concatenates_to_the_final_response(scripted) -> None:
    llm = SwiftLlamaIndexLLM(engine=scripted("The quick brown fox.", "The quick brown fox."))
    chunks = list(llm.stream_complete("go"))
    assert "".join(c.delta for c in chunks) == chunks[-1].text == "The quick brown fox."
    assert all(c.raw is None for c in chunks[:-1]) and chunks[-1].raw["usage"]["completion_tokens"] == 7
    chats = list(llm.stream_chat([user("go")]))
    assert "".join(c.delta for c in chats) == chats[-1].message.content == "The quick brown fox."
    assert chats[-1].additional_kwargs["completion_tokens"] == 7


# ---------------------------------------------------------------------------------- step keys


def test_step_key_precedence(scripted) -> None:
    eng = scripted()
    llm = SwiftLlamaIndexLLM(engine=eng)
    sys_msgs = [ChatMessage(role="system", content="You summarise."), user("x")]

    def key(**kw: Any) -> str:
        llm.chat(sys_msgs, **kw)
        return eng.calls[-1]["step_key"]

    assert key() == system_prompt_step_key("You summarise.")
    assert key(step_key="explicit") == "explicit"
    with swift_step("block"):
        assert key() == "block"
        with instrument_tags({"swift_step": "tagged"}):
            assert key() == "tagged"
            assert key(step_key="explicit") == "explicit"
    fielded = SwiftLlamaIndexLLM(engine=eng, step_key="field")
    fielded.chat(sys_msgs)
    assert eng.calls[-1]["step_key"] == "field"
    with instrument_tags({"swift_step": "tagged"}):
        fielded.chat(sys_msgs)
    assert eng.calls[-1]["step_key"] == "tagged"
    llm.chat([user("no system prompt")])
    assert eng.calls[-1]["step_key"] is None  # the engine's default


def test_prompt_templates_name_the_step(scripted) -> None:
    eng = scripted()
    llm = SwiftLlamaIndexLLM(engine=eng)
    llm.predict(PromptTemplate("Summarise: {text}", prompt_type=PromptType.SUMMARY), text="abc")
    assert eng.calls[-1]["step_key"] == "prompt:summary"
    custom_a, custom_b = PromptTemplate("Translate {t}"), PromptTemplate("Classify {t}")
    llm.predict(custom_a, t="1")
    llm.predict(custom_a, t="2")
    llm.predict(custom_b, t="1")
    ka, ka2, kb = (c["step_key"] for c in eng.calls[-3:])
    assert ka == ka2 and ka != kb and ka.startswith("prompt:custom:")
    list(llm.stream(PromptTemplate("Refine {x}", prompt_type=PromptType.REFINE), x="a"))
    assert eng.calls[-1]["step_key"] == "prompt:refine"

    async def go() -> None:
        await llm.apredict(PromptTemplate("{q}", prompt_type=PromptType.QUESTION_ANSWER), q="a")
        assert eng.calls[-1]["step_key"] == "prompt:text_qa"
        gen = await llm.astream(PromptTemplate("{q}", prompt_type=PromptType.SIMPLE_INPUT), q="a")
        async for _ in gen:
            pass
        assert eng.calls[-1]["step_key"] == "prompt:simple_input"

    asyncio.run(go())
    llm.chat([user("plain chat after a predict")])
    assert eng.calls[-1]["step_key"] is None  # the template's key does not leak


class _Pipeline:
    name = "faq-bot"

    @dispatcher.span
    def answer(self, llm: SwiftLlamaIndexLLM) -> str:
        return llm.chat([user("q")]).message.content


def test_the_enclosing_span_names_the_step(scripted) -> None:
    eng = scripted()
    _Pipeline().answer(SwiftLlamaIndexLLM(engine=eng))
    assert eng.calls[-1]["step_key"] == "span:_Pipeline.answer@faq-bot"


# ---------------------------------------------------------------------------------- async


def test_async_runs_off_the_event_loop(scripted) -> None:
    eng = scripted("a reply that takes a while to generate", delay=0.02)
    llm = SwiftLlamaIndexLLM(engine=eng)
    ticks = 0

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    async def go() -> str:
        stop = asyncio.Event()
        t = asyncio.create_task(ticker(stop))
        resp = await llm.achat([user("hi")])
        stop.set()
        await t
        return resp.message.content

    assert asyncio.run(go()) == "a reply that takes a while to generate"
    assert ticks >= 10  # the loop kept running while the engine worked
    assert threading.current_thread().name not in eng.threads


def test_cancelling_an_async_stream_stops_generation(scripted) -> None:
    eng = scripted("x" * 3000, delay=0.01)  # 1000 chunks, 10 s if nobody stopped it
    llm = SwiftLlamaIndexLLM(engine=eng, max_tokens=2000)

    async def go() -> None:
        got = asyncio.Event()

        async def consume() -> None:
            async for _ in await llm.astream_complete("go"):
                got.set()

        task = asyncio.create_task(consume())
        await got.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(200):
            if eng.closed:
                break
            await asyncio.sleep(0.01)

    asyncio.run(go())
    assert eng.closed == 1
    assert eng.pulled < 100

    eng2 = scripted("y" * 3000, delay=0.01)
    llm2 = SwiftLlamaIndexLLM(engine=eng2, max_tokens=2000)

    async def go_acomplete() -> None:
        task = asyncio.create_task(llm2.acomplete("go"))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(200):
            if eng2.closed:
                break
            await asyncio.sleep(0.01)

    asyncio.run(go_acomplete())
    assert eng2.closed == 1 and eng2.pulled < 100


# ---------------------------------------------------------------------------------- tool calling


def _tools() -> list[FunctionTool]:
    return [FunctionTool.from_defaults(multiply), FunctionTool.from_defaults(add)]


def test_parallel_tool_calls_are_parsed(scripted) -> None:
    reply = (
        "Let me compute.\n"
        + format_tool_call("multiply", {"a": 6, "b": 7})
        + "\n"
        + format_tool_call("add", {"a": 1, "b": 2})
    )
    eng = scripted(reply, reply, reply)
    llm = SwiftLlamaIndexLLM(engine=eng)
    resp = llm.chat_with_tools(_tools(), user_msg="6*7 and 1+2?", allow_parallel_tool_calls=True)
    assert "<tools>" in eng.calls[-1]["prompt"] and '"name": "multiply"' in eng.calls[-1]["prompt"]
    calls = llm.get_tool_calls_from_response(resp)
    assert [(c.tool_name, c.tool_kwargs) for c in calls] == [("multiply", {"a": 6, "b": 7}), ("add", {"a": 1, "b": 2})]
    assert len({c.tool_id for c in calls}) == 2
    assert resp.message.content == "Let me compute."
    assert resp.raw["finish_reason"] == "tool_calls" and len(resp.raw["tool_calls"]) == 2

    single = llm.chat_with_tools(_tools(), user_msg="6*7?", allow_parallel_tool_calls=False)
    assert eng.calls[-1]["stop"] == ["</tool_call>"]  # the reply ends with its first call
    assert [c.tool_name for c in llm.get_tool_calls_from_response(single)] == ["multiply"]

    chunks = list(llm.stream_chat_with_tools(_tools(), user_msg="6*7 and 1+2?", allow_parallel_tool_calls=True))
    assert "".join(c.delta or "" for c in chunks).strip() == "Let me compute."  # call markup never streams as text
    assert [c.tool_name for c in llm.get_tool_calls_from_response(chunks[-1])] == ["multiply", "add"]


def test_no_tool_call(scripted) -> None:
    llm = SwiftLlamaIndexLLM(
        engine=scripted("I don't need tools.", '<tool_call>\n{"name": "multiply", "arguments": {"a": 6,')
    )
    resp = llm.chat_with_tools(_tools(), user_msg="hi")
    assert llm.get_tool_calls_from_response(resp, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="0 tool calls"):
        llm.get_tool_calls_from_response(resp)
    broken = llm.chat_with_tools(_tools(), user_msg="6*7?")
    with pytest.raises(ValueError, match="invalid JSON"):
        llm.get_tool_calls_from_response(broken)


def test_tool_required_forces_one_grammar_constrained_call(real) -> None:
    llm = SwiftLlamaIndexLLM(engine=real, max_tokens=48)
    resp = llm.chat_with_tools(
        [FunctionTool.from_defaults(multiply)], user_msg="What is 6 times 7?", tool_required=True
    )
    (call,) = llm.get_tool_calls_from_response(resp)
    assert call.tool_name == "multiply" and set(call.tool_kwargs) == {"a", "b"}
    assert all(isinstance(v, int) for v in call.tool_kwargs.values())  # the schema's types, enforced
    assert resp.raw["prompt"].endswith(
        '<tool_call>\n{"name": "multiply", "arguments": '
    )  # one tool: prefilled up to its arguments
    assert resp.raw["finish_reason"] == "tool_calls" and resp.raw["swift_stats"]["new_tokens"] > 0

    resp = llm.chat_with_tools(_tools(), user_msg="6 times 7", tool_choice="add")  # a name forces that tool
    assert [c.tool_name for c in llm.get_tool_calls_from_response(resp)] == ["add"]


def test_structured_predict_always_validates(real) -> None:
    from pydantic import BaseModel

    class Person(BaseModel):
        """A person."""

        name: str
        age: int
        languages: list[str]

    llm = SwiftLlamaIndexLLM(engine=real, max_tokens=64)
    person = llm.structured_predict(
        Person, PromptTemplate("Extract the person: {text}"), text="Alice is 30 and speaks Dutch."
    )
    assert isinstance(person, Person) and isinstance(person.age, int)


def test_tool_history_is_rendered_for_the_model(scripted) -> None:
    eng = scripted("The answer is 42.")
    llm = SwiftLlamaIndexLLM(engine=eng)
    history = [
        user("What is 6 times 7?"),
        ChatMessage(
            role="assistant",
            blocks=[ToolCallBlock(tool_call_id="call_1", tool_name="multiply", tool_kwargs={"a": 6, "b": 7})],
        ),
        ChatMessage(role="tool", content="42", additional_kwargs={"tool_call_id": "call_1"}),
    ]
    resp = llm.chat_with_tools(_tools(), chat_history=history)
    sent = eng.calls[-1]["prompt"]
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "multiply", "arguments": {"a": 6, "b": 7}}\n'
        "</tool_call><|im_end|>" in sent
    )
    assert '<tool_response>\n{"name": "multiply", "content": "42"}\n</tool_response>' in sent
    assert resp.message.content == "The answer is 42."
    assert llm.get_tool_calls_from_response(resp, error_on_no_tool_call=False) == []


@pytest.mark.filterwarnings("ignore::DeprecationWarning:inspect")  # the workflows package inspects pydantic models
def test_function_agent_loop_scripted(scripted) -> None:
    from llama_index.core.agent.workflow import FunctionAgent

    eng = scripted(
        '{"a": 6, "b": 7}}\n</tool_call>', "6 times 7 is 42."
    )  # the forced call continues after its prefilled head
    agent = FunctionAgent(tools=_tools(), llm=SwiftLlamaIndexLLM(engine=eng), initial_tool_choice="multiply")

    async def go() -> Any:
        return await agent.run("What is 6 times 7?")

    result = asyncio.run(go())
    assert result.response.content == "6 times 7 is 42."
    assert [t.tool_output.content for t in result.tool_calls] == ["42"]
    last = eng.calls[-1]["prompt"]  # the second turn saw the call and its result
    assert '{"name": "multiply", "arguments": {"a": 6, "b": 7}}' in last and '"content": "42"' in last
    assert {c["step_key"] for c in eng.calls} == {"span:BaseWorkflowAgent.run_agent_step@Agent"}


# ---------------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_real_generation_sync_stream_and_async(real) -> None:
    llm = SwiftLlamaIndexLLM(engine=real, max_tokens=8)
    resp = llm.complete("What is the capital of France?")
    assert resp.text.strip()
    st = resp.raw["swift_stats"]
    assert (
        st["new_tokens"] > 0
        and st["verify_steps"] > 0
        and st["prompt_tokens"] == resp.additional_kwargs["prompt_tokens"]
    )
    assert resp.raw["step_key"] == "default"
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in resp.raw["prompt"]

    chunks = list(llm.stream_chat([user("What is the capital of France?")]))
    assert "".join(c.delta for c in chunks) == chunks[-1].message.content
    assert chunks[-1].message.content == resp.text  # greedy: same prompt, same answer

    async def go() -> tuple[str, int]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        r = await llm.achat([user("What is the capital of France?")])
        done.set()
        await t
        return r.message.content, ticks

    text, ticks = asyncio.run(go())
    assert text == resp.text and ticks > 5


class _Spy:
    """The real engine, counting the chunks pulled from its streams and whether they were closed."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.pulled = 0
        self.closed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def stream(self, *args: Any, **kwargs: Any):
        inner = self._engine.stream(*args, **kwargs)
        try:
            for chunk in inner:
                self.pulled += 1
                yield chunk
        finally:
            inner.close()
            self.closed += 1


@pytest.mark.slow
def test_real_async_stream_cancellation_ends_the_generation(real) -> None:
    spy = _Spy(real)
    llm = SwiftLlamaIndexLLM(engine=spy, max_tokens=400)

    async def go() -> None:
        gen = await llm.astream_complete("Write a long story about a dragon.")
        async for _ in gen:
            break
        await gen.aclose()
        for _ in range(600):
            if spy.closed:
                break
            await asyncio.sleep(0.05)

    asyncio.run(go())
    assert spy.closed == 1 and spy.pulled < 20
    assert real._lock.acquire(timeout=5)  # the engine is free again
    real._lock.release()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning:inspect")
def test_function_agent_completes_a_tool_loop(real) -> None:
    from llama_index.core.agent.workflow import AgentOutput, FunctionAgent, ToolCallResult

    llm = SwiftLlamaIndexLLM(engine=real, max_tokens=24)
    calls: list[tuple[int, int]] = []

    def multiply_tool(a: int, b: int) -> int:
        """Multiply two integers a and b and return the product."""
        calls.append((a, b))
        return a * b

    tool = FunctionTool.from_defaults(multiply_tool, name="multiply")
    agent = FunctionAgent(
        tools=[tool],
        llm=llm,
        system_prompt="You are a calculator. Use the multiply tool, then state its result.",
        initial_tool_choice="multiply",  # the first turn must call the tool
    )

    async def go() -> tuple[Any, list[Any]]:
        handler = agent.run("What is 6 times 7?", max_iterations=4)
        events = [ev async for ev in handler.stream_events()]
        return await handler, events

    result, events = asyncio.run(go())
    tool_results = [e for e in events if isinstance(e, ToolCallResult)]
    outputs = [e for e in events if isinstance(e, AgentOutput)]
    assert calls and calls[0] == (6, 7)
    assert tool_results and tool_results[0].tool_output.content == "42"
    assert len(outputs) >= 2  # the tool call, then the answer after the tool's result
    assert outputs[0].tool_calls and outputs[0].raw["finish_reason"] == "tool_calls"
    # the last turn answered in text (FunctionAgent appends the run's tool results to its tool_calls)
    assert outputs[-1].raw["finish_reason"] != "tool_calls" and outputs[-1].raw["swift_stats"]["new_tokens"] > 0
    assert all(isinstance(t, ToolCallResult) for t in outputs[-1].tool_calls)
    assert str(result.response.content or "").strip()
    keys = {o.raw["step_key"] for o in outputs}
    assert keys == {"span:BaseWorkflowAgent.run_agent_step@Agent"}
