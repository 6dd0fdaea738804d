"""Tool-call formats beyond Hermes, on tiny models with the families' real chat templates.

Each family is its published chat template (``tests/templates/``; sources in its README), a
byte-level tokenizer with the family's special tokens (its call marker included: Mistral's
``[TOOL_CALLS]``, Llama's ``<|python_tag|>``), and a tiny random model of the family's
architecture (``tests/conftest.py``, with a longer context: a byte tokenizer spells a tool
prompt out character by character). Per format: the prompt with tools and with history (calls and
results, through the template's own tool rendering), a forced call through both adapters, an
``auto`` call the model opens itself (its marker prefilled, or emitted as a token by a model tilted
towards it), and the parser (hypothesis: round trips, garbage never raises, streaming agrees).
Hermes stays the fallback: Gemma 2's template has no tool section, Hermes-3's is Hermes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from swift_engine import SwiftConfig, SwiftEngine
from swift_engine.chat.prompting import render_chat_prompt
from swift_engine.chat.tool_calls import (
    MAX_TOOL_CALLS,
    ToolCallStreamFilter,
    hidden_marker_ids,
    parse_response_calls,
    parse_tool_calls,
)
from swift_engine.chat.tool_format import (
    HERMES,
    LLAMA3_JSON,
    MISTRAL,
    ToolCallFormat,
    detect_tool_format,
    fit_tool_history,
    tool_call_format,
)
from swift_engine.decoding.constraints import GrammarError, ToolCallConstraint
from swift_integrations._generation import Final, GenerationCall, OutputPlan, generation_events, output_constraint

from .chat_templates import FAMILIES as BARE_FAMILIES
from .conftest import CharTokenizer, tiny_config

TEMPLATES = Path(__file__).parent / "templates"

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two small integers.",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "minimum": 0, "maximum": 99},
                "b": {"type": "integer", "minimum": 0, "maximum": 99},
            },
            "required": ["a", "b"],
        },
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]}},
            "required": ["city"],
        },
    },
}
TOOLS = [ADD, WEATHER]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
NAMES = list(SCHEMAS)

#: A conversation with two parallel calls and their results (ids in LangChain's style).
HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_7f3a9c0d1e2b4a5c", "name": "get_weather", "arguments": {"city": "Paris"}},
            {"id": "call_0b1c2d3e4f5a6b7c", "name": "get_weather", "arguments": {"city": "Rome"}},
        ],
    },
    {"role": "tool", "content": "sunny", "tool_call_id": "call_7f3a9c0d1e2b4a5c", "name": "get_weather"},
    {"role": "tool", "content": "rainy", "tool_call_id": "call_0b1c2d3e4f5a6b7c", "name": "get_weather"},
]
PAST_CALLS = [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})]

_LLAMA_SPECIALS = ["<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|python_tag|>"]
_MISTRAL_SPECIALS = [
    "[INST]",
    "[/INST]",
    "[TOOL_CALLS]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
]


@dataclass(frozen=True)
class Family:
    template: str
    arch: str
    bos: str
    eos: str
    specials: tuple[str, ...]
    format: str  # the detected format's name
    open: str  # its opening text
    native: bool  # the template renders tools itself
    turn: str  # regex: the assistant turns of the rendered history (group 1: the turn's text)


FAMILIES = {
    "llama-3.3": Family(
        "meta-llama-Llama-3.3-70B-Instruct.jinja",
        "llama",
        "<|begin_of_text|>",
        "<|eot_id|>",
        tuple(_LLAMA_SPECIALS),
        "llama3_json",
        "",
        True,
        r"<\|start_header_id\|>assistant<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>",
    ),
    "llama-3.2": Family(
        "meta-llama-Llama-3.2-3B-Instruct.jinja",
        "llama",
        "<|begin_of_text|>",
        "<|eot_id|>",
        tuple(_LLAMA_SPECIALS),
        "llama3_json",
        "",
        True,
        r"<\|start_header_id\|>assistant<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>",
    ),
    "mistral-nemo": Family(
        "mistralai-Mistral-Nemo-Instruct-2407.jinja",
        "mistral",
        "<s>",
        "</s>",
        tuple(_MISTRAL_SPECIALS),
        "mistral",
        "[TOOL_CALLS]",
        True,
        r"(\[TOOL_CALLS\].*?)</s>",
    ),
    "mistral-small-3.1": Family(
        "mistralai-Mistral-Small-3.1-24B-Instruct-2503.jinja",
        "mistral",
        "<s>",
        "</s>",
        (*_MISTRAL_SPECIALS, "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"),
        "mistral",
        "[TOOL_CALLS] ",
        True,
        r"(\[TOOL_CALLS\].*?)</s>",
    ),
    "gemma-2": Family(
        "google-gemma-2-2b-it.jinja",
        "gemma2",
        "<bos>",
        "<eos>",
        ("<start_of_turn>", "<end_of_turn>"),
        "hermes",
        "<tool_call>\n",
        False,
        r"<start_of_turn>model\n(.*?)<end_of_turn>",
    ),
    "hermes-3": Family(
        "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja",
        "llama",
        "<|begin_of_text|>",
        "<|im_end|>",
        ("<|im_start|>",),
        "hermes",
        "<tool_call>\n",
        True,
        r"<\|im_start\|>assistant\n(.*?)<\|im_end\|>",
    ),
}
MODEL_FAMILIES = ["llama-3.3", "mistral-nemo", "mistral-small-3.1", "gemma-2"]
FORMATS = {
    "hermes": HERMES,
    "llama3_json": LLAMA3_JSON,
    "mistral": MISTRAL,
    "mistral-spaced": MISTRAL.model_copy(update={"open": "[TOOL_CALLS] "}),
}


def family_tokenizer(name: str) -> Any:
    """A byte-level fast tokenizer with the family's special tokens and its real chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    fam = FAMILIES[name]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=fam.bos, eos_token=fam.eos, additional_special_tokens=list(fam.specials)
    )
    tok.chat_template = (TEMPLATES / fam.template).read_text()
    return tok


def tiny_long_model(arch: str, vocab: int, seed: int = 0) -> Any:
    """``conftest.tiny_model`` with a 4096-token context (tool prompts of a byte tokenizer run long)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(arch, vocab=vocab)
    cfg.max_position_embeddings = 4096
    cfg._attn_implementation = "eager" if arch.startswith("gemma") else "sdpa"
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(4.0)
    return model


@cache
def family_engine(name: str) -> SwiftEngine:
    tok = family_tokenizer(name)
    model = tiny_long_model(FAMILIES[name].arch, len(tok))
    return SwiftEngine(model, tok, SwiftConfig(search={"enabled": False}))


def _check_call(name: str, args: dict[str, Any]) -> None:
    assert name in SCHEMAS, name
    jsonschema.validate(args, SCHEMAS[name])


# ------------------------------------------------------------------------------------ detection


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_template_teaches_its_format(name: str) -> None:
    fam = FAMILIES[name]
    fmt = tool_call_format(family_tokenizer(name))
    assert (fmt.name, fmt.open) == (fam.format, fam.open)


def test_templates_without_tool_support_fall_back_to_hermes() -> None:
    assert detect_tool_format(None) is HERMES
    assert detect_tool_format({"default": "{{ tools }}[TOOL_CALLS]"}) is HERMES  # named templates: no native tools
    for bare in BARE_FAMILIES.values():  # the families' turn structure without tool sections
        assert detect_tool_format(bare["template"]) is HERMES
    assert tool_call_format(CharTokenizer()) is HERMES


@pytest.mark.parametrize("name", ["gemma-2", "hermes-3"])
def test_hermes_plans_are_unchanged(name: str) -> None:
    fmt = tool_call_format(family_tokenizer(name))
    for choice in ("auto", "any", "add"):
        for parallel in (True, False):
            plan = output_constraint(TOOLS, choice, parallel_tool_calls=parallel, tool_format=fmt)
            assert plan == output_constraint(TOOLS, choice, parallel_tool_calls=parallel)
            assert (
                plan.constraint.key() == ToolCallConstraint(**{**plan.constraint.__dict__, "tool_format": HERMES}).key()
            )


# ------------------------------------------------------------------------------------ rendering


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_prompt_with_tools_and_history_uses_the_templates_own_tool_rendering(name: str) -> None:
    fam = FAMILIES[name]
    tok = family_tokenizer(name)
    fmt = tool_call_format(tok)
    rp = render_chat_prompt(tok, HISTORY, tools=TOOLS)
    assert rp.native_tools == fam.native
    assert tok.decode(rp.ids, skip_special_tokens=False) == rp.text  # every special token is the template's
    assert all(n in rp.text for n in NAMES) and "sunny" in rp.text and "rainy" in rp.text
    # the past calls are in the model's own syntax, and read back as the same calls
    turns = re.findall(fam.turn, rp.text, flags=re.DOTALL)
    seen = [(c.name, c.arguments) for turn in turns for c in parse_tool_calls(turn, NAMES, fmt)[0]]
    assert seen == PAST_CALLS
    if fmt.name == "llama3_json":  # its template renders one call per assistant message
        assert '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>' in rp.text
        assert len(turns) == 2 and "<|start_header_id|>ipython<|end_header_id|>" in rp.text
    if fmt.name == "mistral":  # 9-character ids, the same on a call and its result
        ids = re.findall(r'"id": "([^"]*)"', rp.text)
        assert len(ids) == 2 and all(len(i) == 9 and i.isalnum() for i in ids)
        assert re.findall(r'"call_id": "([^"]*)"', rp.text) == ids
        assert rp.ids.count(tok.convert_tokens_to_ids("[TOOL_CALLS]")) == 1
    if not fam.native:  # Hermes through the system prompt (Gemma 2 has no system role: folded into the user turn)
        assert "<tool_call>" in rp.text and "<tool_response>" in rp.text


@pytest.mark.parametrize("name", ["llama-3.3", "mistral-nemo"])
def test_a_rendered_prompt_ends_in_the_forced_calls_prefill(name: str) -> None:
    tok = family_tokenizer(name)
    fmt = tool_call_format(tok)
    plan = output_constraint(TOOLS, "add", tool_format=fmt)
    assert plan.prefill == fmt.call_head("add") and plan.constraint.tool_format == fmt
    rp = render_chat_prompt(tok, HISTORY[:2], tools=TOOLS, prefill=plan.prefill)
    assert rp.text.endswith(plan.prefill)
    if fmt.open:  # the marker is the template's special token, not its spelling
        assert rp.ids.count(tok.convert_tokens_to_ids(fmt.open.strip())) == 1


def test_history_ids_are_fitted_to_mistral_and_paired_by_position() -> None:
    msgs = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "id": None, "function": {"name": "a", "arguments": {}}},
                {"type": "function", "id": "abcDEF123", "function": {"name": "b", "arguments": {}}},
            ],
        },
        {"role": "tool", "content": "1"},  # no id: answers the first call
        {"role": "tool", "content": "2", "tool_call_id": "abcDEF123"},
    ]
    fitted = fit_tool_history(msgs, MISTRAL)
    first, second = (c["id"] for c in fitted[1]["tool_calls"])
    assert second == "abcDEF123" and len(first) == 9 and first.isalnum()
    assert [m.get("tool_call_id") for m in fitted[2:]] == [first, second]
    assert fit_tool_history(msgs, MISTRAL) == fitted  # deterministic
    assert fit_tool_history(msgs, HERMES) is msgs
    split = fit_tool_history(msgs, LLAMA3_JSON)
    assert [len(m["tool_calls"]) for m in split if m.get("tool_calls")] == [1, 1]


def test_text_beside_calls_is_dropped_where_the_template_forbids_it() -> None:
    """Mistral's mistral-common templates raise on an assistant message with both: the calls stay native."""
    tok = family_tokenizer("mistral-nemo")
    tok.chat_template = tok.chat_template.replace(
        "{%- elif (message.tool_calls is defined and message.tool_calls is not none) %}",
        "{%- elif (message.tool_calls is defined and message.tool_calls is not none) %}"
        "{%- if message.content %}{{ raise_exception('Assistant message cannot have both content and tool calls.') }}"
        "{%- endif %}",
    )
    msgs = [dict(m) for m in HISTORY]
    msgs[2] = dict(msgs[2], content="Let me check.")
    rp = render_chat_prompt(tok, msgs, tools=TOOLS)
    assert "[TOOL_CALLS][" in rp.text and "<tool_call>" not in rp.text and "Let me check." not in rp.text


# ------------------------------------------------------------------------------------ forced calls


@pytest.mark.parametrize("name", MODEL_FAMILIES)
def test_forced_calls_come_out_valid_and_the_same_in_both_adapters(name: str) -> None:
    from langchain_core.messages import AIMessageChunk

    from swift_integrations import SwiftChatModel, SwiftLlamaIndexLLM

    engine = family_engine(name)
    fmt = tool_call_format(engine.tokenizer)
    chat = SwiftChatModel(engine=engine, max_tokens=64)
    llm = SwiftLlamaIndexLLM(engine=engine, max_tokens=64)
    for choice in ("add", "any"):
        msg = chat.bind_tools(TOOLS, tool_choice=choice).invoke("Add 2 and 3.")
        (call,) = msg.tool_calls
        assert msg.invalid_tool_calls == [] and msg.content == ""
        assert msg.response_metadata["finish_reason"] == "tool_calls"
        _check_call(call["name"], call["args"])
        if choice == "add":
            assert call["name"] == "add"
        resp = llm.chat_with_tools(TOOLS, user_msg="Add 2 and 3.", tool_choice=choice, tool_required=True)
        (selection,) = llm.get_tool_calls_from_response(resp)
        assert (selection.tool_name, selection.tool_kwargs) == (call["name"], call["args"])
        prefill = fmt.call_head("add") if choice == "add" else fmt.begin
        assert resp.raw["prompt"].endswith(prefill)
        # streamed: nothing of the call shows as content, the chunks add up to the same call
        chunks = list(chat.bind_tools(TOOLS, tool_choice=choice).stream("Add 2 and 3."))
        total = chunks[0]
        for c in chunks[1:]:
            total = total + c
        assert isinstance(total, AIMessageChunk) and total.content == ""
        assert [(c["name"], c["args"]) for c in total.tool_calls] == [(call["name"], call["args"])]


@pytest.mark.parametrize("name", ["llama-3.3", "mistral-nemo"])
def test_a_required_call_with_nothing_prefilled_writes_the_opening_too(name: str) -> None:
    engine = family_engine(name)
    fmt = tool_call_format(engine.tokenizer)
    rp = render_chat_prompt(engine.tokenizer, [{"role": "user", "content": "Add 2 and 3."}], tools=TOOLS)
    spec = ToolCallConstraint(tools=tuple(TOOLS), tool_format=fmt)
    res = engine.generate(rp.ids, max_new_tokens=64, constraint=spec)
    assert res.finish_reason == "eos"
    text = engine.tokenizer.decode(res.token_ids, skip_special_tokens=False).removesuffix(engine.tokenizer.eos_token)
    assert text.startswith(fmt.begin)
    (call,), invalid, content = parse_tool_calls(text, NAMES, fmt)
    assert invalid == [] and content == ""
    _check_call(call.name, call.arguments)
    with pytest.raises(GrammarError, match="does not start a call"):
        engine.generate(
            rp.ids, max_new_tokens=4, constraint=ToolCallConstraint(tools=tuple(TOOLS), tool_format=fmt, prefilled="x")
        )


# ------------------------------------------------------------------------------------ auto mode


def _auto_events(engine: SwiftEngine, opened: str, parallel: bool = True, max_new_tokens: int = 160) -> Final:
    """An ``auto`` reply whose start ``opened`` the prompt already holds (the model "wrote" the marker)."""
    fmt = tool_call_format(engine.tokenizer)
    auto = output_constraint(TOOLS, "auto", parallel_tool_calls=parallel, tool_format=fmt)
    assert isinstance(auto.constraint, ToolCallConstraint) and auto.constraint.mode == "auto"
    plan = OutputPlan(
        constraint=auto.constraint.model_copy(update={"prefilled": opened}),
        prefill=opened,
        stops=auto.stops,
        tool_names=auto.tool_names,
        show_tools=True,
        tool_format=fmt,
        tools=auto.tools,
    )
    rp = render_chat_prompt(
        engine.tokenizer, [{"role": "user", "content": "Add 2 and 3."}], tools=TOOLS, prefill=opened
    )
    call = GenerationCall(
        engine=engine,
        model_name="tiny",
        step_key=None,
        sampling={},
        max_new_tokens=max_new_tokens,
        stop=[],
        prompt=rp,
        plan=plan,
    )
    events = list(generation_events(call))
    final = events[-1]
    assert isinstance(final, Final)
    return final


@pytest.mark.parametrize(
    "name, opened",
    [
        ("mistral-nemo", "[TOOL_CALLS]"),
        ("mistral-small-3.1", "[TOOL_CALLS]"),
        ("llama-3.3", "<|python_tag|>"),
        ("llama-3.3", '{"name": '),
        ("gemma-2", "<tool_call>"),
    ],
)
def test_auto_a_call_the_model_opens_is_grammar_constrained_and_parsed(name: str, opened: str) -> None:
    final = _auto_events(family_engine(name), opened, parallel=False)
    assert final.invalid == [] and len(final.calls) == 1, (final.calls, final.invalid)
    _check_call(final.calls[0].name, final.calls[0].arguments)
    assert final.content == "" and final.finish_reason == "tool_calls"


def test_auto_a_prefilled_text_that_opens_nothing_valid_is_refused() -> None:
    engine = family_engine("mistral-nemo")
    with pytest.raises(GrammarError, match="not a valid start"):
        _auto_events(engine, '[TOOL_CALLS][{"name": "nope"', max_new_tokens=4)


@pytest.mark.parametrize("name, marker", [("mistral-nemo", "[TOOL_CALLS]"), ("llama-3.3", "<|python_tag|>")])
def test_auto_a_marker_token_the_model_emits_itself_opens_a_constrained_call(name: str, marker: str) -> None:
    """A model tilted towards its marker token emits it; the engine's text leaves special tokens out,
    so the adapters put it back (by id), constrain what follows and parse it."""
    from swift_integrations import SwiftChatModel

    tok = family_tokenizer(name)
    model = tiny_long_model(FAMILIES[name].arch, len(tok))
    engine = SwiftEngine(model, tok, SwiftConfig(search={"enabled": False}))
    rp = render_chat_prompt(tok, [{"role": "user", "content": "Add 2 and 3."}], tools=TOOLS)
    marker_id = tok.convert_tokens_to_ids(marker)
    with torch.no_grad():  # the marker's logit: twice the (positive) logit of the model's own first choice
        logits = model(torch.tensor([rp.ids])).logits[0, -1]
        first = int(logits.argmax())
        assert logits[first] > 0
        head = model.get_output_embeddings().weight
        head[marker_id] = 2 * head[first]
    assert hidden_marker_ids(tok, tool_call_format(tok)) == {marker_id: marker}

    chat = SwiftChatModel(engine=engine, max_tokens=160).bind_tools(TOOLS, parallel_tool_calls=False)
    chunks = list(chat.stream("Add 2 and 3."))
    assert "".join(str(c.content) for c in chunks) == ""  # neither the marker nor the call shows as content
    msg = chat.invoke("Add 2 and 3.")
    assert msg.invalid_tool_calls == [] and len(msg.tool_calls) == 1, msg
    _check_call(msg.tool_calls[0]["name"], msg.tool_calls[0]["args"])
    res = engine.generate(rp.ids, max_new_tokens=8)
    assert res.token_ids[0] == marker_id and marker not in res.text  # the text left it out indeed


def test_auto_free_text_without_a_marker_stays_content() -> None:
    from swift_integrations import SwiftChatModel

    engine = family_engine("mistral-nemo")
    msg = SwiftChatModel(engine=engine, max_tokens=12).bind_tools(TOOLS).invoke("Hello!")
    assert msg.tool_calls == [] and msg.invalid_tool_calls == [] and msg.content


# ------------------------------------------------------------------------------------ transformers' parser


MISTRAL_RESPONSE = {
    "defaults": {"role": "assistant"},
    "start_anchor": ["[/INST]", "[/TOOL_RESULTS]"],
    "fields": {
        "tool_calls": {
            "open": "[TOOL_CALLS]",
            "content": "json",
            "transform_each": True,
            "transform": {"type": "function", "function": {"name": "{name}", "arguments": "{arguments}"}},
        },
        "content": {"close": "</s>", "content": "text"},
    },
}


def test_a_tokenizers_response_template_is_read_by_transformers_first() -> None:
    tok = family_tokenizer("mistral-nemo")
    assert parse_response_calls(tok, '[TOOL_CALLS][{"name": "add", "arguments": {}}]') is None  # no template
    # a syntax only transformers' parser reads: a Python call list
    tok.response_template = {
        "defaults": {"role": "assistant"},
        "start_anchor": "[/INST]",
        "fields": {
            "tool_calls": {
                "open": "[TOOL_CALLS]",
                "content": "python-call-list",
                "transform_each": True,
                "transform": {"type": "function", "function": {"name": "{name}", "arguments": "{arguments}"}},
            },
            "content": {"content": "text"},
        },
    }
    text = 'Sure. [TOOL_CALLS][add(a=1, b=2), get_weather(city="Rome"), nope()]'
    calls, content = parse_response_calls(tok, text, prefix="<s>[INST]hi[/INST]", tools=TOOLS, tool_names=NAMES)
    assert [(c.name, c.arguments) for c in calls[:2]] == [("add", {"a": 1, "b": 2}), ("get_weather", {"city": "Rome"})]
    assert "unknown tool" in calls[2].error and content == "Sure."
    assert parse_tool_calls(text, NAMES, MISTRAL)[0] == []  # ours can't
    assert parse_response_calls(tok, "[TOOL_CALLS][add(", prefix="") is None  # it raises: ours takes over


def test_the_adapters_use_parse_response_where_the_tokenizer_has_one() -> None:
    from swift_integrations import SwiftChatModel

    engine = family_engine("mistral-nemo")
    tok = engine.tokenizer
    reads: list[str] = []
    original = tok.parse_response

    def counting(text: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(text)
        return original(text, *args, **kwargs)

    chat = SwiftChatModel(engine=engine, max_tokens=64).bind_tools(TOOLS, tool_choice="add")
    plain = chat.invoke("Add 2 and 3.")
    tok.response_template, tok.parse_response = MISTRAL_RESPONSE, counting
    try:
        parsed = chat.invoke("Add 2 and 3.")
    finally:
        tok.response_template = None
        del tok.parse_response
    assert reads and reads[0].startswith("[TOOL_CALLS]")
    assert [(c["name"], c["args"]) for c in parsed.tool_calls] == [(c["name"], c["args"]) for c in plain.tool_calls]


def test_hidden_markers_are_only_special_tokens_that_vanish() -> None:
    tok = family_tokenizer("mistral-nemo")
    assert hidden_marker_ids(tok, MISTRAL) == {tok.convert_tokens_to_ids("[TOOL_CALLS]"): "[TOOL_CALLS]"}
    assert hidden_marker_ids(family_tokenizer("hermes-3"), HERMES) == {}  # <tool_call> is text there
    assert hidden_marker_ids(CharTokenizer(), MISTRAL) == {}


# ------------------------------------------------------------------------------------ the parsers


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=10,
)
call_lists = st.lists(
    st.tuples(st.sampled_from(NAMES + ["ping"]), st.dictionaries(st.text(max_size=6), json_values, max_size=3)),
    min_size=1,
    max_size=4,
)
#: Content that can't start a call in any format.
plain_text = st.text(alphabet=st.characters(blacklist_characters="{[<\\`;", blacklist_categories=("Cs",)), max_size=30)


@pytest.mark.parametrize("fmt_name", sorted(FORMATS))
@settings(max_examples=150, deadline=None)
@given(calls=call_lists, before=plain_text, sizes=st.lists(st.integers(1, 7), min_size=1, max_size=5))
def test_formatted_calls_parse_back_to_the_same_calls(
    fmt_name: str, calls: list[tuple[str, dict[str, Any]]], before: str, sizes: list[int]
) -> None:
    fmt = FORMATS[fmt_name]
    text = before + fmt.format_calls(calls)
    names = NAMES + ["ping"]
    got, invalid, content = parse_tool_calls(text, names, fmt)
    assert invalid == [] and [(c.name, c.arguments) for c in got] == calls
    assert content == before.strip()
    assert len({c.id for c in got}) == len(got)
    # streamed in any cut: the text before the call is shown, the rest is the same calls
    filt = ToolCallStreamFilter(names, tool_format=fmt)
    shown, pos, i = "", 0, 0
    while pos < len(text):
        step = sizes[i % len(sizes)]
        shown += filt.push(text[pos : pos + step])
        pos, i = pos + step, i + 1
    streamed, s_invalid, rest = filt.finish()
    assert [(c.name, c.arguments) for c in streamed] == calls and s_invalid == []
    assert (shown + rest).strip() == before.strip()
    assert not any(m in shown for m in fmt.triggers)


fragments = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        [
            "[TOOL_CALLS]",
            "[TOOL_CALLS] ",
            "<|python_tag|>",
            '{"name": ',
            '{"name": "add", "parameters": ',
            '{"name": "add", "arguments": {',
            "<tool_call>",
            "</tool_call>",
            "[",
            "]",
            "{",
            "}",
            ";",
            "add(a=1)",
        ]
    ),
    json_values.map(json.dumps),
    call_lists.map(lambda cs: json.dumps([{"name": n, "arguments": a} for n, a in cs])),
    call_lists.map(lambda cs: json.dumps({"name": cs[0][0], "parameters": cs[0][1]})),
)


@pytest.mark.parametrize("fmt_name", sorted(FORMATS))
@settings(max_examples=150, deadline=None)
@given(parts=st.lists(fragments, max_size=10), names=st.sampled_from([NAMES, None]))
def test_garbage_never_raises(fmt_name: str, parts: list[str], names: list[str] | None) -> None:
    fmt = FORMATS[fmt_name]
    text = "".join(parts)
    calls, invalid, content = parse_tool_calls(text, names, fmt)
    ids = [c.id for c in calls] + [c.id for c in invalid]
    assert len(ids) == len(set(ids))
    assert len(calls) + len(invalid) <= MAX_TOOL_CALLS + 1
    assert all(isinstance(c.arguments, dict) for c in calls)
    if names is not None:
        assert all(c.name in names for c in calls)
    assert isinstance(content, str)
    filt = ToolCallStreamFilter(names, tool_format=fmt)
    for part in parts:
        filt.push(part)
    filt.finish()


@pytest.mark.parametrize("fmt_name", sorted(FORMATS))
def test_hostile_replies_are_bounded(fmt_name: str) -> None:
    fmt = FORMATS[fmt_name]
    for text in (
        "[" * 100_000,
        '{"name": ' * 20_000,
        "[TOOL_CALLS]" + "[" * 100_000,
        "<|python_tag|>" * 5_000,
        "[TOOL_CALLS]" + json.dumps([{"name": "add", "arguments": {}}] * (MAX_TOOL_CALLS + 50)),
        "; ".join([json.dumps({"name": "add", "parameters": {}})] * (MAX_TOOL_CALLS + 50)),
    ):
        calls, invalid, _ = parse_tool_calls(text, NAMES, fmt)
        assert len(calls) + len(invalid) <= MAX_TOOL_CALLS + 1


def test_llama_json_in_prose_is_content_and_python_tag_calls_are_calls() -> None:
    calls, invalid, content = parse_tool_calls('Use {"name": "Bob", "age": 3} as the record.', NAMES, LLAMA3_JSON)
    assert calls == [] and invalid == [] and content == 'Use {"name": "Bob", "age": 3} as the record.'
    calls, invalid, _ = parse_tool_calls(
        '<|python_tag|>{"name": "add", "parameters": {"a": 1, "b": 2}}', NAMES, LLAMA3_JSON
    )
    assert [(c.name, c.arguments) for c in calls] == [("add", {"a": 1, "b": 2})] and invalid == []
    _, invalid, _ = parse_tool_calls('<|python_tag|>brave_search.call(query="x")', NAMES, LLAMA3_JSON)
    assert len(invalid) == 1  # a built-in tool's Python call: not ours to run
    # the Hermes syntax is still read when the format's own finds nothing
    calls, _, _ = parse_tool_calls(
        '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>', NAMES, MISTRAL
    )
    assert [c.name for c in calls] == ["add"]


def test_mistral_ids_written_by_the_model_are_kept() -> None:
    text = '[TOOL_CALLS][{"name": "add", "arguments": {"a": 1, "b": 2}, "id": "abcDEF123"}]'
    (call,), _, _ = parse_tool_calls(text, NAMES, MISTRAL)
    assert call.id == "abcDEF123" and MISTRAL.history_call_id(call.id) == "abcDEF123"


def test_formats_are_hashable_parts_of_the_grammar_key() -> None:
    spaced = FORMATS["mistral-spaced"]
    keys = {ToolCallConstraint(tools=(ADD,), tool_format=fmt).key() for fmt in (HERMES, LLAMA3_JSON, MISTRAL, spaced)}
    assert len(keys) == 4
    assert ToolCallConstraint(tools=(ADD,)).key() == "tools:" + json.dumps(["required", "", [ADD]], sort_keys=True)
    assert isinstance(hash(spaced), int) and isinstance(spaced, ToolCallFormat)
