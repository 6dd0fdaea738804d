"""An OpenAI request as a :class:`~swift_integrations._generation.GenerationCall`: the server's bridge to the engine.

The server adds no generation logic of its own: a request becomes the same
:class:`~swift_integrations._generation.GenerationCall` the LangChain adapter builds (tools and
``response_format`` become grammars through :func:`~swift_integrations._generation.output_constraint`,
the prompt comes from :func:`~swift_engine.chat.prompting.render_chat_prompt`), so a reply over HTTP is
the reply the in-process adapters give. The body's fields are read by
:mod:`swift_integrations.serve.request_fields`; what the engine refuses (an empty prompt, one past the
context, a prompt whose characters alone could not fit it) is a 400 here, within the request's slot and deadline.
"""

from typing import TYPE_CHECKING, Any

from swift_integrations.serve import request_fields as fields
from swift_integrations.serve.errors import bad_request

if TYPE_CHECKING:  # pragma: no cover
    from swift_engine.engine import SwiftEngine
    from swift_integrations._generation import GenerationCall
    from swift_integrations.tool_followup import ToolFollowup

__all__ = ["DEFAULT_COMPLETION_MAX_TOKENS", "DEFAULT_MAX_TOKENS", "chat_call", "completion_call"]

#: max_tokens when a request names none (OpenAI: the model's limit; ours keeps a small model brief)
DEFAULT_MAX_TOKENS = 512
#: OpenAI's default for ``/v1/completions``
DEFAULT_COMPLETION_MAX_TOKENS = 16


def chat_call(
    engine: "SwiftEngine",
    body: dict[str, Any],
    *,
    model_name: str,
    step_header: str | None,
    timeout: float | None,
    tool_followup: "ToolFollowup" = "auto",
) -> "GenerationCall":
    """The :class:`GenerationCall` of a chat request (as the LangChain adapter's ``_prepare`` builds it).

    The step key is the request's (``metadata.swift_step``, ``X-Swift-Step``), else a fingerprint of
    its system prompt, as for the adapters' calls with nothing else to go by: clients over HTTP
    rarely name their steps, and calls sharing a system prompt are usually one pipeline step.
    ``tool_followup``: see :mod:`.tool_followup` (after tool results, ask models that would only
    call again for the answer).
    """
    from swift_engine.chat.prompting import render_chat_prompt, with_system_text
    from swift_engine.chat.tool_calls import tool_function
    from swift_engine.chat.tool_format import tool_call_format
    from swift_integrations._generation import GenerationCall, normalize_tool_choice, output_constraint
    from swift_integrations.step_keys import system_prompt_step_key
    from swift_integrations.tool_followup import answer_turn, wants_answer_turn

    fields.known_fields(body, fields.CHAT_FIELDS)
    neutral = fields.neutral_messages(body.get("messages"))
    fields.check_prompt_size(sum(len(m["content"]) for m in neutral), engine.max_prompt_chars, "messages")
    system_text = "\n\n".join(m["content"] for m in neutral if m["role"] == "system")
    step_key = fields.step_key(body, step_header) or system_prompt_step_key(system_text)
    sampling = fields.sampling(body)
    tools = fields.tools(body)
    names = [tool_function(t)["name"] for t in tools]
    try:
        choice = normalize_tool_choice(body.get("tool_choice"), names) if tools else "none"
    except ValueError as exc:
        raise bad_request(str(exc), "tool_choice") from None
    if not tools and body.get("tool_choice") not in (None, "none", "auto"):
        raise bad_request("'tool_choice' needs 'tools'", "tool_choice")
    if tools and wants_answer_turn(tool_followup, engine, neutral, choice):
        neutral, tools, choice = answer_turn(neutral), [], "none"
    schema, instruction = fields.response_schema(body.get("response_format"))
    if instruction:
        neutral = with_system_text(neutral, instruction)
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise bad_request("'parallel_tool_calls' must be a boolean", "parallel_tool_calls")
    try:
        plan = output_constraint(
            tools,
            choice,
            parallel_tool_calls=parallel is not False,
            json_schema=schema,
            tool_format=tool_call_format(engine.tokenizer),
        )
        prompt = render_chat_prompt(
            engine.tokenizer, neutral, tools=tools if plan.show_tools else None, prefill=plan.prefill
        )
        engine.encode_prompt(prompt.ids)  # the engine's checks: not empty, fits the context
    except ValueError as exc:
        raise bad_request(str(exc), "messages") from None
    return GenerationCall(
        engine=engine,
        model_name=model_name,
        step_key=step_key,
        sampling=sampling,
        max_new_tokens=fields.max_tokens(body, DEFAULT_MAX_TOKENS),
        stop=fields.stops(body),
        prompt=prompt,
        plan=plan,
        timeout=timeout,
    )


def completion_call(
    engine: "SwiftEngine", body: dict[str, Any], *, model_name: str, step_header: str | None, timeout: float | None
) -> "GenerationCall":
    """The :class:`GenerationCall` of a ``/v1/completions`` request: the prompt read as plain text."""
    from swift_engine.chat.prompting import RenderedPrompt, encode_text
    from swift_integrations._generation import GenerationCall

    fields.known_fields(body, fields.COMPLETION_FIELDS)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise bad_request("'prompt' must be a non-empty string", "prompt")
    for name in ("echo", "suffix", "best_of"):
        if body.get(name) not in (None, False, 1):
            raise bad_request(f"'{name}' is not supported", name)
    sampling = fields.sampling(body)
    fields.check_prompt_size(len(prompt), engine.max_prompt_chars, "prompt")
    try:  # untrusted text: special-token spellings stay text
        ids = encode_text(engine.tokenizer, prompt, add_special_tokens=True)
        engine.encode_prompt(ids)
    except ValueError as exc:
        raise bad_request(str(exc), "prompt") from None
    return GenerationCall(
        engine=engine,
        model_name=model_name,
        step_key=fields.step_key(body, step_header),
        sampling=sampling,
        max_new_tokens=fields.max_tokens(body, DEFAULT_COMPLETION_MAX_TOKENS),
        stop=fields.stops(body),
        prompt=RenderedPrompt(text=prompt, ids=ids),
        timeout=timeout,
    )
