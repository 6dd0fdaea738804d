"""Many calls, one pass: generations in flight at once decode their next tokens in shared passes.

Why: decoding a small model on a CPU is bound by reading its weights, and on swift's int4/int8
kernels a pass of 16 rows costs about 1.7 one-row steps (docs/bench/passes), so calls that take turns
on the model's lock (what they did before) waste nearly all of each pass. Here a call that arrives
while another runs joins the *batch*: its prompt is prefilled as a call alone would (same blocks, same
prefix cache), then each pass takes one token of every generation in the batch: rows of all of them
through the linears together, attention each over its own entries (:mod:`swift_engine.batching.arena`).

Exact whatever the company: on swift's kernels a row's products, norms and attention never mix rows
(row-invariant by construction: native/*.cpp), so each generation's tokens are bitwise those of its
plain decoding alone -- which greedy SWIFT equals (``tests/test_batching.py`` compares them). A
batched generation decodes plainly (no drafts, no search, its step's profile untouched): with other
calls sharing the pass, rows spent on a draft tree would be taken from them.

The lifecycle, for each call (:meth:`Batcher.stream`):

1. **join** -- the request waits in ``waiting``; nothing is computed in the caller's thread, which
   only reads its chunks as they come. A call that started alone and found company after its first
   token joins the same way, with its cache (:mod:`swift_engine.batching.handover`).
2. **drive** -- the batch's driver thread (started by the first call to join, gone when the batch is
   empty) takes the model's lock (the engine's own, shared with the calls that decode alone) for each
   :meth:`Batcher._drive`: drop closed calls, admit waiting ones up to ``batch_rows`` (their prompts
   prefilled a few blocks between passes, then the first token; or a moved call's cache copied in),
   run one pass over every admitted call, hand each its token.
3. **leave** -- a generation that ends (EOS, stop string, ``max_new_tokens``, its caller closing the
   stream or timing out) gives its region back before the next pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import torch

from swift_engine.batching.arena import KVArena, Region
from swift_engine.batching.handover import Handover
from swift_engine.batching.row_drafts import RowDrafts
from swift_engine.decoding.prefill import prefill_blocks
from swift_engine.decoding.sampling import call_generator, pick
from swift_engine.decoding.stopping import TextStream
from swift_engine.decoding.verification import accept, accept_constrained
from swift_engine.request import GenerationRequest
from swift_engine.results import FinishReason, GenerationResult, GenerationStats, StreamChunk

if TYPE_CHECKING:
    from swift_engine.decode_loop import EngineParts
    from swift_engine.model.kv_cache import SwiftKVCache
    from swift_engine.model_thread import ModelThread

logger = logging.getLogger(__name__)

__all__ = ["Batcher"]

#: how often a caller with nothing to read checks its deadline (s)
_POLL_S = 0.05


class _Row:
    """One generation in the batch: its request, its region of the arena and what it has produced."""

    def __init__(
        self, request: GenerationRequest, engine: EngineParts, max_new_tokens: int, moved: Handover | None = None
    ) -> None:
        self.request = request
        self.max_new_tokens = max_new_tokens
        self.text = TextStream(engine.tokenizer, request.stops)
        #: a constrained call's grammars (the closing vocabulary, for a reply cut short)
        self.grammars = engine.grammars if request.grammar is not None else None
        self.out: list[int] = []
        #: a call that started alone: its cache and state, loaded into a region at admission
        self.moved = moved
        #: its free draft sources (greedy, speculative calls; made at admission)
        self.drafts: RowDrafts | None = None
        self.chunks: deque[StreamChunk] = deque()
        self.region: Region | None = None
        #: its prompt's prefill while it is admitted, a block at a time (decoding/prefill.py), and the cache it fills
        self.prefilling: Generator[int, None, tuple[torch.Tensor, int]] | None = None
        self.cache: SwiftKVCache | None = None
        self.last = 0  # the token fed next (at the position of the region's next entry)
        self.done = False
        self.closed = False  # the caller went away: leave at the next pass
        self.error: BaseException | None = None
        self.started = self.started_prefill = time.perf_counter()
        runner = engine.runner
        self.stats = GenerationStats(
            prompt_tokens=len(request.prompt_ids),
            step_key=request.step_key,
            kernels=runner.kernels,
            precision=runner.precision,
            kernel_memory_bytes=runner.packed_bytes,
            mode="plain",
        )
        self.generator = call_generator(request.sampling, request.seed, runner.device)
        if moved is not None:  # continue where the call alone stopped: its tokens, text, draws and counters
            self.max_new_tokens = moved.max_new_tokens
            self.text, self.out, self.generator = moved.text, moved.out, moved.generator
            self.stats, self.started = moved.stats, moved.started
            self.last = moved.out[-1]
        self.stats.batched = True

    def pick(self, logits: torch.Tensor) -> int:
        """The next token from ``logits`` ``[vocab]`` (the same draw as a call alone: its own generator),
        within the call's grammar, which advances by it."""
        grammar = self.request.grammar
        if grammar is None:
            return pick(logits, self.request.sampling, self.generator)
        tok = pick(grammar.mask_(logits.clone()), self.request.sampling, self.generator)
        grammar.advance(tok)
        return tok

    def walk(self, chain: list[int], logits: torch.Tensor) -> tuple[int, int]:
        """How many of ``chain`` (drafts after the fed token) plain decoding keeps, and its next token,
        from the run's ``logits`` ``[1 + len(chain), vocab]`` (the grammar, if any, advances by them)."""
        children = [{tok: j + 1} for j, tok in enumerate(chain)] + [{}]
        grammar = self.request.grammar
        if grammar is None:
            path, bonus, _ = accept(children, logits, self.request.sampling, self.generator)
        else:
            path, bonus, _ = accept_constrained(children, logits, self.request.sampling, self.generator, grammar)
        return len(path) - 1, bonus

    def push(self, tok: int, eos_ids: frozenset[int]) -> None:
        """Commit one token: its chunk, and the end where plain decoding would end."""
        self.out.append(tok)
        if self.drafts is not None:
            self.drafts.extend([tok])
        finish: FinishReason | None = None
        if tok in eos_ids:
            self.chunks.append(StreamChunk(text="", token_ids=[tok]))
            finish = "eos"
        else:
            self.chunks.append(StreamChunk(text=self.text.push([tok]), token_ids=[tok]))
            if self.text.stopped_at is not None:
                finish = "stop"
            elif len(self.out) >= self.max_new_tokens:
                finish = "length"
        if finish is not None:
            self._finish(finish)
        else:
            self.last = tok

    def _finish(self, finish: FinishReason) -> None:
        grammar = self.request.grammar
        if grammar is not None and self.grammars is not None and finish == "length":  # closed as alone
            try:
                closing = grammar.close(self.grammars.closing_vocab())
            except Exception as exc:  # noqa: BLE001 - no end within the closer's budget: the call's own error
                self.error, self.done = exc, True
                return
            if closing:
                self.out.extend(closing)
                self.stats.grammar_closing_tokens = len(closing)
                self.chunks.append(StreamChunk(text=self.text.push(closing), token_ids=closing))
        tail = self.text.flush()
        if tail:
            self.chunks.append(StreamChunk(text=tail))
        stats = self.stats
        stats.new_tokens = len(self.out)
        stats.wall_time_s = time.perf_counter() - self.started
        result = GenerationResult(
            text=self.text.final_text, token_ids=self.out, finish_reason=finish, stats=stats.finalize()
        )
        self.chunks.append(StreamChunk(result=result))
        self.done = True


class Batcher:
    """The engine's batch: calls admitted to shared passes, and the arena their caches live in."""

    def __init__(self, engine: EngineParts, lock: threading.RLock, thread: ModelThread) -> None:
        self.engine = engine
        self._lock = lock  # the engine's model lock (calls decoding alone take it too)
        self._thread = thread  # where the model's work runs (swift_engine/model_thread.py)
        self._state = threading.Condition()  # guards waiting, active and every row's chunks
        self.waiting: deque[_Row] = deque()
        self.admitting: list[_Row] = []  # prompts being prefilled, a few blocks between passes
        self.active: list[_Row] = []
        self._arena: KVArena | None = None
        self._driver: threading.Thread | None = None

    @property
    def rows(self) -> int:
        """Generations in the batch now, waiting or decoding (a closed one leaves at the next pass)."""
        with self._state:
            return len(self.waiting) + len(self.admitting) + sum(not (r.done or r.closed) for r in self.active)

    def accepts(self, request: GenerationRequest) -> bool:
        """Whether ``request`` can decode in shared passes: swift's kernels on this model (constrained
        calls included: each row is masked by its own grammar)."""
        runner, fast = self.engine.runner, self.engine.runner.fast
        return (
            self.engine.config.batch_rows > 0
            and runner.native_kernels
            and fast is not None
            and fast.scripted is not None
            and fast.usable()
            and fast.scripted.batchable()
        )

    def stream(self, request: GenerationRequest, moved: Handover | None = None) -> Generator[StreamChunk, None, None]:
        """The call's chunks as the passes produce them (the engine checks its deadline between them);
        ``moved``: a call that started alone, continued after the chunks it has already given."""
        ctx = self.engine.runner.context_length
        limit = request.max_new_tokens if ctx is None else min(request.max_new_tokens, ctx - len(request.prompt_ids))
        row = _Row(request, self.engine, limit, moved)
        with self._state:
            self.waiting.append(row)
            if self._driver is None:
                self._driver = threading.Thread(target=self._drive_while_busy, name="swift-batch", daemon=True)
                self._driver.start()
        try:
            while True:
                with self._state:
                    while not row.chunks and row.error is None:
                        self._state.wait(_POLL_S)
                        request.check_deadline(len(row.out))
                    chunk = row.chunks.popleft() if row.chunks else None
                    error = row.error
                if chunk is None and error is not None:
                    raise error
                if chunk is not None:
                    yield chunk
                    if chunk.result is not None:
                        return
        finally:
            with self._state:
                row.closed = True
                if row in self.waiting:
                    self.waiting.remove(row)

    def _drive_while_busy(self) -> None:
        """The batch's driver: a pass at a time on the model's thread while any generation is in the
        batch, then it ends. (The passes run on the model's thread, which calls decoding alone share:
        a chunk of theirs and a pass of the batch take turns; see swift_engine/model_thread.py.)"""
        while True:
            with self._state:
                if not self.waiting and not self.admitting and not any(not (r.done or r.closed) for r in self.active):
                    self._leave_locked()
                    self._driver = None
                    return
            try:
                self._thread.run(self._drive_locked)
            except BaseException:  # noqa: BLE001 - the rows heard of it (_drive); the driver goes on
                logger.exception("a batched pass failed; its generations end with the error")

    def _drive_locked(self) -> None:
        with self._lock:
            self._drive()

    # -- the passes (the driver holds the model's lock) ---------------------------------------------
    def _drive(self) -> None:
        """Admit waiting calls, run one pass over the batch, hand out its tokens (see the module docstring)."""
        try:
            self._leave()
            self._admit()
            if self.active:
                self._pass()
        except BaseException as exc:  # noqa: BLE001 - every caller of the batch hears of it, then it empties
            with self._state:
                for row in list(self.active) + list(self.admitting) + list(self.waiting):
                    row.error = exc
                self.waiting.clear()
                for row in self.admitting:
                    if row.region is not None and self._arena is not None:
                        self._arena.close(row.region)
                        row.region = None
                self.admitting.clear()
            self._leave(everyone=True)
            raise
        finally:
            with self._state:
                self._state.notify_all()

    def _leave(self, everyone: bool = False) -> None:
        with self._state:
            self._leave_locked(everyone)

    def _leave_locked(self, everyone: bool = False) -> None:
        gone = [r for r in self.active if everyone or r.done or r.closed]
        self.active = [r for r in self.active if r not in gone]
        for row in gone:
            if row.region is not None and self._arena is not None:
                self._arena.close(row.region)
                row.region = None

    def _admit(self) -> None:
        """Admit waiting calls up to the batch's rows, prefilling their prompts a few blocks per pass.

        While calls decode in the batch, at most ``SwiftConfig.prefill_budget`` prompt tokens are
        prefilled before the next pass (at least one block, so every prompt gets there): a long prompt
        delays the others' next tokens by a block or two, not by its whole prefill (vLLM's chunked
        prefill, in turns rather than in the same pass: on a CPU a prompt block is bound by its
        products, and sharing a pass with it would save the decoding rows little). With nothing
        decoding, prompts are prefilled whole. A call whose prefill fails (its timeout) ends alone.
        """
        cap = min(self.engine.config.batch_rows, self.engine.runner.max_rows or self.engine.config.batch_rows)
        while True:
            with self._state:
                if not self.waiting or len(self.active) + len(self.admitting) >= cap:
                    break
                row = self.waiting.popleft()
            self._start(row)
        budget, spent = self.engine.config.prefill_budget, 0
        for row in list(self.admitting):
            # the budget holds once anyone decodes (a prompt admitted whole a moment ago included)
            while row.prefilling is not None and not row.closed and (not (budget and self.active) or spent < budget):
                try:
                    spent += next(row.prefilling)
                except StopIteration as finished:
                    self._first_token(row, *finished.value)
                except Exception as exc:  # noqa: BLE001 - its own error (a timeout): the others go on
                    row.prefilling, row.error = None, exc
            if row.prefilling is None or row.closed:
                self._admitted(row)
            if budget and self.active and spent >= budget:
                return

    def _start(self, row: _Row) -> None:
        """A region for the call, and its prompt's prefill begun (a moved call's cache is copied in as it
        is: its prompt was prefilled and its first token picked alone)."""
        engine, runner, request = self.engine, self.engine.runner, row.request
        if self._arena is None:
            assert runner.fast is not None and runner.fast.scripted is not None  # see accepts()
            kv_heads, head_dim = runner.fast.scripted.cache_shape
            self._arena = KVArena(runner.num_layers, kv_heads, head_dim, torch.bfloat16, runner.device)
        prompt = request.prompt_ids
        row.region = self._arena.open(len(prompt) + row.max_new_tokens + 1)
        with self._state:
            self.admitting.append(row)
        if row.moved is not None:
            row.region.cache.load([(k, v) for k, v in row.moved.cache.entries(0, row.moved.prompt_tokens)])
            row.moved = None  # the call alone's cache is no longer needed
            self._admitted(row)
            return
        row.started_prefill = time.perf_counter()
        # into a cache of the size a call alone has (its attention reads the cache's buffers as they are
        # laid out), then copied into the region
        row.cache = runner.new_cache(capacity=len(prompt) + row.max_new_tokens + engine.config.tree.max_tree_tokens + 1)
        row.prefilling = prefill_blocks(
            runner,
            row.cache,
            prompt,
            1,
            block=engine.config.prefill_block,
            prefix_cache=engine.prefix_cache,
            check=lambda: request.check_deadline(0),
        )

    def _first_token(self, row: _Row, hidden: torch.Tensor, cached: int) -> None:
        """The prompt is in the row's cache: copy it into the region, pick the first token."""
        assert row.region is not None and row.cache is not None
        row.prefilling, row.stats.cached_prompt_tokens = None, cached
        row.region.cache.load([(k, v) for k, v in row.cache.entries(0, len(row.request.prompt_ids))])
        row.cache = None
        row.stats.prefill_time_s = time.perf_counter() - row.started_prefill
        row.push(row.pick(self.engine.runner.logits(hidden[-1:])[0]), self.engine.eos_ids)

    def _admitted(self, row: _Row) -> None:
        """The row's prefill is over: into the passes, or (ended, closed, failed) out of the batch."""
        row.prefilling, row.cache = None, None
        if row.error is None and not row.done and not row.closed:
            row.drafts = self._drafts_for(row)
        with self._state:
            self.admitting.remove(row)
            if row.error is None and not row.done and not row.closed:
                self.active.append(row)
            elif row.region is not None and self._arena is not None:
                self._arena.close(row.region)
                row.region = None
            self._state.notify_all()

    def _drafts_for(self, row: _Row) -> RowDrafts | None:
        """Free draft sources for a call that may speculate (None: drafts turned off for it or the engine)."""
        request, config = row.request, self.engine.config
        if (
            row.done
            or request.speculative is False
            or not config.speculative
            or not (config.context_drafts or config.draft_memory)
        ):
            return None
        memory = None
        if config.draft_memory:
            _, record = self.engine.profiles.checkout(request.step_key)
            memory = record.extra.get("draft_memory")
        return RowDrafts(list(request.prompt_ids) + row.out, memory, self.engine.runner.vocab_size)

    def _chains(self, rows: list[_Row]) -> list[tuple[list[int], bool]]:
        """Each generation's draft tokens for this pass, within the rows a pass may hold (its next token
        first: every generation gets its row, then drafts take the rows left, in batch order)."""
        config, runner = self.engine.config, self.engine.runner
        spare = min(config.batch_rows, runner.max_rows or config.batch_rows) - len(rows)
        chains: list[tuple[list[int], bool]] = []
        for row in rows:
            chain: list[int] = []
            remembered = False
            room = min(spare, config.max_draft_len, row.max_new_tokens - len(row.out) - 1)
            if row.drafts is not None and room > 0 and not row.closed:
                chain, remembered = row.drafts.propose(room)
                spare -= len(chain)
                row.stats.drafted_tokens += len(chain)
                if remembered:
                    row.stats.memory_drafted_tokens += len(chain)
                else:
                    row.stats.context_drafted_tokens += len(chain)
            chains.append((chain, remembered))
        return chains

    @torch.inference_mode()
    def _pass(self) -> None:
        """The next token of every active generation, and its free drafts (:mod:`~swift_engine.batching.row_drafts`)
        where rows are left, in one pass; each keeps its drafts while they are what plain decoding gives."""
        runner, arena = self.engine.runner, self._arena
        fast = runner.fast
        assert arena is not None and fast is not None and fast.scripted is not None
        rows = list(self.active)
        regions = [r.region for r in rows]
        assert all(reg is not None for reg in regions)
        chains = self._chains(rows)
        # pass row layout: per generation, its next token, then its draft chain; row (i, j) feeds token
        # j of that run at position L_i + j, writes slot start_i + L_i + j, and sees its generation's
        # entries and its own run up to itself: index start_i + [0, L_i + j + 1)
        seq_len = [reg.cache.get_seq_length() for reg in regions]  # type: ignore[union-attr]
        tokens: list[int] = []
        starts: list[int] = []
        positions: list[int] = []
        for row, reg, length, (chain, _) in zip(rows, regions, seq_len, chains, strict=True):
            for j, tok in enumerate([row.last, *chain]):
                tokens.append(tok)
                starts.append(reg.start)  # type: ignore[union-attr]
                positions.append(length + j)
        start_t = torch.tensor(starts, dtype=torch.int32)
        position_t = torch.tensor(positions, dtype=torch.int32)
        lengths = position_t + 1  # [R]: entries each row sees
        index = (start_t[:, None] + torch.arange(int(lengths.max()), dtype=torch.int32)[None]).contiguous()
        slots = (start_t + position_t).contiguous()  # [R]
        dec: Any = fast.decoder
        ids = torch.tensor(tokens, device=runner.device)
        hidden = dec.embed_tokens.forward(ids)  # [R, H]
        cos, sin = dec.rotary_emb.forward(hidden, position_t.to(device=runner.device, dtype=torch.long)[None])
        out = fast.scripted.rows_of_sequences(hidden, cos, sin, arena.keys, arena.values, index, lengths, slots)
        logits = runner.logits(dec.norm.forward(out))  # [R, vocab]
        with self._state:
            first = 0
            for row, reg, (chain, remembered) in zip(rows, regions, chains, strict=True):
                run = logits[first : first + 1 + len(chain)]
                first += 1 + len(chain)
                kept, new = 0, []
                if not row.closed:  # drafts kept while they are what plain decoding picks (its own draws)
                    kept, bonus = row.walk(chain, run)
                    new = chain[:kept] + [bonus]
                    if remembered:
                        row.stats.memory_accepted_tokens += kept
                    else:
                        row.stats.context_accepted_tokens += kept
                # entries kept: the fed token's and the accepted drafts' (rejected slots are rewritten later)
                reg.cache.advance_layers(1 + kept, [True] * runner.num_layers)  # type: ignore[union-attr]
                row.stats.verify_steps += 1
                row.stats.shared_passes += len(rows) > 1
                row.stats.accepted_drafted_tokens += kept
                row.stats.kv_cache_bytes = arena.region_bytes(reg)  # type: ignore[arg-type]
                for tok in new:
                    if row.closed or row.done:
                        break
                    row.push(tok, self.engine.eos_ids)
