"""One generation as a stream of events, shared by the LangChain and LlamaIndex adapters.

The adapters differ in their message and response types, not in how a reply is produced. Both turn
a call into a :class:`GenerationCall` (engine, rendered prompt, sampling, stops, step key, and the
grammar the reply must follow) and read :func:`generation_events`: one :class:`Start`, then
:class:`Delta` s of content that is safe to show, then one :class:`Final` with the parsed tool
calls and the SWIFT statistics. Framework-free, like the prompt it is given
(:mod:`swift_engine.chat.prompting`). For reasoning models (a prompt with ``reasoning`` set) the
``<think>`` block is split off first (:mod:`swift_engine.chat.reasoning`): deltas carry it in
``reasoning``, never in ``text``, and nothing after (tool-call parsing) sees it.

How ``tool_choice`` and structured output become grammars (:func:`output_constraint`)
-------------------------------------------------------------------------------------
* ``"any"`` / ``"required"`` / a tool name: the reply is exactly one Hermes call
  (``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``) to one of the allowed tools,
  its arguments valid against the tool's JSON schema. ``<tool_call>\\n`` is prefilled into the
  prompt (it costs no output tokens and tells the model what it is writing).
* ``"auto"``: free text; once the model opens ``<tool_call>`` the rest of that call is
  constrained, so every call it decides to make parses.
* Models whose chat template teaches another call syntax (``tool_format``: Llama 3.x JSON calls,
  Mistral's ``[TOOL_CALLS]`` lists; :mod:`swift_engine.chat.tool_format`) get the same in their own
  syntax: forced calls prefill its opening (``[TOOL_CALLS][``; nothing for Llama, whose call is
  the bare JSON object), ``auto`` is triggered by its own marker, and the parser reads it back
  (after ``transformers``' ``parse_response`` where the tokenizer ships a response template).
* A JSON schema (``with_structured_output(method="json_schema")``, JSON mode with a schema): the
  reply is one JSON value matching it; JSON mode without a schema: any JSON object.

The grammar runs inside SWIFT's draft and verify steps (:mod:`swift_engine.decoding.constraints`), so a
constrained reply is exactly what constrained plain decoding would give.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from swift_engine.chat.prompting import RenderedPrompt
from swift_engine.chat.tool_calls import (
    TOOL_CALL_CLOSE,
    InvalidToolCall,
    ParsedToolCall,
    ToolCallStreamFilter,
    hidden_marker_ids,
    parse_response_calls,
    tool_function,
)
from swift_engine.chat.tool_format import HERMES, ToolCallFormat
from swift_engine.decoding.constraints import CALL_BEGIN, Constraint, JsonSchemaConstraint, ToolCallConstraint
from swift_integrations.engine_cache import touch_engine
from swift_integrations.stats import stats_metadata

__all__ = [
    "Delta",
    "Final",
    "GenerationCall",
    "OutputPlan",
    "Start",
    "generation_events",
    "merge_stops",
    "normalize_tool_choice",
    "output_constraint",
]

#: What a forced call's prompt already holds of the reply (one allowed tool: up to its arguments).
FORCED_CALL_PREFILL = CALL_BEGIN


@dataclass
class Start:
    """A prompt went into the engine."""

    input_tokens: int
    prompt_text: str = ""


@dataclass
class Delta:
    """Content safe to show now, and the tokens generated since the last event."""

    text: str
    output_tokens: int
    reasoning: str = ""  # a reasoning model's thinking released with this event (never in ``text``)


@dataclass
class Final:
    """The reply: its content, the tool calls parsed out of it, and the engine's statistics."""

    tail: str  # content not released by deltas
    content: str  # the whole reply's content
    calls: list[ParsedToolCall] = field(default_factory=list)
    invalid: list[InvalidToolCall] = field(default_factory=list)
    stats: Any = None
    finish_reason: str = "stop"
    step_key: str | None = None
    model_name: str = ""
    prompt_text: str = ""
    reasoning: str = ""  # the whole reply's reasoning (reasoning models), all released by deltas

    def metadata(self) -> dict[str, Any]:
        """The SWIFT statistics, finish reason, step key and model name, as the adapters report them."""
        return stats_metadata(
            self.stats, model_name=self.model_name, finish_reason=self.finish_reason, step_key=self.step_key
        )


@dataclass(frozen=True)
class OutputPlan:
    """How a reply is shaped: the grammar, the prompt's prefill, extra stops, whether to parse calls."""

    constraint: Constraint | None = None
    prefill: str = ""
    stops: tuple[str, ...] = ()
    tool_names: tuple[str, ...] | None = None  # parse tool calls out of the reply when set
    show_tools: bool = False  # describe the tools in the prompt
    tool_format: ToolCallFormat = HERMES  # the model's call syntax (prefill, grammar, parser)
    tools: tuple[dict[str, Any], ...] = ()  # the tools shown (for transformers' parse_response)


@dataclass
class GenerationCall:
    """One prepared generation: everything but the model's work."""

    engine: Any
    model_name: str
    step_key: str | None
    sampling: dict[str, Any]
    max_new_tokens: int
    stop: list[str]
    prompt: RenderedPrompt  # includes the plan's prefill
    plan: OutputPlan = field(default_factory=OutputPlan)
    #: seconds the engine may take (``GenerationTimeout`` past it); ``None``: no limit
    timeout: float | None = None
    #: the wrapper's ``keep_alive`` in seconds (see :mod:`.engine_cache`); ``None``: not set
    keep_alive: float | None = None


def merge_stops(*groups: Sequence[str]) -> list[str]:
    """Stop strings of several sources, first occurrence first, duplicates dropped."""
    return list(dict.fromkeys(s for g in groups for s in g))


def normalize_tool_choice(choice: Any, names: Sequence[str]) -> str:
    """``"auto"``, ``"none"``, ``"any"`` or a tool name, from every spelling the frameworks use."""
    if choice is None or choice == "auto":
        return "auto"
    if choice is False or choice == "none":
        return "none"
    if choice is True or choice in ("any", "required"):
        return "any"
    if isinstance(choice, dict):
        fn = choice.get("function")
        choice = (fn if isinstance(fn, dict) else choice).get("name")
    if isinstance(choice, str) and choice in names:
        return choice
    raise ValueError(
        f"tool_choice must be 'auto', 'none', 'any'/'required' or one of the tool names {list(names)}; got {choice!r}"
    )


def output_constraint(
    tools: Sequence[dict[str, Any]] | None = None,
    tool_choice: str = "none",
    *,
    parallel_tool_calls: bool = True,
    json_schema: dict[str, Any] | bool | None = None,
    constrain: bool = True,
    tool_format: ToolCallFormat = HERMES,
) -> OutputPlan:
    """The :class:`OutputPlan` for a call's tools and structured-output request.

    ``tool_choice`` is normalised (:func:`normalize_tool_choice`). ``json_schema`` asks for one
    JSON value matching it; with tools in ``auto`` mode the reply is one call *or* that JSON value
    (OpenAI's tools with ``response_format``; what ``create_agent``'s ProviderStrategy binds), with
    ``"none"`` the schema alone, and a forced call wins over it. ``constrain=False`` keeps every prompt-side part (tool
    descriptions, prefill, parsing) but drops the grammar: what the adapters did before grammars,
    kept for comparisons (``swift-bench``'s parse-rate measurement). ``tool_format``: the model's
    call syntax (:func:`swift_engine.chat.tool_format.tool_call_format`); formats without a closing
    marker end a call block with the grammar, not a stop string.
    """
    tools = list(tools or [])
    if tools and json_schema is not None and tool_choice in ("auto", "none"):
        if tool_choice == "none":
            tools = []
        else:  # tools and a response format: one call, or the answer in the schema (OpenAI's semantics)
            spec = ToolCallConstraint(
                tools=tuple(tools), mode="auto", tool_format=tool_format, answer_schema=json_schema
            )
            return OutputPlan(
                constraint=spec if constrain else None,
                tool_names=tuple(tool_function(t)["name"] for t in tools),
                show_tools=True,
                tool_format=tool_format,
                tools=tuple(tools),
            )
    if json_schema is not None and not tools:
        return OutputPlan(constraint=JsonSchemaConstraint(json_schema) if constrain else None)
    if not tools or tool_choice == "none":
        return OutputPlan()
    names = tuple(tool_function(t)["name"] for t in tools)
    fmt, hermes = tool_format, tool_format == HERMES
    if tool_choice == "auto":
        spec = ToolCallConstraint(tools=tuple(tools), mode="auto")
        if not hermes:  # no closing tag to stop at: the grammar ends the reply after its call block
            spec = ToolCallConstraint(tools=tuple(tools), mode="auto", tool_format=fmt, parallel=parallel_tool_calls)
        return OutputPlan(
            constraint=spec if constrain else None,
            stops=() if parallel_tool_calls or not hermes else (TOOL_CALL_CLOSE,),  # ends with its first call
            tool_names=names,
            show_tools=True,
            tool_format=fmt,
            tools=tuple(tools),
        )
    allowed = tools if tool_choice == "any" else [t for t in tools if tool_function(t)["name"] == tool_choice]
    if not allowed:
        raise ValueError(f"tool_choice {tool_choice!r} names none of the tools {list(names)}")
    prefill = fmt.call_head(tool_function(allowed[0])["name"]) if len(allowed) == 1 else fmt.begin
    spec = ToolCallConstraint(tools=tuple(allowed), mode="required", prefilled=prefill, tool_format=fmt)
    return OutputPlan(
        constraint=spec if constrain else None,
        prefill=prefill,
        stops=(TOOL_CALL_CLOSE,) if hermes else (),  # one call; the grammar ends there too
        tool_names=names,
        show_tools=True,
        tool_format=fmt,
        tools=tuple(tools),
    )


def generation_events(call: GenerationCall) -> Iterator[Start | Delta | Final]:
    """The generation as events; closing the iterator stops the engine after its current step."""
    plan = call.plan
    rp = call.prompt
    yield Start(len(rp.ids), rp.text)
    tool_filter, hidden = None, {}
    if plan.tool_names is not None:
        tokenizer = getattr(call.engine, "tokenizer", None)
        reader = None
        if getattr(tokenizer, "response_template", None):  # transformers reads the reply first (tool_calls.py)
            prefix = rp.text[: len(rp.text) - len(plan.prefill)] if rp.text.endswith(plan.prefill) else rp.text
            reader = partial(
                parse_response_calls, tokenizer, prefix=prefix, tools=plan.tools, tool_names=plan.tool_names
            )
        tool_filter = ToolCallStreamFilter(
            plan.tool_names, prefill=plan.prefill, tool_format=plan.tool_format, response_parser=reader
        )
        # markers that are special tokens (Mistral's [TOOL_CALLS]) vanish from the engine's text: put them back
        hidden = hidden_marker_ids(tokenizer, plan.tool_format)
    # reasoning models: the <think> block is split off before anything reads the content (tool
    # calls included); a prefilled reply (a forced call) has begun with content, nothing to split
    splitter = rp.reasoning.splitter() if rp.reasoning is not None and not plan.prefill else None
    released = ""
    if plan.prefill and tool_filter is None:
        released = plan.prefill
        yield Delta(plan.prefill, 0)
    stop = merge_stops(call.stop, plan.stops, rp.stop)
    gen = call.engine.stream(
        rp.ids,
        max_new_tokens=call.max_new_tokens,
        stop=stop or None,
        step_key=call.step_key,
        constraint=plan.constraint,
        timeout=call.timeout,
        **call.sampling,
    )
    result = None
    try:
        for chunk in gen:
            if chunk.result is not None:
                result = chunk.result
                continue
            delta, reasoning = chunk.text, ""
            if hidden:
                delta += "".join(hidden[t] for t in chunk.token_ids if t in hidden)
            if splitter is not None:
                reasoning, delta = splitter.push(delta)
            if tool_filter is not None:
                delta = tool_filter.push(delta)
            released += delta
            yield Delta(delta, len(chunk.token_ids), reasoning)
    finally:
        gen.close()
        touch_engine(call.engine, call.keep_alive)
    assert result is not None
    if splitter is not None:  # what the splitter held: an unclosed block's end, a reply's undecided start
        reasoning, delta = splitter.finish()
        if tool_filter is not None:
            delta = tool_filter.push(delta)
        released += delta
        if reasoning or delta:
            yield Delta(delta, 0, reasoning)
    calls: list[ParsedToolCall] = []
    invalid: list[InvalidToolCall] = []
    tail = ""
    if tool_filter is not None:
        calls, invalid, tail = tool_filter.finish()
    content = released + tail
    if calls or invalid:
        content = content.strip()
    yield Final(
        tail=tail,
        content=content,
        calls=calls,
        invalid=invalid,
        stats=result.stats,
        finish_reason="tool_calls" if calls else result.finish_reason,
        step_key=call.step_key,
        model_name=call.model_name,
        prompt_text=rp.text,
        reasoning=splitter.reasoning if splitter is not None else "",
    )
