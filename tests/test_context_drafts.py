"""Context drafts: n-gram lookup, acceptance by match length, and the hardware cost model (no model)."""

from __future__ import annotations

from swift_engine.costs import CostModel
from swift_engine.drafting import ContextAcceptance, DraftHead
from swift_engine.lookup import NgramIndex
from swift_engine.results import GenerationStats
from swift_engine.tree import SOURCE_CONTEXT, TokenTree

#: 2-core CPU costs of SmolLM2-135M (seconds), with the noise seen in practice: 2 tokens slower than 4
COSTS = {"verify_s": {"1": 0.056, "2": 0.093, "4": 0.085, "8": 0.079, "16": 0.112, "32": 0.125}, "draft_s_at": {"0.0": 0.056, "0.5": 0.045}, "head_s": 0.012}


def test_the_longest_match_wins_and_reports_its_length():
    idx = NgramIndex([1, 2, 3, 4, 5, 9, 3, 4, 7, 1, 2, 3, 4])
    cont, order = idx.best(3)
    assert (cont, order) == ([5, 9, 3], 4)  # "1 2 3 4" matched: what followed it
    idx.extend([8])
    assert idx.best(3) == ([], 0)  # "8" never occurred before
    idx = NgramIndex([5, 6, 7, 5])
    assert idx.best(10) == ([6, 7, 5], 1)
    assert idx.best(0) == ([], 0)


def test_draft_cost_counts_only_the_draft_heads_vocabulary_subset():
    costs = CostModel.from_dict(COSTS)
    full = costs.draft(0.5)
    assert abs(full - 0.045) < 1e-12 and abs(costs.draft(0.0) - 0.056) < 1e-12
    costs.draft_head_share = DraftHead.expected_share(49152, 8192)  # SmolLM2: 9216 of 49152 rows
    assert abs(costs.draft_head_share - 9216 / 49152) < 1e-12
    saved = 0.012 * (1 - costs.draft_head_share)
    assert abs(costs.draft(0.5) - (0.045 - saved)) < 1e-12
    assert costs.expected_speedup(0.8, 0.5, 8)[0] > CostModel.from_dict(COSTS).expected_speedup(0.8, 0.5, 8)[0]
    assert DraftHead.expected_share(49152, None) == 1.0 == DraftHead.expected_share(1000, 8192)


def test_costs_are_made_monotone_in_the_number_of_tokens():
    costs = CostModel.from_dict(COSTS)
    assert costs.verify_s[2] == costs.verify_s[4] == costs.verify_s[8] == 0.079
    sizes = sorted(costs.verify_s)
    assert all(costs.verify_s[a] <= costs.verify_s[b] for a, b in zip(sizes, sizes[1:]))


def _observe(acc: ContextAcceptance, order: int, accepted: int, proposed: int) -> None:
    """One verify step whose context chain of ``proposed`` tokens had ``accepted`` accepted."""
    tree = TokenTree.with_root(0)
    nodes = tree.insert(list(range(1, proposed + 1)), SOURCE_CONTEXT, 64)
    path = [0] + nodes[:accepted]
    acc.observe(tree, path, SOURCE_CONTEXT, GenerationStats(prompt_tokens=1), order)


def test_weak_matches_stop_being_drafted_while_strong_ones_continue():
    costs = CostModel.from_dict(COSTS)
    acc = ContextAcceptance()
    for _ in range(30):
        _observe(acc, 1, 0, 3)  # single-token matches: always wrong
        _observe(acc, 4, 6, 8)  # 4-token matches: long copies
        _observe(acc, 2, 0, 8)  # 2-token matches: bursty, wrong 4 times in 5 ...
        _observe(acc, 2, 0, 8)
        _observe(acc, 2, 0, 8)
        _observe(acc, 2, 0, 8)
        _observe(acc, 2, 8, 8)  # ... and right all along the fifth time
    assert acc.first_rate(1) < 0.1 and acc.first_rate(4) > 0.9 and acc.continue_rate(4) > 0.8
    assert 0.15 < acc.first_rate(2) < 0.25 and acc.continue_rate(2) > 0.9  # not one blended per-token rate
    assert acc.draft_length(costs, 20, 1) == 0
    assert acc.draft_length(costs, 20, 1, probe=True) == 3  # re-probed now and then
    assert acc.draft_length(costs, 20, 4) >= 4
    assert acc.draft_length(costs, 20, 0) == 0  # no match, no draft
    restored = ContextAcceptance.from_dict(acc.to_dict())
    assert restored.first_rate(1) == acc.first_rate(1) and restored.continue_rate(4) == acc.continue_rate(4)
    assert ContextAcceptance.from_dict({"hits": 3, "misses": 2}).first_rate(4) == ContextAcceptance().first_rate(4)  # older format: prior
    assert ContextAcceptance.from_dict({"by_order_v2": "garbage"}).first_rate(2) == ContextAcceptance().first_rate(2)


def test_real_verification_costs_correct_the_synthetic_ones():
    costs = CostModel.from_dict(COSTS)
    synthetic = costs.verify(4)
    costs.observe_verify(4, 0.2)  # one sample of a size is not enough, and nothing without one-token steps
    costs.observe_verify(3, 0.2)
    assert costs.verify(4) == synthetic
    for _ in range(4):
        costs.observe_verify(1, 0.07)
    # real 4-token passes cost 0.2 / 0.07 one-token steps: scaled onto the measured one-token time
    assert abs(costs.verify(4) - 0.056 * 0.2 / 0.07) < 1e-9
    assert costs.verify(16) == costs._measured(16)  # sizes never seen keep the measurement
    assert costs.verify(1) == 0.056


def test_a_search_stalled_below_break_even_stops():
    from swift_engine.config import SearchConfig
    from swift_engine.search import Candidate, LayerSetSearch, SearchState

    # cheap drafts: a 20-sublayer set at score 0.65 gives 0.97x, one scoring 0.1 better would pay
    costs = CostModel.from_dict({"verify_s": {"1": 0.05, "2": 0.055, "4": 0.06, "8": 0.07, "16": 0.09, "32": 0.12}, "draft_s_at": {"0.0": 0.05, "0.5": 0.02}, "head_s": 0.005})
    search = LayerSetSearch(30, SearchConfig(hopeless_after=5), costs, max_draft=8)

    def cand(i: int) -> Candidate:
        return Candidate(frozenset(range(1 + i, 11 + i)), frozenset(range(2, 12)))

    state = SearchState(best=cand(0))
    search.update(state, cand(0), 0.65)
    for i in range(1, 5):
        search.update(state, cand(i), 0.60)
        assert not state.converged  # not hopeless: a better set could still pay
    assert 0.9 < state.best_speedup < 1.0
    search.update(state, cand(5), 0.60)
    assert state.converged  # 5 iterations without progress below break-even: plain, re-probed later
