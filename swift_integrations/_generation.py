"""One generation as a stream of events, shared by the LangChain and LlamaIndex adapters.

The adapters differ in their message and response types, not in how a reply is produced. Both turn
a call into a :class:`GenerationCall` (engine, rendered prompt, sampling, stops, step key, and the
grammar the reply must follow) and read :func:`generation_events`: one :class:`Start`, then
:class:`Delta` s of content that is safe to show, then one :class:`Final` with the parsed tool
calls and the SWIFT statistics. Framework-free, like the prompt it is given
(:mod:`swift_engine.prompting`).

How ``tool_choice`` and structured output become grammars (:func:`output_constraint`)
-------------------------------------------------------------------------------------
* ``"any"`` / ``"required"`` / a tool name: the reply is exactly one Hermes call
  (``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``) to one of the allowed tools,
  its arguments valid against the tool's JSON schema. ``<tool_call>\\n`` is prefilled into the
  prompt (it costs no output tokens and tells the model what it is writing).
* ``"auto"``: free text; once the model opens ``<tool_call>`` the rest of that call is
  constrained, so every call it decides to make parses.
* A JSON schema (``with_structured_output(method="json_schema")``, JSON mode with a schema): the
  reply is one JSON value matching it; JSON mode without a schema: any JSON object.

The grammar runs inside SWIFT's draft and verify steps (:mod:`swift_engine.constraints`), so a
constrained reply is exactly what constrained plain decoding would give.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from swift_engine.constraints import CALL_BEGIN, Constraint, JsonSchemaConstraint, ToolCallConstraint, call_head
from swift_engine.prompting import RenderedPrompt

from .stats import stats_metadata
from .tool_calls import TOOL_CALL_CLOSE, InvalidToolCall, ParsedToolCall, ToolCallStreamFilter, tool_function

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
        fn = choice.get("function") if isinstance(choice.get("function"), dict) else choice
        choice = fn.get("name")
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
) -> OutputPlan:
    """The :class:`OutputPlan` for a call's tools and structured-output request.

    ``tool_choice`` is normalised (:func:`normalize_tool_choice`). ``json_schema`` (with no tools)
    asks for one JSON value matching it. ``constrain=False`` keeps every prompt-side part (tool
    descriptions, prefill, parsing) but drops the grammar: what the adapters did before grammars,
    kept for comparisons (``swift-bench``'s parse-rate measurement).
    """
    tools = list(tools or [])
    if tools and json_schema is not None:
        raise ValueError("pass either tools or a response format, not both")
    if json_schema is not None:
        return OutputPlan(constraint=JsonSchemaConstraint(json_schema) if constrain else None)
    if not tools or tool_choice == "none":
        return OutputPlan()
    names = tuple(tool_function(t)["name"] for t in tools)
    if tool_choice == "auto":
        return OutputPlan(
            constraint=ToolCallConstraint(tools=tuple(tools), mode="auto") if constrain else None,
            stops=() if parallel_tool_calls else (TOOL_CALL_CLOSE,),  # the reply ends with its first call
            tool_names=names,
            show_tools=True,
        )
    allowed = tools if tool_choice == "any" else [t for t in tools if tool_function(t)["name"] == tool_choice]
    if not allowed:
        raise ValueError(f"tool_choice {tool_choice!r} names none of the tools {list(names)}")
    prefill = call_head(tool_function(allowed[0])["name"]) if len(allowed) == 1 else FORCED_CALL_PREFILL
    return OutputPlan(
        constraint=ToolCallConstraint(tools=tuple(allowed), mode="required", prefilled=prefill) if constrain else None,
        prefill=prefill,
        stops=(TOOL_CALL_CLOSE,),  # one call; the grammar ends there too
        tool_names=names,
        show_tools=True,
    )


def generation_events(call: GenerationCall) -> Iterator[Start | Delta | Final]:
    """The generation as events; closing the iterator stops the engine after its current step."""
    plan = call.plan
    rp = call.prompt
    yield Start(len(rp.ids), rp.text)
    tool_filter = ToolCallStreamFilter(plan.tool_names, prefill=plan.prefill) if plan.tool_names is not None else None
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
        **call.sampling,
    )
    result = None
    try:
        for chunk in gen:
            if chunk.result is not None:
                result = chunk.result
                continue
            delta = chunk.text
            if tool_filter is not None:
                delta = tool_filter.push(delta)
            released += delta
            yield Delta(delta, len(chunk.token_ids))
    finally:
        gen.close()
    assert result is not None
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
    )
