"""Context drafts: continuations copied from earlier in the context (prompt-lookup decoding).

RAG answers, summaries, code edits and tool calls copy long spans of their context. Finding the
last few tokens earlier in the context and proposing what followed costs no model pass at all,
so on those tasks it drafts for free what the layer-skipped model would pay for. The index is
incremental: each committed token updates it in O(n_max).
"""

from __future__ import annotations

from collections import defaultdict


class NgramIndex:
    """Positions of every n-gram (``n_min..n_max``) of a growing token sequence."""

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
