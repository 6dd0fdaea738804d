"""One call's decode loop: :class:`DecodeCall`, made by :meth:`SwiftEngine.stream` per request.

The lifecycle of a call, in the order this module runs it (llama.cpp's ``common/speculative.h``
reads the same way):

1. **plan** -- the engine validates the request and opens its search session
   (:class:`~swift_engine.search.session.SearchSession`: plain, a fixed skip set, or the step's
   search); :class:`DecodeCall` holds everything the call owns from here on.
2. **prefill** -- :func:`~swift_engine.decoding.prefill.prefill` caches the prompt (reusing the
   prefix cache's blocks) and returns the full model's logits over the search's teacher window.
3. **root** -- the first token, picked from the prompt's last logits (grammar-masked if constrained).
4. **drafters** -- a speculative call gets its drafters from
   :func:`~swift_engine.drafters.policy.drafters_for_call` (context, memory, layer-skip).
5. **steps** -- per step: (search iteration) -> propose -> :func:`~swift_engine.decoding.tree.build_tree`
   -> :func:`~swift_engine.decoding.verification.verify_tree` -> drafters and session observe -> commit.
6. **cut** -- committed tokens are released one by one, so the reply ends exactly where plain
   decoding's would (EOS, a stop string, ``max_new_tokens``); a constrained reply cut by length is
   closed by its grammar.
7. **close** -- the drafters' per-step state and the search's state go back to the step's profile;
   the last chunk carries the :class:`~swift_engine.results.GenerationResult`.

Terms (root, past, path, bonus, teacher targets) are defined in :mod:`swift_engine.decoding`.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from typing import Any, Protocol

import torch

from swift_engine.batching.handover import Handover
from swift_engine.config import SwiftConfig
from swift_engine.decoding.constraints import GrammarCache, GrammarState
from swift_engine.decoding.prefill import prefill
from swift_engine.decoding.prefix_cache import PrefixCache
from swift_engine.decoding.sampling import SamplingParams, call_generator, pick
from swift_engine.decoding.stopping import TextStream
from swift_engine.decoding.tree import SOURCE_CONTEXT, SOURCE_MEMORY, Proposal, TokenTree, build_tree
from swift_engine.decoding.verification import Verdict, verify_tree
from swift_engine.drafters import DraftContext, Drafter, drafters_for_call, propose
from swift_engine.kernels.costs import CostModel
from swift_engine.model.draft_head import DraftHead
from swift_engine.model.kv_cache import SwiftKVCache
from swift_engine.model.runner import ModelRunner
from swift_engine.request import GenerationRequest
from swift_engine.results import FinishReason, GenerationResult, GenerationStats, StreamChunk
from swift_engine.search.session import SearchSession
from swift_engine.search.step_profiles import StepProfiles


class EngineParts(Protocol):
    """What a call uses of its engine (:class:`~swift_engine.engine.SwiftEngine` provides it)."""

    runner: ModelRunner
    config: SwiftConfig
    tokenizer: Any
    eos_ids: frozenset[int]
    prefix_cache: PrefixCache | None

    @property
    def costs(self) -> CostModel: ...

    @property
    def grammars(self) -> GrammarCache: ...

    @property
    def profiles(self) -> StepProfiles: ...


class DecodeCall:
    """One request from prefill to result; the engine holds the model's lock while each chunk is computed."""

    def __init__(self, engine: EngineParts, request: GenerationRequest, session: SearchSession) -> None:
        self.engine = engine
        self.runner = engine.runner
        self.config = engine.config
        self.request = request
        self.session = session
        self.started = time.perf_counter()
        if self.runner.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.runner.device)
        self.stats = GenerationStats(
            prompt_tokens=len(request.prompt_ids),
            step_key=request.step_key,
            kernels=self.runner.kernels,
            precision=self.runner.precision,
            kernel_memory_bytes=self.runner.packed_bytes,
        )
        self.max_new_tokens = request.max_new_tokens
        ctx = self.runner.context_length
        if ctx is not None:
            self.max_new_tokens = min(self.max_new_tokens, ctx - len(request.prompt_ids))
        self.generator = call_generator(request.sampling, request.seed, self.runner.device)
        #: the call's drafters, in priority order (made after the prefill; none when not speculative)
        self.drafters: list[Drafter] = []
        #: what the caller has been given: the committed tokens and their text (see :meth:`handover`)
        self.out: list[int] = []
        self.text = TextStream(engine.tokenizer, request.stops)
        self._cache: SwiftKVCache | None = None
        self._at_root = False  # suspended right after the first token, nothing decoded past it

    # -- the call, chunk by chunk (lifecycle steps 2-7) ----------------------------------------
    def run(self) -> Generator[StreamChunk, None, None]:
        """Text and token chunks as tokens are committed; the last chunk carries the result."""
        stats, grammar = self.stats, self.request.grammar
        text, out = self.text, self.out
        eos_ids, max_new_tokens = self.engine.eos_ids, self.max_new_tokens
        finish: FinishReason = "length"
        for new in self._committed():
            # token by token, so the reply ends at the token that completed a stop string or EOS
            # however many tokens the verification step accepted at once (plain decoding's cut),
            # and a stream is token-level whether a step accepted one token or a whole copied reply
            for tok in new:
                out.append(tok)
                if tok in eos_ids:
                    finish = "eos"
                    yield StreamChunk(text="", token_ids=[tok])
                    break
                yield StreamChunk(text=text.push([tok]), token_ids=[tok])
                if text.stopped_at is not None:
                    finish = "stop"
                    break
                if len(out) >= max_new_tokens:
                    break
            if finish != "length" or len(out) >= max_new_tokens:
                break
        if grammar is not None and finish == "length":
            closing = grammar.close(self.engine.grammars.closing_vocab())
            if closing:
                out.extend(closing)
                stats.grammar_closing_tokens = len(closing)
                yield StreamChunk(text=text.push(closing), token_ids=closing)
        tail = text.flush()
        if tail:
            yield StreamChunk(text=tail)
        yield StreamChunk(result=self._close(text.final_text, out, finish))

    def handover(self) -> Handover | None:
        """Give this call to the engine's batch, right after its first token (None: not at that point,
        or already finished; a constrained call's grammar has advanced by that token and goes with it).
        The call's generator must then be closed unfinished: its step's profile is left as it was (a
        batched call decodes plainly and learns nothing)."""
        request, out = self.request, self.out
        if (
            not self._at_root
            or self._cache is None
            or len(out) != 1
            or out[0] in self.engine.eos_ids
            or self.text.stopped_at is not None
            or len(out) >= self.max_new_tokens
        ):
            return None
        self._at_root = False
        self.stats.mode = "plain"
        return Handover(
            cache=self._cache,
            prompt_tokens=len(request.prompt_ids),
            out=out,
            text=self.text,
            generator=self.generator,
            stats=self.stats,
            started=self.started,
            max_new_tokens=self.max_new_tokens,
        )

    def _close(self, text: str, out: list[int], finish: FinishReason) -> GenerationResult:
        """Write the step's profile (drafters' and search's state) and finish the statistics."""
        stats = self.stats
        stats.new_tokens = len(out)
        states = {d.profile_key: d.profile_state() for d in self.drafters if d.profile_key is not None}
        kept = {key: state for key, state in states.items() if state is not None}
        self.session.close(self.request.step_key, stats, len(out), kept)
        stats.wall_time_s = time.perf_counter() - self.started
        if self.runner.device.type == "cuda":
            stats.peak_memory_bytes = int(torch.cuda.max_memory_allocated(self.runner.device))
        return GenerationResult(text=text, token_ids=out, finish_reason=finish, stats=stats.finalize())

    # -- the decode loop (lifecycle steps 2-5) ---------------------------------------------------
    def _committed(self) -> Iterator[list[int]]:
        """Yield committed tokens as they are accepted; :meth:`run` decides when to stop."""
        runner, cfg, request, session, stats = self.runner, self.config, self.request, self.session, self.stats
        prompt_ids, grammar, max_new_tokens = request.prompt_ids, request.grammar, self.max_new_tokens
        # the furthest a generation writes: prompt, reply, and one draft tree past the reply's end
        cache = runner.new_cache(capacity=len(prompt_ids) + max_new_tokens + cfg.tree.max_tree_tokens + 1)
        prefix_cache = self.engine.prefix_cache
        prefill_start = time.perf_counter()
        tail_hidden, stats.cached_prompt_tokens = prefill(  # tail_hidden: [teacher window, H]
            runner,
            cache,
            prompt_ids,
            session.teacher_window,
            block=cfg.prefill_block,
            prefix_cache=prefix_cache,
            check=lambda: request.check_deadline(0),
        )
        stats.prefix_cache_bytes = prefix_cache.nbytes if prefix_cache is not None else 0
        root = self._pick(runner.logits(tail_hidden[-1:])[0], request.sampling, grammar)
        # the teacher window's argmax only when a search iteration needs it (the full head over its rows)
        session.start(prompt_ids, len(tail_hidden), lambda: runner.logits(tail_hidden).argmax(dim=-1).tolist())
        decode_start = time.perf_counter()
        stats.prefill_time_s = decode_start - prefill_start
        self._cache, self._at_root = cache, True
        yield [root]
        self._at_root = False
        head = None
        if session.speculative:  # the draft head scores layer-skip drafts and the search's candidates
            head = DraftHead(runner, cfg.draft_vocab_size, prompt_ids)
            drafting = DraftContext(
                runner=runner,
                cache=cache,
                config=cfg,
                costs=self.engine.costs,
                head=head,
                tokens=prompt_ids + [root],
                skip=lambda: session.choice,
                profile=session.profile,
                grammar=grammar,
            )
            self.drafters += drafters_for_call(drafting)
        produced, past = 1, len(prompt_ids)
        # the search's budget counts decoding from here: not the prefill, nor the per-call set-up above
        # (the draft head and the context drafters read the whole prompt), nor the caller's time with the
        # first token -- a long prompt must not buy a search that its short reply then pays for
        search_clock = time.perf_counter()
        while produced < max_new_tokens:
            remaining = max_new_tokens - produced
            session.maybe_search(runner, cache, past, search_clock, head)
            proposals = propose(self.drafters, root, past, remaining - 1) if remaining > 1 else []
            tree = build_tree(root, proposals, cfg.tree, budget=min(remaining, runner.max_rows or remaining))
            verdict = self._verify(cache, tree, past, timed=session.speculative)
            new = verdict.accepted + [verdict.bonus]
            for drafter in self.drafters:
                drafter.observe(tree, verdict, new)
            session.observe(root, verdict)
            _count_step(stats, tree, verdict, proposals, cache)
            past += len(verdict.path)
            root = verdict.bonus
            produced += len(new)
            yield new

    def _verify(self, cache: SwiftKVCache, tree: TokenTree, past: int, timed: bool) -> Verdict:
        """One full-model pass over the tree; its time corrects the cost model (``timed``)."""
        request = self.request
        verify_start = time.perf_counter()
        verdict = verify_tree(self.runner, cache, tree, past, request.sampling, self.generator, request.grammar)
        if timed:
            self.engine.costs.observe_verify(len(tree), time.perf_counter() - verify_start)
        return verdict

    def _pick(self, logits: torch.Tensor, params: SamplingParams, grammar: GrammarState | None) -> int:
        """The root token from ``logits`` ``[vocab]``: argmax, or a sample, within the grammar."""
        if grammar is not None:
            logits = grammar.mask_(logits.clone())
        tok = pick(logits, params, self.generator)
        if grammar is not None:
            grammar.advance(tok)
        return tok


def _count_step(
    stats: GenerationStats, tree: TokenTree, verdict: Verdict, proposals: list[Proposal], cache: SwiftKVCache
) -> None:
    """Fold one verification step into the call's counters."""
    stats.verify_steps += 1
    stats.draft_steps += sum(p.steps for p in proposals)
    stats.drafted_tokens += len(tree) - 1
    stats.accepted_drafted_tokens += len(verdict.accepted)
    stats.context_drafted_tokens += sum(1 for s in tree.sources if s & SOURCE_CONTEXT)
    stats.context_accepted_tokens += sum(1 for n in verdict.path[1:] if tree.sources[n] & SOURCE_CONTEXT)
    stats.memory_drafted_tokens += sum(1 for s in tree.sources if s & SOURCE_MEMORY)
    stats.memory_accepted_tokens += sum(1 for n in verdict.path[1:] if tree.sources[n] & SOURCE_MEMORY)
    stats.kv_cache_bytes = cache.nbytes()
