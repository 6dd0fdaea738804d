"""Turning logits into the target distribution, and drawing from it.

Speculative decoding preserves the distribution that *this* function defines, so the drafting
and the plain baseline both go through it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

#: Temperatures below this are greedy decoding: dividing logits by less overflows them to inf (a
#: 1e-40 temperature gave NaN probabilities), and the distribution is one-hot well before it anyway.
MIN_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if not (0.0 <= self.temperature < float("inf")):  # NaN fails too
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.temperature < MIN_TEMPERATURE:
            object.__setattr__(self, "temperature", 0.0)  # greedy, the same in-process and over HTTP
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Probabilities after temperature, top-k and top-p (nucleus), row-wise over ``[..., V]``."""
    logits = logits.float() / params.temperature
    if params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token is always kept)
        cum = torch.cumsum(sorted_p, dim=-1)
        drop_sorted = (cum - sorted_p) >= params.top_p
        # explicitly: a top_p below float32's range (1e-80) compares as 0.0, which 0 (the first token's
        # mass before it) reaches -- every token dropped, NaN probabilities
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    return int(torch.multinomial(probs, 1, generator=generator).item())


def call_generator(params: SamplingParams, seed: int | None, device: torch.device) -> torch.Generator | None:
    """A sampled call's own generator (``seed``, else a fresh random one); None when greedy."""
    if params.greedy:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else random.SystemRandom().randrange(2**63))
    return generator


def pick(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token from ``logits`` ``[vocab]``: the argmax, or a draw from :func:`target_probs`."""
    return int(logits.argmax().item()) if params.greedy else sample(target_probs(logits, params), generator)
