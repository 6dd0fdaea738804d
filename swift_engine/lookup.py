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

    def candidates(self, max_len: int, max_matches: int = 3) -> list[list[int]]:
        """Continuations of the sequence's latest tokens found earlier, longest match first.

        Returns up to ``max_matches`` distinct continuations of at most ``max_len`` tokens each.
        Matches of the longest available n-gram are preferred (more context agreeing means a
        likelier copy); among them, the most recent first.
        """
        if max_len <= 0:
            return []
        out: list[list[int]] = []
        seen: set[tuple[int, ...]] = set()
        cur_end = len(self.tokens)  # the suffix's own occurrence is not a match
        for n in range(min(self.n_max, cur_end - 1), self.n_min - 1, -1):
            ends = self._ends.get(tuple(self.tokens[-n:]))
            if not ends:
                continue
            for end in reversed(ends):
                if end == cur_end:
                    continue
                cont = self.tokens[end : end + max_len]
                if not cont:
                    continue
                key = tuple(cont[:4])
                if key in seen:
                    continue
                seen.add(key)
                out.append(cont)
                if len(out) >= max_matches:
                    return out
            if out:
                return out
        return out
