"""The draft's output head over a vocabulary subset (:class:`DraftHead`).

Used by the layer-skip drafter for its drafts and by the layer-set search to score candidates as
they would draft; verification always uses the full head, so the output stays exact.
"""

from __future__ import annotations

import torch

from swift_engine.model.runner import ModelRunner


class DraftHead:
    """The draft's output head over a vocabulary subset (FR-Spec style).

    The head is never skipped and is a large share of a small model's step (SmolLM2, Qwen2.5-0.5B;
    figures: docs/bench/measurements.md#model). Drafting only needs a good guess, so it scores the
    tokens of the context plus the lowest token ids (BPE ids follow merge order, a proxy for
    frequency); verification uses the full head, so the output stays exact. The sub-matrix is
    gathered once per generation and only regathered when the context brings new tokens.
    """

    def __init__(self, runner: ModelRunner, base_size: int | None, context: list[int]) -> None:
        self.runner = runner
        v = runner.vocab_size
        self.full = base_size is None or base_size >= v
        self._member = torch.zeros(v, dtype=torch.bool)
        if base_size is not None and not self.full:
            self._member[:base_size] = True
            self._dirty = True
            self.add(context)

    @staticmethod
    def expected_share(vocab_size: int, base_size: int | None, context_tokens: int = 1024) -> float:
        """The share of the full head a draft step computes, for the cost model (before any context is seen)."""
        if base_size is None or base_size >= vocab_size:
            return 1.0
        return min(1.0, (base_size + context_tokens) / vocab_size)

    def add(self, tokens: list[int]) -> None:
        if self.full or not tokens:
            return
        t = torch.tensor(tokens, dtype=torch.long)
        t = t[(t >= 0) & (t < self._member.numel())]
        if not bool(self._member[t].all()):
            self._member[t] = True
            self._dirty = True

    def _refresh(self) -> None:
        if self._dirty:
            self.ids = self._member.nonzero().squeeze(-1).to(self.runner.device)
            self.head = self.runner.head_subset(self.ids)
            self._dirty = False

    def vocab(self) -> torch.Tensor | None:
        """The subset's token ids, up to date (``None``: the full vocabulary)."""
        if self.full:
            return None
        self._refresh()
        return self.ids

    def logits(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits over the subset, and the subset's token ids (``None``: the full vocabulary)."""
        if self.full:
            return self.runner.logits(hidden), None
        self._refresh()
        return self.runner.finish_logits(self.head(hidden)), self.ids
