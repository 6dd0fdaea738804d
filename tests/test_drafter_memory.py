"""The memory drafter: copies of a step's earlier outputs, kept in its profile; exact, bounded, persisted, safe."""

from __future__ import annotations

import json

import numpy as np
import pytest

from swift_engine import SwiftConfig, SwiftEngine
from swift_engine.drafters import MemoryIndex
from swift_engine.store.records import DraftMemory

from .conftest import CharTokenizer, tiny_model
from .test_sampling import _chi2_pvalue, _exact_joint


def test_the_longest_newest_match_wins_and_copies_stop_at_an_outputs_end() -> None:
    index = MemoryIndex([[1, 2, 3, 4, 5], [9, 2, 3, 7, 8], [6, 6]])
    assert index.best([0, 2, 3], 10) == ([7, 8], 2)  # newest occurrence of (2, 3), cut at its output's end
    assert index.best([1, 2, 3], 10) == ([4, 5], 3)  # the longer match wins
    assert index.best([4, 5], 10) == ([], 0)  # (4, 5) ends an output: nothing follows it there
    assert index.best([6], 10) == ([6], 1)  # never continues into the next output
    assert index.best([9, 2], 2) == ([3, 7], 2) and index.best([42], 5) == ([], 0)


def test_merging_keeps_every_calls_output_newest_last_within_the_bound() -> None:
    stored = DraftMemory(max_tokens=8, outputs=[[1, 2, 3], [4, 5]]).model_dump()
    merged = DraftMemory.merged(stored, DraftMemory(max_tokens=8, outputs=[[1, 2, 3]]))
    assert merged["outputs"] == [[4, 5], [1, 2, 3]]  # seen before: moved to the newest end, not kept twice
    merged = DraftMemory.merged(merged, DraftMemory(max_tokens=8, outputs=[[7, 7, 7, 7]]))
    assert merged["outputs"] == [[1, 2, 3], [7, 7, 7, 7]]  # the oldest output went
    newer = {**stored, "version": 99}
    assert DraftMemory.merged(newer, DraftMemory(outputs=[[1]])) == newer  # a newer release's memory is left alone
    assert DraftMemory.merged("garbage", DraftMemory(outputs=[[1]]))["outputs"] == [[1]]


PROMPTS = [[3, 14, 15, 9, 26, 5], [3, 14, 15, 9, 27, 5], [3, 14, 15, 9, 26, 5]]


def _engine(model, store, **config) -> SwiftEngine:
    cfg = SwiftConfig(**{"skip_ratio": 0.25, "context_drafts": False, **config})
    return SwiftEngine(model, CharTokenizer(), cfg, profile_store=store)


def test_later_calls_of_a_step_copy_its_earlier_outputs_exactly(tmp_path) -> None:
    model = tiny_model("qwen2", seed=4)
    engine, off = _engine(model, tmp_path / "on"), _engine(model, tmp_path / "off", draft_memory=0)
    drafted = accepted = 0
    for i, prompt in enumerate(PROMPTS * 2):
        res = engine.generate(prompt, max_new_tokens=40, step_key="tool-node")
        ref = off.generate(prompt, max_new_tokens=40, step_key="tool-node")
        plain = engine.generate(prompt, max_new_tokens=40, speculative=False)
        assert res.token_ids == ref.token_ids == plain.token_ids
        assert ref.stats.memory_drafted_tokens == 0
        if i == 0:
            assert res.stats.memory_drafted_tokens == 0  # nothing remembered yet
        drafted += res.stats.memory_drafted_tokens
        accepted += res.stats.memory_accepted_tokens
    assert drafted > 0 and accepted > 0
    # a repeated prompt is copied from memory nearly whole
    again = engine.generate(PROMPTS[0], max_new_tokens=40, step_key="tool-node")
    assert again.stats.memory_accepted_tokens >= 20
    assert again.stats.verify_steps < 20
    # the memory is the step's own: another step starts empty
    other = engine.generate(PROMPTS[0], max_new_tokens=40, step_key="summarize")
    assert other.stats.memory_drafted_tokens == 0


def _record_file(store, step_key: str):
    (path,) = [p for p in store.rglob("*.json") if step_key.replace("-", "") in p.name.replace("-", "")]
    return path


def test_the_memory_is_persisted_bounded_and_survives_restarts(tmp_path) -> None:
    model = tiny_model("llama", seed=6)
    engine = _engine(model, tmp_path, draft_memory=64)
    for prompt in PROMPTS + [[7] * 6, [8, 9] * 3, [10, 11, 12] * 2]:
        engine.generate(prompt, max_new_tokens=30, step_key="tool-node")
    stored = json.loads(_record_file(tmp_path, "tool-node").read_text())["extra"]["draft_memory"]
    assert 0 < sum(len(o) for o in stored["outputs"]) <= 64 and stored["version"] == 1
    # a new process (a new engine over the same store) drafts from it on its first call
    restarted = _engine(model, tmp_path, draft_memory=64)
    res = restarted.generate(PROMPTS[0], max_new_tokens=30, step_key="tool-node")
    assert res.stats.memory_drafted_tokens > 0


def test_a_corrupt_memory_costs_the_memory_never_the_call(tmp_path, caplog) -> None:
    model = tiny_model("llama", seed=6)
    engine = _engine(model, tmp_path)
    reference = engine.generate(PROMPTS[0], max_new_tokens=20, step_key="tool-node").token_ids
    path = _record_file(tmp_path, "tool-node")
    record = json.loads(path.read_text())
    record["extra"]["draft_memory"]["outputs"] = [["not", "tokens"]]
    path.write_text(json.dumps(record))
    fresh = _engine(model, tmp_path)
    res = fresh.generate(PROMPTS[0], max_new_tokens=20, step_key="tool-node")
    assert res.token_ids == reference and res.stats.memory_drafted_tokens == 0
    assert list(tmp_path.rglob("*.corrupt-*"))  # set aside like any invalid record, with a warning
    # token ids beyond this model's vocabulary (another tokenizer's memory) are never proposed
    record = json.loads(path.read_text())
    record["extra"]["draft_memory"]["outputs"] = [[10_000, 10_001, 10_002]]
    path.write_text(json.dumps(record))
    res = _engine(model, tmp_path).generate(PROMPTS[0], max_new_tokens=20, step_key="tool-node")
    assert res.token_ids == reference and res.stats.memory_drafted_tokens == 0


@pytest.mark.slow  # many sampled calls
def test_sampling_with_memory_drafts_keeps_the_target_distribution(tmp_path, monkeypatch) -> None:
    """Chi-square of the first two sampled tokens, with the step's memory drafting most of them.

    At temperature 1 over 12 tokens copies are rarely accepted, so the cost model would soon stop
    proposing them (rightly); here every match is proposed, so verification meets memory drafts
    in most calls, whatever this machine's measured costs say.
    """
    from swift_engine.decoding.sampling import SamplingParams
    from swift_engine.drafters.context import ContextAcceptance

    monkeypatch.setattr(ContextAcceptance, "draft_length", lambda self, costs, max_len, order, probe=False: max_len)

    vocab, prompt, n = 12, [1, 5, 7, 2], 800
    model = tiny_model("llama", seed=3, vocab=vocab, scale=3.0)
    cfg = SwiftConfig(skip_ratio=0.0, context_drafts=False, draft_memory=256, tree={"max_tree_tokens": 8})
    engine = SwiftEngine(model, CharTokenizer(vocab), cfg, profile_store=tmp_path)
    params = SamplingParams(temperature=1.0)
    exact = _exact_joint(engine, params)  # (test_sampling's prompt and vocabulary: the same as here)
    counts = np.zeros((vocab, vocab))
    drafted = 0
    for seed in range(n):
        r = engine.generate(prompt, max_new_tokens=3, temperature=1.0, seed=seed, step_key="sampled")
        counts[r.token_ids[0], r.token_ids[1]] += 1
        drafted += r.stats.memory_drafted_tokens
    assert drafted > n // 4, "memory drafts were hardly ever made: the test would not exercise them"
    p = _chi2_pvalue(counts, exact)
    assert p > 1e-3, f"samples with memory drafts deviate from the target distribution (chi-square p={p:.2e})"


@pytest.mark.parametrize("bad", [-1, 10**6])
def test_configuration_bounds(bad: int) -> None:
    with pytest.raises(ValueError, match="draft_memory"):
        SwiftConfig(draft_memory=bad)
