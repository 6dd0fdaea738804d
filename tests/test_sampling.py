"""Sampling keeps the target distribution exactly, through drafts and tree branches.

The exact joint distribution of the first two generated tokens is computed from the full model
(every prefix enumerated), then compared with SWIFT's samples by a chi-square test. The same test
rejects a slightly biased sampler, so passing it means something.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as sps

from swift_engine import SwiftConfig, SwiftEngine
from swift_engine.decoding.sampling import SamplingParams, target_probs

from .conftest import CharTokenizer, tiny_model

VOCAB = 12
PROMPT = [1, 5, 7, 2]
N = 1500


def _exact_joint(engine: SwiftEngine, params: SamplingParams) -> np.ndarray:
    """P(first two tokens) = p(t1 | prompt) * p(t2 | prompt, t1), enumerated over t1."""
    runner = engine.runner
    joint = np.zeros((VOCAB, VOCAB))
    cache = runner.new_cache()
    p1 = target_probs(runner.forward(cache, torch.tensor(PROMPT), torch.arange(len(PROMPT)))[-1], params)
    for t in range(VOCAB):
        if p1[t] == 0:
            continue
        seq = PROMPT + [t]
        c = runner.new_cache()
        p2 = target_probs(runner.forward(c, torch.tensor(seq), torch.arange(len(seq)))[-1], params)
        joint[t] = (p1[t] * p2).numpy()
    return joint


def _chi2_pvalue(counts: np.ndarray, expected_p: np.ndarray) -> float:
    exp = expected_p.ravel() * counts.sum()
    obs = counts.ravel()
    assert obs[exp == 0].sum() == 0, "sampled a token the target distribution gives zero probability"
    # pool small cells so the chi-square approximation holds
    big = exp >= 5
    obs_b, exp_b = list(obs[big]), list(exp[big])
    if (~big).any() and exp[~big].sum() > 0:
        obs_b.append(obs[~big].sum())
        exp_b.append(exp[~big].sum())
    exp_arr = np.asarray(exp_b, dtype=float)
    exp_arr *= sum(obs_b) / exp_arr.sum()  # the model's float32 probabilities sum to 1 only to ~1e-7
    return float(sps.chisquare(obs_b, exp_arr).pvalue)


@pytest.fixture(scope="module")
def engine() -> SwiftEngine:
    model = tiny_model("llama", seed=3, vocab=VOCAB, scale=3.0)
    # low draft confidence threshold and wide branches: trees with several children per node; drafts
    # whatever the measured costs say (a busy machine's timings must not turn the trees off)
    cfg = SwiftConfig(
        skip_ratio=0.25,
        draft_confidence=0.0,
        draft_payoff=False,
        search={"enabled": False},
        tree={"widths": ((1.01, 3),), "max_tree_tokens": 16},
    )
    return SwiftEngine(model, CharTokenizer(VOCAB), cfg)


@pytest.mark.slow  # 1500 sampled calls per case
@pytest.mark.parametrize(
    "params",
    [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=6, top_p=0.9)],
    ids=["t1", "t0.7-k6-p0.9"],
)
def test_swift_sampling_matches_target_distribution(engine: SwiftEngine, params: SamplingParams) -> None:
    exact = _exact_joint(engine, params)
    counts = np.zeros((VOCAB, VOCAB))
    accepted = 0
    for seed in range(N):
        r = engine.generate(
            PROMPT, max_new_tokens=3, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p, seed=seed
        )
        counts[r.token_ids[0], r.token_ids[1]] += 1
        accepted += r.stats.accepted_drafted_tokens
    assert accepted > N // 10, "drafts were hardly ever accepted: the test would not exercise the tree"
    p = _chi2_pvalue(counts, exact)
    assert p > 1e-3, f"SWIFT samples deviate from the target distribution (chi-square p={p:.2e})"

    # Power check: a sampler that over-accepts the greedy token (15% of the time it takes the
    # argmax instead of a draw, a typical speculative-sampling bug) is rejected by the same test.
    rng = np.random.default_rng(0)
    greedy = np.zeros_like(exact)
    greedy[np.arange(VOCAB), exact.argmax(axis=1)] = exact.sum(axis=1)
    biased = 0.85 * exact + 0.15 * greedy
    draws = rng.choice(VOCAB * VOCAB, size=N, p=biased.ravel() / biased.sum())
    biased_counts = np.bincount(draws, minlength=VOCAB * VOCAB).reshape(VOCAB, VOCAB)
    assert _chi2_pvalue(biased_counts, exact) < 1e-3


def test_same_seed_same_sample(engine: SwiftEngine) -> None:
    a = engine.generate(PROMPT, max_new_tokens=12, temperature=1.0, seed=42)
    b = engine.generate(PROMPT, max_new_tokens=12, temperature=1.0, seed=42)
    assert a.token_ids == b.token_ids


def test_target_probs_match_transformers_warpers() -> None:
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    for t, k, p in [(1.0, 0, 1.0), (0.5, 10, 1.0), (1.3, 0, 0.8), (0.8, 7, 0.6)]:
        x = TemperatureLogitsWarper(t)(None, logits.clone())
        if k:
            x = TopKLogitsWarper(k)(None, x)
        if p < 1.0:
            x = TopPLogitsWarper(p)(None, x)
        ref = torch.softmax(x, dim=-1)
        ours = target_probs(logits, SamplingParams(temperature=t, top_k=k, top_p=p))
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


def test_a_top_p_below_float32s_range_keeps_the_most_likely_token() -> None:
    """``top_p=1.67e-80`` (found by the server's fuzzer) is 0.0 in float32: the first token stays, no NaN."""
    logits = torch.tensor([[0.5, 3.0, -1.0], [2.0, 2.0, 0.0]])
    probs = target_probs(logits, SamplingParams(temperature=1.0, top_p=1.6732527730956321e-80))
    assert not torch.isnan(probs).any()
    assert probs[0].tolist() == [0.0, 1.0, 0.0] and probs[1].sum().item() == 1.0 and (probs[1] > 0).sum() == 1
