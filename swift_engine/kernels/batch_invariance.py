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

import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from swift_engine.store.safe_files import loads_strict_json, read_regular_file, write_file_atomic

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


_MAX_VERDICT_BYTES = 16 * 1024


class RowsVerdict(BaseModel):
    """A kept row-invariance check: up to how many rows it checked, and how many held."""

    model_config = ConfigDict(extra="forbid")

    version: int = 1
    #: what the verdict depends on besides the model, in words (the file name holds its digest)
    machine: str = ""
    checked_rows: int = Field(ge=1)
    invariant_rows: int = Field(ge=1)


def kept_invariant_rows(path: Path | None, max_rows: int, machine: str, check: Callable[[int], int]) -> int:
    """``check(max_rows)``, or the verdict kept in ``path`` when it covered ``max_rows`` rows or more.

    Why a file: the check runs each distinct layer shape up to ``max_rows`` times (a second or so of a
    second process's first call on a 0.5B model), and its result is a constant of the model, the
    kernels' build and the machine, all in ``path``'s name. Read like every file the store reads
    (no symbolic link, size-capped, validated); an unusable one is checked again and overwritten.
    """
    if path is not None:
        try:
            kept = RowsVerdict.model_validate(loads_strict_json(read_regular_file(path, _MAX_VERDICT_BYTES)))
            if kept.checked_rows >= max_rows and kept.invariant_rows <= kept.checked_rows:
                return max(1, min(kept.invariant_rows, max_rows))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, ValidationError) as exc:
            logger.warning("ignoring unusable row-invariance file %s (%s); checking again", path, exc)
    rows = check(max_rows)
    if path is not None:
        verdict = RowsVerdict(machine=machine, checked_rows=max_rows, invariant_rows=rows)
        try:
            write_file_atomic(path, json.dumps(verdict.model_dump()).encode(), follow_parent_symlink=False)
        except OSError as exc:  # a read-only store costs the next process a check, nothing else
            logger.warning("could not keep the row-invariance verdict in %s: %s", path, exc)
    return rows
