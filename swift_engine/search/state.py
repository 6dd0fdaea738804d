"""What the layer-set search knows and chooses: candidates, the drafter's skip choice, a step's state.

These are the search's data types, owned here so that the search (:mod:`~swift_engine.search.layer_search`),
the per-call session (:mod:`~swift_engine.search.session`), the step profiles and the layer-skip drafter
share them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Observations kept per step (for the Bayesian optimizer); older ones are dropped.
MAX_OBSERVATIONS = 300


@dataclass(frozen=True)
class Candidate:
    attention: frozenset[int]
    mlp: frozenset[int]

    def ratio(self, num_layers: int) -> float:
        return (len(self.attention) + len(self.mlp)) / (2 * num_layers)

    def key(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return tuple(sorted(self.attention)), tuple(sorted(self.mlp))


@dataclass(frozen=True)
class SkipChoice:
    """What the layer-skip drafter drafts with: the skipped sublayers, or nothing (``plain``)."""

    attention: frozenset[int]
    mlp: frozenset[int]
    plain: bool = False

    @classmethod
    def of(cls, cand: Candidate, plain: bool = False) -> SkipChoice:
        return cls(cand.attention, cand.mlp, plain)


#: No layer-skip drafts.
PLAIN = SkipChoice(frozenset(), frozenset(), plain=True)


@dataclass
class SearchState:
    """What the search knows about one step key; persisted in its profile record."""

    best: Candidate
    best_score: float = 0.0
    best_speedup: float = 0.0
    best_draft_len: int = 4
    iterations: int = 0
    since_improvement: int = 0
    converged: bool = False
    observations: list[dict] = field(default_factory=list)
    seen: set[tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=set)

    def record(self, cand: Candidate, score: float, speedup: float) -> None:
        key = cand.key()
        self.seen.add(key)
        self.observations.append(
            {"attention": list(key[0]), "mlp": list(key[1]), "score": round(score, 4), "speedup": round(speedup, 4)}
        )
        del self.observations[:-MAX_OBSERVATIONS]
