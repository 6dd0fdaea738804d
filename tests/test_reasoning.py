"""Reasoning models (Qwen3-style ``<think>``): the switch, the split, history.

Everything runs on Qwen3's real chat template (``tests/templates/qwen3.jinja``, see the README
there) and a byte-level tokenizer with Qwen3's turn tokens and its ``<think>``/``</think>`` added
tokens (not special, as in Qwen3: decoding keeps them). The model is a tiny random Qwen3 that the
``thinker`` fixture teaches, in a few dozen optimizer steps, to answer like a Qwen3 model: a think
block, then the answer; the answer alone when the prompt closed the block (``enable_thinking``
false); a think block, then a tool call, when it has a tool. The replies then come out of the real
engine (SWIFT drafting and verification), through the real adapters; nothing is mocked.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock, ThinkingBlock

from swift_engine import SwiftConfig, SwiftEngine
from swift_engine.chat.prompting import render_chat_prompt
from swift_engine.chat.reasoning import (
    ReasoningFormat,
    ReasoningSplitter,
    is_reasoning_template,
    reasoning_format,
    split_reasoning,
)
from swift_integrations import SwiftChatModel
from swift_integrations._generation import Delta, Final, GenerationCall, generation_events, output_constraint
from swift_integrations.langchain.messages import neutral_messages as _neutral_messages
from swift_integrations.langchain.outputs import chat_result as _chat_result
from swift_integrations.llamaindex import SwiftLlamaIndexLLM
from swift_integrations.llamaindex.messages import neutral_messages

from .chat_templates import FAMILIES, QWEN3, family_tokenizer
from .conftest import tiny_model

QWEN3_TEMPLATE = (Path(__file__).parent / "templates" / "qwen3.jinja").read_text()
#: Qwen3's template as the "thinking" releases (Qwen3-*-Thinking-2507) and DeepSeek-R1 write it:
#: the generation prompt itself opens the think block.
OPENING_TEMPLATE = QWEN3_TEMPLATE.replace(
    "{{- '<|im_start|>assistant\\n' }}", "{{- '<|im_start|>assistant\\n<think>\\n' }}"
)

THOUGHT = "The user greets me. I greet back."
ANSWER = "Hello there!"
TOOL_THOUGHT = "I need the weather."
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def qwen3_tokenizer(template: str = QWEN3_TEMPLATE) -> Any:
    tok = family_tokenizer("qwen3")
    tok.add_tokens(["<think>", "</think>"])  # Qwen3's: ordinary added tokens, kept by decode()
    tok.chat_template = template
    return tok


HI = [{"role": "user", "content": "Hi"}]
WEATHER = [{"role": "user", "content": "Weather in Paris?"}]


# ====================================================================================== the template


def test_the_switch_is_the_templates_enable_thinking() -> None:
    tok = qwen3_tokenizer()
    default, on, off = (render_chat_prompt(tok, HI, reasoning=r) for r in (None, True, False))
    # Qwen3 thinks by default: the generation prompt is left open for the model's <think>
    assert default.text == on.text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    # enable_thinking=False: the template writes an empty think block for the model
    assert off.text == default.text + "<think>\n\n</think>\n\n"
    assert off.ids[-6:] == tok("<think>\n\n</think>\n\n", add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<think>") in off.ids  # one token, as in Qwen3
    # exactly the template's own rendering
    for r, rp in ((True, on), (False, off)):
        assert rp.text == tok.apply_chat_template(HI, tokenize=False, add_generation_prompt=True, enable_thinking=r)
    for rp in (default, on, off):
        assert rp.reasoning == ReasoningFormat(started=False)


def test_a_generation_prompt_that_opens_the_block_starts_in_reasoning() -> None:
    rp = render_chat_prompt(qwen3_tokenizer(OPENING_TEMPLATE), HI)
    assert rp.text.endswith("assistant\n<think>\n")
    assert rp.reasoning == ReasoningFormat(started=True)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_other_templates_are_untouched(family: str) -> None:
    tok = family_tokenizer(family)
    rp = render_chat_prompt(tok, HI)
    assert (rp.reasoning is not None) == (family == "qwen3")  # the suite's Qwen3 template cuts </think> too
    if family != "qwen3":
        # the switch means nothing to them: the prompt is the same whatever it says
        assert render_chat_prompt(tok, HI, reasoning=False).text == rp.text
        assert render_chat_prompt(tok, HI, reasoning=True).ids == rp.ids


def test_which_templates_are_reasoning_templates() -> None:
    assert is_reasoning_template(QWEN3_TEMPLATE) and is_reasoning_template(QWEN3)
    assert is_reasoning_template("{{ '<think>\\n' }}{% if x %}{{ '</think>' }}{% endif %}")
    assert not any(is_reasoning_template(spec["template"]) for f, spec in FAMILIES.items() if f != "qwen3")
    assert not is_reasoning_template(None) and not is_reasoning_template("Use <think> tags freely.")
    assert reasoning_format(FAMILIES["llama"]["template"], "x<think>") is None
    # the plain format (no template) is never split
    tok = family_tokenizer("qwen2")
    tok.chat_template = None
    assert render_chat_prompt(tok, HI, reasoning=True).reasoning is None


# ====================================================================================== the split

CASES = [
    # text, started, reasoning, content
    ("<think>\nplan\n</think>\n\nHello", False, "plan", "Hello"),
    ("  <think>a b</think>c  ", False, "a b", "c  "),
    ("<think>\n\n</think>\n\nHello", False, "", "Hello"),  # an empty block (thinking off, model's own)
    ("<think>\nstill thinking when cut", False, "still thinking when cut", ""),  # max_tokens hit
    ("<think>\nalmost done</thi", False, "almost done</thi", ""),
    ("Hello <think>x</think> y", False, "", "Hello <think>x</think> y"),  # no block at the start
    ("  Hello\n", False, "", "  Hello\n"),  # no block at all: untouched
    ("<thin", False, "", "<thin"),
    ("", False, "", ""),
    ("\nplan\n</think>\n\nHello", True, "plan", "Hello"),  # the prompt opened the block
    ("plan only", True, "plan only", ""),
    ("a</think>b</think>c", True, "a", "b</think>c"),  # only the first close ends it
]


@pytest.mark.parametrize("text,started,reasoning,content", CASES)
def test_split_of_a_finished_reply(text: str, started: bool, reasoning: str, content: str) -> None:
    assert split_reasoning(text, started=started) == (reasoning, content)
    assert ReasoningFormat(started=started).split(text) == (reasoning, content)


def _stream(text: str, cuts: list[int], started: bool) -> tuple[str, str, list[tuple[str, str]]]:
    s = ReasoningSplitter(started=started)
    bounds = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    out = [s.push(text[a:b]) for a, b in zip(bounds, bounds[1:])]
    out.append(s.finish())
    reasoning = "".join(r for r, _ in out)
    content = "".join(c for _, c in out)
    assert (s.reasoning, s.content) == (reasoning, content)
    return reasoning, content, out


@pytest.mark.parametrize("text,started,reasoning,content", CASES)
def test_split_of_a_stream_cut_everywhere(text: str, started: bool, reasoning: str, content: str) -> None:
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            assert _stream(text, [i, j], started)[:2] == (reasoning, content), (i, j)
    assert _stream(text, list(range(len(text))), started)[:2] == (reasoning, content)  # char by char


PIECES = ["<think>", "</think>", "<", "</", "<th", "</thi", "nk>", ">", " ", "\n", "a", "b", "think", "é"]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from(PIECES), max_size=14).map("".join),
    st.lists(st.integers(min_value=0, max_value=200), max_size=10),
    st.booleans(),
)
def test_any_split_into_deltas_gives_the_split_of_the_whole(text: str, cuts: list[int], started: bool) -> None:
    assert _stream(text, cuts, started)[:2] == split_reasoning(text, started=started)


def test_only_a_possible_tag_is_held_back() -> None:
    s = ReasoningSplitter()
    assert s.push(" <thi") == ("", "")  # may open a block
    assert s.push("nk>\nI plan") == ("I plan", "")
    assert s.push(" more </th") == (" more", "")  # the space may end the reasoning: held with "</th"
    assert s.push("ink>\n\nHel") == ("", "Hel")
    assert s.push("lo") == ("", "lo")
    assert s.finish() == ("", "")
    plain = ReasoningSplitter()
    assert plain.push("Hi <") == ("", "Hi <")  # no block at the start: content streams as it comes
    assert plain.push("think>") == ("", "think>")


# ====================================================================================== a thinking model


def _loss_and_margin(model: Any, prompt: list[int], reply: list[int]) -> tuple[torch.Tensor, float]:
    """Teacher-forced loss of ``reply``, and by how much its tokens' logits lead the rest at worst.

    A positive margin means greedy decoding writes exactly ``reply``.
    """
    logits = model(torch.tensor([prompt + reply])).logits[0, len(prompt) - 1 : -1]
    rows, target = torch.arange(len(reply)), torch.tensor(reply)
    others = logits.detach().clone()
    others[rows, target] = -torch.inf
    margin = float((logits.detach()[rows, target] - others.max(-1).values).min())
    return torch.nn.functional.cross_entropy(logits, target), margin


@pytest.fixture(scope="module")
def thinker() -> SwiftEngine:
    """A tiny Qwen3 taught to reply the way Qwen3 does, as a SWIFT engine.

    Trained until every reply token leads by a clear margin, so the engine's greedy decoding (its
    own kernels, KV cache and verification) reproduces the replies exactly.
    """
    tok = qwen3_tokenizer()
    eos = tok.eos_token_id

    def text(s: str) -> list[int]:
        return list(tok(s, add_special_tokens=False)["input_ids"]) + [eos]

    pairs = [
        (render_chat_prompt(tok, HI).ids, text(f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}")),
        (render_chat_prompt(tok, HI, reasoning=False).ids, text(ANSWER)),
        (render_chat_prompt(tok, WEATHER).ids, text(f"<think>\n{TOOL_THOUGHT}\n</think>\n\n{CALL}")),
    ]
    model = tiny_model("qwen3", vocab=len(tok))
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread (and a busy machine stalls two)
    try:
        for _ in range(400):
            opt.zero_grad()
            losses, margins = zip(*(_loss_and_margin(model, p, r) for p, r in pairs))
            if min(margins) > 2.0:
                break
            sum(losses).backward()  # type: ignore[union-attr]
            opt.step()
        else:
            pytest.fail("the tiny model did not learn its replies")
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return SwiftEngine(model, tok, SwiftConfig(cpu_kernels="torch", search={"enabled": False}))


def lc(engine: SwiftEngine, **kw: Any) -> SwiftChatModel:
    return SwiftChatModel(**{"engine": engine, "max_tokens": 64, **kw})


def test_the_engine_reply_holds_a_think_block(thinker) -> None:
    res = thinker.generate(render_chat_prompt(thinker.tokenizer, HI).ids, max_new_tokens=64)
    assert res.text == f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}"


def test_langchain_invoke_separates_the_reasoning(thinker) -> None:
    msg = lc(thinker).invoke("Hi")
    assert msg.content == ANSWER
    assert msg.additional_kwargs["reasoning_content"] == THOUGHT
    assert msg.content_blocks[0] == {"type": "reasoning", "reasoning": THOUGHT}
    assert msg.content_blocks[1]["type"] == "text" and msg.content_blocks[1]["text"] == ANSWER
    assert msg.response_metadata["finish_reason"] == "eos"
    assert msg.usage_metadata is not None and msg.usage_metadata["output_tokens"] > len(ANSWER)


def test_langchain_stream_separates_the_reasoning(thinker) -> None:
    chunks = list(lc(thinker).stream("Hi"))
    assert not any("<think>" in str(c.content) or "</think>" in str(c.content) for c in chunks)
    thoughts = [c.additional_kwargs["reasoning_content"] for c in chunks if "reasoning_content" in c.additional_kwargs]
    assert len(thoughts) > 1 and "".join(thoughts) == THOUGHT  # streamed as it comes, not at the end
    first_text = next(i for i, c in enumerate(chunks) if c.content)
    assert all("reasoning_content" not in c.additional_kwargs for c in chunks[first_text:])
    total = chunks[0]
    for c in chunks[1:]:
        total += c
    assert total.content == ANSWER and total.additional_kwargs["reasoning_content"] == THOUGHT
    assert isinstance(total, AIMessageChunk) and total.usage_metadata is not None


def test_langchain_v1_output_has_reasoning_blocks(thinker) -> None:
    msg = lc(thinker, output_version="v1").invoke("Hi")
    assert [b["type"] for b in msg.content] == ["reasoning", "text"]
    assert msg.content[0]["reasoning"] == THOUGHT and msg.content[1]["text"] == ANSWER
    assert msg.text == ANSWER
    total = None
    for c in lc(thinker, output_version="v1").stream("Hi"):
        total = c if total is None else total + c
    assert total is not None
    blocks = total.content_blocks
    assert [b["type"] for b in blocks] == ["reasoning", "text"]
    assert blocks[0]["reasoning"] == THOUGHT and blocks[1]["text"] == ANSWER


def test_langchain_async(thinker) -> None:
    async def run() -> tuple[AIMessage, list[AIMessageChunk]]:
        model = lc(thinker)
        return await model.ainvoke("Hi"), [c async for c in model.astream("Hi")]

    msg, chunks = asyncio.run(run())
    assert (msg.content, msg.additional_kwargs["reasoning_content"]) == (ANSWER, THOUGHT)
    assert "".join(str(c.content) for c in chunks) == ANSWER
    assert "".join(c.additional_kwargs.get("reasoning_content", "") for c in chunks) == THOUGHT


def test_reasoning_off(thinker) -> None:
    for msg in (lc(thinker, reasoning=False).invoke("Hi"), lc(thinker).invoke("Hi", reasoning=False)):
        assert msg.content == ANSWER and "reasoning_content" not in msg.additional_kwargs
    assert lc(thinker, reasoning=True).invoke("Hi").additional_kwargs["reasoning_content"] == THOUGHT
    assert lc(thinker, reasoning=False)._identifying_params["reasoning"] is False


def test_a_reply_cut_while_thinking_is_all_reasoning(thinker) -> None:
    msg = lc(thinker, max_tokens=12).invoke("Hi")
    assert msg.content == "" and msg.response_metadata["finish_reason"] == "length"
    assert THOUGHT.startswith(msg.additional_kwargs["reasoning_content"]) and msg.additional_kwargs["reasoning_content"]
    chunks = list(lc(thinker, max_tokens=12).stream("Hi"))
    assert (
        "".join(c.additional_kwargs.get("reasoning_content", "") for c in chunks)
        == (msg.additional_kwargs["reasoning_content"])
    )
    assert not any(c.content for c in chunks)


def test_a_prompt_that_opened_the_block(thinker) -> None:
    """Templates whose generation prompt writes ``<think>\\n``: the reply starts inside the block."""
    tok = thinker.tokenizer
    tok.chat_template = OPENING_TEMPLATE  # the same engine (its measured kernels), another template
    try:
        raw = thinker.generate(render_chat_prompt(tok, HI).ids, max_new_tokens=64).text
        assert raw == f"{THOUGHT}\n</think>\n\n{ANSWER}"  # no <think> of its own: the prompt has it
        msg = lc(thinker).invoke("Hi")
        assert (msg.content, msg.additional_kwargs["reasoning_content"]) == (ANSWER, THOUGHT)
        chunks = list(lc(thinker).stream("Hi"))
        assert "".join(str(c.content) for c in chunks) == ANSWER
        assert "".join(c.additional_kwargs.get("reasoning_content", "") for c in chunks) == THOUGHT
    finally:
        tok.chat_template = QWEN3_TEMPLATE


def test_thinking_then_a_tool_call(thinker) -> None:
    """The block is split off before tool-call parsing, and the call after it is constrained and parsed.

    (The model learned this reply without the tools' long system prompt, which would not fit its
    512-token context, so the generation is prepared here as the adapters prepare it for
    ``bind_tools(tool_choice="auto")``, prompt aside.)
    """
    call = GenerationCall(
        engine=thinker,
        model_name="thinker",
        step_key=None,
        sampling={"temperature": 0.0, "top_p": 1.0, "top_k": 0, "seed": None},
        max_new_tokens=96,
        stop=[],
        prompt=render_chat_prompt(thinker.tokenizer, WEATHER),
        plan=output_constraint([TOOL], "auto"),
    )
    events = list(generation_events(call))
    final = events[-1]
    assert isinstance(final, Final)
    assert final.reasoning == TOOL_THOUGHT and final.content == "" and not final.invalid
    assert [(c.name, c.arguments) for c in final.calls] == [("get_weather", {"city": "Paris"})]
    assert final.finish_reason == "tool_calls"
    deltas = [e for e in events if isinstance(e, Delta)]
    assert "".join(d.reasoning for d in deltas) == TOOL_THOUGHT
    assert "".join(d.text for d in deltas) + final.tail == ""  # neither the block nor the call is content
    # the same in LangChain's message
    msg = _chat_result(final).generations[0].message
    assert msg.additional_kwargs["reasoning_content"] == TOOL_THOUGHT and msg.content == ""
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("get_weather", {"city": "Paris"})]


# ====================================================================================== history


def _template_render(tok: Any, messages: list[dict[str, Any]]) -> str:
    return str(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def test_langchain_history_goes_back_as_the_template_wants(thinker) -> None:
    model = lc(thinker)
    tok = thinker.tokenizer
    reply = model.invoke("Hi")
    # a new question: Qwen3 drops the reasoning of turns before the last user query
    history = [HumanMessage("Hi"), reply, HumanMessage("Again")]
    text = model._prepare(history, None, None, {}).prompt.text
    expected = _template_render(
        tok,
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": ANSWER, "reasoning_content": THOUGHT},
            {"role": "user", "content": "Again"},
        ],
    )
    assert text == expected
    assert THOUGHT not in text and ANSWER in text
    # inside a tool loop (no user query since the call) Qwen3 keeps the reasoning
    call = AIMessage(
        content="",
        additional_kwargs={"reasoning_content": TOOL_THOUGHT},
        tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"}],
    )
    loop = [HumanMessage("Weather in Paris?"), call, ToolMessage("Sunny", tool_call_id="call_1")]
    text = model._prepare(loop, None, None, {"tools": [TOOL], "tool_choice": "auto"}).prompt.text
    fn = {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert text == str(
        tok.apply_chat_template(
            [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": "",
                    "reasoning_content": TOOL_THOUGHT,
                    "tool_calls": [{"type": "function", "id": "call_1", "function": fn}],
                },
                {"role": "tool", "content": "Sunny", "tool_call_id": "call_1", "name": "get_weather"},
            ],
            tools=[TOOL],
            tokenize=False,
            add_generation_prompt=True,
        )
    )
    assert f"<|im_start|>assistant\n<think>\n{TOOL_THOUGHT}\n</think>\n\n<tool_call>" in text
    assert text.endswith("<tool_response>\nSunny\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    # v1 messages carry it as content blocks: the same prompt
    v1 = lc(thinker, output_version="v1").invoke("Hi")
    assert model._prepare([HumanMessage("Hi"), v1, HumanMessage("Again")], None, None, {}).prompt.text == expected


def test_langchain_reasoning_sources_in_history() -> None:
    blocks = AIMessage(content=[{"type": "reasoning", "reasoning": "r1"}, {"type": "text", "text": "t"}])
    kwargs = AIMessage(content="t", additional_kwargs={"reasoning_content": "r2"})
    anthropic = AIMessage(content=[{"type": "thinking", "thinking": "r3"}, {"type": "text", "text": "t"}])
    plain = AIMessage(content="t")
    got = _neutral_messages([blocks, kwargs, anthropic, plain])
    assert [m.get("reasoning_content") for m in got] == ["r1", "r2", "r3", None]
    assert all(m["content"] == "t" for m in got)
    # templates that don't take reasoning_content render as before
    tok = family_tokenizer("qwen2")
    assert render_chat_prompt(tok, [*HI, got[1]]).text == render_chat_prompt(tok, [*HI, got[3]]).text


# ====================================================================================== LlamaIndex


def test_llamaindex_chat_returns_a_thinking_block(thinker) -> None:
    llm = SwiftLlamaIndexLLM(engine=thinker, max_tokens=64)
    resp = llm.chat([ChatMessage(role=MessageRole.USER, content="Hi")])
    blocks = resp.message.blocks
    assert isinstance(blocks[0], ThinkingBlock) and blocks[0].content == THOUGHT
    assert isinstance(blocks[1], TextBlock) and blocks[1].text == ANSWER
    assert resp.message.content == ANSWER and resp.raw["thinking"] == THOUGHT and resp.raw["text"] == ANSWER
    # thinking off, by field, per call, or by LangChain's name
    hi = [ChatMessage(role="user", content="Hi")]
    for off in (
        SwiftLlamaIndexLLM(engine=thinker, max_tokens=64, thinking=False).chat(hi),
        llm.chat(hi, thinking=False),
        SwiftLlamaIndexLLM(engine=thinker, max_tokens=64, reasoning=False).chat(hi),
    ):
        assert off.message.content == ANSWER and not any(isinstance(b, ThinkingBlock) for b in off.message.blocks)
    # complete() goes through the chat template too
    done = llm.complete("Hi")
    assert done.text == ANSWER and done.raw["thinking"] == THOUGHT


def test_llamaindex_stream_chat_streams_thinking_deltas(thinker) -> None:
    llm = SwiftLlamaIndexLLM(engine=thinker, max_tokens=64)
    items = list(llm.stream_chat([ChatMessage(role=MessageRole.USER, content="Hi")]))
    deltas = [r.additional_kwargs.get("thinking_delta", "") for r in items]
    assert "".join(deltas) == THOUGHT and sum(1 for d in deltas if d) > 1
    assert "".join(r.delta or "" for r in items) == ANSWER
    last = items[-1].message
    assert isinstance(last.blocks[0], ThinkingBlock) and last.blocks[0].content == THOUGHT and last.content == ANSWER
    mid = next(r for r in items if r.additional_kwargs.get("thinking_delta"))
    assert isinstance(mid.message.blocks[0], ThinkingBlock) and mid.message.content == ""

    async def run() -> list[Any]:
        return [r async for r in await llm.astream_chat([ChatMessage(role=MessageRole.USER, content="Hi")])]

    aitems = asyncio.run(run())
    assert "".join(r.additional_kwargs.get("thinking_delta", "") for r in aitems) == THOUGHT
    assert aitems[-1].message.content == ANSWER
    streamed = list(llm.stream_complete("Hi"))
    assert streamed[-1].text == ANSWER
    assert "".join(r.additional_kwargs.get("thinking_delta", "") for r in streamed) == THOUGHT


def test_llamaindex_history_goes_back_as_the_template_wants(thinker) -> None:
    llm = SwiftLlamaIndexLLM(engine=thinker, max_tokens=64)
    reply = llm.chat([ChatMessage(role=MessageRole.USER, content="Hi")]).message
    neutral = neutral_messages([ChatMessage(role=MessageRole.USER, content="Hi"), reply])
    assert neutral[1] == {"role": "assistant", "content": ANSWER, "reasoning_content": THOUGHT}
    history = [ChatMessage(role="user", content="Hi"), reply, ChatMessage(role="user", content="Again")]
    resp = llm.chat(history)
    assert resp.raw["prompt"] == _template_render(
        thinker.tokenizer,
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": ANSWER, "reasoning_content": THOUGHT},
            {"role": "user", "content": "Again"},
        ],
    )


# ====================================================================================== over HTTP


def test_the_server_returns_the_reasoning_apart_whole_and_streamed(thinker) -> None:
    """``/v1/chat/completions`` gives a reasoning model's thinking in ``reasoning_content`` (message and
    deltas, as vLLM and DeepSeek's API do), never in ``content``: it used to be dropped altogether."""
    import json

    import httpx

    from swift_integrations.serve import create_app

    from .test_serve import running

    body = {"model": "thinker", "messages": HI, "max_tokens": 64, "temperature": 0}
    with running(create_app(thinker, model_name="thinker")) as url:
        whole = httpx.post(url + "/v1/chat/completions", json=body, timeout=120).json()
        message = whole["choices"][0]["message"]
        assert message["content"] == ANSWER and message["reasoning_content"] == THOUGHT
        deltas = []
        with httpx.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    deltas += [c["delta"] for c in json.loads(line[6:])["choices"]]
    thoughts = [d["reasoning_content"] for d in deltas if "reasoning_content" in d]
    texts = [d["content"] for d in deltas if d.get("content")]
    assert "".join(thoughts) == THOUGHT and "".join(texts) == ANSWER
    first_text = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert all("reasoning_content" not in d for d in deltas[first_text + 1 :])  # thinking comes first
    assert not any("<think>" in t or "</think>" in t for t in texts)
