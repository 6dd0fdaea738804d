"""What a draft step and a verification pass cost on *this* hardware, and what that implies.

SWIFT's value is a ratio of costs: on a GPU a 7B model verifies 30 tokens for the price of one,
on 2 CPU cores a 135M model pays ~1.5x for 8. The search's objective (expected speed-up) and the
draft length are computed from costs measured once per engine, not assumed.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .runner import ModelRunner

logger = logging.getLogger(__name__)

_VERIFY_SIZES = (1, 2, 4, 8, 16, 32)


@dataclass
class CostModel:
    """Seconds per forward pass: verification of ``q`` tokens, and a draft step by skip ratio."""

    verify_s: dict[int, float] = field(default_factory=dict)
    #: draft step cost at skip ratio 0 and 0.5 (linear in between and beyond)
    draft_s_at: dict[float, float] = field(default_factory=dict)
    #: the output head's share of a one-token step (it is never skipped)
    head_s: float = 0.0
    #: real verification passes seen by this engine: size bucket -> (mean seconds, count); not persisted
    observed: dict[int, tuple[float, int]] = field(default_factory=dict)
    #: share of the full head a draft step computes (drafts score a vocabulary subset); set by the engine
    draft_head_share: float = 1.0

    def __post_init__(self) -> None:
        self.verify_s = _monotone(self.verify_s)

    @property
    def plain_s(self) -> float:
        return self.verify_s[1]

    def verify(self, q: int) -> float:
        """Seconds to verify ``q`` tokens.

        The synthetic measurement (a short context, a causal mask) is corrected by what real
        verification passes cost relative to real one-token steps, once both were seen a few times:
        at a real context length, with a tree mask, small batches can cost nearly what 16 tokens do.
        """
        base = self._measured(q)
        if q > 1 and self.observed:
            b = min((s for s in _VERIFY_SIZES if s >= q), default=_VERIFY_SIZES[-1])
            one, nb = self.observed.get(1, (0.0, 0)), self.observed.get(b, (0.0, 0))
            if one[1] >= 4 and nb[1] >= 2 and one[0] > 0:
                seen = nb[0] / one[0]  # observed cost of this size, in one-token steps
                return max(base, self.verify_s[1] * seen)
        return base

    def _measured(self, q: int) -> float:
        sizes = sorted(self.verify_s)
        if q <= sizes[0]:
            return self.verify_s[sizes[0]]
        for a, b in zip(sizes, sizes[1:]):
            if q <= b:
                w = (q - a) / (b - a)
                return self.verify_s[a] * (1 - w) + self.verify_s[b] * w
        a, b = sizes[-2], sizes[-1]
        return self.verify_s[b] + (q - b) * (self.verify_s[b] - self.verify_s[a]) / (b - a)

    def draft(self, ratio: float) -> float:
        """Seconds of one draft step at this skip ratio.

        The measured steps computed the full output head; a draft computes only its vocabulary
        subset, which on a large-vocabulary model is most of the difference (Qwen2.5-0.5B: the
        head is a quarter of a step, the subset a twentieth of the head).
        """
        c0, c5 = self.draft_s_at[0.0], self.draft_s_at[0.5]
        head = self.head_s * self.draft_head_share
        return max(head, c0 + (c5 - c0) * (ratio / 0.5) - (self.head_s - head))

    def expected_speedup(self, score: float, ratio: float, max_draft: int) -> tuple[float, int]:
        """Best expected speed-up over plain decoding for per-token acceptance ``score``, and its draft length.

        A chain of ``L`` drafts accepted token-by-token with probability ``a`` yields
        ``(1 - a^(L+1)) / (1 - a)`` tokens (the bonus included) for ``L`` draft steps and one
        verification of ``L + 1`` tokens.
        """
        a = min(max(score, 0.0), 0.999)
        best, best_len = 0.0, 1
        cd = self.draft(ratio)
        for length in range(1, max_draft + 1):
            tokens = (1 - a ** (length + 1)) / (1 - a)
            cost = length * cd + self.verify(length + 1)
            s = tokens * self.plain_s / cost
            if s > best:
                best, best_len = s, length
        return best, best_len

    def best_copy_length(self, first: float, cont: float, max_len: int) -> tuple[float, int]:
        """Best expected speed-up of a free (context) draft, and its length.

        ``first``: probability that the first drafted token is accepted; ``cont``: that each later
        one is, given the ones before were. ``L`` drafted tokens then yield
        ``1 + first * (1 - cont^L) / (1 - cont)`` tokens for one verification of ``L + 1``.
        """
        a = min(max(cont, 0.0), 0.999)
        best, best_len = 0.0, 1
        for length in range(1, max_len + 1):
            tokens = 1 + first * (1 - a**length) / (1 - a)
            s = tokens * self.plain_s / self.verify(length + 1)
            if s > best:
                best, best_len = s, length
        return best, best_len

    def observe_verify(self, q: int, seconds: float) -> None:
        """Learn from a real verification pass of ``q`` tokens (see :meth:`verify`)."""
        b = min((s for s in _VERIFY_SIZES if s >= q), default=_VERIFY_SIZES[-1])
        mean, n = self.observed.get(b, (seconds, 0))
        self.observed[b] = (mean + (seconds - mean) / min(n + 1, 20), n + 1)  # running mean, then a slow EMA

    def to_dict(self) -> dict[str, Any]:
        return {"verify_s": self.verify_s, "draft_s_at": self.draft_s_at, "head_s": self.head_s}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CostModel":
        return cls(
            verify_s={int(k): float(v) for k, v in d["verify_s"].items()},
            draft_s_at={float(k): float(v) for k, v in d["draft_s_at"].items()},
            head_s=float(d["head_s"]),
        )


def _monotone(verify_s: dict[int, float]) -> dict[int, float]:
    """Verification times made non-decreasing in the number of tokens.

    Timing noise only ever adds time, so where verifying ``q`` tokens measured slower than
    verifying more, the larger batch's time is the better estimate for ``q`` (seen on 2 busy CPU
    cores: 93 ms for 2 tokens, 85 ms for 4).
    """
    out, floor = {}, float("inf")
    for q in sorted(verify_s, reverse=True):
        floor = min(floor, verify_s[q])
        out[q] = floor
    return dict(sorted(out.items()))


def _time(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - t)
    # the minimum, not the median: other processes on the machine only ever add time
    return min(samples)


@torch.inference_mode()
def measure_costs(runner: ModelRunner, context: int = 128, reps: int = 7) -> CostModel:
    """Time the passes the decoder will make, on a synthetic context (a few seconds, once)."""
    from .layer_skip import default_skip_set

    t0 = time.perf_counter()
    device = runner.device
    ctx = min(context, (runner.context_length or 4096) // 2)
    ids = torch.randint(0, runner.vocab_size, (ctx + 64,), device=device)
    cache = runner.new_cache()
    runner.forward(cache, ids[:ctx], torch.arange(ctx, device=device), last_only=True)
    model = CostModel()

    def step(q: int) -> Callable[[], None]:
        def run() -> None:
            runner.forward(cache, ids[ctx : ctx + q], torch.arange(ctx, ctx + q, device=device))
            cache.truncate(ctx)

        return run

    for q in _VERIFY_SIZES:
        model.verify_s[q] = _time(step(q), reps)
    model.verify_s = _monotone(model.verify_s)
    h = torch.zeros(1, runner.lm_head.weight.shape[1], device=device, dtype=runner.dtype)
    model.head_s = _time(lambda: runner.logits(h), reps)
    model.draft_s_at[0.0] = model.verify_s[1]
    att, mlp = default_skip_set(runner.num_layers, 0.5)
    with runner.skipper.skipping(frozenset(att), frozenset(mlp)):
        model.draft_s_at[0.5] = _time(step(1), reps)
    logger.info(
        "measured costs in %.1fs: step %.1f ms, verify 8 %.1f ms, draft@0.5 %.1f ms, head %.1f ms",
        time.perf_counter() - t0,
        1e3 * model.verify_s[1],
        1e3 * model.verify_s[8],
        1e3 * model.draft_s_at[0.5],
        1e3 * model.head_s,
    )
    return model


def cost_file(directory: Path, fingerprint: str, runner: ModelRunner) -> Path:
    """Where the measured costs of this model on this device, dtype and thread count are kept."""
    dev = f"{runner.device.type}{runner.device.index or 0}"
    dtype = str(runner.dtype).split(".")[-1]
    kernels = "" if runner.kernels == "torch" else f"-{runner.kernels}"
    return directory / "_costs" / f"{fingerprint}-{dev}-{dtype}{kernels}-t{torch.get_num_threads()}.json"


def load_or_measure(path: Path | None, runner: ModelRunner) -> CostModel:
    """Costs from ``path`` when measured before on this setup, else measured now and saved there."""
    if path is not None and path.exists():
        try:
            return CostModel.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable cost file %s (%s); measuring again", path, exc)
    model = measure_costs(runner)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".costs-")
            with os.fdopen(fd, "w") as f:
                json.dump(model.to_dict(), f)
            os.replace(tmp, path)
        except OSError as exc:  # a read-only store must not break generation
            logger.warning("could not save measured costs to %s: %s", path, exc)
    return model
