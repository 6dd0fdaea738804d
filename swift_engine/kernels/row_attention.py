"""Attention whose result for a token does not depend on which other tokens share its pass.

Why: greedy SWIFT must give the tokens plain decoding gives. Plain decoding computes each new token
in a one-row pass; verification computes the same token as one row of a tree of 8-32. In float32 the
two agree to rounding and an argmax almost never flips; in bfloat16 (and with int8 weights) one ulp
is 0.4%, and on tiny models greedy generations diverged (figures:
docs/bench/measurements.md#kernels). The first operation that differed was attention: PyTorch's
fused kernel reduces over the keys in blocks whose layout depends on the number of query rows and on
where the tree's masked columns sit.

So, inside the engine's one-token and verification passes, each query row is attended
separately. Where swift's kernels are loaded (``native/row_attention.cpp``; inside
:func:`~swift_engine.kernels.quantize.native_products`), one call attends every row of a pass, each
over its own keys in a one-token step's order, with bits that do not depend on the other rows (so
a pass of 8 rows costs about what 2 one-row calls did). Otherwise each row is attended over exactly
the keys it may see, laid out exactly as a one-row pass would see them: its cached prefix, then its
own ancestors in the tree. The cache buffer already holds the prefix
contiguously; a row's ancestors are copied into the slots right after it (the tree's own entries
are put back afterwards), and the row is one ``scaled_dot_product_attention`` call on that view,
the same call, on the same data, in the same layout, as plain decoding makes. A chain of draft
tokens is already laid out that way and needs no copy.

The linears must be row-invariant too; :mod:`swift_engine.kernels.batch_invariance` checks them at engine
start. Prefill passes keep the fused kernel: cached and uncached prompts are prefilled in the same
blocks either way (``prefix_cache.py``).

This is an attention implementation registered with ``transformers`` under :data:`NAME`. Outside
a pass that turned it on it calls the model's original implementation, so other users of the
model (``model.generate``, a ``transformers`` baseline in another thread) compute as before.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from swift_engine.kernels.quantize import native_active

#: prefix of the names this implementation is registered under in ``transformers``' attention
#: registry: ``swift_rows_sdpa``, ``swift_rows_eager``..., one per original implementation, so that
#: ``transformers`` builds the masks the original expects for the passes this module hands back
NAME = "swift_rows"

#: config attribute keeping the implementation that was in place before :func:`install`
_ORIGINAL = "_swift_rows_original_attn"


@dataclass
class _Row:
    """One query row's visible keys: cached entries ``[start, past)``, then tree entries ``path``."""

    start: int
    path: list[int]
    #: visible columns when they are not of that shape (a gather; never in the engine's passes)
    columns: torch.Tensor | None = None


@dataclass
class _Pass:
    """Per-pass state: the row layouts of each mask tensor seen (one per attention layer type)."""

    rows: dict[int, tuple[list[_Row], bool]] = field(default_factory=dict)
    #: per mask and cache length: each row's keys as the native kernel takes them (index [q, L] int32, lengths [q])
    keys: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=dict)

    def key_lists(self, mask: torch.Tensor, past: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Row i's visible keys in a one-token step's order (its cached run, then its ancestors), or
        None where a row's keys are not of that shape (a gather: the Python path takes those)."""
        key = id(mask), past
        if key not in self.keys:
            rows, _ = self.layout(mask, past)
            if any(row.columns is not None for row in rows):
                self.keys[key] = None
            else:  # one tensor expression for all rows: per-row copies cost ~10 us each, a pass has up to 32
                starts = torch.tensor([row.start for row in rows], dtype=torch.int32)[:, None]  # [q, 1]
                paths = [row.path for row in rows]
                deepest = max(len(path) for path in paths)
                tree = torch.tensor([path + [0] * (deepest - len(path)) for path in paths], dtype=torch.int32)
                tree = tree.reshape(len(rows), deepest)  # [q, deepest]: row i's ancestors, then padding
                runs = past - starts  # [q, 1]: length of each row's cached run
                lengths = runs[:, 0] + torch.tensor([len(path) for path in paths], dtype=torch.int32)
                pos = torch.arange(int(lengths.max()), dtype=torch.int32)[None, :]  # [1, L]
                in_tree = (pos - runs).clamp_(0, max(deepest - 1, 0))  # [q, L]: column of the tree entry
                from_tree = tree.gather(1, in_tree.long()) + past if deepest else torch.zeros_like(in_tree)
                index = torch.where(pos < runs, starts + pos, from_tree)
                index = torch.where(pos < lengths[:, None], index, 0).to(torch.int32).contiguous()
                self.keys[key] = index, lengths.to(torch.int32)
        return self.keys[key]

    def layout(self, mask: torch.Tensor, past: int) -> tuple[list[_Row], bool]:
        """The rows of ``mask``, and whether any row needs tree entries moved (a branch off the chain)."""
        key = id(mask)
        found = self.rows.get(key)
        if found is None:
            rows = _layout(mask, past)
            moves = any(node != j for row in rows for j, node in enumerate(row.path))
            found = self.rows[key] = (rows, moves)
        return found


_ACTIVE: contextvars.ContextVar[_Pass | None] = contextvars.ContextVar("swift_row_attention", default=None)


def _layout(mask: torch.Tensor, past: int) -> list[_Row]:
    visible = mask[0, 0] == 0 if mask.dtype != torch.bool else mask[0, 0]
    visible = visible.cpu()  # [q, past + q]
    q = visible.shape[0]
    cached = visible[:, :past]
    counts = cached.sum(-1).tolist()  # per row: cached keys seen
    # first cached key per row (argmax takes the first maximum); past where a row sees none
    firsts = cached.to(torch.uint8).argmax(-1).tolist() if past else [past] * q
    tree = visible[:, past:].tolist()
    rows = []
    for i in range(q):
        start = firsts[i] if counts[i] else past
        if counts[i] == past - start:  # a contiguous run ending at the tree: the usual case
            rows.append(_Row(start, [j for j, seen in enumerate(tree[i]) if seen]))
        else:
            rows.append(_Row(start, [], visible[i].nonzero()[:, 0].to(mask.device)))
    return rows


def install(model: nn.Module) -> None:
    """Route ``model``'s attention through this module (idempotent; other passes are unchanged).

    transformers' classes look the name up in transformers' registries, so it is registered there; the
    engine's own classes (``model/llama_family.py``) look it up with :func:`attention_function`, and
    registering would import the modeling code they exist to spare.
    """
    config: Any = model.config
    if installed(model):
        return
    original = config._attn_implementation or "sdpa"
    name = f"{NAME}_{original}"
    if _registry_loaded():
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

        # registries map a name to a function: registering the same pair again changes nothing
        AttentionInterface.register(name, attention)
        if original in ALL_MASK_ATTENTION_FUNCTIONS:
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])
    setattr(config, _ORIGINAL, original)
    set_impl = getattr(model, "set_attn_implementation", None)
    if callable(set_impl):
        set_impl(name)
    else:  # the engine's own classes (and older transformers)
        config._attn_implementation = name


def _registry_loaded() -> bool:
    """Whether transformers' attention registry exists in this process (its model classes import it)."""
    return "transformers.modeling_utils" in sys.modules


def attention_function(name: str | None, eager: Callable[..., Any]) -> Callable[..., Any]:
    """The attention function registered as ``name`` (``eager``: the model's own), as transformers' registry
    gives it; where no transformers model class was imported, nothing can have been registered, so its
    built-in functions are taken directly, without importing its modeling code."""
    if name is not None and name.startswith(NAME):
        return attention  # what install() registers it as (an own model's install registers nothing)
    if _registry_loaded():
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        return ALL_ATTENTION_FUNCTIONS.get_interface(name, eager)  # type: ignore[arg-type,no-any-return]
    if name is None or name == "eager":
        return eager
    if name == "sdpa":
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward  # type: ignore[no-any-return]
    raise ValueError(f"attention implementation {name!r} needs transformers' model classes")


def installed(model: nn.Module) -> bool:
    return str(getattr(model.config, "_attn_implementation", None) or "").startswith(NAME)


@contextlib.contextmanager
def rows() -> Iterator[None]:
    """Attend row by row in this block's passes (this thread or task only)."""
    token = _ACTIVE.set(_Pass())
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active() -> bool:
    """Whether the calling context's passes attend row by row (inside :func:`rows`)."""
    return _ACTIVE.get() is not None


def key_lists(mask: torch.Tensor, past: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The rows' keys as the native kernel takes them (see ``_Pass.key_lists``); None outside :func:`rows`."""
    state = _ACTIVE.get()
    return None if state is None else state.key_lists(mask, past)


def _original(module: nn.Module) -> Callable[..., tuple[torch.Tensor, Any]]:
    name = getattr(module.config, _ORIGINAL, "sdpa")
    eager = sys.modules[type(module).__module__].eager_attention_forward
    return attention_function(name, eager)  # type: ignore[no-any-return]


def attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``transformers`` attention interface: ``[1, H, q, d]`` queries to ``[1, q, H, dv]`` outputs."""
    state = _ACTIVE.get()
    if state is None or attention_mask is None or query.shape[0] != 1 or kwargs.get("s_aux") is not None:
        return _original(module)(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, softcap=softcap, **kwargs
        )
    _, heads, q, dim = query.shape
    kv_heads, dv = key.shape[1], value.shape[-1]
    group = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    past = key.shape[2] - q
    if native_active() and softcap is None and _native_shapes(query, key, value):
        lists = state.key_lists(attention_mask, past)
        if lists is not None:  # swift's kernel: every row over its own keys in one call (rows_attention.cpp)
            index, lengths = lists
            rows_q = query[0].transpose(0, 1).contiguous()  # [q, H, d]
            out = torch.ops.swift_kernels.rows_attention(rows_q, key[0], value[0], index, lengths, scale)
            return out[None], None  # [1, q, H, dv]
    layout, moves = state.layout(attention_mask, past)
    if q == 1 and layout[0].columns is None:
        # a one-token step: the row's keys are the buffers' tail as they are (the general loop
        # below makes the same call; this skips its bookkeeping, a measurable share of a SmolLM2 int4
        # step: docs/bench/measurements.md#kernels)
        start = layout[0].start
        if softcap is None:  # _one_row's call on the same tensors, without its indexing
            qs = query.reshape(1, kv_heads, group, dim)
            step = nn.functional.scaled_dot_product_attention(qs, key[:, :, start:], value[:, :, start:], scale=scale)
        else:
            qi = query[0, :, 0].reshape(kv_heads, group, dim)
            step = _one_row(qi, key[0, :, start:], value[0, :, start:], scale, softcap)
        return step.reshape(1, 1, heads, dv), None
    out = query.new_empty(q, heads, dv)
    k, v = key[0], value[0]  # views of the cache buffers: [kv_heads, past + q, d]
    # the tree's own entries, kept aside only when some row's ancestors must be moved into place
    # (one-token steps and draft chains never move anything)
    tree_k, tree_v = (k[:, past:].clone(), v[:, past:].clone()) if moves else (k, v)
    placed = list(range(q))  # which tree entry each slot after ``past`` holds now
    for i, row in enumerate(layout):
        qi = query[0, :, i].reshape(kv_heads, group, dim)
        if row.columns is not None:
            keys, values = k.index_select(1, row.columns), v.index_select(1, row.columns)
        else:
            for j, node in enumerate(row.path):
                if placed[j] != node:  # only when ``moves``: tree_k is the copy then
                    k[:, past + j] = tree_k[:, node]
                    v[:, past + j] = tree_v[:, node]
                    placed[j] = node
            end = past + len(row.path)
            keys, values = k[:, row.start : end], v[:, row.start : end]
        out[i] = _one_row(qi, keys, values, scale, softcap).reshape(heads, dv)
    moved = [j for j, node in enumerate(placed) if node != j]
    if moved:
        slots = torch.tensor(moved, device=key.device)
        k[:, past + slots] = tree_k[:, slots]
        v[:, past + slots] = tree_v[:, slots]
    return out[None], None


def _native_shapes(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether swift's row-attention kernel takes these tensors (bfloat16, head dims multiples of 16).

    A constant of the model, so every pass of a layer takes the same path (the kernel's bits are
    its own: a step and a verification row must not mix the two).
    """
    return (
        query.dtype == key.dtype == value.dtype == torch.bfloat16
        and query.device.type == "cpu"
        and query.shape[-1] % 16 == 0
        and value.shape[-1] % 16 == 0
        and query.shape[-1] <= 256
        and value.shape[-1] <= 256
        and key.stride(-1) == 1
        and value.stride(-1) == 1
    )


def _one_row(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, softcap: float | None) -> torch.Tensor:
    """One token's attention, its query heads grouped by key head: ``[kv_heads, group, d]``."""
    if softcap is None:
        return nn.functional.scaled_dot_product_attention(q[None], k[None], v[None], scale=scale)[0]
    scores = torch.matmul(q, k.transpose(1, 2)) * scale
    scores = torch.tanh(scores / softcap) * softcap
    return torch.matmul(torch.softmax(scores.float(), -1).to(q.dtype), v)
