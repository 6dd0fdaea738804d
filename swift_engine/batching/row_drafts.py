"""Free drafts for a generation in the batch: its own context and its step's draft memory.

Why: a batched generation decoded one token per pass, so a call that joined others lost what the
engine's drafters give a call alone at no model cost -- copies from its prompt (RAG answers and
summaries quote their documents) and replays of the step's earlier outputs. Each pass, a generation
may add a chain of such draft tokens after its next token; the pass checks them as verification
does (:func:`~swift_engine.decoding.verification.accept`: a draft token is kept while it is what
plain decoding picks there, the argmax or the call's own draw), so the tokens are those of plain
decoding alone. Layer-skip drafts stay out: they cost model passes that the other generations
would wait for.

How many draft rows a pass takes (:func:`share_rows`): extra rows are not free -- on this repository's
2-core Zen 4 an int4 pass of 16 rows costs ~2.4 one-token steps against ~1.7 for 8 (docs/bench/passes)
-- so a draft token goes in only while its expected yield pays for the rows it adds at the pass's
current rate. Its yield comes from the same acceptance statistics a call alone sizes its copies by
(:class:`~swift_engine.drafters.context.ContextAcceptance`: the step's, by n-gram match length, then
what this generation's own drafts met), its cost from the engine's measured pass costs. Measured:
docs/bench/measurements.md#batched-drafts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from swift_engine.drafters.context import ContextAcceptance, ContextIndex
from swift_engine.drafters.memory import MemoryIndex, read_memory
from swift_engine.kernels.costs import CostModel

__all__ = ["RowChain", "RowDrafts", "share_rows"]


@dataclass(frozen=True)
class RowChain:
    """One generation's candidate drafts for a pass: tokens after its next token, and their odds."""

    tokens: list[int]
    #: from the step's draft memory (else copied from the generation's own context)
    remembered: bool = False
    #: length of the n-gram match the chain continues (0: no chain)
    order: int = 0
    #: ``yields[i]``: the expected tokens drafted token ``i`` adds (it and all before it kept), decreasing
    yields: tuple[float, ...] = ()


class RowDrafts:
    """A batched generation's draft sources (its tokens so far, its step's remembered outputs) and the
    odds their chains are kept (the step's statistics, then this generation's own)."""

    def __init__(
        self, tokens: list[int], memory: Any, vocab_size: int, copy_rates: Any = None, copies: bool = True
    ) -> None:
        """``tokens``: prompt and committed tokens; ``memory``: the step profile's draft memory (or None);
        ``copy_rates``: the step profile's context-draft statistics (or None: the prior); ``copies``:
        whether to copy from the context (``SwiftConfig.context_drafts``)."""
        self.context = ContextIndex(tokens)
        self.copies = copies
        stored = read_memory(memory)
        outputs = [o for o in stored.outputs if all(t < vocab_size for t in o)] if stored else []
        self.memory = MemoryIndex(outputs)
        self.copy_rates = ContextAcceptance.from_dict(copy_rates)
        self.memory_rates = ContextAcceptance.from_dict(stored.acceptance if stored else None)

    def propose(self, max_len: int) -> RowChain:
        """Up to ``max_len`` tokens to follow the last committed one.

        The longer n-gram match wins (the evidence a copy continues); memory on a tie (a replay of
        this step's own answers).
        """
        if max_len <= 0:
            return RowChain([])
        tail = self.context.tokens[-8:]
        remembered, order_m = self.memory.best(tail, max_len)
        copied, order_c = self.context.best(max_len) if self.copies else ([], 0)
        if remembered and order_m >= order_c:
            tokens, order, rates = remembered, order_m, self.memory_rates
        elif copied:
            tokens, order, rates = copied, order_c, self.copy_rates
        else:
            return RowChain([])
        first, then = rates.first_rate(order), rates.continue_rate(order)
        return RowChain(tokens, rates is self.memory_rates, order, tuple(first * then**i for i in range(len(tokens))))

    def observe(self, chain: RowChain, drafted: int, kept: int) -> None:
        """What the pass made of the first ``drafted`` tokens of ``chain``: ``kept`` of them kept."""
        if drafted and chain.order:
            rates = self.memory_rates if chain.remembered else self.copy_rates
            rates.observe_run(chain.order, kept, kept < drafted)

    def extend(self, tokens: list[int]) -> None:
        """Committed tokens, in order."""
        self.context.extend(tokens)


def share_rows(chains: list[RowChain], rows: int, spare: int, costs: CostModel) -> list[int]:
    """How many tokens of each chain a pass of ``rows`` rows (its generations' next tokens and its prompt
    rows) takes, at most ``spare`` in all.

    Greedy, best expected yield first: a draft row goes in while its yield per second added is at least
    the pass's rate so far (rows and expected kept drafts per second of ``costs.verify``). Where a row
    costs next to nothing (a pass of 1-4 rows) every likely-enough draft goes in; where rows cost about
    their share of the pass (compute-bound passes) only near-certain ones do.
    """
    taken = [0] * len(chains)
    offers = sorted(
        ((y, i, k) for i, chain in enumerate(chains) for k, y in enumerate(chain.yields)), key=lambda o: (-o[0], o[2])
    )
    value, cost = float(rows), costs.verify(max(rows, 1))
    for gain, i, k in offers:
        if spare <= 0:
            break
        if k != taken[i]:  # a chain's tokens go in order (yields decrease along it; ties by position)
            continue
        more = costs.verify(rows + 1)
        if gain * cost < value * (more - cost):  # nor will any later offer (no more yield, the same rows)
            break
        taken[i] += 1
        rows, spare, value, cost = rows + 1, spare - 1, value + gain, more
    return taken
