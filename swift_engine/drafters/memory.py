"""Memory drafts: continuations copied from this step's earlier outputs (per-step draft memory).

A pipeline step writes the same shapes call after call: a tool node the same JSON keys and
argument layouts, a summarizer its phrasing, a RAG answerer its templates. The context drafter
only sees the current prompt; this one also remembers what the *same step* wrote before (its
profile keeps a bounded list of its recent outputs, :class:`~swift_engine.store.records.DraftMemory`)
and, when the last tokens of the sequence occur in that memory, proposes what followed there.
That is the idea of SuffixDecoding (Snowflake, NeurIPS 2025), keyed by pipeline step instead of
one global index: a tool node's memory is never polluted by the summarizer's.

Proposals cost no model pass; they are sized like context drafts, by how often memory copies
after a match of each length were accepted in this step and what verifying them costs here.
Verification decides every token, so the output is unchanged (greedy: token for token).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, ClassVar

from pydantic import ValidationError

from swift_engine.decoding.tree import SOURCE_MEMORY, Proposal, TokenTree
from swift_engine.decoding.verification import Verdict
from swift_engine.drafters.context import _PROBE_EVERY, ContextAcceptance
from swift_engine.kernels.costs import CostModel
from swift_engine.store.records import DRAFT_MEMORY_VERSION, DraftMemory

logger = logging.getLogger(__name__)

#: Longest match looked up (longer ones are as good as this for structured output).
_N_MAX = 4


class MemoryIndex:
    """Where each n-gram (1..``n_max``) ends in a list of earlier outputs; continuations stop at an output's end."""

    def __init__(self, outputs: list[list[int]], n_max: int = _N_MAX) -> None:
        self.n_max = n_max
        self.tokens: list[int] = []
        #: n-gram -> end positions in ``tokens`` (exclusive), newest last
        self._ends: dict[tuple[int, ...], list[int]] = defaultdict(list)
        #: end (exclusive) of the output each position belongs to
        self._stop: list[int] = []
        for out in outputs:
            start = len(self.tokens)
            self.tokens.extend(out)
            self._stop.extend([len(self.tokens)] * len(out))
            for end in range(start + 1, len(self.tokens) + 1):
                for n in range(1, min(n_max, end - start) + 1):
                    self._ends[tuple(self.tokens[end - n : end])].append(end)

    def __len__(self) -> int:
        return len(self.tokens)

    def best(self, tail: list[int], max_len: int) -> tuple[list[int], int]:
        """The continuation after the longest match of ``tail``'s last tokens (newest occurrence), and its length."""
        if max_len <= 0 or not self.tokens:
            return [], 0
        for n in range(min(self.n_max, len(tail)), 0, -1):
            for end in reversed(self._ends.get(tuple(tail[-n:]), ())):
                stop = self._stop[end - 1]  # the end of the output this match lies in
                if stop > end:
                    return self.tokens[end : min(end + max_len, stop)], n
        return [], 0


class MemoryDrafter:
    """Proposes what followed the current last tokens in this step's earlier outputs."""

    source: ClassVar[int] = SOURCE_MEMORY
    runs_model: ClassVar[bool] = False
    profile_key: ClassVar[str | None] = "draft_memory"

    def __init__(
        self,
        tokens: list[int],
        costs: CostModel,
        max_draft_len: int,
        max_tokens: int,
        vocab_size: int,
        profile: Any = None,
    ) -> None:
        """``tokens``: the sequence so far (prompt and first token); ``profile``: the step's stored memory."""
        memory = read_memory(profile)
        self.max_tokens = max_tokens
        outputs = [o for o in memory.outputs if all(t < vocab_size for t in o)] if memory else []
        self.index = MemoryIndex(outputs)
        self.acceptance = ContextAcceptance.from_dict(memory.acceptance if memory else None)
        self.costs = costs
        self.max_draft_len = max_draft_len
        self._tail = list(tokens[-_N_MAX:])
        #: what this call wrote (kept in the memory at the end)
        self.output = list(tokens[-1:])
        self._proposals = 0
        self._order = 0

    def propose(self, root: int, past: int, budget: int) -> Proposal | None:
        self._proposals += 1
        cont, order = self.index.best(self._tail, min(self.max_draft_len, budget))
        length = self.acceptance.draft_length(self.costs, len(cont), order, probe=self._proposals % _PROBE_EVERY == 0)
        self._order = order if length else 0
        return Proposal(cont[:length], SOURCE_MEMORY) if length else None

    def observe(self, tree: TokenTree, verdict: Verdict, new_tokens: list[int]) -> None:
        self.acceptance.observe(tree, verdict.path, self._order, source=SOURCE_MEMORY)
        self._order = 0
        self._tail = (self._tail + new_tokens)[-_N_MAX:]
        self.output.extend(new_tokens)

    def profile_state(self) -> dict[str, Any]:
        """This call's addition to the step's memory: its output (the store merges it into the rest)."""
        out = self.output[: self.max_tokens]
        added = DraftMemory(
            max_tokens=self.max_tokens, outputs=[out] if out else [], acceptance=self.acceptance.to_dict()
        )
        return added.model_dump()


def read_memory(profile: Any) -> DraftMemory | None:
    """The draft memory a step profile holds, or None (absent, unreadable, or of another version)."""
    if profile is None:
        return None
    try:
        memory = DraftMemory.model_validate(profile)
    except ValidationError as exc:
        logger.debug("ignoring an unreadable draft memory (%s)", exc.errors()[:1])
        return None
    return memory if memory.version == DRAFT_MEMORY_VERSION else None
