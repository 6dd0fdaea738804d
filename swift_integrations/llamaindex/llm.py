"""LlamaIndex LLM over a SWIFT engine: :class:`SwiftLlamaIndexLLM`.

A :class:`~llama_index.core.llms.function_calling.FunctionCallingLLM`, so it works anywhere
LlamaIndex takes an LLM: ``Settings.llm``, query engines and response synthesizers, chat engines,
and ``FunctionAgent`` / ``AgentWorkflow`` (tool calling).

Construction is cheap: the weights load on first use through the process-level engine cache
(:func:`swift_integrations.engine_cache.get_engine`), so this LLM and the LangChain classes share one
engine (weights and learned skip profiles) when they name the same model. ``engine=`` uses an
engine you built.

Prompts
-------
* ``chat`` / ``stream_chat`` / ``achat`` / ``astream_chat``: messages go through the model's chat
  template (:func:`swift_engine.chat.prompting.render_chat_prompt`; a plain
  ``System:/User:/Assistant:`` format for models without one). A ``messages_to_prompt=`` you pass
  replaces the template: its string is tokenized as is.
* ``complete`` & co.: ``formatted=True`` sends the prompt as is; otherwise a
  ``completion_to_prompt=`` you pass formats it; otherwise the prompt becomes one user message
  (after ``system_prompt``, if set) in the chat template. ``completion_to_prompt=lambda s: s``
  gives plain text continuation.

Step keys (which learned skip profile a call uses; resolved in :mod:`swift_integrations.llamaindex.steps`),
in order of precedence:

1. ``step_key=`` passed to the call (``llm.complete(..., step_key="x")``);
2. ``with instrument_tags({"swift_step": "x"}):`` (``llama_index.core.instrumentation``);
3. an enclosing ``with swift_engine.swift_step("x"):`` block;
4. the LLM's ``step_key`` field;
5. the prompt template of ``predict``/``stream``/``apredict``/``astream``/``structured_predict``:
   ``"prompt:<prompt_type>"`` (``prompt:text_qa``, ``prompt:refine``, ``prompt:summary``, ...;
   custom templates: ``"prompt:custom:<hash of the template>"``);
6. the active LlamaIndex span: the nearest enclosing non-LLM span, qualified by the nearest
   named component around it (an agent's ``name``): ``"span:BaseWorkflowAgent.run_agent_step@Agent"``;
7. a fingerprint of the system prompt (``"system:<hash>"``); else the engine's default.

Responses
---------
``raw`` and ``additional_kwargs`` carry the SWIFT statistics
(:func:`swift_integrations.stats.stats_metadata`: ``step_key``, ``acceptance_rate``,
``mean_accepted_per_step``, ``search_ran``, ``swift_profile``, ``swift_stats``), the token counts
(``prompt_tokens``/``completion_tokens``/``total_tokens``; in ``raw["usage"]`` too, where
LlamaIndex's ``TokenCountingHandler`` reads them) and the ``finish_reason``; ``raw["prompt"]`` is
the exact prompt text the model received. Streams carry them on their last item. They are built in
:mod:`swift_integrations.llamaindex.responses`; messages and tools are read in
:mod:`swift_integrations.llamaindex.messages`.

Reasoning models (Qwen3-style ``<think>``; :mod:`swift_engine.chat.reasoning`): ``thinking=`` switches
thinking through the chat template's ``enable_thinking``; the thinking is a ``ThinkingBlock`` of
the response message (``raw["thinking"]``; stream items: ``additional_kwargs["thinking_delta"]``,
as ``FunctionAgent`` reads it), never text, and a ``ThinkingBlock`` in history goes back to the
template. Prompts of your own ``messages_to_prompt`` are not split.

Tool calling: the Hermes-style format of :mod:`swift_engine.chat.tool_calls` (shared with the
LangChain adapter). ``tool_required=True`` / ``tool_choice="required"``/a tool name forces exactly
one call, grammar-constrained by the tools' JSON schemas (so ``structured_predict``, which goes
through a forced call, always parses); otherwise the model may write calls (several in one reply
are parallel calls), and each call it opens is constrained the same way. Calls are
:class:`~llama_index.core.base.llms.types.ToolCallBlock` blocks of the response message.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

from llama_index.core.base.llms.generic_utils import messages_to_prompt as generic_messages_to_prompt
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import (
    CompletionToPromptType,
    MessagesToPromptType,
    ToolSelection,
    default_completion_to_prompt,
)

from swift_engine.chat.prompting import (
    RenderedPrompt,
    escape_special_tokens,
    render_chat_prompt,
    special_token_texts,
    with_system_text,
)
from swift_engine.chat.tool_calls import (
    HERMES,
    new_tool_call_id,
    render_tools_system_prompt,
    tool_call_format,
    tool_function,
)
from swift_engine.config import SwiftConfig
from swift_engine.loading.model_info import read_model_info
from swift_integrations._generation import (
    Delta,
    Final,
    GenerationCall,
    OutputPlan,
    Start,
    generation_events,
    normalize_tool_choice,
    output_constraint,
)
from swift_integrations.async_bridge import aiter_in_thread
from swift_integrations.engine_cache import EngineLifetime, keep_alive_seconds, wrapper_engine
from swift_integrations.llamaindex.messages import as_llama_messages, message_tool_calls, neutral_messages, tool_spec
from swift_integrations.llamaindex.responses import invalid_call_dict, response_kwargs, response_raw, thinking_delta
from swift_integrations.llamaindex.steps import ensure_span_tracker, prompt_step, step_key_for_call
from swift_integrations.tool_followup import ToolFollowup, answer_turn, wants_answer_turn
from swift_integrations.validation import check_engine, check_stop_strings, check_timeout

__all__ = ["SwiftLlamaIndexLLM"]

logger = logging.getLogger(__name__)

#: Call-time keyword arguments the LLM reads; others are ignored with a warning.
_CALL_KWARGS = frozenset(
    {
        "temperature",
        "max_tokens",
        "top_p",
        "top_k",
        "seed",
        "stop",
        "step_key",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "timeout",
        "thinking",
    }
)
#: Keyword arguments LlamaIndex itself passes along that mean nothing here (ignored silently).
_QUIET_KWARGS = frozenset({"formatted", "verbose", "strict", "allow_parallel_tool_calls", "tool_required"})

#: The events of one generation. :func:`~swift_integrations._generation.generation_events` and
#: :func:`~swift_integrations.async_bridge.aiter_in_thread` return generators (typed as iterators):
#: closing one stops the engine after its current step, so the LLM closes them when a consumer stops.
_Events: TypeAlias = Generator[Start | Delta | Final, None, None]
_AsyncEvents: TypeAlias = AsyncGenerator[Start | Delta | Final, None]


def _string_prompt(engine: Any, text: str) -> RenderedPrompt:
    return RenderedPrompt(text=text, ids=list(engine.encode_prompt(text)))


# ====================================================================================== the LLM


@dataclass
class _Spec:
    """A call as requested (no engine needed): resolved eagerly in the caller's context."""

    kind: str  # "chat" | "complete"
    step_key: str | None
    options: dict[str, Any]
    messages: list[dict[str, Any]] | None = None  # chat
    prompt: str | None = None  # complete
    formatted: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: str = "none"
    parallel: bool = True
    thinking: bool | None = None  # the template's enable_thinking (None: its default)


class SwiftLlamaIndexLLM(EngineLifetime, FunctionCallingLLM):
    """A LlamaIndex LLM running a local model with SWIFT self-speculative decoding.

    Example::

        from llama_index.core import Settings
        Settings.llm = SwiftLlamaIndexLLM(max_tokens=128)      # the embedded SmolLM2-135M-Instruct
        Settings.llm.complete("Name a colour.").text
        Settings.llm.chat([ChatMessage(role="user", content="Hi")]).raw["acceptance_rate"]
    """

    model_id: str | None = Field(
        default=None,
        description="Model folder, .gguf file or hub id (downloaded when not cached, unless HF_HUB_OFFLINE=1 "
        "or local_files_only); None: the embedded SmolLM2-135M-Instruct.",
    )
    gguf_file: str | None = Field(default=None, description="GGUF file inside model_id (a folder or hub repo).")
    device: str = Field(default="auto", description="Torch device, or 'auto'.")
    dtype: str = Field(default="auto", description="Torch dtype, or 'auto'.")
    swift_config: SwiftConfig | None = Field(
        default=None, description="Engine configuration; LLMs with equal configs share one engine."
    )
    engine: Any = Field(
        default=None,
        exclude=True,
        description="An existing swift_engine.SwiftEngine (overrides model_id/gguf_file/device/dtype).",
    )
    temperature: float = Field(default=0.0, ge=0.0, description="Sampling temperature (0: greedy).")
    max_tokens: int = Field(default=256, ge=1, description="Maximum new tokens per call.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    seed: int | None = Field(default=None, description="Sampling seed (temperature > 0).")
    stop: list[str] | None = Field(default=None, description="Stop strings (not included in the output).")
    step_key: str | None = Field(
        default=None, description="Step key of every call of this LLM (see the module docs for precedence)."
    )
    thinking: bool | None = Field(
        default=None,
        description="Reasoning models (Qwen3-style <think>), as LlamaIndex's Ollama names it: True/False is the "
        "chat template's enable_thinking, None its default (reasoning= is accepted too). The thinking is "
        "returned as a ThinkingBlock (streams: additional_kwargs['thinking_delta']), never as text.",
    )
    context_window: int | None = Field(
        default=None, ge=1, description="Override of the model's context length (from its config)."
    )
    tool_followup: ToolFollowup = Field(
        default="auto",
        description="After tool results (auto tool choice): 'model' lets the model decide; 'answer' asks it for "
        "the answer with the tools hidden; 'auto': 'answer' for catalog models measured to call again instead.",
    )
    timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seconds a call may take before it raises GenerationTimeout (a TimeoutError); None: no limit.",
    )
    max_retries: int | None = Field(
        default=None,
        ge=0,
        description="Accepted for compatibility; a local generation has nothing transient to retry (no effect).",
    )
    keep_alive: float | str | None = Field(
        default=None,
        description="How long the model stays loaded after a call, as Ollama's keep_alive: seconds or "
        "'30s'/'5m'/'1h'; 0 unloads after each call, negative keeps it; None: loaded while the process lives.",
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit) of model_id.")
    local_files_only: bool | None = Field(
        default=None, description="True: never download; None: download when online unless HF_HUB_OFFLINE is set."
    )
    model_kwargs: dict[str, Any] | None = Field(
        default=None, description="Extra keyword arguments for the model's from_pretrained."
    )

    _engine_name: str | None = PrivateAttr(default=None)

    def __init__(self, **kwargs: Any) -> None:
        if "model" in kwargs and "model_id" not in kwargs:  # the usual LlamaIndex spelling
            kwargs["model_id"] = kwargs.pop("model")
        if "reasoning" in kwargs and "thinking" not in kwargs:  # LangChain's (ChatOllama's) spelling
            kwargs["thinking"] = kwargs.pop("reasoning")
        super().__init__(**kwargs)
        ensure_span_tracker()

    @field_validator("engine")
    @classmethod
    def _check_engine(cls, v: Any) -> Any:
        return check_engine(v)

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v: list[str] | None) -> list[str] | None:
        return check_stop_strings(v) or None

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _check_keep_alive(cls, v: float | str | None) -> float | str | None:
        keep_alive_seconds(v)
        return v

    @classmethod
    def class_name(cls) -> str:
        return "SwiftLlamaIndexLLM"

    # -- engine ---------------------------------------------------------------------------------
    @property
    def swift_engine(self) -> Any:
        """The engine behind this LLM (loaded on first access, shared through the engine cache)."""
        engine = wrapper_engine(self)
        self._engine_name = str(engine.model_name)
        return engine

    def _display_name(self) -> str:
        if self.model_id:
            return self.model_id
        if self.engine is not None:
            return str(self.engine.model_name)
        if self._engine_name is not None:
            return self._engine_name
        from swift_engine.loading.catalog import EMBEDDED_MODEL_NAME

        return EMBEDDED_MODEL_NAME

    @property
    def metadata(self) -> LLMMetadata:
        """``context_window`` comes from the model's config (this loads the engine on first access)."""
        return LLMMetadata(
            context_window=self._context_window(),
            num_output=self.max_tokens,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=self._display_name(),
        )

    def _context_window(self) -> int:
        if self.context_window is not None:
            return self.context_window
        if self.engine is None:  # read from the model's files: metadata doesn't load the weights
            n = read_model_info(self.model_id, self.gguf_file, self.revision).context_length
            if n:
                return n
        engine = self.swift_engine
        n = getattr(getattr(engine, "runner", None), "context_length", None)
        if not n:
            n = getattr(getattr(getattr(engine, "model", None), "config", None), "max_position_embeddings", None)
        return int(n) if n else 4096

    def tokenize(self, text: str) -> list[int]:
        """The model's token ids of ``text`` (usable as ``Settings.tokenizer`` for exact counting)."""
        return list(self.swift_engine.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- prompt handling ---------------------------------------------------------------------------
    def _custom_messages_to_prompt(self) -> MessagesToPromptType | None:
        """The user's ``messages_to_prompt``; ``None`` when it is LlamaIndex's default."""
        f = self.messages_to_prompt
        return f if f is not None and f is not generic_messages_to_prompt else None

    def _custom_completion_to_prompt(self) -> CompletionToPromptType | None:
        """The user's ``completion_to_prompt``; ``None`` when it is LlamaIndex's default."""
        f = self.completion_to_prompt
        return f if f is not None and f is not default_completion_to_prompt else None

    # -- per-call options and step key (caller's context, no engine) -------------------------------
    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(kwargs) - _CALL_KWARGS - _QUIET_KWARGS
        if unknown:
            logger.warning("SwiftLlamaIndexLLM ignores unknown keyword arguments %s", sorted(unknown))

        def pick(name: str) -> Any:
            v = kwargs.get(name)
            return getattr(self, name) if v is None else v

        stop = kwargs.get("stop")
        if isinstance(stop, str):
            stop = [stop]
        stops = check_stop_strings(stop if stop else self.stop)
        max_tokens = pick("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        return {
            "sampling": {
                "temperature": float(pick("temperature")),
                "top_p": float(pick("top_p")),
                "top_k": int(pick("top_k")),
                "seed": pick("seed"),
            },
            "max_new_tokens": max_tokens,
            "stop": stops,
            "timeout": check_timeout(pick("timeout")),
        }

    def resolve_step_key(self, explicit: str | None = None, system_text: str | None = None) -> str | None:
        """The step key a call made here and now would use (see the module docs for the order)."""
        return step_key_for_call(explicit, system_text, fallback=self.step_key)

    def _chat_spec(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> _Spec:
        options = self._options(kwargs)
        neutral = neutral_messages(messages)
        if not neutral:
            raise ValueError("no messages to respond to")
        tools = [tool_spec(t) for t in (kwargs.get("tools") or [])]
        names = [tool_function(t)["name"] for t in tools]
        choice = normalize_tool_choice(kwargs.get("tool_choice"), names) if tools else "none"
        if tools and wants_answer_turn(self.tool_followup, self.swift_engine, neutral, choice):
            neutral, tools, choice = answer_turn(neutral), [], "none"  # see tool_followup.py
        system_text = "\n\n".join(m["content"] for m in neutral if m["role"] == "system")
        return _Spec(
            kind="chat",
            step_key=self.resolve_step_key(kwargs.get("step_key"), system_text),
            options=options,
            messages=neutral,
            tools=tools or None,
            tool_choice=choice,
            parallel=kwargs.get("parallel_tool_calls") is not False,
            thinking=self._thinking(kwargs),
        )

    def _thinking(self, kwargs: dict[str, Any]) -> bool | None:
        thinking = kwargs.get("thinking")
        return self.thinking if thinking is None else bool(thinking)

    def _complete_spec(self, prompt: str, formatted: bool, kwargs: dict[str, Any]) -> _Spec:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        return _Spec(
            kind="complete",
            step_key=self.resolve_step_key(kwargs.get("step_key"), self.system_prompt),
            options=self._options(kwargs),
            prompt=prompt,
            formatted=formatted,
            thinking=self._thinking(kwargs),
        )

    # -- binding a spec to the engine (may run in a worker thread) ---------------------------------
    def _bind(self, spec: _Spec) -> GenerationCall:
        engine = self.swift_engine
        opts = spec.options
        if spec.kind == "complete":
            assert spec.prompt is not None
            plan = OutputPlan()
            completion_to_prompt = self._custom_completion_to_prompt()
            if spec.formatted:  # the caller's finished prompt, read as is
                prompt = _string_prompt(engine, spec.prompt)
            elif completion_to_prompt is not None:
                # the user's function wraps our prompt in its markers, and the prompt must not add any
                text = completion_to_prompt(escape_special_tokens(spec.prompt, special_token_texts(engine.tokenizer)))
                prompt = _string_prompt(engine, text)
            else:
                neutral = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + [
                    {"role": "user", "content": spec.prompt}
                ]
                prompt = render_chat_prompt(engine.tokenizer, neutral, reasoning=spec.thinking)
        else:
            assert spec.messages is not None
            messages_to_prompt = self._custom_messages_to_prompt()
            # the model's own call syntax; a custom messages_to_prompt gets the Hermes prompt, so Hermes
            fmt = HERMES if messages_to_prompt is not None else tool_call_format(engine.tokenizer)
            plan = output_constraint(spec.tools, spec.tool_choice, parallel_tool_calls=spec.parallel, tool_format=fmt)
            tools = spec.tools if plan.show_tools else None
            neutral = spec.messages
            if messages_to_prompt is not None:
                msgs = with_system_text(neutral, render_tools_system_prompt(tools)) if tools else neutral
                llama_msgs = as_llama_messages(msgs, special_token_texts(engine.tokenizer))
                prompt = _string_prompt(engine, messages_to_prompt(llama_msgs) + plan.prefill)
            else:
                prompt = render_chat_prompt(
                    engine.tokenizer, neutral, tools=tools, prefill=plan.prefill, reasoning=spec.thinking
                )
        return GenerationCall(
            engine=engine,
            model_name=self._display_name(),
            step_key=spec.step_key,
            sampling=opts["sampling"],
            max_new_tokens=opts["max_new_tokens"],
            stop=list(opts["stop"]),
            prompt=prompt,
            plan=plan,
            timeout=opts["timeout"],
            keep_alive=None if self.engine is not None else keep_alive_seconds(self.keep_alive),
        )

    def _spec_events(self, spec: _Spec) -> _Events:
        return cast(_Events, generation_events(self._bind(spec)))

    # -- responses ------------------------------------------------------------------------------
    @staticmethod
    def _chat_message(content: str, final: Final | None = None, thinking: str = "") -> ChatMessage:
        """The reply as a message; a reasoning model's thinking is a ``ThinkingBlock`` before the text."""
        thinking = final.reasoning if final is not None else thinking
        blocks: list[Any] = [ThinkingBlock(content=thinking)] if thinking else []
        blocks.append(TextBlock(text=content))
        kwargs: dict[str, Any] = {}
        if final is not None:
            blocks += [ToolCallBlock(tool_call_id=c.id, tool_name=c.name, tool_kwargs=c.arguments) for c in final.calls]
            if final.invalid:
                kwargs["invalid_tool_calls"] = [invalid_call_dict(c) for c in final.invalid]
        return ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks, additional_kwargs=kwargs)

    def _final_chat(self, final: Final, delta: str | None = None) -> ChatResponse:
        return ChatResponse(
            message=self._chat_message(final.content, final),
            raw=response_raw(final),
            delta=delta,
            additional_kwargs=response_kwargs(final),
        )

    @staticmethod
    def _final_completion(final: Final, delta: str | None = None) -> CompletionResponse:
        return CompletionResponse(
            text=final.content, raw=response_raw(final), delta=delta, additional_kwargs=response_kwargs(final)
        )

    @staticmethod
    def _last(events: Iterator[Start | Delta | Final]) -> Final:
        final = None
        for ev in events:
            if isinstance(ev, Final):
                final = ev
        assert final is not None
        return final

    # -- LlamaIndex: sync ---------------------------------------------------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._final_completion(self._last(self._spec_events(self._complete_spec(prompt, formatted, kwargs))))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        events = self._spec_events(self._complete_spec(prompt, formatted, kwargs))

        def gen() -> CompletionResponseGen:
            text = ""
            try:
                for ev in events:
                    if isinstance(ev, Delta) and (ev.text or ev.reasoning):
                        text += ev.text
                        yield CompletionResponse(text=text, delta=ev.text, additional_kwargs=thinking_delta(ev))
                    elif isinstance(ev, Final):
                        yield self._final_completion(ev, delta=ev.tail)
            finally:
                events.close()

        return gen()

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._final_chat(self._last(self._spec_events(self._chat_spec(messages, kwargs))))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        events = self._spec_events(self._chat_spec(messages, kwargs))

        def gen() -> ChatResponseGen:
            content = thinking = ""
            try:
                for ev in events:
                    if isinstance(ev, Delta) and (ev.text or ev.reasoning):
                        content += ev.text
                        thinking += ev.reasoning
                        yield ChatResponse(
                            message=self._chat_message(content, thinking=thinking),
                            delta=ev.text,
                            additional_kwargs=thinking_delta(ev),
                        )
                    elif isinstance(ev, Final):
                        yield self._final_chat(ev, delta=ev.tail)
            finally:
                events.close()

        return gen()

    # -- LlamaIndex: async (the engine works in a thread; cancelling stops it) -------------------------
    def _athread(self, spec: _Spec, name: str) -> _AsyncEvents:
        return cast(_AsyncEvents, aiter_in_thread(lambda: self._spec_events(spec), name=name))

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        spec = self._complete_spec(prompt, formatted, kwargs)
        final = None
        events = self._athread(spec, "swift-llamaindex-complete")
        try:
            async for ev in events:
                if isinstance(ev, Final):
                    final = ev
        finally:
            await events.aclose()
        assert final is not None
        return self._final_completion(final)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        spec = self._complete_spec(prompt, formatted, kwargs)

        async def gen() -> CompletionResponseAsyncGen:
            text = ""
            events = self._athread(spec, "swift-llamaindex-stream-complete")
            try:
                async for ev in events:
                    if isinstance(ev, Delta) and (ev.text or ev.reasoning):
                        text += ev.text
                        yield CompletionResponse(text=text, delta=ev.text, additional_kwargs=thinking_delta(ev))
                    elif isinstance(ev, Final):
                        yield self._final_completion(ev, delta=ev.tail)
            finally:
                await events.aclose()

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        spec = self._chat_spec(messages, kwargs)
        final = None
        events = self._athread(spec, "swift-llamaindex-chat")
        try:
            async for ev in events:
                if isinstance(ev, Final):
                    final = ev
        finally:
            await events.aclose()
        assert final is not None
        return self._final_chat(final)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        spec = self._chat_spec(messages, kwargs)

        async def gen() -> ChatResponseAsyncGen:
            content = thinking = ""
            events = self._athread(spec, "swift-llamaindex-stream-chat")
            try:
                async for ev in events:
                    if isinstance(ev, Delta) and (ev.text or ev.reasoning):
                        content += ev.text
                        thinking += ev.reasoning
                        yield ChatResponse(
                            message=self._chat_message(content, thinking=thinking),
                            delta=ev.text,
                            additional_kwargs=thinking_delta(ev),
                        )
                    elif isinstance(ev, Final):
                        yield self._final_chat(ev, delta=ev.tail)
            finally:
                await events.aclose()

        return gen()

    # -- prompt templates: their type names the step ---------------------------------------------------
    def predict(self, prompt: Any, **prompt_args: Any) -> str:
        with prompt_step(prompt, self):
            return super().predict(prompt, **prompt_args)

    def stream(self, prompt: Any, **prompt_args: Any) -> Any:
        with prompt_step(prompt, self):
            return super().stream(prompt, **prompt_args)  # the step key is resolved before this returns

    async def apredict(self, prompt: Any, **prompt_args: Any) -> str:
        with prompt_step(prompt, self):
            return await super().apredict(prompt, **prompt_args)

    async def astream(self, prompt: Any, **prompt_args: Any) -> Any:
        with prompt_step(prompt, self):
            return await super().astream(prompt, **prompt_args)

    def structured_predict(
        self, output_cls: Any, prompt: Any, llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any
    ) -> Any:
        with prompt_step(prompt, self):
            return super().structured_predict(output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args)

    async def astructured_predict(
        self, output_cls: Any, prompt: Any, llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any
    ) -> Any:
        with prompt_step(prompt, self):
            return await super().astructured_predict(output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args)

    # -- function calling -------------------------------------------------------------------------------
    def _prepare_chat_with_tools(
        self,
        tools: Sequence[Any],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Chat kwargs for a tool call: the tools as OpenAI dicts, ``tool_choice`` and ``parallel_tool_calls``.

        ``tool_required=True`` forces a call (any tool, or ``tool_choice`` when it names one).
        """
        specs = [tool_spec(t) for t in tools]
        messages = list(chat_history or [])
        if isinstance(user_msg, str):
            user_msg = ChatMessage(role=MessageRole.USER, content=user_msg)
        if user_msg is not None:
            messages.append(user_msg)
        if tool_required and (tool_choice is None or tool_choice in ("auto", "none")):
            tool_choice = "required"
        return {
            "messages": messages,
            "tools": specs or None,
            "tool_choice": tool_choice if specs else None,
            "parallel_tool_calls": allow_parallel_tool_calls,
            **kwargs,
        }

    def _validate_chat_with_tools_response(
        self, response: ChatResponse, tools: Sequence[Any], allow_parallel_tool_calls: bool = False, **kwargs: Any
    ) -> ChatResponse:
        """Without parallel calls, only the first call is kept."""
        if not allow_parallel_tool_calls:
            blocks, seen = [], False
            for b in response.message.blocks:
                if isinstance(b, ToolCallBlock):
                    if seen:
                        continue
                    seen = True
                blocks.append(b)
            response.message.blocks = blocks
        return response

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The calls of a response (several when the model made parallel calls)."""
        calls = message_tool_calls(response.message)
        if not calls:
            if error_on_no_tool_call:
                invalid = response.message.additional_kwargs.get("invalid_tool_calls") or []
                detail = "; ".join(str(c.get("error")) for c in invalid)
                raise ValueError(
                    "Expected at least one tool call, but got 0 tool calls."
                    + (f" Invalid calls: {detail}" if detail else "")
                )
            return []
        return [
            ToolSelection(tool_id=c["id"] or new_tool_call_id(), tool_name=c["name"], tool_kwargs=c["arguments"])
            for c in calls
        ]
