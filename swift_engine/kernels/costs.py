"""What a draft step and a verification pass cost on *this* hardware, and what that implies.

SWIFT's value is a ratio of costs: on a GPU a 7B model verifies many tokens for the price of one,
while on 2 CPU cores a 135M model pays markedly more for a few (figures:
docs/bench/measurements.md#kernels). The search's objective (expected speed-up) and the draft length
are computed from costs measured once per engine, not assumed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from swift_engine.kernels.machine import cache_root, cpu_key
from swift_engine.model.runner import ModelRunner
from swift_engine.store.records import validate_fingerprint
from swift_engine.store.safe_files import loads_strict_json, read_regular_file, write_file_atomic

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
        subset, which on a large-vocabulary model is most of the difference (Qwen2.5-0.5B; figures:
        docs/bench/measurements.md#kernels).
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
        """Costs from their saved form, validated: a cost file is read from disk, so it is untrusted.

        Raises:
            ValueError: if a cost is missing, not a positive finite number, or not usable by
                :meth:`verify` and :meth:`draft` (see :class:`_CostFile`).
        """
        try:
            data = _CostFile.model_validate(d)
        except ValidationError as exc:
            errors = exc.errors()
            if not errors:
                raise ValueError(f"invalid cost file content: {exc}") from None
            where = ".".join(str(part) for part in errors[0]["loc"]) or "<root>"
            raise ValueError(f"invalid cost file content: {where}: {errors[0]['msg']}") from None
        return cls(verify_s=dict(data.verify_s), draft_s_at=dict(data.draft_s_at), head_s=data.head_s)


#: Seconds of one measured pass: positive and finite (a zero or infinite cost breaks every ratio).
_Seconds = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
#: Largest verification size a cost file may name (a verification tree is at most 512 tokens).
_MAX_VERIFY_SIZE = 4096
#: Largest cost file read; a real one is a few hundred bytes.
_MAX_COST_FILE_BYTES = 64 * 1024


class _CostFile(BaseModel):
    """What a cost file must hold for :class:`CostModel` to work on it mid-generation.

    ``verify_s`` interpolates and extrapolates between sizes, so it needs the one-token cost and at
    least one more size; ``draft`` interpolates between skip ratios 0 and 0.5.
    """

    model_config = ConfigDict(extra="ignore")

    verify_s: dict[Annotated[int, Field(ge=1, le=_MAX_VERIFY_SIZE)], _Seconds] = Field(max_length=64)
    draft_s_at: dict[Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)], _Seconds] = Field(max_length=64)
    head_s: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]

    @field_validator("verify_s")
    @classmethod
    def _verify_sizes(cls, value: dict[int, float]) -> dict[int, float]:
        if 1 not in value or len(value) < 2:
            raise ValueError(f"needs the cost of 1 token and of at least one more size, got sizes {sorted(value)}")
        return value

    @field_validator("draft_s_at")
    @classmethod
    def _draft_ratios(cls, value: dict[float, float]) -> dict[float, float]:
        if 0.0 not in value or 0.5 not in value:
            raise ValueError(f"needs the draft cost at skip ratios 0.0 and 0.5, got {sorted(value)}")
        return value


def _monotone(verify_s: dict[int, float]) -> dict[int, float]:
    """Verification times made non-decreasing in the number of tokens.

    Timing noise only ever adds time, so where verifying ``q`` tokens measured slower than
    verifying more, the larger batch's time is the better estimate for ``q`` (seen on 2 busy CPU
    cores, 2 tokens slower than 4: docs/bench/measurements.md#kernels).
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


def synthetic_passes(runner: ModelRunner, context: int, max_rows: int) -> Callable[..., Callable[[], None]]:
    """``pass_of(q, tree=True)``: a forward pass of ``q`` tokens after a cached random ``context``-token prompt.

    The prompt is cached once; each pass is rewound, so every timed pass sees the same context.
    What :func:`measure_costs` and the kernel measurement (``kernel_choice.py``) time.
    """
    device = runner.device
    ids = torch.randint(0, runner.vocab_size, (context + max_rows,), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    cache = runner.new_cache()
    runner.forward(cache, ids[:context], torch.arange(context, device=device), last_only=True)

    def pass_of(rows: int, tree: bool = True) -> Callable[[], None]:
        # a chain, as verification passes it: the same attention path (row by row when row_invariant);
        # ``tree=False``: a prompt block (causal, fused attention, the prompt-block kernel)
        chain = torch.ones(rows, rows, dtype=torch.bool, device=device).tril_() if rows > 1 and tree else None

        def run() -> None:
            positions = torch.arange(context, context + rows, device=device)
            # a prompt block needs no logits (the engine takes the head over its last rows only)
            runner.forward(cache, ids[context : context + rows], positions, chain, last_only=not tree)
            cache.truncate(context)

        return run

    return pass_of


@torch.inference_mode()
def measure_costs(runner: ModelRunner, context: int = 128, reps: int = 7) -> CostModel:
    """Time the passes the decoder will make, on a synthetic context (a few seconds, once)."""
    from swift_engine.model.sublayer_skip import default_skip_set

    t0 = time.perf_counter()
    device = runner.device
    step = synthetic_passes(runner, min(context, (runner.context_length or 4096) // 2), max(_VERIFY_SIZES))
    model = CostModel()

    for q in _VERIFY_SIZES:
        model.verify_s[q] = _time(step(q), reps)
    model.verify_s = _monotone(model.verify_s)
    h = torch.zeros(1, runner.hidden_size, device=device, dtype=runner.dtype)
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


#: When set, the folder that keeps this machine's measurements (see :func:`measurement_dir`).
MEASUREMENT_DIR_ENV = "SWIFT_MEASUREMENT_DIR"


def measurement_dir() -> Path:
    """Where this machine's measurements (pass costs, kernel choice, row verdicts) are kept, for every engine.

    They describe the machine and the model, not the learned profiles, so they are measured once per machine
    whatever profile store an engine uses (a notebook's scratch store, a server's ``--profile-dir``): the
    machine's cache (:func:`~swift_engine.kernels.machine.cache_root`, ``measurements``), or
    ``$SWIFT_MEASUREMENT_DIR``. Every file in it is keyed by the model's fingerprint and this CPU, so a folder
    shared between machines (a network home folder) never lends one machine's figures to another.
    """
    shared = os.environ.get(MEASUREMENT_DIR_ENV)
    return Path(shared).expanduser() if shared else cache_root() / "measurements"


def cost_file(directory: Path, fingerprint: str, runner: ModelRunner) -> Path:
    """Where the measured costs of this model on this CPU (:func:`~swift_engine.kernels.machine.cpu_key`),
    device, dtype, kernels and thread count are kept: a store shared with or copied from another machine
    never lends it that machine's costs."""
    validate_fingerprint(fingerprint)  # it becomes part of a file name
    dev = f"{runner.device.type}{runner.device.index or 0}"
    dtype = str(runner.dtype).split(".")[-1]
    kernels = "" if runner.kernels == "torch" else f"-{runner.kernels}"
    threads = torch.get_num_threads()
    return directory / "_costs" / f"{fingerprint}-{dev}-{dtype}{kernels}-t{threads}-{cpu_key()}.json"


def load_or_measure(path: Path | None, runner: ModelRunner) -> CostModel:
    """Costs from ``path`` when measured before on this setup, else measured now and saved there.

    The file is read like a profile record (no symbolic link followed, never blocking on a FIFO, at
    most 64 KiB) and validated; one that is unusable is measured again and overwritten, because a
    bad cost file must cost a measurement, never a generation call.
    """
    if path is not None:
        try:
            return CostModel.from_dict(_loads_cost_file(read_regular_file(path, _MAX_COST_FILE_BYTES)))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unusable cost file %s (%s); measuring again", path, exc)
    model = measure_costs(runner)
    if path is not None:
        try:
            # the cost folder lives inside the profile store, whose links are never followed
            write_file_atomic(path, json.dumps(model.to_dict()).encode("utf-8"), follow_parent_symlink=False)
        except OSError as exc:  # a read-only store must not break generation
            logger.warning("could not save measured costs to %s: %s", path, exc)
    return model


def _loads_cost_file(raw: bytes) -> dict[str, Any]:
    data = loads_strict_json(raw)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, found {type(data).__name__}")
    return data
