"""Many calls, one pass (swift_engine/batching): calls in flight at once share the model's passes on
swift's int4/int8 kernels, and each call's tokens are bitwise what it produces alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

from swift_engine import SwiftConfig, SwiftEngine
from swift_engine.batching.arena import KVArena
from swift_engine.batching.row_drafts import RowChain, RowDrafts, share_rows
from swift_engine.kernels.costs import CostModel
from swift_engine.kernels.native_build import native_status
from swift_engine.results import GenerationResult

from .conftest import finishes_in_time

needs_native = pytest.mark.skipif(
    not native_status().loaded, reason=f"swift's kernels are not usable here: {native_status().reason}"
)

PROMPTS = [
    "Write a haiku about the sea.",
    "What is the capital of France? Answer in one sentence.",
    "List three fruits.",
    "Explain recursion briefly, in two or three sentences, to a new programmer.",
    "Say hello in Spanish.",
    "Why is the sky blue?",
]


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _together(engine: SwiftEngine, jobs: list[Callable[[], Any]]) -> list[Any]:
    """Run ``jobs`` in threads while another call is in flight, so that every one of them joins the batch."""
    holder = engine.stream("Hello", max_new_tokens=4, speculative=False)
    next(holder)  # a call in flight (suspended: it holds no lock)
    results: list[Any] = [None] * len(jobs)

    def run(i: int) -> None:
        results[i] = jobs[i]()

    def all_jobs() -> None:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    try:
        finishes_in_time(all_jobs, 300)
    finally:
        holder.close()
    return results


@pytest.fixture(scope="module")
def int4() -> SwiftEngine:
    return SwiftEngine.from_pretrained(None, dtype="int4")


# -- the arena (no model) ---------------------------------------------------------------------------


def test_arena_regions_are_first_fit_reused_and_kept_when_the_buffers_grow() -> None:
    arena = KVArena(layers=2, kv_heads=1, head_dim=16, dtype=torch.bfloat16, device=torch.device("cpu"))
    a = arena.open(100)
    b = arena.open(100)
    assert (a.start, b.start) == (0, 100) and arena.capacity == 256
    entries = [(torch.randn(1, 1, 7, 16).to(torch.bfloat16), torch.randn(1, 1, 7, 16).to(torch.bfloat16))] * 2
    b.cache.load(entries)
    c = arena.open(300)  # no room: the buffers double, b's entries move with them
    assert arena.capacity >= 500 and c.start == 200
    assert torch.equal(b.cache.layers[0].keys, entries[0][0]) and b.cache.get_seq_length() == 7
    assert torch.equal(arena.keys[1][:, :, 100:107], entries[1][0])  # the cache is a view of its region
    arena.close(a)
    assert arena.open(60).start == 0  # a's room, first fit
    assert arena.open(60).start == 500  # 40 left there: past c
    assert arena.region_bytes(b) == 2 * 2 * 1 * 16 * 100 * 2  # k and v, 2 layers, 1 head of 16, 100 entries


# -- the kernels -----------------------------------------------------------------------------------


@needs_native
def test_rows_of_different_sequences_attend_as_each_sequence_alone() -> None:
    g = torch.Generator().manual_seed(3)
    keys = torch.randn(2, 300, 64, generator=g).to(torch.bfloat16)  # [KVH, T, d]: two sequences' regions
    values = torch.randn(2, 300, 64, generator=g).to(torch.bfloat16)
    query = torch.randn(3, 4, 64, generator=g).to(torch.bfloat16)  # 3 rows, 4 heads over 2 key heads
    lists = [list(range(0, 37)), list(range(100, 181)), list(range(200, 201))]  # three regions
    index = torch.zeros(3, 81, dtype=torch.int32)
    for r, keys_r in enumerate(lists):
        index[r, : len(keys_r)] = torch.tensor(keys_r, dtype=torch.int32)
    lengths = torch.tensor([len(k) for k in lists], dtype=torch.int32)
    together = torch.ops.swift_kernels.rows_attention(query, keys, values, index, lengths, 0.125)
    for r, keys_r in enumerate(lists):
        alone_index = torch.arange(len(keys_r), dtype=torch.int32)[None]
        region = slice(keys_r[0], keys_r[-1] + 1)
        alone = torch.ops.swift_kernels.rows_attention(
            query[r : r + 1].contiguous(),
            keys[:, region].contiguous(),
            values[:, region].contiguous(),
            alone_index,
            lengths[r : r + 1],
            0.125,
        )
        assert torch.equal(together[r], alone[0])


@needs_native
def test_the_kernels_workers_give_the_same_bits_from_any_thread_and_thread_count() -> None:
    """kernels/native/pool.cpp: the loops' split never changes a bit, whoever calls and however many threads."""
    from swift_engine.kernels.quantize import Int4Linear, native_products

    torch.manual_seed(0)
    layer = Int4Linear(torch.nn.Linear(256, 640))
    x = torch.randn(5, 256).to(torch.bfloat16)

    with native_products():
        reference = layer(x)
    threads = torch.get_num_threads()
    try:
        for count in (1, 3, threads):
            torch.set_num_threads(count)
            with native_products():
                assert torch.equal(layer(x), reference)
    finally:
        torch.set_num_threads(threads)
    outs: list[torch.Tensor] = []

    def call() -> None:
        with native_products():
            for _ in range(20):
                outs.append(layer(x))

    workers = [threading.Thread(target=call) for _ in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert len(outs) == 80 and all(torch.equal(o, reference) for o in outs)


# -- calls on the embedded model ---------------------------------------------------------------------


@pytest.mark.slow
@needs_native
def test_calls_in_flight_together_give_each_exactly_its_tokens_alone(int4: SwiftEngine) -> None:
    kwargs = [
        {"max_new_tokens": 40},
        {"max_new_tokens": 12},
        {"max_new_tokens": 33, "stop": ["\n\n"]},
        {"max_new_tokens": 48},
        {"max_new_tokens": 1},
        {"max_new_tokens": 24},
    ]
    alone = [int4.generate(_messages(p), speculative=False, **kw) for p, kw in zip(PROMPTS, kwargs, strict=True)]
    swift = int4.generate(_messages(PROMPTS[0]), **kwargs[0])  # SWIFT alone: the same tokens (the engine's promise)
    assert swift.token_ids == alone[0].token_ids and swift.stats.shared_passes == 0
    together: list[GenerationResult] = _together(
        int4, [lambda p=p, kw=kw: int4.generate(_messages(p), **kw) for p, kw in zip(PROMPTS, kwargs, strict=True)]
    )
    for a, b in zip(alone, together, strict=True):
        assert b.token_ids == a.token_ids and b.text == a.text and b.finish_reason == a.finish_reason
    # all in the batch; most shared passes with others (a short call may end while a later one's prompt is
    # still being prefilled between its passes: prefill_budget)
    assert all(r.stats.batched for r in together)
    assert sum(r.stats.shared_passes > 0 for r in together) >= 3
    assert together[2].finish_reason in ("stop", "length", "eos") and together[4].token_ids == alone[4].token_ids


@pytest.mark.slow
@needs_native
def test_a_call_closed_mid_way_leaves_the_batch_and_the_others_exact(int4: SwiftEngine) -> None:
    alone = [int4.generate(_messages(p), speculative=False, max_new_tokens=32) for p in PROMPTS[:3]]

    def closed_after_three_tokens() -> int:
        stream = int4.stream(_messages(PROMPTS[3]), max_new_tokens=64)
        got = 0
        for chunk in stream:
            got += len(chunk.token_ids)
            if got >= 3:
                break
        stream.close()
        return got

    jobs: list[Callable[[], Any]] = [lambda p=p: int4.generate(_messages(p), max_new_tokens=32) for p in PROMPTS[:3]]
    together = _together(int4, [*jobs, closed_after_three_tokens])
    assert together[3] == 3
    for a, b in zip(alone, together[:3], strict=True):
        assert b.token_ids == a.token_ids
    assert int4.batcher.rows == 0 and int4.active_calls == 0  # nothing left behind


@pytest.mark.slow
@needs_native
@pytest.mark.parametrize("budget", [16, 0])
def test_a_long_prompt_comes_in_blocks_within_the_budget_in_the_others_passes(
    int4: SwiftEngine, budget: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While calls decode in the batch, a joining prompt's blocks are rows of their passes, at most
    ``prefill_budget`` tokens a pass (0: the whole prompt in one), and every output is still bitwise the
    call's alone."""
    config = SwiftConfig(prefill_block=16, prefill_budget=budget, prefix_cache=False)  # no block comes cached
    engine = SwiftEngine(int4.model, int4.tokenizer, config)
    long_prompt = " ".join(PROMPTS * 6)  # ~250 tokens: ~16 blocks of 16
    jobs_kwargs = [(PROMPTS[3], 64), (long_prompt, 8), (PROMPTS[5], 64)]
    alone = [engine.generate(_messages(p), speculative=False, max_new_tokens=n) for p, n in jobs_kwargs]
    # each pass: (generations decoding in it, the long prompt's tokens in it)
    passes: list[tuple[int, int]] = []
    real = type(engine.batcher)._prompt_chunks

    def recorded(batcher: Any) -> Any:
        chunks = real(batcher)
        long = sum(end - begin for row, begin, end in chunks if len(row.request.prompt_ids) > 100)
        passes.append((len(batcher.active), long))
        return chunks

    monkeypatch.setattr(type(engine.batcher), "_prompt_chunks", recorded)
    together: list[Any] = [None] * len(jobs_kwargs)

    def run(i: int) -> None:
        prompt, n = jobs_kwargs[i]
        together[i] = engine.generate(_messages(prompt), max_new_tokens=n)

    def decoding_ones_then_the_long_one() -> None:
        threads = {i: threading.Thread(target=run, args=(i,)) for i in range(len(jobs_kwargs))}
        threads[0].start()
        threads[2].start()
        while len(engine.batcher.active) < 2 and (threads[0].is_alive() or threads[2].is_alive()):
            time.sleep(0.01)  # the others are decoding in the batch; now the long prompt joins
        threads[1].start()
        for t in threads.values():
            t.join()

    holder = engine.stream("Hello", max_new_tokens=4, speculative=False)
    next(holder)  # a call in flight, so that the others join the batch
    try:
        finishes_in_time(decoding_ones_then_the_long_one, 300)
    finally:
        holder.close()
    for a, b in zip(alone, together, strict=True):
        assert b.token_ids == a.token_ids and b.text == a.text
    long_prompt_tokens = together[1].stats.prompt_tokens
    carrying = [(decoding, tokens) for decoding, tokens in passes if tokens]
    assert sum(tokens for _, tokens in carrying) == long_prompt_tokens, passes  # every block once
    if budget:  # a block of 16 tokens in each pass while others decode, beside their rows
        assert all(tokens <= 16 for decoding, tokens in carrying if decoding), passes
        assert sum(1 for decoding, _ in carrying if decoding) >= 10, passes
    else:  # the whole prompt in one pass
        assert len(carrying) == 1, passes
    assert engine.batcher.rows == 0


@pytest.mark.slow
@needs_native
def test_batched_prompts_share_the_prefix_cache_with_calls_alone(int4: SwiftEngine) -> None:
    """A prompt in the batch starts from the blocks an earlier call cached, and the blocks its passes
    compute are cached for later calls: the same entries as a call alone's, so the same tokens."""
    block = 16
    reference = SwiftEngine(int4.model, int4.tokenizer, SwiftConfig(prefill_block=block, prefix_cache=False))
    engine = SwiftEngine(int4.model, int4.tokenizer, SwiftConfig(prefill_block=block))
    seen, unseen = " ".join(PROMPTS * 3), " ".join(reversed(PROMPTS * 3))
    expected = {p: reference.generate(_messages(p), speculative=False, max_new_tokens=24) for p in (seen, unseen)}
    first = engine.generate(_messages(seen), max_new_tokens=24)  # alone: caches the prompt's whole blocks
    assert first.token_ids == expected[seen].token_ids and first.stats.cached_prompt_tokens == 0
    together = _together(engine, [lambda p=p: engine.generate(_messages(p), max_new_tokens=24) for p in (seen, unseen)])
    for prompt, result in zip((seen, unseen), together, strict=True):
        assert result.token_ids == expected[prompt].token_ids and result.stats.batched
    prompt_tokens = together[0].stats.prompt_tokens
    assert together[0].stats.cached_prompt_tokens == prompt_tokens // block * block  # every whole block
    shared = together[1].stats.cached_prompt_tokens  # the chat template's opening blocks, cached by `seen`
    assert shared < together[1].stats.prompt_tokens // block * block
    again = engine.generate(_messages(unseen), max_new_tokens=24)  # alone, from the blocks the batch cached
    assert again.token_ids == expected[unseen].token_ids
    assert again.stats.cached_prompt_tokens == together[1].stats.prompt_tokens // block * block > shared
    # a prompt of whole blocks, all cached: its first token from the last block's hidden states
    ids = engine.encode_prompt(_messages(unseen))[: 3 * block]
    whole = reference.generate(ids, speculative=False, max_new_tokens=12)
    assert engine.generate(ids, max_new_tokens=12).token_ids == whole.token_ids
    batched = _together(engine, [lambda: engine.generate(ids, max_new_tokens=12)])[0]
    assert batched.token_ids == whole.token_ids and batched.stats.cached_prompt_tokens == 3 * block
    assert batched.stats.batched


@pytest.mark.slow
@needs_native
def test_a_call_timing_out_on_its_way_in_ends_alone_and_the_others_stay_exact(int4: SwiftEngine) -> None:
    from swift_engine.request import GenerationTimeout

    alone = [int4.generate(_messages(p), speculative=False, max_new_tokens=24) for p in PROMPTS[:2]]

    def late() -> BaseException | None:
        try:
            int4.generate(_messages(" ".join(PROMPTS * 6)), max_new_tokens=24, timeout=1e-6)
        except GenerationTimeout as exc:
            return exc
        return None

    jobs: list[Callable[[], Any]] = [lambda p=p: int4.generate(_messages(p), max_new_tokens=24) for p in PROMPTS[:2]]
    together = _together(int4, [*jobs, late])
    assert isinstance(together[2], GenerationTimeout)
    for a, b in zip(alone, together[:2], strict=True):
        assert b.token_ids == a.token_ids
    assert int4.batcher.rows == 0 and int4.active_calls == 0


@pytest.mark.slow
@needs_native
def test_sampled_calls_in_the_batch_draw_as_they_do_alone(int4: SwiftEngine) -> None:
    """A sampled call's own generator, seeded: the same draws in the batch as in plain decoding alone."""
    kw = {"max_new_tokens": 24, "temperature": 0.9, "top_p": 0.95}
    alone = [int4.generate(_messages(p), speculative=False, seed=i, **kw) for i, p in enumerate(PROMPTS[:3])]
    together = _together(
        int4, [lambda i=i, p=p: int4.generate(_messages(p), seed=i, **kw) for i, p in enumerate(PROMPTS[:3])]
    )
    for a, b in zip(alone, together, strict=True):
        assert b.token_ids == a.token_ids and b.stats.shared_passes > 0


def _chain(*yields: float) -> RowChain:
    return RowChain(list(range(len(yields))), order=2, yields=yields)


def test_a_pass_takes_the_drafts_whose_odds_pay_for_their_rows() -> None:
    """Rows nearly free (1 -> 16 rows: 1.5x a step): every draft but a hopeless one goes in; rows at their
    share of a compute-bound pass (cost linear in rows): only near-certain drafts; and never past the spare
    rows, the likeliest first, each chain in its order."""
    flat = CostModel(verify_s={1: 1.0, 2: 1.03, 4: 1.1, 8: 1.25, 16: 1.5, 32: 2.5})
    linear = CostModel(verify_s={1: 1.0, 2: 2.0, 4: 4.0, 8: 8.0, 16: 16.0, 32: 32.0})
    chains = [_chain(0.9, 0.6, 0.3), _chain(), _chain(0.02, 0.01), _chain(0.99, 0.98)]
    assert share_rows(chains, 4, 12, flat) == [3, 0, 0, 2]
    assert share_rows(chains, 4, 12, linear) == [0, 0, 0, 0]  # a row costs a token: no draft yields that much
    assert share_rows(chains, 4, 3, flat) == [1, 0, 0, 2]  # the three likeliest: 0.99, 0.98, 0.9
    # between: after 0.99, 0.98 and 0.9 the pass yields 6.87 for 2.2; an 8th row adds 0.2 (9%) for 0.6 more (8.7%)
    mid = CostModel(verify_s={1: 1.0, 2: 1.2, 4: 1.6, 8: 2.4, 16: 4.0, 32: 8.0})
    assert share_rows(chains, 4, 12, mid) == [1, 0, 0, 2]


def test_a_rows_drafts_are_sized_by_what_its_copies_met() -> None:
    """The chain's odds come from the step's statistics, then from what this generation's own drafts met."""
    tokens = [5, 6, 7, 8, 9, 5, 6, 7]  # "5 6 7" seen before, followed by 8 9
    drafts = RowDrafts(tokens, None, 100)
    chain = drafts.propose(4)
    assert chain.tokens == [8, 9, 5, 6] and not chain.remembered and chain.order == 3
    assert list(chain.yields) == sorted(chain.yields, reverse=True) and 0 < chain.yields[0] < 1
    for _ in range(30):
        drafts.observe(chain, 4, 0)  # never kept
    assert drafts.propose(4).yields[0] < chain.yields[0] / 4
    assert RowDrafts(tokens, None, 100, copies=False).propose(4).tokens == []  # context_drafts off


@pytest.mark.slow
@needs_native
def test_batched_calls_keep_their_free_drafts_and_their_tokens(int4: SwiftEngine) -> None:
    """A call in the batch drafts from its own context in the rows left; kept drafts are exactly what plain
    decoding picks (the argmax, or the sampled call's own draws), so the tokens stay plain decoding's."""
    text = "Copy this list exactly: apple, banana, cherry, damson, elderberry, fig, grape, honeydew."
    copying = [{"role": "user", "content": text}]
    alone = int4.generate(copying, speculative=False, max_new_tokens=40)
    sampled_alone = int4.generate(_messages(PROMPTS[1]), speculative=False, max_new_tokens=16, temperature=0.8, seed=3)
    together = _together(
        int4,
        [
            lambda: int4.generate(copying, max_new_tokens=40),
            lambda: int4.generate(_messages(PROMPTS[1]), max_new_tokens=16, temperature=0.8, seed=3),
        ],
    )
    copied, sampled = together
    assert copied.token_ids == alone.token_ids and copied.stats.batched
    assert copied.stats.context_accepted_tokens + copied.stats.memory_accepted_tokens > 0
    assert copied.stats.verify_steps < len(copied.token_ids) - 1  # fewer passes than tokens after the first
    assert sampled.token_ids == sampled_alone.token_ids and sampled.stats.batched


@pytest.mark.slow
@needs_native
@pytest.mark.parametrize("kind", ["greedy", "sampled", "constrained"])
def test_a_call_that_started_alone_moves_into_the_batch_when_others_come(int4: SwiftEngine, kind: str) -> None:
    """After its first token a call decoding alone (SWIFT) finds another in flight and continues in the
    shared passes from its own cache, text, generator and grammar: its tokens stay those of plain decoding
    alone."""
    from swift_engine.decoding.constraints import JsonSchemaConstraint

    kw: dict[str, Any] = {"max_new_tokens": 32}
    if kind == "sampled":
        kw.update(temperature=0.9, top_p=0.95, seed=7)
    expected = [int4.generate(_messages(p), speculative=False, **kw) for p in (PROMPTS[3], PROMPTS[0])]
    if kind == "constrained":  # the first call's grammar (a fresh state per call) has taken its first token
        schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
        kw["constraint"] = JsonSchemaConstraint(schema)
        expected[0] = int4.generate(_messages(PROMPTS[3]), speculative=False, **kw)
        kw.pop("constraint")
        first = int4.stream(_messages(PROMPTS[3]), constraint=JsonSchemaConstraint(schema), **kw)
    else:
        first = int4.stream(_messages(PROMPTS[3]), **kw)
    first_chunks = [next(first)]  # alone: nothing else in flight; prompt prefilled, first token given
    assert int4.active_calls == 1
    second = int4.stream(_messages(PROMPTS[0]), **kw)
    second_chunks = [next(second)]  # a call is in flight: this one decodes in the batch
    first_chunks += list(first)  # resumed with company: handed over to the batch
    second_chunks += list(second)
    for chunks, alone in zip((first_chunks, second_chunks), expected, strict=True):
        result = chunks[-1].result
        assert result is not None
        assert result.token_ids == alone.token_ids and result.text == alone.text
        assert "".join(c.text for c in chunks) == alone.text  # the caller's text, continued without a seam
        # (the second is active until read to its end, so the first finds company when it resumes; whether
        # their passes overlap depends on how far the unread second got, hence `batched`, not shared_passes)
        assert result.stats.batched and result.stats.mode == "plain"
    assert not expected[0].stats.batched
    assert int4.batcher.rows == 0 and int4.active_calls == 0


@pytest.mark.slow
@needs_native
def test_constrained_calls_share_the_batch_each_within_its_own_grammar(int4: SwiftEngine) -> None:
    """Calls with grammars (a JSON schema, a required tool call, one cut short and closed) decode in the
    batch with free ones, each row masked by its own grammar: every call's tokens are its plain ones alone."""
    from swift_engine.decoding.constraints import JsonSchemaConstraint, ToolCallConstraint

    person = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    weather = {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
    calls: list[tuple[str, dict[str, Any]]] = [
        ("Describe a fictional person as JSON.", {"max_new_tokens": 40, "constraint": JsonSchemaConstraint(person)}),
        ("What is the weather in Paris?", {"max_new_tokens": 48, "constraint": ToolCallConstraint(tools=(weather,))}),
        ("Describe a fictional person as JSON.", {"max_new_tokens": 6, "constraint": JsonSchemaConstraint(person)}),
        (PROMPTS[0], {"max_new_tokens": 24}),
        (
            "Describe a fictional person as JSON.",
            {"max_new_tokens": 40, "temperature": 0.9, "seed": 5, "constraint": JsonSchemaConstraint(person)},
        ),
    ]
    alone = [int4.generate(_messages(p), speculative=False, **kw) for p, kw in calls]
    assert alone[2].finish_reason == "length" and alone[2].stats.grammar_closing_tokens > 0  # closed as alone
    together = _together(int4, [lambda p=p, kw=kw: int4.generate(_messages(p), **kw) for p, kw in calls])
    for a, b in zip(alone, together, strict=True):
        assert b.token_ids == a.token_ids and b.text == a.text and b.finish_reason == a.finish_reason
        assert b.stats.batched and b.stats.grammar_closing_tokens == a.stats.grammar_closing_tokens
    assert sum(r.stats.shared_passes > 0 for r in together[:3]) >= 2


@pytest.mark.slow
@needs_native
def test_batch_rows_zero_keeps_calls_taking_turns() -> None:
    engine = SwiftEngine.from_pretrained(None, dtype="int4", config=SwiftConfig(batch_rows=0))
    together = _together(engine, [lambda p=p: engine.generate(_messages(p), max_new_tokens=8) for p in PROMPTS[:2]])
    assert all(r.stats.shared_passes == 0 for r in together)


def test_float32_calls_are_never_batched(smol: SwiftEngine) -> None:
    """Float kernels are not row-invariant by construction: concurrent calls keep taking turns."""
    request_ids = smol.encode_prompt("Hi")
    from swift_engine.decoding.sampling import SamplingParams
    from swift_engine.decoding.stopping import StopStrings
    from swift_engine.request import GenerationRequest

    request = GenerationRequest(request_ids, 4, SamplingParams(0.0, 1.0, 0), StopStrings(None), "default")
    assert not smol.batcher.accepts(request)
