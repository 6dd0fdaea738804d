"""The public engine: prompt in, SWIFT-accelerated tokens out, with statistics.

The decode loop (``_decode``) is the whole acceleration phase in a few lines: draft with skipped
layers from the last token, widen the draft into a tree, verify the tree with the full model,
keep the accepted path. Everything around it is prompt handling, stop conditions and reporting.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import SwiftConfig
from .constraints import Constraint, GrammarCache, GrammarState
from .costs import CostModel, cost_file, load_or_measure
from .drafting import ContextAcceptance, DraftHead, build_tree, draft_chain
from .lookup import NgramIndex
from .layer_skip import default_skip_set
from .search import Candidate, LayerSetSearch, SearchState, score_candidate
from .profile_store import ProfileStore
from .results import FinishReason, GenerationResult, GenerationStats, StreamChunk
from .runner import ModelRunner
from .sampling import SamplingParams, sample, target_probs
from .step_profiles import StepProfiles
from .step_context import resolve_step_key
from .stopping import StopStrings, TextStream
from .tree import SOURCE_CONTEXT
from .verification import verify_tree

logger = logging.getLogger(__name__)

Prompt = str | Sequence[dict[str, Any]] | Sequence[int]

#: Prefill in chunks so the mask of a long prompt stays small.
_PREFILL_CHUNK = 512


@dataclass
class _CallPlan:
    """How one call decodes, and the search bookkeeping it carries."""

    choice: "SkipChoice"
    #: no drafting at all in this call (speculative=False, or SWIFT disabled)
    plain_call: bool = False
    context: ContextAcceptance = field(default_factory=ContextAcceptance)
    state: SearchState | None = None
    searching: bool = False
    probing: bool = False
    search: LayerSetSearch | None = None
    iterations: int = 0
    #: seconds spent searching in this call (bounded by SearchConfig.max_overhead)
    search_s: float = 0.0
    #: seconds the last search iteration took (the estimate for the next one)
    last_iteration_s: float = 0.0
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SkipChoice:
    """What one generation drafts with: the skipped sublayers, or plain decoding."""

    attention: frozenset[int]
    mlp: frozenset[int]
    plain: bool = False


class SwiftEngine:
    """SWIFT self-speculative decoding over a Hugging Face causal LM.

    Thread-safe: generations on one engine are serialized by a lock (they share the model's
    layer-skip switches; on CPU two concurrent forwards would only contend for the same cores).
    """

    def __init__(
        self,
        model,
        tokenizer,
        config: SwiftConfig | None = None,
        *,
        model_name: str | None = None,
        profile_store: ProfileStore | str | os.PathLike | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config or SwiftConfig()
        self.model_name = model_name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.runner = ModelRunner(model, self.config.cpu_kernels)
        self._lock = threading.RLock()
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
        self._fingerprint: str | None = None
        self._grammars: GrammarCache | None = None

    # -- per-engine state, created on first use ---------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Identity of the weights (not the name): the key of this model's profiles."""
        if self._fingerprint is None:
            from .loading import model_fingerprint

            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint

    @property
    def profiles(self) -> StepProfiles:
        """This model's per-step skip profiles: ``list()``, ``get()``, ``export()``, ``import_()``, ``reset()``."""
        if self._profiles is None:
            self._profiles = StepProfiles(
                self._store, self.fingerprint, self.model_name, self.runner.num_layers, self._start, self.config.search
            )
        return self._profiles

    def calibrate(self) -> CostModel:
        """Measure the draft and verification costs again (e.g. after the machine's load changed) and save them."""
        with self._lock:
            path = cost_file(self._store.directory, self.fingerprint, self.runner)
            path.unlink(missing_ok=True)
            self._costs = self._with_draft_head(load_or_measure(path, self.runner))
            return self._costs

    def _with_draft_head(self, costs: CostModel) -> CostModel:
        costs.draft_head_share = DraftHead.expected_share(self.runner.vocab_size, self.config.draft_vocab_size)
        return costs

    @property
    def costs(self) -> CostModel:
        """Measured costs of draft and verification passes on this device (a few seconds, once)."""
        if self._costs is None:
            with self._lock:
                if self._costs is None:
                    path = cost_file(self._store.directory, self.fingerprint, self.runner)
                    self._costs = self._with_draft_head(load_or_measure(path, self.runner))
        return self._costs

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
    ) -> "SwiftEngine":
        """Load a model (``None``: the embedded SmolLM2-135M-Instruct) and wrap it."""
        from .loading import load_model

        loaded = load_model(model_id, gguf_file=gguf_file, device=device, dtype=dtype)
        return cls(loaded.model, loaded.tokenizer, config, model_name=loaded.model_name, profile_store=profile_store)

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
        """Token ids of a string, a list of chat messages (chat template applied), or ids."""
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
            for m in prompt:
                if "role" not in m or "content" not in m:
                    raise ValueError(f"chat messages need 'role' and 'content', got keys {sorted(m)}")
            text = self.tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
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

    # -- profiles ---------------------------------------------------------------------------------
    def _plan(self, step_key: str, speculative: bool | None) -> "_CallPlan":
        """Decide how this call decodes: which skip set, whether the search runs, or plainly."""
        if speculative is False or not self.config.speculative:
            return _CallPlan(choice=SkipChoice(frozenset(), frozenset(), plain=True), plain_call=True)
        search_cfg = self.config.search
        if not search_cfg.enabled:
            return _CallPlan(choice=SkipChoice(self._start.attention, self._start.mlp))
        state, record = self.profiles.checkout(step_key)
        context = ContextAcceptance.from_dict(record.extra.get("context_acceptance"))
        probing = False
        if record.plain and state.converged:
            since = int(record.extra.get("calls_since_probe", 0)) + 1
            if since < search_cfg.reprobe_every_calls:
                return _CallPlan(
                    choice=SkipChoice(frozenset(), frozenset(), plain=True),
                    context=context,
                    state=state,
                    extra={"calls_since_probe": since},
                )
            probing = True  # look again: the content of this step may have changed
            state.converged = False
            state.since_improvement = 0
        searching = not state.converged
        plain = state.best_speedup < 1.0  # unknown or unprofitable so far: decode plainly
        return _CallPlan(
            choice=SkipChoice(state.best.attention, state.best.mlp, plain=plain),
            context=context,
            state=state,
            searching=searching,
            probing=probing,
            search=LayerSetSearch(
                self.runner.num_layers,
                search_cfg,
                self.costs,
                self.config.max_draft_len,
                seed=(state.iterations * 7919 + len(step_key)) % (2**31),
            )
            if searching
            else None,
            extra={"calls_since_probe": 0},
        )

    # -- public API ---------------------------------------------------------------------------
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
    ) -> Iterator[StreamChunk]:
        """Stream chunks (text delta + token ids); the last chunk carries the :class:`GenerationResult`.

        ``speculative=False`` decodes plainly through the same loop (the benchmark's own baseline).
        ``constraint`` (:class:`~swift_engine.constraints.JsonSchemaConstraint` or
        :class:`~swift_engine.constraints.ToolCallConstraint`) restricts the output to a grammar.
        """
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        params = SamplingParams(float(temperature), float(top_p), int(top_k))
        stops = StopStrings(stop)
        key = resolve_step_key(step_key, self.config.default_step_key)
        ids = self.encode_prompt(prompt)
        grammar = self.grammars.matcher(constraint) if constraint is not None else None
        return self._stream(ids, max_new_tokens, params, stops, key, seed, speculative, grammar)

    @property
    def grammars(self) -> GrammarCache:
        if self._grammars is None:
            self._grammars = GrammarCache(self.tokenizer, self.runner.vocab_size, sorted(self.eos_ids))
        return self._grammars

    def _stream(self, ids, max_new_tokens, params, stops, key, seed, speculative, grammar=None) -> Iterator[StreamChunk]:
        with self._lock:
            t0 = time.perf_counter()
            if self.runner.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.runner.device)
            plan = self._plan(key, speculative)
            stats = GenerationStats(prompt_tokens=len(ids), step_key=key)
            ctx = self.runner.context_length
            if ctx is not None:
                max_new_tokens = min(max_new_tokens, ctx - len(ids))
            generator = None
            if not params.greedy:
                generator = torch.Generator(device=self.runner.device)
                generator.manual_seed(seed if seed is not None else random.SystemRandom().randrange(2**63))
            text = TextStream(self.tokenizer, stops)
            out: list[int] = []
            finish: FinishReason = "length"
            for new in self._decode(ids, max_new_tokens, params, generator, plan, stats, grammar):
                # token by token, so the reply ends at the token that completed a stop string or EOS
                # however many tokens the verification step accepted at once (plain decoding's cut)
                emit: list[int] = []
                delta = ""
                for tok in new:
                    emit.append(tok)
                    if tok in self.eos_ids:
                        finish = "eos"
                        break
                    delta += text.push([tok])
                    if text.stopped_at is not None:
                        finish = "stop"
                        break
                out.extend(emit)
                if delta or emit:
                    yield StreamChunk(text=delta, token_ids=emit)
                if finish != "length" or len(out) >= max_new_tokens:
                    break
            if grammar is not None and finish == "length":
                closing = grammar.close(self.grammars.closing_vocab())
                if closing:
                    out.extend(closing)
                    stats.grammar_closing_tokens = len(closing)
                    delta = text.push(closing)
                    yield StreamChunk(text=delta, token_ids=closing)
            tail = text.flush()
            if tail:
                yield StreamChunk(text=tail)
            stats.new_tokens = len(out)
            choice = plan.choice
            stats.mode = "plain" if choice.plain else "swift"
            stats.skip_attention, stats.skip_mlp = sorted(choice.attention), sorted(choice.mlp)
            if plan.state is not None:
                st = plan.state
                if plan.probing:
                    st.converged = True  # one call's look is the probe
                stats.search_ran = plan.iterations > 0
                stats.search_iterations = plan.iterations
                stats.profile_score = st.best_score
                stats.expected_speedup = st.best_speedup
                self.profiles.commit(
                    key,
                    st,
                    plain=st.converged and st.best_speedup < 1.0,
                    tokens=len(out),
                    extra={**plan.extra, "context_acceptance": plan.context.to_dict()},
                )
            stats.wall_time_s = time.perf_counter() - t0
            if self.runner.device.type == "cuda":
                stats.peak_memory_bytes = int(torch.cuda.max_memory_allocated(self.runner.device))
            result = GenerationResult(
                text=text.final_text, token_ids=out, finish_reason=finish, stats=stats.finalize()
            )
            yield StreamChunk(result=result)

    # -- the decode loop --------------------------------------------------------------------
    def _decode(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        params: SamplingParams,
        generator: torch.Generator | None,
        plan: "_CallPlan",
        stats: GenerationStats,
        grammar: GrammarState | None = None,
    ) -> Iterator[list[int]]:
        """Yield committed tokens as they are accepted; the caller decides when to stop."""
        runner, device, cfg = self.runner, self.runner.device, self.config
        # the furthest a generation writes: prompt, reply, and one draft tree past the reply's end
        cache = runner.new_cache(capacity=len(prompt_ids) + max_new_tokens + cfg.tree.max_tree_tokens + 1)
        tp = time.perf_counter()
        n = len(prompt_ids)
        window = cfg.search.context_window
        for s in range(0, n, _PREFILL_CHUNK):
            chunk = torch.tensor(prompt_ids[s : s + _PREFILL_CHUNK], device=device)
            hidden = runner.hidden(cache, chunk, torch.arange(s, s + chunk.numel(), device=device))
        # the full model's argmax after each of the last prompt tokens: the search's first targets
        tail = hidden[-min(window, hidden.shape[0]) :] if plan.searching else hidden[-1:]
        tail_logits = runner.logits(tail)
        root = self._pick(tail_logits[-1], params, generator, grammar)
        committed = list(prompt_ids)  # tokens whose KV is cached (the root is not, yet)
        ref_start = n - tail_logits.shape[0]
        ref_next = tail_logits.argmax(dim=-1).tolist()  # ref_next[j - ref_start]: argmax after committed[j]
        td = time.perf_counter()
        stats.prefill_time_s = td - tp
        yield [root]
        head = DraftHead(runner, cfg.draft_vocab_size, prompt_ids)
        speculative = not plan.plain_call
        index = NgramIndex(prompt_ids + [root]) if speculative and cfg.context_drafts else None
        costs = self.costs if speculative else None
        produced, past, step = 1, n, 0
        while produced < max_new_tokens:
            remaining = max_new_tokens - produced
            if plan.searching and step % cfg.search.opt_interval == 0 and self._search_affordable(plan, td):
                ts = time.perf_counter()
                self._search_step(plan, cache, past, committed, ref_start, ref_next, head)
                plan.last_iteration_s = time.perf_counter() - ts
                plan.search_s += plan.last_iteration_s
            step += 1
            choice = plan.choice
            context: list[list[int]] = []
            order = 0  # n-gram match length of the context draft
            draft = None
            if speculative and remaining > 1:
                if index is not None:
                    cont, order = index.best(min(cfg.max_draft_len, remaining - 1))
                    length = plan.context.draft_length(costs, len(cont), order, probe=step % 16 == 0)
                    context = [cont[:length]] if length else []
                if not choice.plain and (not context or len(context[0]) < 2):
                    draft = draft_chain(
                        runner,
                        cache,
                        root,
                        past,
                        choice.attention,
                        choice.mlp,
                        cfg,
                        max_len=remaining - 1,
                        head=head,
                        grammar=grammar,
                    )
                    cache.truncate(past)
                    stats.draft_steps += draft.steps
            tree = build_tree(root, draft, context, cfg, budget=remaining)
            tv = time.perf_counter()
            verdict = verify_tree(runner, cache, tree, past, params, generator, grammar)
            if costs is not None:
                costs.observe_verify(len(tree), time.perf_counter() - tv)
            stats.verify_steps += 1
            stats.drafted_tokens += len(tree) - 1
            stats.accepted_drafted_tokens += len(verdict.accepted)
            plan.context.observe(tree, verdict.path, SOURCE_CONTEXT, stats, order if context else 0)
            new = verdict.accepted + [verdict.bonus]
            committed.append(root)
            committed.extend(verdict.accepted)
            ref_next.extend(verdict.path_argmax)
            head.add(new)
            if index is not None:
                index.extend(new)
            past += len(verdict.path)
            root = verdict.bonus
            produced += len(new)
            stats.kv_cache_bytes = cache.nbytes()
            yield new

    def _search_affordable(self, plan: "_CallPlan", decode_start: float) -> bool:
        """Whether one more search iteration keeps this call within its overhead budget.

        The budget is ``max_overhead`` times the call's decoding time so far (the prefill is not
        decoding: a long prompt must not buy a search that its short reply then pays for), and the
        next iteration counts before it runs, so a reply too short to carry an iteration never
        starts one. The share shrinks as the search stagnates (halved after ``hopeless_after``
        iterations without improvement, a third after twice that, ...): the paper's stopping rule
        (``max_tolerance_iter`` stagnant iterations) can take many calls, and each further
        iteration is less likely to pay for itself.
        """
        cfg = self.config.search
        stagnation = plan.state.since_improvement if plan.state is not None else 0
        share = cfg.max_overhead * cfg.hopeless_after / (cfg.hopeless_after + stagnation)
        decoding = time.perf_counter() - decode_start - plan.search_s
        next_s = plan.last_iteration_s or self.costs.verify(cfg.context_window)
        return plan.search_s + next_s <= share * decoding

    def _search_step(
        self,
        plan: "_CallPlan",
        cache,
        past: int,
        tokens: list[int],
        ref_start: int,
        ref_next: list[int],
        head: DraftHead,
    ) -> None:
        """One iteration of the layer-set search, scored on the last committed tokens."""
        state, search = plan.state, plan.search
        assert state is not None and search is not None
        first = max(ref_start, past - self.config.search.context_window)
        if past - first < 4:
            return
        window_tokens = tokens[first:past]
        targets = ref_next[first - ref_start : past - ref_start]
        if plan.iterations == 0 and state.iterations == 0:
            cand = state.best  # score the starting set first
        else:
            cand = search.propose(state)
        score = score_candidate(self.runner, cache, past, window_tokens, targets, cand, head.vocab())
        if search.update(state, cand, score) or plan.iterations == 0:
            plan.choice = SkipChoice(state.best.attention, state.best.mlp, plain=state.best_speedup < 1.0)
        plan.iterations += 1
        if state.converged:
            plan.searching = False

    def _pick(self, logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None, grammar=None) -> int:
        if grammar is not None:
            logits = grammar.mask_(logits.clone())
        tok = int(logits.argmax().item()) if params.greedy else sample(target_probs(logits, params), generator)
        if grammar is not None:
            grammar.advance(tok)
        return tok
