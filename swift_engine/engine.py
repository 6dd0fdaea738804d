"""The public engine: prompt in, SWIFT-accelerated tokens out, with statistics.

:class:`SwiftEngine` owns what outlives a call: the model and its lock, the kernels chosen for this
machine, the measured costs, the step profiles, the prefix cache and the grammars; its lifetime
(``close``) and its public API (``generate``, ``stream``, ``profiles``, ``calibrate``). Each call
is one :class:`~swift_engine.decode_loop.DecodeCall` (its lifecycle is the table of contents of
:mod:`swift_engine.decode_loop`); the layer-set search runs between its steps inside a
:class:`~swift_engine.search.session.SearchSession`.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from swift_engine.attach import model_lock
from swift_engine.batching.batcher import Batcher
from swift_engine.batching.handover import Handover
from swift_engine.chat.prompting import template_ids
from swift_engine.config import SwiftConfig
from swift_engine.decode_loop import DecodeCall
from swift_engine.decoding.constraints import Constraint, GrammarCache, GrammarState, GrammarTimeout
from swift_engine.decoding.prefix_cache import PrefixCache, default_budget_bytes
from swift_engine.decoding.sampling import SamplingParams
from swift_engine.decoding.stopping import StopStrings
from swift_engine.kernels.costs import CostModel, cost_file, load_or_measure, measurement_dir
from swift_engine.kernels.kernel_choice import KernelChoice, choose_kernels, kernel_file, rows_file
from swift_engine.model.draft_head import DraftHead
from swift_engine.model.runner import ModelRunner
from swift_engine.model.sublayer_skip import default_skip_set
from swift_engine.model_thread import model_thread
from swift_engine.request import EngineClosedError, GenerationRequest, GenerationTimeout
from swift_engine.results import GenerationResult, StreamChunk
from swift_engine.search.session import SearchSession
from swift_engine.search.state import Candidate
from swift_engine.search.step_profiles import StepProfiles
from swift_engine.step_context import resolve_step_key
from swift_engine.store.profile_store import ProfileStore

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

Prompt = str | Sequence[dict[str, Any]] | Sequence[int]


class SwiftEngine:
    """SWIFT self-speculative decoding over a Hugging Face causal LM.

    Thread-safe, and safe next to anything else using the same model object: engines over one
    model take turns through the model's lock (:func:`~swift_engine.attach.model_lock`), one
    decode step at a time, and which layers a pass skips is private to that pass (a context
    variable, see :mod:`~swift_engine.model.sublayer_skip`). A stream holds the lock only while it computes
    its next chunk, never while the caller holds it: a stream left unread blocks nobody, and
    streams read in turn (even of one step key, in one thread) each decode exactly as alone.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: SwiftConfig | None = None,
        *,
        model_name: str | None = None,
        profile_store: ProfileStore | str | os.PathLike | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config or SwiftConfig()
        self.model_name = model_name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        #: where the weights were read from (a folder, a ``.gguf`` file, a hub snapshot); set by from_pretrained
        self.source: str | None = None
        self.runner = ModelRunner(model, self.config.cpu_kernels, self.config.row_invariant)
        #: shared by every engine over this model (see the class docstring)
        self._lock = model_lock(model)
        #: the thread that runs this model's chunks and passes, whichever thread calls (model_thread.py)
        self._thread = model_thread(model)
        n = self.runner.num_layers
        if self.config.skip_attention is not None or self.config.skip_mlp is not None:
            att, mlp = list(self.config.skip_attention or ()), list(self.config.skip_mlp or ())
        else:
            att, mlp = default_skip_set(n, self.config.skip_ratio)
        self.runner.skipper.validate(att, mlp)
        self._start = Candidate(frozenset(att), frozenset(mlp))
        self.eos_ids = self._eos_ids()
        self._store = profile_store if isinstance(profile_store, ProfileStore) else ProfileStore(profile_store)
        self._profiles: StepProfiles | None = None
        self._costs: CostModel | None = None
        self._kernel_choice: KernelChoice | None = None
        self._fingerprint: str | None = None
        self._grammars: GrammarCache | None = None
        self._longest_token: int | None = None
        #: called with every finished call's result (see :meth:`add_result_listener`)
        self._listeners: list[Callable[[GenerationResult], None]] = []
        self._closed = False
        self._calls_lock = threading.Lock()
        #: streams started and not yet finished or closed (an idle engine has none)
        self.active_calls = 0
        #: ``time.monotonic()`` of the last call's start or end (what ``keep_alive`` measures from)
        self.last_used = time.monotonic()
        budget = self.config.prefix_cache
        if budget is True:
            budget = default_budget_bytes(self.runner.device)
        #: prompts' keys and values kept across calls (None: ``prefix_cache=False``)
        self.prefix_cache: PrefixCache | None = PrefixCache(int(budget), self.config.prefill_block) if budget else None
        #: calls that arrive while another runs share its passes (swift_engine/batching; ``batch_rows``)
        self.batcher = Batcher(self, self._lock, self._thread)

    # -- per-engine state, created on first use ---------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Identity of the weights (not the name): the key of this model's profiles."""
        if self._fingerprint is None:
            from swift_engine.loading.fingerprint import model_fingerprint

            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint

    @functools.cached_property
    def weights_identity(self) -> str:
        """Which weights these are at any dtype and from any path (the catalog's key; see
        :func:`~swift_engine.loading.fingerprint.weights_identity`), unlike :attr:`fingerprint`."""
        from swift_engine.loading.fingerprint import weights_identity

        return weights_identity(self.model)

    @property
    def profiles(self) -> StepProfiles:
        """This model's per-step skip profiles: ``list()``, ``get()``, ``export()``, ``import_()``, ``reset()``."""
        if self._profiles is None:
            self._profiles = StepProfiles(
                self._store, self.fingerprint, self.model_name, self.runner.num_layers, self._start, self.config.search
            )
        return self._profiles

    @property
    def kernel_choice(self) -> KernelChoice | None:
        """The dense kernels ``cpu_kernels="auto"`` chose on this machine, and the timings (None: not auto)."""
        self._ensure_kernels()
        return self._kernel_choice

    def _ensure_kernels(self) -> None:
        """Decide ``auto``'s kernels by measurement (or from this machine's saved choice), once."""
        if self._kernel_choice is None and self.runner.needs_kernel_choice:
            with self._lock:
                if self._kernel_choice is None:
                    path = kernel_file(self._measurements, self.fingerprint, self.runner)
                    self._kernel_choice = choose_kernels(self.runner, path, self.config.prefill_block)
        if self.runner.max_rows is None:  # row-invariant passes: how many rows the dense kernels keep so
            with self._lock:
                self.runner.measure_rows(
                    self.config.tree.max_tree_tokens, rows_file(self._measurements, self.fingerprint, self.runner)
                )

    def calibrate(self) -> CostModel:
        """Measure the kernels, then the draft and verification costs, again (e.g. after the machine changed)."""
        with self._lock:
            if self.runner.needs_kernel_choice:
                kernels = kernel_file(self._measurements, self.fingerprint, self.runner)
                kernels.unlink(missing_ok=True)
                self._kernel_choice = None
                self._ensure_kernels()
            rows_file(self._measurements, self.fingerprint, self.runner)[0].unlink(missing_ok=True)
            path = cost_file(self._measurements, self.fingerprint, self.runner)
            path.unlink(missing_ok=True)
            self._costs = self._with_draft_head(load_or_measure(path, self.runner))
            return self._costs

    @property
    def _measurements(self) -> Path:
        """The folder of this machine's measurements (``kernels.costs.measurement_dir``)."""
        return measurement_dir()

    def _with_draft_head(self, costs: CostModel) -> CostModel:
        costs.draft_head_share = DraftHead.expected_share(self.runner.vocab_size, self.config.draft_vocab_size)
        return costs

    @property
    def costs(self) -> CostModel:
        """Measured costs of draft and verification passes on this device (a few seconds, once)."""
        if self._costs is None:
            self._ensure_kernels()  # the costs are those of the chosen kernels
            with self._lock:
                if self._costs is None:
                    path = cost_file(self._measurements, self.fingerprint, self.runner)
                    self._costs = self._with_draft_head(load_or_measure(path, self.runner))
        return self._costs

    # -- lifetime ------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Let go of what this engine holds: its prefix cache, packed weight copies and grammars.

        Waits for the model pass in progress, if any; streams still open then fail with
        :class:`~swift_engine.request.EngineClosedError`, as does every later call. The weights
        themselves are freed once nothing else references the model (the engine cache of
        :mod:`swift_integrations.engine_cache` drops its reference when it closes an engine).
        Idempotent. Profiles already learned stay in the store.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.prefix_cache is not None:
                self.prefix_cache.clear()
            self.runner.close()
            self._grammars = None
            self._listeners.clear()

    def __enter__(self) -> "SwiftEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosedError(f"the engine for {self.model_name} was closed; load it again to use it")

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model_id: str | os.PathLike | None = None,
        *,
        gguf_file: str | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        config: SwiftConfig | None = None,
        profile_store: ProfileStore | str | os.PathLike | None = None,
        revision: str | None = None,
        local_files_only: bool | None = None,
        model_kwargs: dict[str, Any] | None = None,
        token: str | bool | None = None,
    ) -> "SwiftEngine":
        """Load a model (``None``: the embedded SmolLM2-135M-Instruct) and wrap it.

        A hub id is downloaded when not cached, unless ``local_files_only=True`` or
        ``HF_HUB_OFFLINE=1`` (then :class:`~swift_engine.loading.hub.ModelNotAvailableError`);
        ``revision`` pins a hub branch, tag or commit; ``model_kwargs`` go to the model's
        ``from_pretrained``; ``token`` is a Hub token for gated or private repos. See
        :func:`~swift_engine.loading.load.load_model`.
        """
        from swift_engine.loading.load import load_model

        loaded = load_model(
            model_id,
            gguf_file=gguf_file,
            device=device,
            dtype=dtype,
            revision=revision,
            local_files_only=local_files_only,
            model_kwargs=model_kwargs,
            token=token,
        )
        engine = cls(loaded.model, loaded.tokenizer, config, model_name=loaded.model_name, profile_store=profile_store)
        engine.source = loaded.source
        return engine

    def _eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for src in (getattr(self.model, "generation_config", None), self.model.config, self.tokenizer):
            e = getattr(src, "eos_token_id", None)
            if isinstance(e, int):
                ids.add(e)
            elif isinstance(e, (list, tuple)):
                ids.update(int(x) for x in e)
        return frozenset(ids)

    # -- prompts -------------------------------------------------------------------------------
    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of a string, a list of chat messages (chat template applied), or ids.

        A string is the model's input verbatim, special-token spellings included (a prompt already
        rendered by its owner). Messages are rendered by the chat template, and only the template
        makes special tokens: content that spells ``<|im_end|>`` stays text
        (:func:`~swift_engine.chat.prompting.template_ids`). Untrusted text belongs in messages.
        """
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt is empty")
            ids = self.tokenizer(prompt)["input_ids"]
        elif isinstance(prompt, Sequence) and len(prompt) > 0 and all(isinstance(m, dict) for m in prompt):
            if not getattr(self.tokenizer, "chat_template", None):
                raise ValueError(
                    "this tokenizer has no chat template; pass a string prompt (the integrations render "
                    "messages in a plain documented format for such models)"
                )
            messages = cast(Sequence[dict[str, Any]], prompt)
            for m in messages:
                if "role" not in m or "content" not in m:
                    raise ValueError(f"chat messages need 'role' and 'content', got keys {sorted(m)}")
            tokenizer = self.tokenizer

            def render(msgs: list[dict[str, Any]]) -> str:
                return str(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))

            # special tokens come from the template only, never from a message's content
            _, ids = template_ids(tokenizer, list(messages), render)
        elif isinstance(prompt, Sequence) and len(prompt) > 0 and all(isinstance(t, int) for t in prompt):
            ids = list(prompt)
            bad = [t for t in ids if not 0 <= t < self.runner.vocab_size]
            if bad:
                raise ValueError(f"token ids out of range [0, {self.runner.vocab_size}): {bad[:5]}")
        else:
            raise ValueError("prompt must be a non-empty string, list of chat messages, or list of token ids")
        if not ids:
            raise ValueError("prompt encodes to zero tokens")
        ctx = self.runner.context_length
        if ctx is not None and len(ids) >= ctx:
            raise ValueError(f"prompt has {len(ids)} tokens but the model's context is {ctx}; shorten it")
        return list(ids)

    @property
    def max_prompt_chars(self) -> int | None:
        """Characters past which no text fits the model's context (None: no context length, or no vocabulary to read).

        A token spells at most as many characters as the longest token in the vocabulary, so a
        longer text has more tokens than the context holds: a server refuses it before rendering or
        tokenizing it (a 4 MB body took 8.5 s and 850 MB to tokenize, only to be refused then).
        """
        ctx = self.runner.context_length
        get_vocab = getattr(self.tokenizer, "get_vocab", None)
        if ctx is None or get_vocab is None:
            return None
        if self._longest_token is None:
            self._longest_token = max((len(t) for t in get_vocab()), default=1)
        return ctx * self._longest_token

    # -- the call's plan ----------------------------------------------------------------------
    def _session(self, step_key: str, speculative: bool | None) -> SearchSession:
        """How this call decodes: plainly, with the fixed starting set, or with the step's search."""
        if speculative is False or not self.config.speculative:
            return SearchSession.plain_call()
        if not self.config.search.enabled:
            return SearchSession.fixed(self._start)
        return SearchSession.open(
            self.profiles, step_key, self.config.search, self.costs, self.runner.num_layers, self.config.max_draft_len
        )

    # -- public API ---------------------------------------------------------------------------
    def add_result_listener(self, listener: Callable[[GenerationResult], None]) -> None:
        """Call ``listener(result)`` when any call of this engine finishes (metrics, benchmarks, logs).

        It runs in the calling thread before the call's last chunk is returned; an exception in it
        is logged, never raised into the call.
        """
        self._listeners.append(listener)

    def remove_result_listener(self, listener: Callable[[GenerationResult], None]) -> None:
        self._listeners.remove(listener)

    def generate(self, prompt: Prompt, **kwargs: Any) -> GenerationResult:
        """Generate a completion; see :meth:`stream` for the arguments."""
        result = None
        for chunk in self.stream(prompt, **kwargs):
            result = chunk.result or result
        assert result is not None
        return result

    def stream(
        self,
        prompt: Prompt,
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop: str | Sequence[str] | None = None,
        step_key: str | None = None,
        seed: int | None = None,
        speculative: bool | None = None,
        constraint: Constraint | None = None,
        timeout: float | None = None,
    ) -> Generator[StreamChunk, None, None]:
        """Stream chunks (text delta + token ids); the last chunk carries the :class:`GenerationResult`.

        ``speculative=False`` decodes plainly through the same loop (the benchmark's own baseline).
        ``constraint`` (:class:`~swift_engine.decoding.constraints.JsonSchemaConstraint` or
        :class:`~swift_engine.decoding.constraints.ToolCallConstraint`) restricts the output to a grammar.
        ``timeout``: seconds from this call until the stream raises
        :class:`~swift_engine.request.GenerationTimeout` (waiting for the model included); the
        engine stays usable and nothing of the call is kept.
        """
        started = time.monotonic()
        self._check_open()
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf")
        ):
            raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
        params = SamplingParams(float(temperature), float(top_p), int(top_k))
        stops = StopStrings(stop)
        key = resolve_step_key(step_key, self.config.default_step_key)
        ids = self.encode_prompt(prompt)
        grammar = self._grammar(constraint, timeout, started) if constraint is not None else None
        request = GenerationRequest(
            ids, max_new_tokens, params, stops, key, seed, speculative, grammar, timeout, started
        )
        return self._stream(request)

    def _grammar(self, constraint: Constraint, timeout: float | None, started: float) -> GrammarState:
        """The constraint's grammar state, its compilation bounded by the call's deadline (other calls never wait)."""
        left = None if timeout is None else max(0.0, started + timeout - time.monotonic())
        try:
            return self.grammars.matcher(constraint, left)
        except GrammarTimeout:
            raise GenerationTimeout(cast(float, timeout), 0) from None

    @property
    def grammars(self) -> GrammarCache:
        if self._grammars is None:
            self._grammars = GrammarCache(self.tokenizer, self.runner.vocab_size, sorted(self.eos_ids))
        return self._grammars

    def _stream(self, request: GenerationRequest) -> Generator[StreamChunk, None, None]:
        """Run one request: alone (SWIFT), or in the batch when other calls are running (see
        :mod:`swift_engine.batching.batcher`); decided when the caller starts reading."""
        self._ensure_kernels()  # the rows a pass may hold (runner.max_rows) are known from here on
        batchable = self.batcher.accepts(request)
        with self._calls_lock:  # decided and counted at once: calls starting together see each other
            batched = batchable and (self.active_calls > 0 or self.batcher.rows > 0)
            self.active_calls += 1
            self.last_used = time.monotonic()
        try:
            if batched:
                yield from self._stream_batched(request)
            else:
                moved = yield from self._stream_alone(request, batchable)
                if moved is not None:  # others came: the rest of the reply in the batch's passes
                    yield from self._stream_batched(request, moved)
        finally:
            with self._calls_lock:
                self.active_calls -= 1
                self.last_used = time.monotonic()

    def _stream_batched(
        self, request: GenerationRequest, moved: Handover | None = None
    ) -> Generator[StreamChunk, None, None]:
        """One request in the batch's shared passes (the batcher takes the model's lock per pass);
        ``moved``: a call that started alone, continued from its first token."""
        work = self.batcher.stream(request, moved)
        produced = 0
        try:
            while True:
                self._check_open()
                chunk = next(work, None)
                if chunk is None:
                    return
                if chunk.result is not None:
                    self._notify(chunk.result)
                else:
                    produced += len(chunk.token_ids)
                    request.check_deadline(produced)
                yield chunk
        finally:
            work.close()

    def _stream_alone(
        self, request: GenerationRequest, batchable: bool = False
    ) -> Generator[StreamChunk, None, Handover | None]:
        """Run one request, holding the model's lock while each chunk is computed and only then.

        A caller that stops reading (or drops the stream) keeps nothing locked; closing the stream
        ends the call without writing its profile. Past the request's timeout, waiting for the
        model or between chunks, it raises :class:`~swift_engine.request.GenerationTimeout`.

        ``batchable``: after the first token, if other calls are in flight, the call stops here and
        returns its :class:`~swift_engine.batching.handover.Handover` for the batch to continue it
        (see that module for why); otherwise it runs to its end and returns None.
        """
        calls: list[DecodeCall] = []  # the call, made on the model's thread with its first chunk
        works: list[Generator[StreamChunk, None, None]] = []
        produced = 0

        def advance() -> StreamChunk | None:  # on the model's thread (model_thread.py), under its lock
            with self._lock:
                self._check_open()
                if not works:  # the call's plan (its session may measure costs: model passes) goes there too
                    calls.append(DecodeCall(self, request, self._session(request.step_key, request.speculative)))
                    works.append(self._run(calls[0]))
                return next(works[0], None)

        try:
            while True:
                left = None if request.timeout is None else request.started + request.timeout - time.monotonic()
                try:
                    if left is not None and left <= 0:
                        raise TimeoutError
                    chunk = self._thread.run(advance, left)
                except GenerationTimeout:  # the call's own deadline, checked inside it (prefill blocks)
                    raise
                except TimeoutError:  # the wait for the model ran past the deadline
                    raise GenerationTimeout(cast(float, request.timeout), produced) from None
                if chunk is None:
                    return None
                if chunk.result is None:
                    produced += len(chunk.token_ids)
                    request.check_deadline(produced)
                yield chunk
                if batchable and produced == 1 and chunk.token_ids and self._has_company():
                    try:
                        moved = self._thread.run(lambda: self._hand_over(calls[0]), left)
                    except TimeoutError:
                        raise GenerationTimeout(cast(float, request.timeout), produced) from None
                    if moved is not None:
                        return moved
        finally:
            # no lock: a suspended call holds nothing shared, and closing it runs no code of ours
            # (this may run in a garbage collector's thread, which must never wait on the model)
            for work in works:
                work.close()

    def _has_company(self) -> bool:
        """Whether other calls are in flight (decoding alone or in the batch) besides the caller's."""
        with self._calls_lock:
            return self.active_calls > 1 or self.batcher.rows > 0

    def _hand_over(self, call: DecodeCall) -> Handover | None:
        with self._lock:  # on the model's thread, between two of the call's chunks
            return call.handover()

    def _run(self, call: DecodeCall) -> Generator[StreamChunk, None, None]:
        """One call's chunks (:class:`~swift_engine.decode_loop.DecodeCall`); callers hold the lock per chunk."""
        chunks = call.run()
        try:
            for chunk in chunks:
                if chunk.result is not None:
                    self._notify(chunk.result)
                yield chunk
        finally:
            chunks.close()

    def _notify(self, result: GenerationResult) -> None:
        for listener in list(self._listeners):
            try:
                listener(result)
            except Exception:  # a broken metrics hook must not fail the generation
                logger.exception("result listener %r failed", listener)
