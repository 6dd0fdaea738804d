"""SWIFT's optimization phase: find, on the fly, which sublayers the draft should skip.

Each iteration proposes a skip set (random search around the best set or from scratch, and a
Bayesian-optimization proposal every ``bayes_interval`` iterations), scores it by drafting the
already generated tokens in parallel (teacher-forced: how often the draft's argmax equals the full
model's), and keeps the set with the best *expected speed-up* on this hardware. The paper fixes the
skip ratio; here the ratio is part of the search, because small models on CPUs pay off at lower
ratios (and sometimes not at all: then the step decodes plainly).
"""

from __future__ import annotations

import logging
import random

import torch

from swift_engine.config import SearchConfig
from swift_engine.kernels.costs import CostModel
from swift_engine.model.kv_cache import SwiftKVCache
from swift_engine.model.runner import ModelRunner
from swift_engine.search.state import Candidate, SearchState

logger = logging.getLogger(__name__)


@torch.inference_mode()
def score_candidate(
    runner: ModelRunner,
    cache: SwiftKVCache,
    past: int,
    window_tokens: list[int],
    window_targets: list[int],
    cand: Candidate,
    vocab: torch.Tensor | None = None,
) -> float:
    """Teacher-forced match rate of the draft over the last ``len(window_tokens)`` committed tokens.

    The window's tokens are fed again *after* the cache's end with their true positions, and the
    mask hides their original cache entries, so the draft sees exactly what it would have seen while
    drafting them; the cache is rewound afterwards (nothing is copied or overwritten).
    """
    w = len(window_tokens)
    device = runner.device
    ids = torch.tensor(window_tokens, device=device)
    positions = torch.arange(past - w, past, device=device)
    with runner.skipper.skipping(cand.attention, cand.mlp):
        hidden = runner.hidden(cache, ids, positions, past_visible=past - w)
        logits = runner.logits(hidden, vocab)
    cache.truncate(past)
    pred = logits.argmax(dim=-1)
    if vocab is not None:
        pred = vocab[pred]
    target = torch.tensor(window_targets, device=device)
    return float((pred == target).float().mean().item())


class LayerSetSearch:
    """Proposes candidates and folds their scores into a :class:`SearchState`."""

    def __init__(self, num_layers: int, config: SearchConfig, costs: CostModel, max_draft: int, seed: int = 0):
        self.num_layers = num_layers
        self.config = config
        self.costs = costs
        self.max_draft = max_draft
        self.skippable = list(range(1, num_layers - 1))
        self.rng = random.Random(seed)

    # -- proposals ---------------------------------------------------------------------------
    def _count(self, ratio: float) -> int:
        return max(1, min(2 * len(self.skippable), int(round(ratio * 2 * self.num_layers))))

    def _random(self, ratio: float) -> Candidate:
        slots = [("a", i) for i in self.skippable] + [("m", i) for i in self.skippable]
        chosen = self.rng.sample(slots, self._count(ratio))
        return Candidate(frozenset(i for k, i in chosen if k == "a"), frozenset(i for k, i in chosen if k == "m"))

    def _mutate(self, base: Candidate) -> Candidate:
        slots = {("a", i) for i in base.attention} | {("m", i) for i in base.mlp}
        free = [("a", i) for i in self.skippable if i not in base.attention] + [
            ("m", i) for i in self.skippable if i not in base.mlp
        ]
        move = self.rng.random()
        if move < 0.2 and free:  # skip one more sublayer
            slots.add(self.rng.choice(free))
        elif move < 0.4 and len(slots) > 1:  # skip one fewer
            slots.discard(self.rng.choice(sorted(slots)))
        else:  # swap one or two
            for _ in range(self.rng.choice((1, 2))):
                if not slots or not free:
                    break
                out = self.rng.choice(sorted(slots))
                inn = self.rng.choice(free)
                slots.discard(out)
                slots.add(inn)
                free.remove(inn)
                free.append(out)
        return Candidate(frozenset(i for k, i in slots if k == "a"), frozenset(i for k, i in slots if k == "m"))

    def _bayes(self, state: SearchState) -> Candidate | None:
        """One proposal from a Gaussian-process (or TPE) model of all observations so far (optuna)."""
        try:
            import optuna
        except ImportError:  # pragma: no cover - optuna is a dependency
            return None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        names = [f"a{i}" for i in self.skippable] + [f"m{i}" for i in self.skippable]
        ratios = self.config.skip_ratios
        dists: dict[str, optuna.distributions.BaseDistribution] = {
            n: optuna.distributions.FloatDistribution(0.0, 1.0) for n in names
        }
        dists["ratio"] = optuna.distributions.FloatDistribution(min(ratios), max(ratios))
        sampler: optuna.samplers.BaseSampler
        try:
            sampler = optuna.samplers.GPSampler(seed=self.rng.randrange(2**31), n_startup_trials=5)
        except Exception:  # pragma: no cover - older optuna
            sampler = optuna.samplers.TPESampler(seed=self.rng.randrange(2**31))
        study = optuna.create_study(direction="maximize", sampler=sampler)
        for obs in state.observations:
            params = {f"a{i}": 0.0 for i in self.skippable} | {f"m{i}": 0.0 for i in self.skippable}
            params.update({f"a{i}": 1.0 for i in obs["attention"]})
            params.update({f"m{i}": 1.0 for i in obs["mlp"]})
            r = (len(obs["attention"]) + len(obs["mlp"])) / (2 * self.num_layers)
            params["ratio"] = min(max(r, min(ratios)), max(ratios))
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=obs["speedup"]))
        trial = study.ask(dists)
        k = self._count(trial.params["ratio"])
        ranked = sorted(names, key=lambda n: trial.params[n], reverse=True)[:k]
        return Candidate(
            frozenset(int(n[1:]) for n in ranked if n[0] == "a"), frozenset(int(n[1:]) for n in ranked if n[0] == "m")
        )

    def propose(self, state: SearchState) -> Candidate:
        if state.iterations > 0 and state.iterations % self.config.bayes_interval == 0 and len(state.observations) >= 5:
            proposed = self._bayes(state)
            if proposed is not None:
                return proposed
        cand = state.best
        for _ in range(20):
            if self.rng.random() < 0.5 and state.iterations > 0:
                cand = self._mutate(state.best)
            else:
                cand = self._random(self.rng.choice(self.config.skip_ratios))
            if cand.key() not in state.seen and (cand.attention or cand.mlp):
                return cand
        return cand

    # -- bookkeeping -------------------------------------------------------------------------
    def _hopeless(self, state: SearchState) -> bool:
        """Stop searching: nothing seen pays, and either nothing could or the search has stalled.

        "Could": at every skip ratio tried, even a set scoring 0.1 better than the best seen would
        not beat plain decoding. "Stalled": ``hopeless_after`` iterations without improvement while
        still below break-even; the search would otherwise keep costing time in every call of the
        step for up to ``max_tolerance_iter`` iterations.
        """
        if state.iterations < self.config.hopeless_after or state.best_speedup >= 1.0:
            return False
        if state.since_improvement >= self.config.hopeless_after:
            return True  # below break-even and no progress for as long again: decode plainly, re-probe later
        return self.prospect(state) < 1.0

    def prospect(self, state: SearchState) -> float:
        """The best expected speed-up a further search could still plausibly find, on this hardware.

        Once sets were scored: at each skip ratio tried, a set scoring 0.1 better than the best seen
        there. Before: a set reaching ``max_score`` at one of the configured ratios. Where
        verification is expensive (weight-only kernels, whose cost grows with the rows) even that
        barely beats plain decoding, and :meth:`SearchSession.affordable` spends accordingly little.
        """
        best_at: dict[int, float] = {}
        for obs in state.observations:
            k = len(obs["attention"]) + len(obs["mlp"])
            best_at[k] = max(best_at.get(k, 0.0), obs["score"])
        if not best_at:
            best_at = {self._count(r): self.config.max_score - 0.1 for r in self.config.skip_ratios}
        return max(
            self.costs.expected_speedup(min(1.0, sc + 0.1), k / (2 * self.num_layers), self.max_draft)[0]
            for k, sc in best_at.items()
        )

    def evaluate(self, cand: Candidate, score: float) -> tuple[float, int]:
        return self.costs.expected_speedup(score, cand.ratio(self.num_layers), self.max_draft)

    def update(self, state: SearchState, cand: Candidate, score: float) -> bool:
        """Fold one scored candidate into the state; True when it became the best."""
        speedup, draft_len = self.evaluate(cand, score)
        state.iterations += 1
        state.record(cand, score, speedup)
        improved = speedup > state.best_speedup + 1e-9
        if improved:
            state.best, state.best_score, state.best_speedup, state.best_draft_len = cand, score, speedup, draft_len
            state.since_improvement = 0
        else:
            state.since_improvement += 1
        c = self.config
        if (
            state.best_score >= c.max_score
            or state.since_improvement >= c.max_tolerance_iter
            or state.iterations >= c.max_opt_iter
            or self._hopeless(state)
        ):
            state.converged = True
            logger.info(
                "layer-set search converged after %d iterations: score %.3f, expected speed-up %.2fx",
                state.iterations,
                state.best_score,
                state.best_speedup,
            )
        return improved
