"""The hardware cost model: draft-head share, monotone verification costs, online correction (no model)."""

from __future__ import annotations

from swift_engine.kernels.costs import CostModel
from swift_engine.model.draft_head import DraftHead

#: 2-core CPU costs of SmolLM2-135M (seconds), with the noise seen in practice: 2 tokens slower than 4
COSTS = {
    "verify_s": {"1": 0.056, "2": 0.093, "4": 0.085, "8": 0.079, "16": 0.112, "32": 0.125},
    "draft_s_at": {"0.0": 0.056, "0.5": 0.045},
    "head_s": 0.012,
}


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


def test_cost_files_that_would_fail_mid_generation_are_rejected_when_loaded():
    import math

    import pytest

    bad = [
        {**COSTS, "verify_s": {}},  # _measured() would index an empty list
        {**COSTS, "verify_s": {"1": 0.05}},  # extrapolation needs two sizes
        {**COSTS, "verify_s": {"2": 0.05, "4": 0.06}},  # plain_s is verify_s[1]
        {**COSTS, "verify_s": {**COSTS["verify_s"], "8": math.nan}},
        {**COSTS, "verify_s": {**COSTS["verify_s"], "8": math.inf}},
        {**COSTS, "verify_s": {**COSTS["verify_s"], "1": 0.0}},  # a zero cost divides by zero
        {**COSTS, "verify_s": {**COSTS["verify_s"], "x": 0.1}},
        {**COSTS, "draft_s_at": {"0.0": 0.056}},  # draft() interpolates to 0.5
        {**COSTS, "draft_s_at": {"0.0": 0.056, "0.5": -0.01}},
        {**COSTS, "head_s": -0.001},
        {**COSTS, "head_s": "fast"},
        {"verify_s": COSTS["verify_s"], "draft_s_at": COSTS["draft_s_at"]},
    ]
    for d in bad:
        with pytest.raises(ValueError):
            CostModel.from_dict(d)
    ok = CostModel.from_dict({**COSTS, "verify_s": {"1": 0.05, "4": 0.07}})
    assert ok.verify(2) > 0 and ok.verify(64) > 0
