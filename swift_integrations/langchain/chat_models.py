"""LangChain chat model over a SWIFT engine: :class:`SwiftChatModel`.

Its fields, engine access and step keys are shared with :class:`~swift_integrations.langchain.llms.SwiftLLM`
(:mod:`swift_integrations.langchain.base`, where the step-key precedence is listed).

Chat message rendering: see :func:`swift_engine.chat.prompting.render_chat_prompt` (templates with
native tool support get tools natively; otherwise the Hermes format of
:mod:`swift_engine.chat.tool_format`; models without a chat template get the plain
``System:/User:/Assistant:`` format). This module only translates LangChain's messages, tools and
outputs to and from the framework-neutral forms (:mod:`swift_integrations.langchain.messages` in,
:mod:`swift_integrations.langchain.outputs` out).

Tool calling: ``bind_tools`` with ``tool_choice`` ``"auto"`` (the model may write a call; once it
opens one, the call is grammar-constrained and parsed), ``"none"`` (tools not shown),
``"any"``/``"required"``/a tool name (exactly one call, constrained by the tools' JSON schemas).
``with_structured_output`` constrains the reply to the schema too (see
:mod:`swift_integrations._generation` and :mod:`swift_engine.decoding.constraints`). ``response_metadata``
carries ``finish_reason`` (the engine's ``"stop"``/``"length"``/``"eos"``, or ``"tool_calls"``)
and the SWIFT statistics (see :func:`swift_integrations.stats.stats_metadata`).

Reasoning models (Qwen3-style ``<think>``; :mod:`swift_engine.chat.reasoning`): ``reasoning=`` switches
thinking through the template's ``enable_thinking``; the thinking comes back in
``additional_kwargs["reasoning_content"]`` (and as a reasoning content block in v1 output), never
in ``content``, and goes back to the template from history.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, Literal, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.model_profile import ModelProfile
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel

from swift_engine.chat.prompting import render_chat_prompt, with_system_text
from swift_engine.chat.tool_calls import tool_call_format, tool_function
from swift_engine.loading.model_info import ModelInfo, read_model_info
from swift_integrations._generation import (
    Final,
    GenerationCall,
    generation_events,
    normalize_tool_choice,
    output_constraint,
)
from swift_integrations.async_bridge import aiter_in_thread
from swift_integrations.langchain.base import MODEL_CONFIG, AsyncEvents, Events, SwiftFields
from swift_integrations.langchain.messages import as_openai_tools, neutral_messages, response_schema
from swift_integrations.langchain.outputs import ChunkBuilder, chat_result
from swift_integrations.step_keys import system_prompt_step_key
from swift_integrations.tool_followup import ToolFollowup, answer_turn, wants_answer_turn

__all__ = ["SwiftChatModel"]

#: Call-time keyword arguments the chat model understands (anything else is a TypeError).
_CALL_KWARGS = frozenset(
    {
        "temperature",
        "max_tokens",
        "num_predict",
        "top_p",
        "top_k",
        "seed",
        "step_key",
        "model",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "stream",
        "timeout",
        "reasoning",
    }
)


class SwiftChatModel(SwiftFields, BaseChatModel):
    """A LangChain chat model running a local model with SWIFT self-speculative decoding.

    SWIFT drafts tokens with the model itself (some layers skipped) and verifies them in one
    pass, so the output is the model's own; which layers to skip is learned per step of your
    pipeline (the step key, see :mod:`swift_integrations.langchain.base`).

    Setup:
        Install the package with its LangChain extra. The default model, SmolLM2-135M-Instruct,
        ships with the package; other models load from a folder, a ``.gguf`` file or the
        Hugging Face Hub.

        .. code-block:: bash

            pip install -U "swift-accel[langchain]"

    Key init args — completion params:
        model: str | None
            Model folder, ``.gguf`` file, hub id or catalog short name; ``None`` (default): the
            embedded SmolLM2-135M-Instruct.
        temperature: float
            Sampling temperature; ``0.0`` (default) is greedy.
        max_tokens: int
            Maximum new tokens per call (default 256).
        stop: list[str] | None
            Stop strings (of any length in tokens); not included in the output.
        reasoning: bool | None
            Thinking of reasoning models (the chat template's ``enable_thinking``).

    Key init args — engine params:
        device: str
            Torch device, or ``"auto"``.
        dtype: str
            ``"auto"`` (on CPU the file's precision: int4 for a 4-bit GGUF such as the embedded
            model), ``"float32"`` (``transformers``' own text), ``"bfloat16"``, ``"int8"``, ``"int4"``, ...
        engine: SwiftEngine | None
            An engine you built; overrides ``model``, ``device`` and ``dtype``.
        timeout: float | None
            Seconds a call may take before it raises a ``TimeoutError``.
        keep_alive: float | str | None
            How long the model stays loaded after a call, as Ollama's: ``"5m"``, ``30``, ``0``, ``-1``.
        step_key: str | None
            The step key of every call; by default it comes from the run (node, run name, tags).

    See the fields below for the full list.

    Instantiate:
        .. code-block:: python

            from swift_integrations.langchain import SwiftChatModel

            llm = SwiftChatModel(
                model=None,  # the embedded model; or a folder, a .gguf file, a hub id
                temperature=0.0,
                max_tokens=128,
                # other params ...
            )

    Invoke:
        .. code-block:: python

            messages = [("system", "Be brief."), ("human", "Name a colour.")]
            msg = llm.invoke(messages)
            msg.content
            msg.usage_metadata  # {"input_tokens": 21, "output_tokens": 7, "total_tokens": 28}
            msg.response_metadata["acceptance_rate"]  # and "step_key", "finish_reason", "swift_stats", ...

    Stream:
        .. code-block:: python

            for chunk in llm.stream(messages):
                print(chunk.content, end="")

        .. code-block:: python

            stream = llm.stream(messages)
            full = next(stream)
            for chunk in stream:
                full += chunk  # the whole message, with its usage and response_metadata

    Async:
        .. code-block:: python

            await llm.ainvoke(messages)
            async for chunk in llm.astream(messages):
                print(chunk.content, end="")

        The engine works in a thread; cancelling the task stops the generation.

    Tools (bind_tools):
        .. code-block:: python

            from langchain_core.tools import tool


            @tool
            def get_weather(city: str) -> str:
                \"\"\"Get the current weather in a city.\"\"\"
                return f"It is sunny in {city}."


            msg = llm.bind_tools([get_weather], tool_choice="any").invoke("What is the weather in Paris?")
            msg.tool_calls  # [{"name": "get_weather", "args": {"city": "Paris"}, "id": "call_...", ...}]

        ``tool_choice``: ``"auto"`` (default: the model decides; the embedded 135M model never calls
        by itself), ``"none"``, ``"any"``/``"required"`` (a call is forced) or a tool name. A call
        is grammar-constrained by the tool's JSON schema, so it always parses (a call that
        ``max_tokens`` cuts short is closed by the grammar).

    Structured output:
        .. code-block:: python

            from pydantic import BaseModel


            class Person(BaseModel):
                name: str
                age: int


            llm.with_structured_output(Person).invoke("Alice is 30 years old.")
            # Person(name='Alice', age=30)

        ``method``: ``"function_calling"`` (default), ``"json_schema"`` or ``"json_mode"``; each
        constrains the reply to the schema, so it parses unless ``max_tokens`` cuts it short.
        ``include_raw=True`` returns ``{"raw", "parsed", "parsing_error"}``.
    """

    model_config = MODEL_CONFIG

    #: After tool results (``auto`` tool choice): ``"model"`` lets the model decide; ``"answer"``
    #: asks it for the answer with the tools hidden; ``"auto"``: ``"answer"`` for catalog models
    #: measured to call again instead of answering. See :mod:`swift_integrations.tool_followup`.
    tool_followup: ToolFollowup = "auto"
    reasoning: bool | None = None
    """Thinking of reasoning models (Qwen3-style ``<think>``), as ChatOllama names it: ``True``/``False``
    is the chat template's ``enable_thinking``; ``None`` leaves the template's default. Whatever the
    setting, a reasoning model's thinking never lands in ``content``: it is returned in
    ``additional_kwargs["reasoning_content"]`` (a reasoning content block with ``output_version="v1"``)
    and rendered back from history as the template wants. Per call: ``invoke(..., reasoning=False)``."""

    @property
    def _llm_type(self) -> str:
        return "swift-chat"

    def _resolve_model_profile(self) -> ModelProfile | None:
        """What agents and middleware may ask of this model (``create_agent``, summarization).

        Read from the model's files without loading it (:mod:`swift_engine.loading.model_info`), or from
        ``engine=``. Tool calling, tool choice and structured output are the engine's grammars,
        so they hold for every model; reasoning output for templates with ``<think>`` blocks.
        """
        if self.engine is not None:
            template = getattr(self.engine.tokenizer, "chat_template", None)
            info = ModelInfo(self.engine.runner.context_length, template if isinstance(template, str) else None)
        else:
            info = read_model_info(self.model_id, self.gguf_file, self.revision)
        profile = ModelProfile(
            name=self._display_name(),
            open_weights=True,
            text_inputs=True,
            image_inputs=False,
            audio_inputs=False,
            video_inputs=False,
            pdf_inputs=False,
            text_outputs=True,
            tool_calling=True,
            tool_choice=True,
            tool_call_streaming=True,
            structured_output=True,
            reasoning_output=info.reasoning,
            temperature=True,
        )
        if info.context_length:
            profile["max_input_tokens"] = info.context_length
        return profile

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {**self._swift_params(), "reasoning": self.reasoning}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        return self._swift_ls_params(super()._get_ls_params(stop=stop, **kwargs), "chat", stop, kwargs)

    # -- public entry points: resolve the step key where the run config is known ---------------
    def invoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        return super().invoke(input, config, stop=stop, **self._entry_kwargs(config, kwargs))

    async def ainvoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        return await super().ainvoke(input, config, stop=stop, **self._entry_kwargs(config, kwargs))

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        return super().stream(input, config, stop=stop, **self._entry_kwargs(config, kwargs))

    def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        return super().astream(input, config, stop=stop, **self._entry_kwargs(config, kwargs))

    # -- tools and structured output ----------------------------------------------------------
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | Any],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        parallel_tool_calls: bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (LangChain tools, pydantic models, functions, OpenAI dicts).

        ``tool_choice``: ``"auto"``/``None`` (the model decides), ``"none"`` (tools hidden),
        ``"any"``/``"required"``/``True`` (a call is forced), or a tool name (that tool is forced).
        ``parallel_tool_calls=False`` ends the reply after its first call. ``strict`` is accepted
        for compatibility; forced calls always fill every required argument.
        """
        formatted = [_openai_tool(t, strict) for t in tools]
        names = [tool_function(t)["name"] for t in formatted]
        extra: dict[str, Any] = {"tool_choice": normalize_tool_choice(tool_choice, names)}
        if parallel_tool_calls is not None:
            extra["parallel_tool_calls"] = parallel_tool_calls
        return super().bind(tools=formatted, **extra, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: Literal["function_calling", "json_schema", "json_mode"] = "function_calling",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Replies parsed into ``schema`` (a pydantic model, a TypedDict or a JSON schema dict).

        Every method constrains the reply with a grammar built from the schema, so it always
        parses and validates (unless ``max_tokens`` cuts it short).
        ``function_calling`` (default, as ChatOpenAI's; ChatOllama defaults to ``json_schema``): a forced
        call of a tool shaped like the schema. It is the default because tool-calling models (the agent
        model) were trained to fill tool arguments, and LangChain's structured-output tooling
        (``include_raw``, tracing) sees a tool call; the grammar makes every method equally valid.
        ``json_schema``: the reply is a JSON object for the schema, which the prompt describes.
        ``json_mode``: the same grammar, but the schema is not added to the prompt (describe the
        keys yourself, as with OpenAI's JSON mode). ``include_raw=True`` returns
        ``{"raw", "parsed", "parsing_error"}``.
        """
        if kwargs:
            raise ValueError(f"Received unsupported arguments {kwargs}")
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        ls_format = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
        parser: Runnable
        if method == "function_calling":
            name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools([schema], tool_choice=name, strict=strict, ls_structured_output_format=ls_format)
            parser = (
                PydanticToolsParser(tools=[cast("type[BaseModel]", schema)], first_tool_only=True)
                if is_pydantic
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
        elif method in ("json_schema", "json_mode"):
            if method == "json_schema":
                js = _json_schema(schema)
                fmt = {"type": "json_schema", "json_schema": {"name": js.get("title", "output"), "schema": js}}
            else:
                fmt = {"type": "json_object", "schema": _json_schema(schema)}
            llm = self.bind(response_format=fmt, ls_structured_output_format=ls_format)
            parser = (
                PydanticOutputParser(pydantic_object=cast("type[BaseModel]", schema))
                if is_pydantic
                else JsonOutputParser()
            )
        else:
            raise ValueError(f"method must be 'function_calling', 'json_schema' or 'json_mode', got {method!r}")
        if include_raw:
            parser_assign = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
            parser_none = RunnablePassthrough.assign(parsed=lambda _: None)
            return RunnableMap(raw=llm) | parser_assign.with_fallbacks([parser_none], exception_key="parsing_error")
        return llm | parser

    # -- preparing a call ----------------------------------------------------------------------
    def _prepare(
        self, messages: list[BaseMessage], stop: list[str] | None, run_manager: Any, kwargs: dict[str, Any]
    ) -> GenerationCall:
        opts = self._options(stop, kwargs, _CALL_KWARGS)
        engine = self._engine_for(kwargs.get("model"))
        neutral = neutral_messages(messages)
        if not neutral:
            raise ValueError("no messages to respond to")
        system_text = "\n\n".join(m["content"] for m in neutral if m["role"] == "system")
        step_key = kwargs.get("step_key") or self._runtime_step_key(run_manager) or system_prompt_step_key(system_text)

        tools = as_openai_tools(kwargs.get("tools") or [])
        names = [tool_function(t)["name"] for t in tools]
        choice = normalize_tool_choice(kwargs.get("tool_choice"), names) if tools else "none"
        if tools and wants_answer_turn(self.tool_followup, engine, neutral, choice):
            neutral, tools, choice = answer_turn(neutral), [], "none"  # see tool_followup.py
        schema: dict[str, Any] | bool | None = None
        response_format = kwargs.get("response_format")
        if response_format:
            schema, instruction = response_schema(response_format)
            if instruction:
                neutral = with_system_text(neutral, instruction)
        plan = output_constraint(
            tools,
            choice,
            parallel_tool_calls=kwargs.get("parallel_tool_calls") is not False,
            json_schema=schema,
            tool_format=tool_call_format(engine.tokenizer),  # the model's own call syntax (Hermes by default)
        )
        reasoning = kwargs.get("reasoning")
        prompt = render_chat_prompt(
            engine.tokenizer,
            neutral,
            tools=tools if plan.show_tools else None,
            prefill=plan.prefill,
            reasoning=self.reasoning if reasoning is None else bool(reasoning),
        )
        return GenerationCall(
            engine=engine,
            model_name=self._display_name(kwargs.get("model"))
            if kwargs.get("model")
            else (self.model_id or str(engine.model_name)),
            step_key=step_key,
            sampling=opts["sampling"],
            max_new_tokens=self._reply_budget(len(prompt.ids), opts["max_new_tokens"]),
            stop=list(opts["stop"]),
            prompt=prompt,
            plan=plan,
            timeout=opts["timeout"],
            **self._lifetime(),
        )

    # -- LangChain hooks -------------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._prepare(messages, stop, run_manager, kwargs)
        final = None
        for ev in generation_events(call):
            if isinstance(ev, Final):
                final = ev
        assert final is not None
        return chat_result(final)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        final = None
        events = cast(
            AsyncEvents,
            aiter_in_thread(
                lambda: generation_events(self._prepare(messages, stop, run_manager, kwargs)), name="swift-chat"
            ),
        )
        try:
            async for ev in events:
                if isinstance(ev, Final):
                    final = ev
        finally:
            await events.aclose()  # on cancellation too: the worker stops generating
        assert final is not None
        return chat_result(final)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call = self._prepare(messages, stop, run_manager, kwargs)
        builder = ChunkBuilder()
        events = cast(Events, generation_events(call))
        try:
            for ev in events:
                chunk = builder.feed(ev)
                if chunk is not None:
                    yield chunk
        finally:
            events.close()

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        builder = ChunkBuilder()
        events = cast(
            AsyncEvents,
            aiter_in_thread(
                lambda: generation_events(self._prepare(messages, stop, run_manager, kwargs)), name="swift-chat-stream"
            ),
        )
        try:
            async for ev in events:
                chunk = builder.feed(ev)
                if chunk is not None:
                    yield chunk
        finally:
            await events.aclose()


def _schema_with_defs(model: Any) -> dict[str, Any] | None:
    """A pydantic model's own JSON schema where it has ``$defs`` (else None: LangChain's conversion is kept).

    A recursive model's schema is a top-level ``$ref``; it is resolved to an object schema that
    keeps ``$defs`` for the references inside, as tool parameters must be an object.
    """
    if not (isinstance(model, type) and issubclass(model, BaseModel)):  # pydantic 2 (v1 models: LangChain's)
        return None
    own = model.model_json_schema()
    defs = own.get("$defs")
    if not defs:
        return None
    ref = own.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/") and ref[8:] in defs:
        own = {**defs[ref[8:]], "$defs": defs}
    return own


def _json_schema(schema: Any) -> dict[str, Any]:
    """``schema``'s JSON schema; a pydantic model with ``$defs`` keeps them (see :func:`_openai_tool`)."""
    return _schema_with_defs(schema) or convert_to_json_schema(schema)


def _openai_tool(tool: Any, strict: bool | None = None) -> dict[str, Any]:
    """``tool`` in OpenAI's format; a pydantic model's parameters keep their ``$defs`` and ``$ref``.

    LangChain's conversion inlines references, and a recursive model (``children: list["Tree"]``)
    ends as ``items: {}``: the grammar then accepts anything there and pydantic rejects the reply.
    Pydantic's own schema keeps the recursion, which the grammar enforces.
    """
    formatted = convert_to_openai_tool(tool, strict=strict)
    own = _schema_with_defs(tool)
    if own is not None:
        own.pop("title", None)
        own.pop("description", None)
        formatted["function"]["parameters"] = own
    return formatted
