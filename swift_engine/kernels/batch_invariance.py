"""Checks, on this machine, that the model's dense layers give a row the same bits in any pass.

Why: at bfloat16 or with int8 weights, exact greedy SWIFT needs a token's hidden states in a
verification pass of q rows to be bitwise those of a one-row step (one ulp flips near-ties; see
:mod:`swift_engine.kernels.row_attention`). Attention is made so by construction. Whether a matrix
product is depends on the kernel PyTorch picks for the row count, which differs between CPUs and
builds: measured here, ``F.linear`` in bfloat16 stopped being row-invariant past a few dozen rows,
and ``aten._weight_int8pack_mm`` held further (figures: docs/bench/measurements.md#kernels). So the
engine checks each distinct dense shape of the model (one of each, plus the output head) with random
rows at engine start, and caps its verification trees at the largest row count that held for every
shape up to it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

logger = logging.getLogger(__name__)


def _dense_layers(model: nn.Module, head: nn.Module) -> list[nn.Module]:
    """One dense layer per distinct (type, in, out) shape, and the output head."""
    seen: set[tuple[str, int, int]] = set()
    out: list[nn.Module] = []
    for module in model.modules():
        if not hasattr(module, "in_features") or not hasattr(module, "out_features"):
            continue
        key = (type(module).__name__, int(module.in_features), int(module.out_features))  # type: ignore[arg-type]
        if key not in seen or module is head:
            seen.add(key)
            out.append(module)
    return out


def invariant_rows(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    """The largest ``m <= len(x)`` such that ``fn(x[:k])`` equals ``fn`` row by row for every ``k <= m``."""
    single = torch.cat([fn(x[i : i + 1]) for i in range(x.shape[0])])
    for k in range(2, x.shape[0] + 1):
        if not torch.equal(fn(x[:k]), single[:k]):
            return k - 1
    return x.shape[0]


@torch.inference_mode()
def largest_invariant_rows(model: nn.Module, head: nn.Module, max_rows: int, dtype: torch.dtype) -> int:
    """How many rows a verification pass may have with every dense layer row-invariant (>= 1)."""
    gen = torch.Generator().manual_seed(0)
    rows = max_rows
    for layer in _dense_layers(model, head):
        x = torch.randn(max_rows, int(layer.in_features), generator=gen).to(dtype)  # type: ignore[arg-type]
        held = invariant_rows(layer, x)
        if held < rows:
            logger.info(
                "%s (%s in, %s out): row-invariant up to %d rows",
                type(layer).__name__,
                layer.in_features,
                layer.out_features,
                held,
            )
            rows = held
        if rows == 1:
            break
    return max(1, rows)
