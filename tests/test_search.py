"""The layer-set search on its own (no model): stopping rules."""

from __future__ import annotations

from swift_engine.kernels.costs import CostModel


def test_a_search_stalled_below_break_even_stops():
    from swift_engine.config import SearchConfig
    from swift_engine.search.layer_search import LayerSetSearch
    from swift_engine.search.state import Candidate, SearchState

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


def _costs(verify_s: dict[str, float], draft_half_s: float) -> CostModel:
    return CostModel.from_dict(
        {"verify_s": verify_s, "draft_s_at": {"0.0": 0.05, "0.5": draft_half_s}, "head_s": 0.005}
    )


def test_the_search_budget_follows_what_the_search_could_still_gain():
    """The whole budget where drafts could pay well; a tenth of it where even a near-perfect set barely
    beats plain decoding (verification that costs much more than a step: weight-only kernels)."""
    import time

    from swift_engine.config import SearchConfig
    from swift_engine.search.layer_search import LayerSetSearch
    from swift_engine.search.session import SearchSession
    from swift_engine.search.state import PLAIN, Candidate, SearchState

    cheap = _costs({"1": 0.05, "2": 0.051, "4": 0.052, "8": 0.055, "16": 0.06, "32": 0.07}, 0.02)
    dear = _costs({"1": 0.05, "2": 0.07, "4": 0.08, "8": 0.1, "16": 0.15, "32": 0.25}, 0.03)
    config = SearchConfig()
    start = Candidate(frozenset({1}), frozenset())
    for costs, lo, hi, affordable in ((cheap, 1.4, 1.6, True), (dear, 1.0, 1.05, False)):
        search = LayerSetSearch(30, config, costs, max_draft=8)
        state = SearchState(best=start)
        assert lo < search.prospect(state) < hi
        session = SearchSession(PLAIN, state=state, search=search, costs=costs, config=config)
        session.last_iteration_s = 0.1  # next iteration: 0.1 s after 1 s of decoding
        assert session.affordable(time.perf_counter() - 1.0) is affordable
        session.last_iteration_s = 0.04  # a tenth of the budget still buys an iteration
        assert session.affordable(time.perf_counter() - 1.0)
    # scored sets move the prospect: at 0.2 match no set of any ratio tried could pay
    search = LayerSetSearch(30, config, cheap, max_draft=8)
    state = SearchState(best=start)
    search.update(state, start, 0.2)
    assert search.prospect(state) < 1.0
