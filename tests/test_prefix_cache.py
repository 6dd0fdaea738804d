"""Prompt KV kept across calls: exact (bitwise the same prefill), bounded, evicted leaf-first, per kernel plan."""

from __future__ import annotations

import threading

import pytest
import torch
from pydantic import ValidationError

from swift_engine import SwiftConfig, SwiftEngine
from swift_engine.decoding.prefill import prefill
from swift_engine.decoding.prefix_cache import CachedBlock, PrefixCache

from .conftest import TINY_ARCHS, CharTokenizer, tiny_model

BLOCK = 8


def _engine(model, cache: bool | int = True, **config) -> SwiftEngine:
    config = {"skip_ratio": 0.25, "search": {"enabled": False}, **config}
    cfg = SwiftConfig(prefix_cache=cache, prefill_block=BLOCK, **config)
    return SwiftEngine(model, CharTokenizer(), cfg)


def _conversation(engine: SwiftEngine, turns: int = 4, **kw) -> tuple[list[list[int]], list[int]]:
    """An agent-like loop: each prompt is the last one, its reply and a new 'tool result'."""
    prompt = [3, 14, 15, 9, 26, 5, 35, 8, 9, 7] * 2 + [41, 42]
    replies, cached = [], []
    for turn in range(turns):
        res = engine.generate(prompt, max_new_tokens=14, **kw)
        replies.append(res.token_ids)
        cached.append(res.stats.cached_prompt_tokens)
        prompt = prompt + res.token_ids + [60 + turn, 61, 62, 63 + turn, 11]
    return replies, cached


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_multi_turn_greedy_output_is_the_same_with_and_without_the_cache(arch: str) -> None:
    model = tiny_model(arch, seed=3)
    with_cache, cached = _conversation(_engine(model))
    without, none_cached = _conversation(_engine(model, cache=False))
    assert with_cache == without
    assert none_cached == [0, 0, 0, 0]
    # every later turn starts from the earlier turn's whole blocks
    assert cached[0] == 0 and all(c >= 16 and c % BLOCK == 0 for c in cached[1:])
    # and the engine's own plain loop (no drafts) agrees: the cache changes nothing but the time
    plain, _ = _conversation(_engine(model), speculative=False)
    assert plain == with_cache


def _prefill(engine, cache, prompt, tail):
    """The logits after the prompt's last ``tail`` tokens, and how many tokens came from the cache."""
    hidden, cached = prefill(
        engine.runner, cache, prompt, tail, block=engine.config.prefill_block, prefix_cache=engine.prefix_cache
    )
    return engine.runner.logits(hidden), cached


def test_a_cached_prefix_is_bitwise_a_fresh_prefill() -> None:
    """The keys, values and logits of a prompt are identical whether its beginning came from the cache."""
    model = tiny_model("qwen2", seed=5)
    warm, cold = _engine(model), _engine(model, cache=False)
    first = list(range(10, 60))
    prompt = first + list(range(70, 83))
    c0 = warm.runner.new_cache(128)
    _prefill(warm, c0, first, 4)
    results = []
    for engine in (warm, cold):
        cache = engine.runner.new_cache(128)
        logits, cached = _prefill(engine, cache, prompt, 20)
        results.append((logits, cache, cached))
    (lw, cw, nw), (lc, cc, nc) = results
    assert (nw, nc) == (48, 0)
    assert torch.equal(lw, lc)
    for a, b in zip(cw.layers, cc.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_sampling_is_the_same_with_and_without_the_cache() -> None:
    model = tiny_model("llama", seed=6)
    kw = dict(temperature=0.9, top_p=0.95, seed=11)
    assert _conversation(_engine(model), **kw)[0] == _conversation(_engine(model, cache=False), **kw)[0]


def test_threads_and_step_keys_interleaved_decode_as_alone() -> None:
    model = tiny_model("mistral", seed=7)
    reference = _conversation(_engine(model, cache=False), turns=3)[0]
    engine = _engine(model, search={"enabled": True})
    results: dict[int, list[list[int]]] = {}

    def run(i: int) -> None:
        results[i] = _conversation(engine, turns=3, step_key=f"step-{i % 2}")[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all(results[i] == reference for i in range(4))
    assert engine.prefix_cache is not None and len(engine.prefix_cache) > 0


def test_the_cache_stays_within_its_budget_and_evicts() -> None:
    model = tiny_model("llama", seed=8)
    probe = _engine(model)
    probe.generate(list(range(10, 10 + BLOCK)), max_new_tokens=1)
    block_bytes = probe.prefix_cache.nbytes
    assert block_bytes > 0
    budget = 5 * block_bytes
    engine, cold = _engine(model, cache=budget), _engine(model, cache=False)
    for start in (10, 30, 50, 10, 30):  # 4 blocks each: the third prompt evicts the first's
        prompt = list(range(start, start + 4 * BLOCK + 3))
        res = engine.generate(prompt, max_new_tokens=6)
        assert res.token_ids == cold.generate(prompt, max_new_tokens=6).token_ids
        assert engine.prefix_cache.nbytes <= budget and res.stats.prefix_cache_bytes <= budget
    assert engine.prefix_cache.evicted_blocks > 0


def _block(tokens: tuple[int, ...], nbytes: int = 64) -> CachedBlock:
    return CachedBlock(tokens, [(torch.zeros(nbytes // 8), torch.zeros(nbytes // 8))], torch.zeros(0))


def test_eviction_takes_leaves_first_and_keeps_prefixes_usable() -> None:
    cache = PrefixCache(max_bytes=3 * 64, block=2)
    a, b, c = _block((1, 2)), _block((3, 4)), _block((5, 6))
    assert cache.lookup([1, 2, 3, 4, 5, 6], "torch") == []  # a call looks up first, then adds its blocks
    cache.insert([], [a, b, c], "torch")
    assert len(cache) == 3 and cache.nbytes == 3 * 64
    cache.insert([a], [_block((7, 8))], "torch")  # a branch: over budget, the oldest leaf (c) goes
    assert [x.tokens for x in cache.lookup([1, 2, 3, 4, 5, 6], "torch")] == [(1, 2), (3, 4)]
    assert [x.tokens for x in cache.lookup([1, 2, 7, 8, 9], "torch")] == [(1, 2), (7, 8)]
    assert cache.evicted_blocks == 1 and cache.nbytes <= cache.max_bytes
    # a block bigger than the whole budget is never kept
    cache.insert([], [_block((9, 9), nbytes=4 * 64)], "torch")
    assert cache.lookup([9, 9], "torch") == []


def test_blocks_of_another_kernel_plan_are_never_used() -> None:
    cache = PrefixCache(max_bytes=1 << 20, block=2)
    cache.lookup([1, 2], "torch")
    cache.insert([], [_block((1, 2))], "torch")
    assert len(cache.lookup([1, 2], "torch")) == 1
    assert cache.lookup([1, 2], "packed") == [] and len(cache) == 0
    # a call that started under the old plan does not add its blocks to the new plan's cache
    cache.insert([], [_block((1, 2))], "torch")
    assert len(cache) == 0


def test_configuration() -> None:
    model = tiny_model("llama", seed=9)
    off = _engine(model, cache=False)
    assert off.prefix_cache is None and _engine(model, cache=0).prefix_cache is None
    assert off.generate([1, 2, 3], max_new_tokens=2).stats.prefix_cache_bytes == 0
    assert _engine(model, cache=1 << 20).prefix_cache.max_bytes == 1 << 20
    default = SwiftEngine(model, CharTokenizer(), SwiftConfig())
    assert default.prefix_cache is not None and 64 * 2**20 <= default.prefix_cache.max_bytes <= 2 * 2**30
    with pytest.raises(ValidationError, match="prefix_cache"):
        SwiftConfig(prefix_cache=-1)
    with pytest.raises(ValidationError, match="prefill_block"):
        SwiftConfig(prefill_block=0)
    default.prefix_cache.clear()
    assert default.prefix_cache.nbytes == 0


def test_embedded_model_chat_turns_reuse_the_prefix_exactly(smol) -> None:
    """A chat that grows turn by turn (the adapters' shared engine, cache on by default) vs a fresh prefill."""
    cold = SwiftEngine(smol.model, smol.tokenizer, SwiftConfig(prefix_cache=False))
    system = (
        "You are a careful assistant for a hardware store. Answer in one or two short sentences. "
        "Opening hours: Monday to Friday 8:00 to 18:00, Saturday 9:00 to 14:00, closed on Sunday. "
        "Returns are accepted within 30 days with a receipt. Paint is mixed to order and cannot be returned. "
        "Delivery within the city costs 5 euros and is free above 100 euros. Keys are cut while you wait. "
        "We do not sell gas bottles. Parking is behind the store, entrance from the side street."
    )
    messages = [{"role": "system", "content": system}]
    cached = []
    for question in ("When are you open on Saturday?", "Can I return paint?", "How much is delivery?"):
        messages.append({"role": "user", "content": question})
        warm = smol.generate(messages, max_new_tokens=20, step_key="prefix-cache-chat")
        assert warm.token_ids == cold.generate(messages, max_new_tokens=20, step_key="prefix-cache-chat").token_ids
        cached.append(warm.stats.cached_prompt_tokens)
        messages.append({"role": "assistant", "content": warm.text})
    assert cached[1] >= smol.config.prefill_block and cached[2] >= cached[1]


def test_langchain_usage_reports_the_cached_prompt_tokens(smol) -> None:
    """``usage_metadata.input_token_details.cache_read``, as LangChain's providers report prompt caching."""
    from langchain_core.messages import HumanMessage, SystemMessage

    from swift_integrations import SwiftChatModel

    chat = SwiftChatModel(device="cpu", dtype="float32", max_tokens=6, step_key="prefix-cache-usage")
    system = SystemMessage("You answer questions about a library's rules. " * 20)
    chat.invoke([system, HumanMessage("Can I eat in the reading room?")])
    second = chat.invoke([system, HumanMessage("Until when is it open?")])
    assert second.usage_metadata["input_token_details"]["cache_read"] >= 128
    assert second.response_metadata["swift_stats"]["cached_prompt_tokens"] >= 128
    streamed = None
    for chunk in chat.stream([system, HumanMessage("Where are the toilets?")]):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed.usage_metadata["input_token_details"]["cache_read"] >= 128
    assert streamed.usage_metadata["input_tokens"] > streamed.usage_metadata["input_token_details"]["cache_read"]
