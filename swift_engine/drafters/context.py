"""Context drafts: continuations copied from earlier in the context (prompt-lookup decoding).

RAG answers, summaries, code edits and tool calls copy long spans of their context. Finding the
last few tokens earlier in the context and proposing what followed costs no model pass at all, so
on those tasks this drafter proposes for free what the layer-skipped model would pay for. How long
a copy to propose is decided per match length from how often such copies were accepted in this
step before (:class:`ContextAcceptance`, kept in the step's profile) and what verifying them costs
on this hardware.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, ClassVar

from swift_engine.decoding.tree import SOURCE_CONTEXT, Proposal, TokenTree
from swift_engine.decoding.verification import Verdict
from swift_engine.kernels.costs import CostModel

#: A copy is re-probed (3 tokens) every this many proposals even when the model says it won't pay.
_PROBE_EVERY = 16


class ContextIndex:
    """Positions of every n-gram (``n_min..n_max``) of a growing token sequence.

    Incremental: each committed token updates it in O(n_max).
    """

    def __init__(self, tokens: list[int], n_min: int = 1, n_max: int = 4) -> None:
        self.n_min, self.n_max = n_min, n_max
        self.tokens: list[int] = []
        # n-gram -> end positions (exclusive) of its occurrences, most recent last
        self._ends: dict[tuple[int, ...], list[int]] = defaultdict(list)
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        for tok in tokens:
            self.tokens.append(tok)
            end = len(self.tokens)
            for n in range(self.n_min, self.n_max + 1):
                if end >= n:
                    self._ends[tuple(self.tokens[end - n : end])].append(end)

    def best(self, max_len: int) -> tuple[list[int], int]:
        """The most likely continuation and the length of the n-gram it matched (0: none).

        The match length is the evidence: a continuation after a 4-token match is accepted far
        more often than one after a single token, so the caller sizes the draft by it.
        """
        if max_len <= 0:
            return [], 0
        cur_end = len(self.tokens)
        for n in range(min(self.n_max, cur_end - 1), self.n_min - 1, -1):
            for end in reversed(self._ends.get(tuple(self.tokens[-n:]), ())):
                if end != cur_end:
                    cont = self.tokens[end : end + max_len]
                    if cont:
                        return cont, n
        return [], 0


#: Prior counts ``[attempts, first-token hits, later hits, later misses]`` of a context draft by the
#: length of its n-gram match: worth a few observations, optimistic enough that every order gets
#: tried, lower for weak single-token matches.
_CONTEXT_PRIOR = {1: (4.0, 1.0, 3.0, 1.0), 2: (4.0, 2.0, 3.0, 1.0), 3: (4.0, 2.0, 3.0, 1.0), 4: (4.0, 2.0, 3.0, 1.0)}
_CONTEXT_MEMORY = 200.0


@dataclass
class ContextAcceptance:
    """How often context drafts are accepted, for one step key, by n-gram match length.

    Copies are bursty: a continuation is either wrong from its first token or right for a
    stretch. So two rates are kept per match length (a continuation found after a 4-token match is
    far likelier than one after a single token): ``p1``, that the first drafted token is accepted,
    and ``a``, that each later one is, given the ones before were. The expected number of accepted
    tokens of a draft of length ``L`` is then ``p1 * (1 - a^L) / (1 - a)``, which the cost model
    weighs against the measured cost of verifying ``L + 1`` tokens. Old evidence is decayed so a
    step whose content changes is re-learned.
    """

    counts: dict[int, list[float]] = field(default_factory=lambda: {n: list(v) for n, v in _CONTEXT_PRIOR.items()})

    def _c(self, order: int) -> list[float]:
        return self.counts.get(order) or list(_CONTEXT_PRIOR.get(order, _CONTEXT_PRIOR[1]))

    def first_rate(self, order: int) -> float:
        attempts, first, _, _ = self._c(order)
        return first / attempts

    def continue_rate(self, order: int) -> float:
        _, _, hits, misses = self._c(order)
        return hits / (hits + misses)

    def draft_length(self, costs: CostModel, max_len: int, order: int, probe: bool = False) -> int:
        """The draft length with the best expected speed-up on this hardware for a match of ``order`` (0: don't)."""
        if max_len <= 0 or order <= 0:
            return 0
        speedup, length = costs.best_copy_length(self.first_rate(order), self.continue_rate(order), max_len)
        if speedup < 1.0:
            return min(3, max_len) if probe else 0
        return length

    def observe(self, tree: TokenTree, path: list[int], order: int, source: int = SOURCE_CONTEXT) -> None:
        """Fold in one verification of a copy found after an ``order``-token match (0: none proposed).

        ``source``: the tree-node bit of the drafter whose copies these statistics are about.
        """
        proposed = sum(1 for s in tree.sources if s & source)
        if order <= 0 or not proposed:
            return
        hits = sum(1 for node in path[1:] if tree.sources[node] & source)
        miss = any(tree.sources[c] & source for c in tree.children()[path[-1]].values())
        self.observe_run(order, hits, miss)

    def observe_run(self, order: int, hits: int, miss: bool) -> None:
        """Fold in one copy after an ``order``-token match: ``hits`` of its tokens kept, then a rejected one
        (``miss``) or none (the copy ran out or was all kept)."""
        c = self.counts.setdefault(order, list(_CONTEXT_PRIOR.get(order, _CONTEXT_PRIOR[1])))
        c[0] += 1
        if hits:
            c[1] += 1
            c[2] += hits - 1
            c[3] += 1 if miss else 0
        if c[0] > _CONTEXT_MEMORY:
            scale = _CONTEXT_MEMORY / c[0]
            for i in range(4):
                c[i] *= scale

    def to_dict(self) -> dict[str, Any]:
        return {"by_order_v2": {str(n): [round(x, 3) for x in v] for n, v in sorted(self.counts.items())}}

    @classmethod
    def from_dict(cls, d: Any) -> ContextAcceptance:
        """From a stored profile; a malformed or older entry starts again from the prior."""
        try:
            if d and "by_order_v2" in d:
                counts = {int(n): [float(x) for x in v] for n, v in d["by_order_v2"].items()}
                if all(len(v) == 4 and v[0] > 0 and v[2] + v[3] > 0 for v in counts.values()):
                    return cls(counts=counts)
        except (TypeError, ValueError, AttributeError):
            pass
        return cls()


class ContextDrafter:
    """Proposes the continuation of the longest earlier match of the last tokens, sized by the cost model."""

    source: ClassVar[int] = SOURCE_CONTEXT
    runs_model: ClassVar[bool] = False
    profile_key: ClassVar[str | None] = "context_acceptance"

    def __init__(self, tokens: list[int], costs: CostModel, max_draft_len: int, profile: Any = None) -> None:
        """``tokens``: the sequence so far (prompt and first token); ``profile``: this step's stored acceptance."""
        self.index = ContextIndex(tokens)
        self.acceptance = ContextAcceptance.from_dict(profile)
        self.costs = costs
        self.max_draft_len = max_draft_len
        self._proposals = 0
        self._order = 0  # match length of the proposal being verified (0: none)

    def propose(self, root: int, past: int, budget: int) -> Proposal | None:
        self._proposals += 1
        cont, order = self.index.best(min(self.max_draft_len, budget))
        length = self.acceptance.draft_length(self.costs, len(cont), order, probe=self._proposals % _PROBE_EVERY == 0)
        self._order = order if length else 0
        return Proposal(cont[:length], SOURCE_CONTEXT) if length else None

    def observe(self, tree: TokenTree, verdict: Verdict, new_tokens: list[int]) -> None:
        self.acceptance.observe(tree, verdict.path, self._order)
        self._order = 0
        self.index.extend(new_tokens)

    def profile_state(self) -> dict[str, Any]:
        return self.acceptance.to_dict()
