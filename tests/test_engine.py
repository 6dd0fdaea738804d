"""Engine behaviour on a tiny model: stop conditions, streaming, bad input, threads, cache rewinds."""

from __future__ import annotations

import threading

import pytest
import torch

from swift_engine import SwiftConfig, SwiftEngine, swift_step
from swift_engine.model.kv_cache import SwiftKVCache

from .conftest import CharTokenizer, tiny_model

PROMPT = [3, 14, 15, 9, 26, 5, 35]


@pytest.fixture(scope="module")
def engine() -> SwiftEngine:
    # draft_payoff off: these tests need multi-token verification steps, and on a tiny random model a
    # draft pass costs about what a verification does, so the payoff gate would (rightly) stop drafting
    config = SwiftConfig(skip_ratio=0.25, search={"enabled": False}, draft_payoff=False)
    return SwiftEngine(tiny_model("llama", seed=1), CharTokenizer(), config)


def test_stream_concatenates_to_result(engine: SwiftEngine) -> None:
    chunks = list(engine.stream(PROMPT, max_new_tokens=30))
    result = chunks[-1].result
    assert result is not None and all(c.result is None for c in chunks[:-1])
    assert "".join(c.text for c in chunks) == result.text
    assert sum((c.token_ids for c in chunks), []) == result.token_ids
    assert result == engine.generate(PROMPT, max_new_tokens=30).model_copy(update={"stats": result.stats})


def test_multi_token_stop_string_is_trimmed(engine: SwiftEngine) -> None:
    full = engine.generate(PROMPT, max_new_tokens=40)
    stop = full.text[10:13]  # three characters = three tokens
    first = full.text.find(stop)
    res = engine.generate(PROMPT, max_new_tokens=40, stop=[stop, "never-there"])
    assert res.finish_reason == "stop"
    assert res.text == full.text[:first]
    streamed = "".join(c.text for c in engine.stream(PROMPT, max_new_tokens=40, stop=stop))
    assert streamed == res.text
    # the reply ends at the token that completed the stop string, as plain decoding's does, even
    # when that token was accepted together with later ones in one verification step
    plain = engine.generate(PROMPT, max_new_tokens=40, stop=stop, speculative=False)
    assert res.stats.mean_accepted_per_step > 1.0
    assert res.token_ids == plain.token_ids and res.stats.new_tokens == plain.stats.new_tokens
    assert res.token_ids == full.token_ids[: len(res.token_ids)]


def test_eos_ends_generation() -> None:
    model = tiny_model("llama", seed=1)
    engine = SwiftEngine(model, CharTokenizer(), SwiftConfig(search={"enabled": False}))
    free = engine.generate(PROMPT, max_new_tokens=30).token_ids
    eos = free[7]
    model.generation_config.eos_token_id = eos
    engine = SwiftEngine(model, CharTokenizer(), SwiftConfig(search={"enabled": False}))
    res = engine.generate(PROMPT, max_new_tokens=30)
    assert res.finish_reason == "eos"
    assert res.token_ids == free[: free.index(eos) + 1]


@pytest.mark.parametrize(
    "prompt, kwargs, match",
    [
        ("", {}, "empty"),
        ([], {}, "non-empty"),
        ([1, 2, 10_000], {}, "out of range"),
        (PROMPT, {"max_new_tokens": 0}, "max_new_tokens"),
        (PROMPT, {"temperature": -1.0}, "temperature"),
        (PROMPT, {"top_p": 0.0}, "top_p"),
        (PROMPT, {"top_k": -2}, "top_k"),
        (PROMPT, {"stop": [""]}, "stop"),
        (PROMPT, {"step_key": "  "}, "step key"),
        (list(range(90)) * 6, {}, "context"),
        ([{"role": "user", "content": "hi"}], {}, "chat template"),
    ],
)
def test_bad_input_is_a_clear_error_and_engine_survives(engine: SwiftEngine, prompt, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        engine.generate(prompt, **kwargs)
    assert engine.generate(PROMPT, max_new_tokens=5).stats.new_tokens == 5


def test_generation_stops_at_the_context_length(engine: SwiftEngine) -> None:
    prompt = list(range(1, 90)) * 5 + [1] * 60  # 505 of 512 positions
    res = engine.generate(prompt, max_new_tokens=50)
    assert res.finish_reason == "length" and len(res.token_ids) == 512 - len(prompt)


def test_threads_get_the_same_results_as_sequential_calls(engine: SwiftEngine) -> None:
    prompts = [PROMPT, list(range(20, 40)), [5] * 9, list(range(60, 66))]
    expected = [engine.generate(p, max_new_tokens=25).token_ids for p in prompts]
    got: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            got[i] = engine.generate(prompts[i % 4], max_new_tokens=25).token_ids
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(got[i] == expected[i % 4] for i in range(8))


def test_stats_and_step_key(engine: SwiftEngine) -> None:
    with swift_step("summarize"):
        res = engine.generate(PROMPT, max_new_tokens=20)
    s = res.stats
    assert s.step_key == "summarize"
    assert engine.generate(PROMPT, max_new_tokens=5, step_key="qa").stats.step_key == "qa"
    assert s.prompt_tokens == len(PROMPT) and s.new_tokens == 20
    assert s.accepted_drafted_tokens <= s.drafted_tokens
    assert s.mean_accepted_per_step == pytest.approx(19 / s.verify_steps)
    assert s.skip_attention and s.mode == "swift"
    plain = engine.generate(PROMPT, max_new_tokens=20, speculative=False)
    assert plain.token_ids == res.token_ids and plain.stats.drafted_tokens == 0
    assert plain.stats.verify_steps == 19  # one token from the prefill, then one per step


def test_kv_cache_rewind_and_keep() -> None:
    cache = SwiftKVCache()
    k = torch.arange(10, dtype=torch.float32).view(1, 1, 10, 1).expand(1, 2, 10, 3).contiguous()
    cache.update(k, k + 100, 0)
    assert cache.get_seq_length() == 10
    cache.truncate(6)
    cache.update(k[:, :, :2] * 0 - 1, k[:, :, :2] * 0 - 1, 0)
    assert cache.layers[0].keys[0, 0, :, 0].tolist() == [0, 1, 2, 3, 4, 5, -1, -1]
    cache.truncate(4)
    cache.update(k[:, :, 4:9], k[:, :, 4:9] + 100, 0)  # a 5-node tree written at 4
    cache.keep(4, torch.tensor([0, 2, 4]))
    assert cache.layers[0].keys[0, 1, :, 0].tolist() == [0, 1, 2, 3, 4, 6, 8]
    assert cache.layers[0].values[0, 1, :, 0].tolist() == [100, 101, 102, 103, 104, 106, 108]
    big = torch.zeros(1, 2, 1000, 3)
    cache.update(big, big, 0)  # grows past the initial capacity, keeps the old entries
    assert cache.get_seq_length() == 1007 and cache.layers[0].keys[0, 0, 6, 0] == 8


def test_search_budget_counts_decoding_not_the_prefill(tmp_path) -> None:
    """A long prompt with a two-token reply: no search iteration (the reply could not carry it);
    a long reply over the same prompt searches within the same budget."""
    engine = SwiftEngine(
        tiny_model("llama", seed=2),
        CharTokenizer(),
        SwiftConfig(search={"max_overhead": 0.5, "context_window": 32}),
        profile_store=tmp_path,
    )
    prompt = [(7 * i) % 90 for i in range(400)]
    short = engine.generate(prompt, max_new_tokens=2, step_key="short")
    assert short.stats.search_iterations == 0 and short.stats.prefill_time_s > 0
    long = engine.generate(prompt, max_new_tokens=120, step_key="long")
    assert long.stats.search_iterations > 0


def test_search_budget_shrinks_as_the_search_stagnates(tmp_path) -> None:
    """Half of the decoding time for a fresh search, a third of that after 2 x hopeless_after stagnant iterations."""
    import time as _time

    from swift_engine.search.session import SearchSession
    from swift_engine.search.state import PLAIN, Candidate, SearchState

    engine = SwiftEngine(tiny_model("llama", seed=2), CharTokenizer(), SwiftConfig(), profile_store=tmp_path)
    hopeless = engine.config.search.hopeless_after
    start = Candidate(frozenset({1}), frozenset())
    for stagnant, affordable in ((0, True), (2 * hopeless, False)):
        state = SearchState(best=start, since_improvement=stagnant)
        session = SearchSession(PLAIN, state=state, costs=engine.costs, config=engine.config.search)
        session.last_iteration_s = 0.3  # next iteration: 0.3 s after 1 s of decoding
        assert session.affordable(_time.perf_counter() - 1.0) is affordable


def test_result_listeners_see_every_finished_call_and_never_break_one(engine: SwiftEngine, caplog) -> None:
    seen: list = []

    def broken(result) -> None:
        raise RuntimeError("a metrics hook with a bug")

    engine.add_result_listener(seen.append)
    engine.add_result_listener(broken)
    try:
        res = engine.generate([1, 2, 3, 4], max_new_tokens=5)
        streamed = "".join(c.text for c in engine.stream([1, 2, 3], max_new_tokens=4))
    finally:
        engine.remove_result_listener(seen.append)
        engine.remove_result_listener(broken)
    assert [r.token_ids for r in seen] == [res.token_ids, seen[1].token_ids] and seen[1].text == streamed
    assert "a metrics hook with a bug" in caplog.text  # logged, not raised
    engine.generate([1, 2], max_new_tokens=2)
    assert len(seen) == 2  # removed: no longer called
