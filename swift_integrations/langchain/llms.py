"""LangChain text-completion LLM over a SWIFT engine: :class:`SwiftLLM`.

Its fields, engine access and step keys are shared with
:class:`~swift_integrations.langchain.chat_models.SwiftChatModel`
(:mod:`swift_integrations.langchain.base`, where the step-key precedence is listed). The prompt is
a plain string: no chat template, messages, tools or structured output (those are the chat
model's), and the same SWIFT statistics.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.llms import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from langchain_core.runnables import RunnableConfig

from swift_engine.chat.prompting import RenderedPrompt, encode_text
from swift_integrations._generation import Delta, Final, GenerationCall, Start, generation_events
from swift_integrations.async_bridge import aiter_in_thread
from swift_integrations.langchain.base import MODEL_CONFIG, AsyncEvents, Events, SwiftFields
from swift_integrations.stats import usage_from_stats

__all__ = ["SwiftLLM"]

#: Call-time keyword arguments the LLM understands (anything else is a TypeError).
_LLM_CALL_KWARGS = frozenset(
    {"temperature", "max_tokens", "num_predict", "top_p", "top_k", "seed", "step_key", "model", "stream", "timeout"}
)


class SwiftLLM(SwiftFields, BaseLLM):
    """A LangChain text-completion LLM (prompt string in, continuation out) with SWIFT decoding.

    The prompt is tokenized as text (no chat template). Statistics are in each generation's
    ``generation_info`` (same keys as :class:`~swift_integrations.langchain.chat_models.SwiftChatModel`'s
    ``response_metadata``) and the token usage in ``llm_output["token_usage"]``.

    A prompt string is usually a template filled with text from elsewhere (retrieved documents,
    tool output), so special-token spellings in it stay text by default: a fetched page holding
    ``<|im_end|>`` can't end a turn. Set ``parse_special_tokens=True`` when your prompts are chat
    prompts you rendered yourself and their special tokens are meant.

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
        parse_special_tokens: bool
            Read special-token spellings in the prompt as special tokens (default ``False``).

    Key init args — engine params:
        device, dtype, engine, timeout, keep_alive, step_key
            As for :class:`~swift_integrations.langchain.chat_models.SwiftChatModel`.

    Instantiate:
        .. code-block:: python

            from swift_integrations.langchain import SwiftLLM

            llm = SwiftLLM(max_tokens=16)  # the embedded model; model=... for another

    Invoke:
        .. code-block:: python

            llm.invoke("The capital of France is")  # ' Paris. ...'

            result = llm.generate(["The capital of France is"])
            result.generations[0][0].generation_info["acceptance_rate"]  # and "step_key", "usage", ...
            result.llm_output["token_usage"]  # {"input_tokens": 5, "output_tokens": 16, "total_tokens": 21}

    Stream:
        .. code-block:: python

            for chunk in llm.stream("The capital of France is"):
                print(chunk, end="")

        ``ainvoke``, ``astream``, ``batch`` and ``abatch`` work the same way.

    Tools and structured output:
        Not on a text-completion model: ``bind_tools`` and ``with_structured_output`` are
        :class:`~swift_integrations.langchain.chat_models.SwiftChatModel`'s (over the same engine).
    """

    model_config = MODEL_CONFIG

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

    def _llm_events(self, prompt: str, stop: list[str] | None, run_manager: Any, kwargs: dict[str, Any]) -> Events:
        opts = self._options(stop, kwargs, _LLM_CALL_KWARGS)
        engine = self._engine_for(kwargs.get("model"))
        ids = self._prompt_ids(engine, prompt)
        call = GenerationCall(
            engine=engine,
            model_name=self._display_name(kwargs.get("model"))
            if kwargs.get("model")
            else (self.model_id or str(engine.model_name)),
            step_key=kwargs.get("step_key") or self._runtime_step_key(run_manager),
            sampling=opts["sampling"],
            max_new_tokens=self._reply_budget(len(ids), opts["max_new_tokens"]),
            stop=list(opts["stop"]),
            prompt=RenderedPrompt(text=prompt, ids=ids),
            timeout=opts["timeout"],
            **self._lifetime(),
        )
        return cast(Events, generation_events(call))

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
            events = cast(
                AsyncEvents,
                aiter_in_thread(partial(self._llm_events, prompt, stop, run_manager, kwargs), name="swift-llm"),
            )
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
        events = cast(
            AsyncEvents,
            aiter_in_thread(lambda: self._llm_events(prompt, stop, run_manager, kwargs), name="swift-llm-stream"),
        )
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
