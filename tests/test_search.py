"""The layer-set search on its own (no model): stopping rules."""

from __future__ import annotations

from swift_engine.costs import CostModel


def test_a_search_stalled_below_break_even_stops():
    from swift_engine.config import SearchConfig
    from swift_engine.search import Candidate, LayerSetSearch, SearchState

    # cheap drafts: a 20-sublayer set at score 0.65 gives 0.97x, one scoring 0.1 better would pay
    costs = CostModel.from_dict(
        {
            "verify_s": {"1": 0.05, "2": 0.055, "4": 0.06, "8": 0.07, "16": 0.09, "32": 0.12},
            "draft_s_at": {"0.0": 0.05, "0.5": 0.02},
            "head_s": 0.005,
        }
    )
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
