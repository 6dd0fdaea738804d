"""What :class:`~swift_integrations.langchain.chat_models.SwiftChatModel` and
:class:`~swift_integrations.langchain.llms.SwiftLLM` share: their fields, engine access, per-call
options and step-key resolution (:class:`SwiftFields`, a mixin before LangChain's base class).

Construction is cheap: the weights load on the first call, through the process-level engine
cache (:func:`swift_integrations.engine_cache.get_engine`), so every wrapper of one model shares one
engine, its weights and its learned skip profiles. Pass ``engine=`` to use an engine you built.

Step keys (which learned skip profile a call uses; resolved in :mod:`swift_integrations.langchain.steps`),
in order of precedence:

1. ``step_key`` given explicitly: ``model.bind(step_key=...)`` / ``invoke(..., step_key=...)``;
2. ``config["metadata"]["swift_step"]``;
3. an enclosing ``with swift_engine.swift_step("..."):`` block;
4. the wrapper's ``step_key`` field;
5. the LangGraph node running the call (``metadata["langgraph_node"]``) → ``"langgraph:<node>"``;
6. the run name (``model.with_config(run_name=...)`` or ``config["run_name"]``) → ``"run:<name>"``;
7. the user's tags of the enclosing runnables (``chain.with_config(tags=[...])``; tags propagate
   to children, run names do not) → ``"tags:<a>+<b>"``;
8. chat models: a fingerprint of the system prompt → ``"system:<hash>"``; else the engine's default.

The key is resolved at the public entry points (``invoke``/``stream`` & co.), where the run's config
is known (:meth:`SwiftFields._entry_kwargs`), and otherwise from the run manager
(:meth:`SwiftFields._runtime_step_key`: ``generate()``, event streaming).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import Any, TypeAlias

from langchain_core.runnables import RunnableConfig
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator

from swift_engine.config import SwiftConfig
from swift_integrations._generation import Delta, Final, Start
from swift_integrations.engine_cache import EngineLifetime, get_engine, keep_alive_seconds, wrapper_engine
from swift_integrations.langchain.steps import config_step_key, runtime_step_key
from swift_integrations.validation import check_engine, check_stop_strings, check_timeout

__all__ = ["MODEL_CONFIG", "AsyncEvents", "Events", "SwiftFields"]

#: The events of one generation. :func:`~swift_integrations._generation.generation_events` and
#: :func:`~swift_integrations.async_bridge.aiter_in_thread` return generators (typed as iterators):
#: closing one stops the engine after its current step, so the models close them when a consumer stops.
Events: TypeAlias = Generator[Start | Delta | Final, None, None]
AsyncEvents: TypeAlias = AsyncGenerator[Start | Delta | Final, None]

#: Pydantic settings of both models: ``model=`` and ``hf_token=`` aliases, engines as field values,
#: ``model_*`` field names allowed, unknown arguments refused.
MODEL_CONFIG = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True, protected_namespaces=(), extra="forbid")


class SwiftFields(EngineLifetime, BaseModel):
    """Fields and engine access shared by :class:`SwiftChatModel` and :class:`SwiftLLM`."""

    model_config = MODEL_CONFIG

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
    #: Maximum new tokens per call (``num_predict=``, as ChatOllama names it, is accepted too).
    max_tokens: int = Field(default=256, ge=1, validation_alias=AliasChoices("max_tokens", "num_predict"))
    #: ChatOllama's ``num_ctx``: the most tokens a call may hold, prompt and reply together. A longer
    #: prompt is a ``ValueError``; the reply stops at the cap (``finish_reason="length"``). ``None``:
    #: the model's own context.
    num_ctx: int | None = Field(default=None, ge=1)
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
    #: (default) leaves it loaded while the process lives. See :mod:`swift_integrations.engine_cache`.
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

    @property
    def model(self) -> str:
        """The model as the user named it (``model=``), else the engine's or the embedded model's name:
        what ``ChatOllama(...).model`` and ``ChatOpenAI(...).model_name`` read."""
        return self._display_name()

    @property
    def model_name(self) -> str:
        """The same as :attr:`model` (ChatOpenAI's name for it)."""
        return self._display_name()

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
            "num_ctx": self.num_ctx,
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

        if kwargs.get("num_predict") is not None:  # ChatOllama's name for max_tokens
            kwargs = {**kwargs, "max_tokens": kwargs.get("max_tokens") or kwargs["num_predict"]}

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

    def _reply_budget(self, prompt_tokens: int, max_new_tokens: int) -> int:
        """``max_new_tokens`` within ``num_ctx`` after a prompt of ``prompt_tokens`` (one that fills it: an error)."""
        if self.num_ctx is None:
            return max_new_tokens
        if prompt_tokens >= self.num_ctx:
            raise ValueError(
                f"the prompt has {prompt_tokens} tokens but num_ctx={self.num_ctx} leaves no room for a reply; "
                "shorten the prompt or raise num_ctx"
            )
        return min(max_new_tokens, self.num_ctx - prompt_tokens)

    def _entry_kwargs(self, config: RunnableConfig | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """At a public entry point the run's config is known: resolve the step key there."""
        if kwargs.get("step_key") is not None:
            return kwargs
        key = config_step_key(config, fallback=self.step_key)
        return {**kwargs, "step_key": key} if key else kwargs

    def _runtime_step_key(self, run_manager: Any) -> str | None:
        """Step key when entered below the public methods (``generate()``, v3 event streaming)."""
        return runtime_step_key(run_manager, fallback=self.step_key)
