"""Free drafts for a generation in the batch: its own context and its step's draft memory.

Why: a batched generation decoded one token per pass, so a call that joined others lost what the
engine's drafters give a call alone at no model cost -- copies from its prompt (RAG answers and
summaries quote their documents) and replays of the step's earlier outputs -- while on swift's
kernels extra rows in a pass are nearly free up to 16 (docs/bench/passes). Each pass, a generation
may add a chain of such draft tokens after its next token; the pass checks them as verification
does (:func:`~swift_engine.decoding.verification.accept`: a draft token is kept while it is what
plain decoding picks there, the argmax or the call's own draw), so the tokens are those of plain
decoding alone. Layer-skip drafts stay out: they cost model passes that the other generations
would wait for.

No acceptance model sizes the chains: with other generations in the pass the rows are shared out
(:meth:`~swift_engine.batching.batcher.Batcher._pass`), and a rejected row costs little.
"""

from __future__ import annotations

from typing import Any

from swift_engine.drafters.context import ContextIndex
from swift_engine.drafters.memory import MemoryIndex, read_memory

__all__ = ["RowDrafts"]


class RowDrafts:
    """A batched generation's draft sources: its tokens so far, and its step's remembered outputs."""

    def __init__(self, tokens: list[int], memory: Any, vocab_size: int) -> None:
        """``tokens``: prompt and committed tokens; ``memory``: the step profile's draft memory (or None)."""
        self.context = ContextIndex(tokens)
        stored = read_memory(memory)
        outputs = [o for o in stored.outputs if all(t < vocab_size for t in o)] if stored else []
        self.memory = MemoryIndex(outputs)

    def propose(self, max_len: int) -> tuple[list[int], bool]:
        """Up to ``max_len`` tokens to follow the last committed one, and whether they came from memory.

        The longer n-gram match wins (the evidence a copy continues); memory on a tie (a replay of
        this step's own answers).
        """
        if max_len <= 0:
            return [], False
        tail = self.context.tokens[-8:]
        remembered, order_m = self.memory.best(tail, max_len)
        copied, order_c = self.context.best(max_len)
        if remembered and order_m >= order_c:
            return remembered, True
        return copied, False

    def extend(self, tokens: list[int]) -> None:
        """Committed tokens, in order."""
        self.context.extend(tokens)
