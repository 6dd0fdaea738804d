"""LangChain models over a SWIFT engine: :class:`SwiftChatModel` and :class:`SwiftLLM`.

Construction is cheap: the weights load on the first call, through the process-level engine
cache (:func:`swift_integrations.engine_cache.get_engine`), so every wrapper of one model shares one
engine, its weights and its learned skip profiles. Pass ``engine=`` to use an engine you built.

Step keys (which learned skip profile a call uses; resolved in :mod:`.langchain_steps`), in order
of precedence:

1. ``step_key`` given explicitly: ``model.bind(step_key=...)`` / ``invoke(..., step_key=...)``;
2. ``config["metadata"]["swift_step"]``;
3. an enclosing ``with swift_engine.swift_step("..."):`` block;
4. the wrapper's ``step_key`` field;
5. the LangGraph node running the call (``metadata["langgraph_node"]``) → ``"langgraph:<node>"``;
6. the run name (``model.with_config(run_name=...)`` or ``config["run_name"]``) → ``"run:<name>"``;
7. the user's tags of the enclosing runnables (``chain.with_config(tags=[...])``; tags propagate
   to children, run names do not) → ``"tags:<a>+<b>"``;
8. chat models: a fingerprint of the system prompt → ``"system:<hash>"``; else the engine's default.

Chat message rendering: see :func:`swift_engine.chat.prompting.render_chat_prompt` (templates with
native tool support get tools natively; otherwise the Hermes format of
:mod:`swift_engine.chat.tool_format`; models without a chat template get the plain
``System:/User:/Assistant:`` format). This module only translates LangChain's messages, tools and
outputs to and from the framework-neutral forms.

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

import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.llms import BaseLLM
from langchain_core.language_models.model_profile import ModelProfile
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.outputs import (
    ChatGeneration,
    ChatGenerationChunk,
    ChatResult,
    Generation,
    GenerationChunk,
    LLMResult,
)
from langchain_core.runnables import Runnable, RunnableConfig, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.json import parse_partial_json
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator

from swift_engine.chat.prompting import RenderedPrompt, encode_text, render_chat_prompt, with_system_text
from swift_engine.chat.tool_calls import tool_call_format, tool_function
from swift_engine.config import SwiftConfig
from swift_engine.loading.model_info import ModelInfo, read_model_info
from swift_integrations._generation import (
    Delta,
    Final,
    GenerationCall,
    Start,
    generation_events,
    normalize_tool_choice,
    output_constraint,
)
from swift_integrations.async_bridge import aiter_in_thread
from swift_integrations.engine_cache import EngineLifetime, get_engine, keep_alive_seconds, wrapper_engine
from swift_integrations.langchain.steps import config_step_key, runtime_step_key
from swift_integrations.stats import usage_from_stats
from swift_integrations.step_keys import system_prompt_step_key
from swift_integrations.tool_followup import ToolFollowup, answer_turn, wants_answer_turn
from swift_integrations.validation import check_engine, check_stop_strings, check_timeout

__all__ = ["SwiftChatModel", "SwiftLLM"]

#: Call-time keyword arguments the models understand (anything else is a TypeError).
_CALL_KWARGS = frozenset(
    {
        "temperature",
        "max_tokens",
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
_LLM_CALL_KWARGS = frozenset(
    {"temperature", "max_tokens", "top_p", "top_k", "seed", "step_key", "model", "stream", "timeout"}
)


# ====================================================================================== shared fields


class _SwiftFields(EngineLifetime, BaseModel):
    """Fields and engine access shared by :class:`SwiftChatModel` and :class:`SwiftLLM`."""

    model_config = ConfigDict(
        populate_by_name=True, arbitrary_types_allowed=True, protected_namespaces=(), extra="forbid"
    )

    #: Model folder, ``.gguf`` file or hub id (downloaded when not cached, unless ``HF_HUB_OFFLINE=1``
    #: or ``local_files_only``); ``None``: the embedded SmolLM2-135M-Instruct.
    model_id: str | None = Field(default=None, alias="model")
    #: GGUF file inside ``model_id`` (a folder or hub repo).
    gguf_file: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    #: Engine configuration; wrappers with equal configs share one engine.
    swift_config: SwiftConfig | None = None
    #: An existing :class:`~swift_engine.SwiftEngine`; overrides ``model_id``/``gguf_file``/``device``/``dtype``.
    engine: Any = Field(default=None, exclude=True)
    temperature: float = Field(default=0.0, ge=0.0)
    #: Maximum new tokens per call.
    max_tokens: int = Field(default=256, ge=1)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    stop: list[str] | None = None
    seed: int | None = None
    streaming: bool = False
    #: Fixed step key for every call of this wrapper (see the module docs for precedence).
    step_key: str | None = None
    #: Seconds a call may take before it raises ``GenerationTimeout`` (a ``TimeoutError``); the
    #: engine stays usable. ``None``: no limit. Also a call-time argument.
    timeout: float | None = Field(default=None, gt=0)
    #: Accepted for LangChain's standard parameters; a local generation has no transient failure
    #: (network, rate limit) to retry, and a timed-out call is not retried, so it has no effect.
    max_retries: int | None = Field(default=None, ge=0)
    #: How long the model stays loaded after a call, as Ollama's ``keep_alive``: seconds or
    #: ``"30s"``/``"5m"``/``"1h"``; ``0`` unloads after each call, negative keeps it; ``None``
    #: (default) leaves it loaded while the process lives. See :mod:`.engine_cache`.
    keep_alive: float | str | None = None
    #: Hub revision (branch, tag or commit) of ``model_id``.
    revision: str | None = None
    #: ``True``: never download; ``None``: download when online, unless ``HF_HUB_OFFLINE`` is set.
    local_files_only: bool | None = None
    #: Extra keyword arguments for the model's ``from_pretrained``.
    model_kwargs: dict[str, Any] | None = None
    #: Hugging Face Hub token for downloading gated or private models (default: ``HF_TOKEN`` or the
    #: token ``hf auth login`` saved). LangChain's standard ``api_key``; a local model needs no other.
    api_key: SecretStr | None = Field(default=None, alias="hf_token")

    _engine_name: str | None = PrivateAttr(default=None)

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

    def _swift_ls_params(self, params: Any, model_type: str, stop: list[str] | None, kwargs: dict[str, Any]) -> Any:
        """LangSmith's invocation parameters for this wrapper (``model_type``: "chat" or "llm")."""
        params["ls_provider"] = "swift"
        params["ls_model_name"] = self._display_name(kwargs.get("model"))
        params["ls_model_type"] = model_type
        params["ls_temperature"] = kwargs.get("temperature", self.temperature)
        params["ls_max_tokens"] = kwargs.get("max_tokens", self.max_tokens)
        ls_stop = stop or self.stop
        if ls_stop:
            params["ls_stop"] = list(ls_stop)
        return params

    # -- engine ------------------------------------------------------------------------------
    @property
    def swift_engine(self) -> Any:
        """The engine behind this wrapper (loaded on first access)."""
        return self._engine_for(None)

    def _engine_for(self, model_override: str | None) -> Any:
        """The engine of a call: fetched from the cache every time, so ``keep_alive`` can unload it."""
        if model_override is not None and model_override != self.model_id:
            return get_engine(model_override, None, self.device, self.dtype, self.swift_config)
        engine = wrapper_engine(self)
        self._engine_name = str(engine.model_name)
        return engine

    def _lifetime(self) -> dict[str, Any]:
        """``keep_alive`` of this wrapper's calls; an ``engine=`` of the caller's is never unloaded."""
        return {"keep_alive": None if self.engine is not None else keep_alive_seconds(self.keep_alive)}

    def _display_name(self, model_override: str | None = None) -> str:
        """The model as the user named it; the engine's name for ``engine=`` or the embedded default."""
        if model_override:
            return model_override
        if self.model_id:
            return self.model_id
        if self.engine is not None:
            return str(self.engine.model_name)
        if self._engine_name is not None:
            return self._engine_name
        from swift_engine.loading.catalog import EMBEDDED_MODEL_NAME

        return EMBEDDED_MODEL_NAME

    def _swift_params(self) -> dict[str, Any]:
        return {
            "model_name": self._display_name(),
            "model_id": self.model_id,
            "gguf_file": self.gguf_file,
            "device": self.device,
            "dtype": self.dtype,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "stop": self.stop,
            "seed": self.seed,
            "step_key": self.step_key,
            "timeout": self.timeout,
            "keep_alive": self.keep_alive,
            "revision": self.revision,
            "swift_config": self.swift_config.model_dump(mode="json") if self.swift_config is not None else None,
        }

    # -- per-call options --------------------------------------------------------------------
    def _options(self, stop: list[str] | None, kwargs: dict[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
        unknown = set(kwargs) - allowed
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected keyword arguments: {sorted(unknown)}")

        def pick(name: str) -> Any:
            v = kwargs.get(name)
            return getattr(self, name) if v is None else v

        stops = check_stop_strings(stop if stop else self.stop)
        return {
            "sampling": {
                "temperature": float(pick("temperature")),
                "top_p": float(pick("top_p")),
                "top_k": int(pick("top_k")),
                "seed": pick("seed"),
            },
            "max_new_tokens": int(pick("max_tokens")),
            "stop": stops,
            "timeout": check_timeout(pick("timeout")),
        }

    def _entry_kwargs(self, config: RunnableConfig | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """At a public entry point the run's config is known: resolve the step key there."""
        if kwargs.get("step_key") is not None:
            return kwargs
        key = config_step_key(config, fallback=self.step_key)
        return {**kwargs, "step_key": key} if key else kwargs

    def _runtime_step_key(self, run_manager: Any) -> str | None:
        """Step key when entered below the public methods (``generate()``, v3 event streaming)."""
        return runtime_step_key(run_manager, fallback=self.step_key)


# ====================================================================================== events


def _usage(input_tokens: int, output_tokens: int, cache_read: int = 0) -> UsageMetadata:
    """LangChain's usage record; ``cache_read``: prompt tokens the engine's prefix cache supplied."""
    usage = UsageMetadata(
        input_tokens=input_tokens, output_tokens=output_tokens, total_tokens=input_tokens + output_tokens
    )
    if cache_read:
        usage["input_token_details"] = {"cache_read": cache_read}
    return usage


def _cache_read(stats: Any) -> int:
    return int(getattr(stats, "cached_prompt_tokens", 0) or 0)


# ====================================================================================== chat model


def _text_of(content: Any, where: str) -> str:
    """The text of a message's content (a string or content blocks); media is refused."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content or []:
        if isinstance(block, str):
            parts.append(block)
            continue
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append(str(block.get("text", "")))
        elif kind in (
            "tool_use",
            "tool_call",
            "tool_call_chunk",
            "invalid_tool_call",
            "thinking",
            "redacted_thinking",
            "reasoning",
            "server_tool_call",
            "server_tool_result",
        ):
            continue  # tool calls are rendered from .tool_calls; reasoning goes apart (_reasoning_of)
        else:
            raise ValueError(f"SwiftChatModel reads text only; {where} has a {kind!r} content block")
    return "\n".join(p for p in parts if p)


def _reasoning_of(message: AIMessage) -> str:
    """A reply's reasoning, for the chat template to render back (or drop) as the model expects.

    ``additional_kwargs["reasoning_content"]`` (what this model, ChatOllama and DeepSeek return),
    else the text of reasoning content blocks (v1 ``reasoning``, Anthropic-style ``thinking``).
    """
    kept = message.additional_kwargs.get("reasoning_content")
    if isinstance(kept, str):
        return kept
    if isinstance(message.content, str):
        return ""
    parts = []
    for block in message.content:
        if isinstance(block, dict) and block.get("type") in ("reasoning", "thinking"):
            text = block.get(block["type"])
            if isinstance(text, str) and text:
                parts.append(text)
    return "\n".join(parts)


_ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "ai": "assistant",
    "assistant": "assistant",
    "system": "system",
    "developer": "system",
    "tool": "tool",
    "function": "tool",
}


def _neutral_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as the framework-neutral dicts of :func:`render_chat_prompt`."""
    out: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for i, m in enumerate(messages):
        where = f"message {i} ({m.type})"
        if isinstance(m, SystemMessage):
            out.append({"role": "system", "content": _text_of(m.content, where)})
        elif isinstance(m, HumanMessage):
            out.append({"role": "user", "content": _text_of(m.content, where), **({"name": m.name} if m.name else {})})
        elif isinstance(m, AIMessage):
            calls = [{"id": tc.get("id"), "name": tc["name"], "arguments": tc.get("args") or {}} for tc in m.tool_calls]
            for tc in calls:
                if tc["id"]:
                    call_names[tc["id"]] = tc["name"]
            msg: dict[str, Any] = {"role": "assistant", "content": _text_of(m.content, where)}
            if calls:
                msg["tool_calls"] = calls
            reasoning = _reasoning_of(m)
            if reasoning:
                msg["reasoning_content"] = reasoning
            out.append(msg)
        elif isinstance(m, ToolMessage):
            out.append(
                {
                    "role": "tool",
                    "content": _text_of(m.content, where),
                    "tool_call_id": m.tool_call_id,
                    "name": m.name or call_names.get(m.tool_call_id),
                    "is_error": getattr(m, "status", "success") == "error",
                }
            )
        elif isinstance(m, FunctionMessage):
            out.append({"role": "tool", "content": _text_of(m.content, where), "name": m.name})
        elif isinstance(m, ChatMessage):
            role = _ROLE_ALIASES.get(m.role.lower(), m.role)
            out.append({"role": role, "content": _text_of(m.content, where)})
        else:
            raise ValueError(f"unsupported message type {type(m).__name__} at {where}")
    return out


def _response_schema(response_format: Any) -> tuple[dict[str, Any] | bool, str]:
    """``(schema, system instruction)`` of an OpenAI-style ``response_format``.

    ``json_schema``: that schema, described to the model. ``json_object``: any JSON object, or the
    schema under the ``"schema"`` key that :meth:`SwiftChatModel.with_structured_output` adds in
    JSON mode; the prompt is left to describe the keys, as in OpenAI's JSON mode.
    """
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema", spec)
        return schema, "Reply with a JSON object that follows this JSON schema: " + json.dumps(
            schema, ensure_ascii=False
        )
    if kind == "json_object":
        return response_format.get("schema") or {"type": "object"}, ""
    raise ValueError(f"response_format type must be 'json_schema' or 'json_object', got {response_format!r}")


def _as_openai_tools(tools: Sequence[Any]) -> list[dict[str, Any]]:
    out = []
    for t in tools:
        if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict):
            out.append(t)
        else:
            out.append(convert_to_openai_tool(t))
    return out


class SwiftChatModel(_SwiftFields, BaseChatModel):
    """A LangChain chat model running a local model with SWIFT self-speculative decoding.

    Example::

        llm = SwiftChatModel(max_tokens=128)             # the embedded SmolLM2-135M-Instruct
        llm.invoke([("system", "Be brief."), ("human", "Name a colour.")])
        llm.bind_tools([get_weather], tool_choice="any").invoke("Weather in Paris?")
        llm.with_structured_output(Person).invoke("Alice is 30.")
    """

    model_config = ConfigDict(
        populate_by_name=True, arbitrary_types_allowed=True, protected_namespaces=(), extra="forbid"
    )

    #: After tool results (``auto`` tool choice): ``"model"`` lets the model decide; ``"answer"``
    #: asks it for the answer with the tools hidden; ``"auto"``: ``"answer"`` for catalog models
    #: measured to call again instead of answering. See :mod:`.tool_followup`.
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
        formatted = [convert_to_openai_tool(t, strict=strict) for t in tools]
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
        ``function_calling`` (default): a forced call of a tool shaped like the schema.
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
                PydanticToolsParser(tools=[schema], first_tool_only=True)
                if is_pydantic
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
        elif method in ("json_schema", "json_mode"):
            if method == "json_schema":
                js = convert_to_json_schema(schema)
                fmt = {"type": "json_schema", "json_schema": {"name": js.get("title", "output"), "schema": js}}
            else:
                fmt = {"type": "json_object", "schema": convert_to_json_schema(schema)}
            llm = self.bind(response_format=fmt, ls_structured_output_format=ls_format)
            parser = PydanticOutputParser(pydantic_object=schema) if is_pydantic else JsonOutputParser()  # type: ignore[arg-type]
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
        neutral = _neutral_messages(messages)
        if not neutral:
            raise ValueError("no messages to respond to")
        system_text = "\n\n".join(m["content"] for m in neutral if m["role"] == "system")
        step_key = kwargs.get("step_key") or self._runtime_step_key(run_manager) or system_prompt_step_key(system_text)

        tools = _as_openai_tools(kwargs.get("tools") or [])
        names = [tool_function(t)["name"] for t in tools]
        choice = normalize_tool_choice(kwargs.get("tool_choice"), names) if tools else "none"
        if tools and wants_answer_turn(self.tool_followup, kwargs.get("model") or self.model_id, neutral, choice):
            neutral, tools, choice = answer_turn(neutral), [], "none"  # see tool_followup.py
        schema: dict[str, Any] | bool | None = None
        response_format = kwargs.get("response_format")
        if response_format:
            schema, instruction = _response_schema(response_format)
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
            max_new_tokens=opts["max_new_tokens"],
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
        return _chat_result(final)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        final = None
        events = aiter_in_thread(
            lambda: generation_events(self._prepare(messages, stop, run_manager, kwargs)), name="swift-chat"
        )
        try:
            async for ev in events:
                if isinstance(ev, Final):
                    final = ev
        finally:
            await events.aclose()  # on cancellation too: the worker stops generating
        assert final is not None
        return _chat_result(final)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call = self._prepare(messages, stop, run_manager, kwargs)
        builder = _ChunkBuilder()
        events = generation_events(call)
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
        builder = _ChunkBuilder()
        events = aiter_in_thread(
            lambda: generation_events(self._prepare(messages, stop, run_manager, kwargs)), name="swift-chat-stream"
        )
        try:
            async for ev in events:
                chunk = builder.feed(ev)
                if chunk is not None:
                    yield chunk
        finally:
            await events.aclose()


def _lc_tool_calls(final: Final) -> tuple[list[Any], list[Any]]:
    calls = [tool_call(name=c.name, args=c.arguments, id=c.id) for c in final.calls]
    invalid = [invalid_tool_call(name=c.name, args=c.arguments, id=c.id, error=c.error) for c in final.invalid]
    return calls, invalid


def _chat_result(final: Final) -> ChatResult:
    calls, invalid = _lc_tool_calls(final)
    message = AIMessage(
        content=final.content,
        additional_kwargs=_reasoning_kwargs(final.reasoning),
        tool_calls=calls,
        invalid_tool_calls=invalid,
        usage_metadata=_usage(
            **{k: usage_from_stats(final.stats)[k] for k in ("input_tokens", "output_tokens")},
            cache_read=_cache_read(final.stats),
        ),
        response_metadata=final.metadata(),
    )
    return ChatResult(
        generations=[ChatGeneration(message=message, generation_info={"finish_reason": final.finish_reason})]
    )


def _reasoning_kwargs(reasoning: str) -> dict[str, Any]:
    """Where reasoning goes on a message: ``additional_kwargs["reasoning_content"]``, as ChatOllama and
    langchain-deepseek put it; langchain-core makes it a leading reasoning block of ``content_blocks``
    (and of ``content`` with ``output_version="v1"``), and chunk merging concatenates it."""
    return {"reasoning_content": reasoning} if reasoning else {}


class _ChunkBuilder:
    """Events → message chunks: usage is attached to the next chunk that carries text (or the last)."""

    def __init__(self) -> None:
        self.pending_in = 0
        self.pending_out = 0

    def feed(self, ev: Start | Delta | Final) -> ChatGenerationChunk | None:
        if isinstance(ev, Start):
            self.pending_in += ev.input_tokens
            return None
        if isinstance(ev, Delta):
            self.pending_out += ev.output_tokens
            if not ev.text and not ev.reasoning:
                return None
            msg = AIMessageChunk(
                content=ev.text, additional_kwargs=_reasoning_kwargs(ev.reasoning), usage_metadata=self._take()
            )
            return ChatGenerationChunk(message=msg)
        chunks = [
            tool_call_chunk(name=c.name, args=json.dumps(c.arguments, ensure_ascii=False), id=c.id, index=i)
            for i, c in enumerate(ev.calls)
        ]
        for j, c in enumerate(ev.invalid, start=len(chunks)):
            chunks.append(tool_call_chunk(name=c.name, args=_invalid_args_text(c.arguments), id=c.id, index=j))
        msg = AIMessageChunk(
            content=ev.tail,
            tool_call_chunks=chunks,
            usage_metadata=self._take(cache_read=_cache_read(ev.stats)),
            response_metadata=ev.metadata(),
            chunk_position="last",
        )
        return ChatGenerationChunk(message=msg, generation_info={"finish_reason": ev.finish_reason})

    def _take(self, cache_read: int = 0) -> UsageMetadata:
        u = _usage(self.pending_in, self.pending_out, cache_read)
        self.pending_in = self.pending_out = 0
        return u


def _invalid_args_text(raw: str | None) -> str:
    """Args text of an invalid call in a stream that LangChain's chunk merging can't read as valid."""
    text = raw or ""
    try:
        parsed = parse_partial_json(text) if text else {}
    except Exception:  # noqa: BLE001 - any failure means it already reads as invalid
        return text
    return json.dumps(text) if isinstance(parsed, dict) else text


# ====================================================================================== LLM


class SwiftLLM(_SwiftFields, BaseLLM):
    """A LangChain text-completion LLM (prompt string in, continuation out) with SWIFT decoding.

    The prompt is tokenized as text (no chat template). Statistics are in each generation's
    ``generation_info`` (same keys as :class:`SwiftChatModel`'s ``response_metadata``) and the
    token usage in ``llm_output["token_usage"]``.

    A prompt string is usually a template filled with text from elsewhere (retrieved documents,
    tool output), so special-token spellings in it stay text by default: a fetched page holding
    ``<|im_end|>`` can't end a turn. Set ``parse_special_tokens=True`` when your prompts are chat
    prompts you rendered yourself and their special tokens are meant.
    """

    model_config = ConfigDict(
        populate_by_name=True, arbitrary_types_allowed=True, protected_namespaces=(), extra="forbid"
    )

    parse_special_tokens: bool = False
    """Read special-token spellings in the prompt as special tokens (only for prompts you trust)."""

    @property
    def _llm_type(self) -> str:
        return "swift-llm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self._swift_params()

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        return self._swift_ls_params(super()._get_ls_params(stop=stop, **kwargs), "llm", stop, kwargs)

    def invoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> str:
        return super().invoke(input, config, stop=stop, **self._entry_kwargs(config, kwargs))

    async def ainvoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> str:
        return await super().ainvoke(input, config, stop=stop, **self._entry_kwargs(config, kwargs))

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[str]:
        return super().stream(input, config, stop=stop, **self._entry_kwargs(config, kwargs))

    def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[str]:
        return super().astream(input, config, stop=stop, **self._entry_kwargs(config, kwargs))

    def _llm_events(
        self, prompt: str, stop: list[str] | None, run_manager: Any, kwargs: dict[str, Any]
    ) -> Iterator[Start | Delta | Final]:
        opts = self._options(stop, kwargs, _LLM_CALL_KWARGS)
        engine = self._engine_for(kwargs.get("model"))
        call = GenerationCall(
            engine=engine,
            model_name=self._display_name(kwargs.get("model"))
            if kwargs.get("model")
            else (self.model_id or str(engine.model_name)),
            step_key=kwargs.get("step_key") or self._runtime_step_key(run_manager),
            sampling=opts["sampling"],
            max_new_tokens=opts["max_new_tokens"],
            stop=list(opts["stop"]),
            prompt=RenderedPrompt(text=prompt, ids=self._prompt_ids(engine, prompt)),
            timeout=opts["timeout"],
            **self._lifetime(),
        )
        return generation_events(call)

    def _prompt_ids(self, engine: Any, prompt: str) -> list[int]:
        if self.parse_special_tokens:
            return list(engine.encode_prompt(prompt))
        ids = encode_text(engine.tokenizer, prompt, add_special_tokens=True)
        engine.encode_prompt(ids)  # the engine's checks: not empty, fits the context
        return ids

    @staticmethod
    def _generation(final: Final) -> Generation:
        info = final.metadata()
        info["usage"] = usage_from_stats(final.stats)
        return Generation(text=final.content, generation_info=info)

    @staticmethod
    def _llm_output(finals: list[Final]) -> dict[str, Any]:
        totals = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        for f in finals:
            for k, v in usage_from_stats(f.stats).items():
                totals[k] += v
        return {"token_usage": totals, "model_name": finals[0].model_name if finals else None}

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        generations, finals = [], []
        for prompt in prompts:
            final = None
            for ev in self._llm_events(prompt, stop, run_manager, kwargs):
                if isinstance(ev, Delta) and ev.text and self.streaming and run_manager is not None:
                    run_manager.on_llm_new_token(ev.text, chunk=GenerationChunk(text=ev.text))
                elif isinstance(ev, Final):
                    final = ev
            assert final is not None
            finals.append(final)
            generations.append([self._generation(final)])
        return LLMResult(generations=generations, llm_output=self._llm_output(finals))

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        generations, finals = [], []
        for prompt in prompts:
            final = None
            events = aiter_in_thread(lambda p=prompt: self._llm_events(p, stop, run_manager, kwargs), name="swift-llm")
            try:
                async for ev in events:
                    if isinstance(ev, Delta) and ev.text and self.streaming and run_manager is not None:
                        await run_manager.on_llm_new_token(ev.text, chunk=GenerationChunk(text=ev.text))
                    elif isinstance(ev, Final):
                        final = ev
            finally:
                await events.aclose()
            assert final is not None
            finals.append(final)
            generations.append([self._generation(final)])
        return LLMResult(generations=generations, llm_output=self._llm_output(finals))

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        events = self._llm_events(prompt, stop, run_manager, kwargs)
        try:
            for ev in events:
                chunk = self._chunk(ev)
                if chunk is None:
                    continue
                if run_manager is not None and chunk.text:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        finally:
            events.close()

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        events = aiter_in_thread(lambda: self._llm_events(prompt, stop, run_manager, kwargs), name="swift-llm-stream")
        try:
            async for ev in events:
                chunk = self._chunk(ev)
                if chunk is None:
                    continue
                if run_manager is not None and chunk.text:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        finally:
            await events.aclose()

    def _chunk(self, ev: Start | Delta | Final) -> GenerationChunk | None:
        if isinstance(ev, Delta):
            return GenerationChunk(text=ev.text) if ev.text else None
        if isinstance(ev, Final):
            info = ev.metadata()
            info["usage"] = usage_from_stats(ev.stats)
            return GenerationChunk(text="", generation_info=info)
        return None
