"""Many calls, one pass: generations in flight at once decode their next tokens in shared passes.

Why: decoding a small model on a CPU is bound by reading its weights, and on swift's int4/int8
kernels a pass of 16 rows costs about 1.7 one-row steps (docs/bench/passes), so calls that take turns
on the model's lock (what they did before) waste nearly all of each pass. Here a call that arrives
while another runs joins the *batch*: each pass takes every generation's next token (and its free
drafts, :mod:`~swift_engine.batching.row_drafts`) and the next blocks of the prompts being admitted --
rows of all of them through the linears together, attention each over its own entries
(:mod:`swift_engine.batching.arena`).

Exact whatever the company: on swift's kernels a row's products, norms and attention never mix rows
(row-invariant by construction: native/*.cpp), so each generation's tokens are bitwise those of its
plain decoding alone -- which greedy SWIFT equals (``tests/test_batching.py`` compares them). A
prompt's blocks are those a call alone prefills (``prefill_block`` tokens at fixed positions, the
same prefix cache), each row attending over its own prompt's entries, so they are the same bits in a
pass of their own or beside others. A batched generation decodes plainly with free drafts (no
layer-skip drafts, no search, its step's profile untouched): with other calls sharing the pass, model
passes spent on drafting would be taken from them.

The lifecycle, for each call (:meth:`Batcher.stream`):

1. **join** -- the request waits in ``waiting``; nothing is computed in the caller's thread, which
   only reads its chunks as they come. A call that started alone and found company after its first
   token joins the same way, with its cache (:mod:`swift_engine.batching.handover`).
2. **drive** -- the batch's driver thread (started by the first call to join, gone when the batch is
   empty) takes the model's lock (the engine's own, shared with the calls that decode alone) for each
   :meth:`Batcher._drive`: drop closed calls, admit waiting ones up to ``batch_rows`` (a region each,
   with the prefix cache's blocks of its prompt; or a moved call's cache copied in), run one pass over
   every admitted call -- a token of each decoding one, the next blocks of the prompts within
   ``prefill_budget`` -- and hand each its tokens (a prompt's first token after its last block).
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
from swift_engine.batching.row_drafts import RowChain, RowDrafts, share_rows
from swift_engine.decoding.prefill import load_blocks
from swift_engine.decoding.prefix_cache import CachedBlock
from swift_engine.decoding.sampling import call_generator, pick
from swift_engine.decoding.stopping import TextStream
from swift_engine.decoding.verification import accept, accept_constrained
from swift_engine.request import GenerationRequest
from swift_engine.results import FinishReason, GenerationResult, GenerationStats, StreamChunk

if TYPE_CHECKING:
    from swift_engine.decode_loop import EngineParts
    from swift_engine.model_thread import ModelThread

logger = logging.getLogger(__name__)

__all__ = ["Batcher"]

#: how often a caller with nothing to read checks its deadline (s)
_POLL_S = 0.05
#: prompt tokens in one pass at most (whole blocks, at least one), whatever the budget: a pass's key index
#: is [rows, longest row's keys] (a long prompt's last block of 512 rows over 32k keys: 64 MB of int32)
MAX_PROMPT_ROWS = 512


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
        #: while admitted: prompt tokens in its region so far, the prefix cache's blocks it began with and
        #: the whole blocks its passes computed (kept in the prefix cache when the prompt is in)
        self.prompt_at = 0
        self.chain: list[CachedBlock] = []
        self.new_blocks: list[CachedBlock] = []
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
            if self.active or self.admitting:
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
        for row in [r for r in self.admitting if everyone or r.closed]:  # went away before its first token
            self.admitting.remove(row)
            if row.region is not None and self._arena is not None:
                self._arena.close(row.region)
                row.region = None
        gone = [r for r in self.active if everyone or r.done or r.closed]
        self.active = [r for r in self.active if r not in gone]
        for row in gone:
            if row.region is not None and self._arena is not None:
                self._arena.close(row.region)
                row.region = None

    def _admit(self) -> None:
        """Admit waiting calls up to the batch's rows: a region each, with the prefix cache's blocks of its
        prompt (the rest of the prompt comes in the passes: :meth:`_prompt_chunks`), or a moved call's cache."""
        cap = min(self.engine.config.batch_rows, self.engine.runner.max_rows or self.engine.config.batch_rows)
        while True:
            with self._state:
                if not self.waiting or len(self.active) + len(self.admitting) >= cap:
                    break
                row = self.waiting.popleft()
            self._start(row)

    def _start(self, row: _Row) -> None:
        """A region for the call, its prompt's cached blocks loaded there (a moved call's cache is copied in
        as it is: its prompt was prefilled and its first token picked alone)."""
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
        prefix = engine.prefix_cache
        chain = prefix.lookup(prompt, runner.kernels) if prefix is not None else []
        load_blocks(row.region.cache, chain)  # as a call alone: the same entries at the same positions
        row.chain, row.prompt_at = chain, len(chain) * engine.config.prefill_block
        row.stats.cached_prompt_tokens = row.prompt_at
        if row.prompt_at == len(prompt):  # all of it cached: the first token from the last block's hidden states
            self._first_token(row, runner.logits(chain[-1].hidden[-1:])[0])

    def _prompt_chunks(self) -> list[tuple[_Row, int, int]]:
        """The prompt blocks this pass computes, ``(row, start, end)``: admitted prompts' next blocks (the
        blocks a call alone prefills, ``prefill_block`` tokens at fixed positions), at most
        ``SwiftConfig.prefill_budget`` tokens while calls decode (at least one block; 0: no budget),
        so that a long prompt delays the others' next tokens by a block's rows, not by its whole prefill
        (vLLM's chunked prefill); at most :data:`MAX_PROMPT_ROWS` in any case. A call whose deadline passed
        on its way in ends alone."""
        config = self.engine.config
        budget = config.prefill_budget if self.active and config.prefill_budget else MAX_PROMPT_ROWS
        chunks: list[tuple[_Row, int, int]] = []
        spent = 0
        for row in list(self.admitting):
            if row.closed or row.done or row.region is None:
                continue
            try:
                row.request.check_deadline(0)
            except Exception as exc:  # noqa: BLE001 - its own error (a timeout): the others go on
                row.error = exc
                self._admitted(row)
                continue
            start, length = row.prompt_at, len(row.request.prompt_ids)
            while start < length and (not chunks or spent + min(config.prefill_block, length - start) <= budget):
                end = min(start + config.prefill_block, length)
                chunks.append((row, start, end))
                spent += end - start
                start = end
        return chunks

    def _prompt_done(self, row: _Row, start: int, end: int, hidden: torch.Tensor, last: torch.Tensor | None) -> None:
        """A prompt block's entries are in the row's region (``hidden``: its final hidden states ``[n, H]``;
        ``last``: the logits after the prompt's last token, when this block ends it)."""
        assert row.region is not None
        row.region.cache.advance_layers(end - start, [True] * self.engine.runner.num_layers)
        row.prompt_at = end
        prompt, prefix = row.request.prompt_ids, self.engine.prefix_cache
        if prefix is not None and end - start == self.engine.config.prefill_block:
            row.new_blocks.append(
                CachedBlock(tuple(prompt[start:end]), row.region.cache.entries(start, end), hidden.clone())
            )
        if last is not None:
            if prefix is not None:
                prefix.insert(row.chain, row.new_blocks, self.engine.runner.kernels)
            row.chain, row.new_blocks = [], []
            self._first_token(row, last)

    def _first_token(self, row: _Row, logits: torch.Tensor) -> None:
        """The prompt is in the row's region: pick the first token from ``logits`` ``[vocab]``; into the passes."""
        row.stats.prefill_time_s = time.perf_counter() - row.started_prefill
        row.push(row.pick(logits), self.engine.eos_ids)
        self._admitted(row)

    def _admitted(self, row: _Row) -> None:
        """The row's prompt is in: into the passes, or (ended, closed, failed) out of the batch."""
        row.chain, row.new_blocks = [], []
        if row.error is None and not row.done and not row.closed:
            row.drafts = self._drafts_for(row)
        with self._state:
            if row in self.admitting:
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
        _, record = self.engine.profiles.checkout(request.step_key)
        # (the keys the drafters of a call alone keep their state under: MemoryDrafter's, ContextDrafter's)
        memory = record.extra.get("draft_memory") if config.draft_memory else None
        copy_rates = record.extra.get("context_acceptance")
        tokens = list(request.prompt_ids) + row.out
        return RowDrafts(tokens, memory, self.engine.runner.vocab_size, copy_rates, copies=config.context_drafts)

    def _chains(self, rows: list[_Row], prompt_rows: int) -> list[RowChain]:
        """Each generation's draft tokens for this pass (:func:`~swift_engine.batching.row_drafts.share_rows`:
        within the rows a pass may hold, every generation's next token first, as many drafts as pay for
        their rows beside ``prompt_rows`` rows of prompts)."""
        config, runner = self.engine.config, self.engine.runner
        spare = min(config.batch_rows, runner.max_rows or config.batch_rows) - len(rows)
        offered: list[RowChain] = []
        for row in rows:
            room = min(spare, config.max_draft_len, row.max_new_tokens - len(row.out) - 1)
            drafts = row.drafts if room > 0 and not row.closed else None
            offered.append(drafts.propose(room) if drafts is not None else RowChain([]))
        offers = spare > 0 and any(chain.tokens for chain in offered)  # (the costs: measured once, if never before)
        taken = share_rows(offered, len(rows) + prompt_rows, spare, self.engine.costs) if offers else []
        chains: list[RowChain] = []
        for row, chain, length in zip(rows, offered, taken or [0] * len(rows), strict=True):
            chain = RowChain(chain.tokens[:length], chain.remembered, chain.order, chain.yields[:length])
            row.stats.drafted_tokens += length
            if chain.remembered:
                row.stats.memory_drafted_tokens += length
            else:
                row.stats.context_drafted_tokens += length
            chains.append(chain)
        return chains

    @torch.inference_mode()
    def _pass(self) -> None:
        """The next token of every active generation, and its free drafts (:mod:`~swift_engine.batching.row_drafts`)
        where rows are left, and admitted prompts' next blocks (:meth:`_prompt_chunks`), in one pass; each
        generation keeps its drafts while they are what plain decoding gives, and a prompt whose last
        block this was gets its first token."""
        runner, arena = self.engine.runner, self._arena
        fast = runner.fast
        assert arena is not None and fast is not None and fast.scripted is not None
        rows = list(self.active)
        regions = [r.region for r in rows]
        assert all(reg is not None for reg in regions)
        prompts = self._prompt_chunks()
        chains = self._chains(rows, sum(end - begin for _, begin, end in prompts))
        if not rows and not prompts:
            return
        # pass row layout: per generation, its next token, then its draft chain; row (i, j) feeds token
        # j of that run at position L_i + j, writes slot start_i + L_i + j, and sees its generation's
        # entries and its own run up to itself: index start_i + [0, L_i + j + 1). Then the prompt
        # blocks: row p of a block starting at s feeds prompt token s + p at that position, the same way.
        seq_len = [reg.cache.get_seq_length() for reg in regions]  # type: ignore[union-attr]
        tokens: list[int] = []
        starts: list[int] = []
        positions: list[int] = []
        for row, reg, length, chain in zip(rows, regions, seq_len, chains, strict=True):
            for j, tok in enumerate([row.last, *chain.tokens]):
                tokens.append(tok)
                starts.append(reg.start)  # type: ignore[union-attr]
                positions.append(length + j)
        decoding = len(tokens)
        for row, begin, end in prompts:
            tokens += row.request.prompt_ids[begin:end]
            starts += [row.region.start] * (end - begin)  # type: ignore[union-attr]
            positions += range(begin, end)
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
        normed = dec.norm.forward(out)  # [R, H]
        # the head over the rows that need it: every decoding row, and the last row of each prompt that ends here
        wanted = list(range(decoding))
        last_logits: dict[int, int] = {}  # prompt block -> its row of the logits
        at = decoding
        for i, (row, begin, end) in enumerate(prompts):
            at += end - begin
            if end == len(row.request.prompt_ids):
                last_logits[i] = len(wanted)
                wanted.append(at - 1)
        head_rows = normed if len(wanted) == len(tokens) else normed[torch.tensor(wanted, dtype=torch.long)]
        logits = runner.logits(head_rows) if wanted else None  # [decoding + finished, vocab]
        with self._state:
            first = 0
            for row, reg, chain in zip(rows, regions, chains, strict=True):
                assert logits is not None
                drafted = len(chain.tokens)
                run = logits[first : first + 1 + drafted]
                first += 1 + drafted
                kept, new = 0, []
                if not row.closed:  # drafts kept while they are what plain decoding picks (its own draws)
                    kept, bonus = row.walk(chain.tokens, run)
                    new = chain.tokens[:kept] + [bonus]
                    if row.drafts is not None:
                        row.drafts.observe(chain, drafted, kept)
                    if chain.remembered:
                        row.stats.memory_accepted_tokens += kept
                    else:
                        row.stats.context_accepted_tokens += kept
                # entries kept: the fed token's and the accepted drafts' (rejected slots are rewritten later)
                reg.cache.advance_layers(1 + kept, [True] * runner.num_layers)  # type: ignore[union-attr]
                row.stats.verify_steps += 1
                row.stats.shared_passes += len(rows) + len(prompts) > 1
                row.stats.accepted_drafted_tokens += kept
                row.stats.kv_cache_bytes = arena.region_bytes(reg)  # type: ignore[arg-type]
                for tok in new:
                    if row.closed or row.done:
                        break
                    row.push(tok, self.engine.eos_ids)
            at = decoding
            for i, (row, begin, end) in enumerate(prompts):
                last = logits[last_logits[i]] if i in last_logits and logits is not None else None
                self._prompt_done(row, begin, end, normed[at : at + end - begin], last)
                at += end - begin
