"""Decoding passes of weight-only llama-style models as one call: bitwise the Python loop.

Why: at 135M parameters a one-token step is about 3500 small PyTorch ops, and the cost of each
(Python, dispatch, allocation) adds up to as much as the products. :mod:`swift_engine.model.fast_forward`
already calls the same ops the ``transformers`` modules would, in the same order; here the decoder
layers of a pass are one call that computes the same values, in one of two forms:

* on swift's kernels (``native_products``; attention row by row, as weight-only precisions always
  are): ``torch.ops.swift_kernels.decoder_layers`` (kernels/native/decoder_layers.cpp), the whole
  stack in C++ with the small elementwise ops fused -- one-token steps, drafts' steps with skipped
  sublayers (a skipped sublayer adds zeros and writes no cache entries, so layers may hold
  different numbers of entries), and verification trees, each row over its own keys;
* on PyTorch's kernels: :func:`_layers`, the same sequence of ATen calls as a TorchScript function
  (the interpreter between the ops is C++), for one-row passes over a cache whose layers all hold
  the same number of entries (the one-row SDPA call); several rows or uneven layers keep the Python
  loop there.

Both give the Python loop's and the modules' bits (``tests/test_scripted_step.py``;
``tests/test_low_precision.py`` checks tree rows against these steps). They apply to weight-only
int8 or int4 layers throughout, q/k/v stacked (:class:`~swift_engine.kernels.quantize.FusedProduct`),
no bias but on q/k/v, a SiLU-gated MLP, RMSNorms of the llama family, no sliding window; everything
else keeps :class:`~swift_engine.model.fast_forward.FastDecoder`'s loop. Figures:
docs/bench/measurements.md#model.

TorchScript is deprecated in recent PyTorch (2.13 warns when scripting). The function is scripted
once per process when the first such model is loaded (a one-time cost:
docs/bench/measurements.md#model), with that warning silenced; if scripting fails (a PyTorch without
it), the Python loop is used and the log says so.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable
from typing import Any, cast

import torch

from swift_engine.kernels import row_attention
from swift_engine.kernels.native_build import declare_native_ops
from swift_engine.kernels.quantize import (
    INT4_GROUP,
    FusedProduct,
    Int4Linear,
    int8_native_fits,
    kernel_operands,
    native_active,
)
from swift_engine.model.kv_cache import SwiftKVCache

logger = logging.getLogger(__name__)

#: norm classes whose forward is ``weight * (h * rsqrt(mean(h^2) + eps)).to(dtype)`` with ``h`` in float32
#: (``RMSNorm``: model/llama_family.py's)
RMS_NORMS = frozenset({"LlamaRMSNorm", "Qwen2RMSNorm", "MistralRMSNorm", "RMSNorm"})


#: ``kind`` of :func:`_product`: which kernel a scripted step's products run on
INT8, INT4, INT8_NATIVE, INT4_NATIVE = 0, 1, 2, 3


def _product(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, kind: int, group: int) -> torch.Tensor:
    """The weight-only kernel's product, as ``Int4Linear``/``Int8Linear`` compute it (scripted with ``_layers``).

    The native kinds are :func:`~swift_engine.kernels.quantize.int4_product` and ``int8_product``
    inside ``native_products`` (the scripted step takes int8 layers only where all fit the kernel).
    """
    if kind == 3:
        return torch.ops.swift_kernels.int4_mm(x, weight, group, scales)
    if kind == 2:
        return torch.ops.swift_kernels.int8_mm(x, weight, scales)
    if kind == 1:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, weight, group, scales)
    return torch.ops.aten._weight_int8pack_mm(x, weight, scales)


def _layers(
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    norm_weights: list[torch.Tensor],
    norm_eps: list[float],
    weights: list[torch.Tensor],
    scales: list[torch.Tensor],
    qkv_bias: list[torch.Tensor],
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    lengths: list[int],
    skip_attention: list[bool],
    skip_mlp: list[bool],
    q_heads: int,
    kv_heads: int,
    head_dim: int,
    scaling: float,
    kind: int,
    group: int,
) -> torch.Tensor:
    """The decoder layers of ``q`` tokens (``hidden``: ``[q, H]``), writing layer ``i``'s keys and values
    after its ``lengths[i]`` cached entries, its sublayers skipped where ``skip_attention``/``skip_mlp`` say.

    Op for op what ``FastDecoder.__call__`` runs for such a pass (norm, stacked q/k/v, the heads'
    views, q and k rotated together, the cache write, ``row_attention``'s one-row SDPA call, o_proj,
    the residual, norm, the gated MLP, the residual; a skipped sublayer adds zeros and writes no
    cache entries, as the layer-skip wrapper does). ``decoder_layers.cpp`` computes these same
    operations, with attention over each row's own keys (``rows_index[r, :rows_lengths[i][r]]``,
    its two last operands). Per layer ``i``: ``weights``/``scales`` hold q/k/v, o, gate, up, down at
    ``5 i .. 5 i + 4``; ``norm_weights``/``norm_eps`` the two norms at ``2 i, 2 i + 1``.
    """
    cos_heads = cos.unsqueeze(1)
    sin_heads = sin.unsqueeze(1)
    half = head_dim // 2
    q = hidden.shape[0]
    for i in range(len(keys)):
        w = 5 * i
        if skip_attention[i]:
            hidden = hidden + torch.zeros_like(hidden)
        else:
            length = lengths[i]
            h = hidden.to(torch.float32)
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm_eps[2 * i])
            x = norm_weights[2 * i] * h.to(hidden.dtype)
            y = _product(x, weights[w], scales[w], kind, group)
            if len(qkv_bias) > 0:
                y = y + qkv_bias[i]
            heads = y.view(1, q, -1, head_dim).transpose(1, 2).split([q_heads + kv_heads, kv_heads], 1)
            qk = heads[0]
            qk = (qk * cos_heads) + (torch.cat((-qk[..., half:], qk[..., :half]), -1) * sin_heads)
            query_key = qk.split([q_heads, kv_heads], 1)
            keys[i][:, :, length : length + q] = query_key[1]
            values[i][:, :, length : length + q] = heads[1]
            query = query_key[0].reshape(1, kv_heads, q_heads // kv_heads, head_dim)
            attended = torch.nn.functional.scaled_dot_product_attention(
                query, keys[i][:, :, : length + 1], values[i][:, :, : length + 1], scale=scaling
            )
            attended = attended.reshape(q, -1).contiguous()
            hidden = hidden + _product(attended, weights[w + 1], scales[w + 1], kind, group)
        if skip_mlp[i]:
            hidden = hidden + torch.zeros_like(hidden)
        else:
            h = hidden.to(torch.float32)
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm_eps[2 * i + 1])
            x = norm_weights[2 * i + 1] * h.to(hidden.dtype)
            gate = _product(x, weights[w + 2], scales[w + 2], kind, group)
            up = _product(x, weights[w + 3], scales[w + 3], kind, group)
            hidden = hidden + _product(torch.nn.functional.silu(gate) * up, weights[w + 4], scales[w + 4], kind, group)
    return hidden


@functools.cache
def _scripted() -> Callable[..., torch.Tensor] | None:
    """``_layers`` compiled by TorchScript, once per process; None where that fails."""
    try:
        declare_native_ops()  # the script names swift's int4 op: it must be declared, loaded or not
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated in 2.13
            return torch.jit.script(_layers)  # type: ignore[no-any-return]
    except Exception as exc:  # noqa: BLE001 - any failure means: keep the Python loop
        logger.info("one-token steps stay in Python: TorchScript could not compile them (%s)", exc)
        return None


class ScriptedStep:
    """The decoder layers of one model's passes as one call (see the module docstring)."""

    def __init__(
        self,
        layers: list[Any],
        qkv: list[FusedProduct],
        weights: list[torch.Tensor],
        scales: list[torch.Tensor],
        int4: bool,
        native_weights: list[torch.Tensor],
    ) -> None:
        attn = layers[0].self_attn
        self._norm_weights = [
            n.weight for layer in layers for n in (layer.input_layernorm, layer.post_attention_layernorm)
        ]
        self._norm_eps = [
            float(n.variance_epsilon)
            for layer in layers
            for n in (layer.input_layernorm, layer.post_attention_layernorm)
        ]
        self._weights, self._scales, self._int4 = weights, scales, int4
        #: what swift's kernel reads: int8 layers' tiles where they have them (int8_tiles.py), else ``weights``
        self._native_weights = native_weights
        self._no_index = torch.zeros(0, dtype=torch.int32)
        biases = [p.bias for p in qkv]
        self._qkv_bias = [b for b in biases if b is not None]
        self._q_heads, self._kv_heads = (n // attn.head_dim for n in qkv[0].sizes[:2])
        self._head_dim, self._scaling = int(attn.head_dim), float(attn.scaling)
        # row_attention._native_shapes for this model's attention (bfloat16 activations here)
        self._native_attention = self._head_dim % 16 == 0 and self._head_dim <= 256
        # whether swift's int8 kernel takes every product (int4's takes all); checked once, not per step
        self._native_products = int4 or all(int8_native_fits(w) for w in weights)
        self._layers = len(layers)

    @classmethod
    def for_decoder(cls, config: Any, layers: list[Any], qkv: list[FusedProduct | None]) -> ScriptedStep | None:
        """A scripted step for these layers, or None where it does not apply (see the module docstring)."""
        if getattr(config, "sliding_window", None) is not None or getattr(config, "hidden_act", None) != "silu":
            return None
        if any(t != "full_attention" for t in (getattr(config, "layer_types", None) or [])):
            return None
        stacked = [p for p in qkv if p is not None]
        if len(stacked) != len(layers) or not layers:
            return None
        kinds = {type(p.linears[0]) for p in stacked}
        if len(kinds) != 1 or len({p.bias is None for p in stacked}) != 1:
            return None
        int4 = kinds == {Int4Linear}
        weights: list[torch.Tensor] = []
        native_weights: list[torch.Tensor] = []
        scales: list[torch.Tensor] = []
        for layer, fused in zip(layers, stacked, strict=True):
            if not all(type(n).__name__ in RMS_NORMS for n in (layer.input_layernorm, layer.post_attention_layernorm)):
                return None
            mlp = layer.mlp
            linears = [layer.self_attn.o_proj] + [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
            products = [kernel_operands(m) for m in linears]
            natives = [kernel_operands(m, native=True) for m in linears]  # int8: their tiles, where packed
            if any(p is None for p in products) or any((type(m) is Int4Linear) != int4 for m in linears):
                return None
            weights.append(fused.weight)
            native_weights.append(fused.weight if fused.tiles is None else fused.tiles)
            scales.append(fused.scales)
            for product, native in zip(products, natives, strict=True):
                assert product is not None and native is not None
                weights.append(product[0])
                native_weights.append(native[0])
                scales.append(product[1])
        if _scripted() is None:
            return None
        logger.info("decoder passes of this %s model run as one call", "int4" if int4 else "int8")
        return cls(layers, stacked, weights, scales, int4, native_weights)

    def _kinds(self) -> tuple[int, bool] | None:
        """This call's product kernel and whether attention is native (inside ``native_products``);
        None where the script cannot match the engine's other passes.

        Each layer must take one path in every pass: inside ``native_products`` an int8 layer the
        native kernel does not take keeps aten's while the others go native, which one ``kind``
        cannot say, so such models step in Python there; attention is native as row_attention.py
        decides it.
        """
        if not native_active():
            return (INT4 if self._int4 else INT8), False
        if not self._native_products:
            return None
        return (INT4_NATIVE if self._int4 else INT8_NATIVE), self._native_attention

    def __call__(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: SwiftKVCache,
        mask: torch.Tensor | None = None,
        skipped: tuple[frozenset[int], frozenset[int]] = (frozenset(), frozenset()),
    ) -> torch.Tensor | None:
        """The layers' output for ``q`` tokens (``hidden``: ``[q, H]``), their keys and values appended
        to ``cache`` (not in layers whose attention is ``skipped``: (attention, MLP) layer sets); None,
        nothing written, where the script does not match the Python loop's pass: several rows with
        skips, several rows not attended natively (``mask``: the pass's, for its rows' keys), or
        layers at different lengths with the one-row SDPA attention."""
        kinds = self._kinds()
        if kinds is None:
            return None
        kind, native_attention = kinds
        rows = hidden.shape[0]
        skip_attention, skip_mlp = skipped
        if rows > 1 and (not native_attention or mask is None or skip_attention or skip_mlp):
            return None
        if not cache.layers and native_attention:  # a prompt's first block: the layers' empty buffers first
            cache.open_layers(self._layers, self._kv_heads, self._head_dim, hidden.dtype, hidden.device)
        room = cache.reserve_layers(rows, self._layers)
        if room is None:
            return None
        lengths, keys, values = room
        if len(set(lengths)) > 1 and not native_attention:
            return None
        index = self._no_index
        layer_lengths = [self._no_index] * self._layers
        if rows > 1:
            lists = row_attention.key_lists(cast(torch.Tensor, mask), lengths[0])
            if lists is None:
                return None
            index, per_row = lists
            layer_lengths = [per_row] * self._layers
        elif native_attention:  # a one-token step's keys in each layer: its whole cache, then the token
            index = torch.arange(max(lengths) + 1, dtype=torch.int32)[None]
            by_length = {n: torch.tensor([n + 1], dtype=torch.int32) for n in set(lengths)}
            layer_lengths = [by_length[n] for n in lengths]
        operands = self._operands(
            hidden,
            cos,
            sin,
            keys,
            values,
            lengths,
            [i in skip_attention for i in range(self._layers)],
            [i in skip_mlp for i in range(self._layers)],
            kind,
        )
        if native_attention:  # all on swift's kernels, fused: native/decoder_layers.cpp
            out = torch.ops.swift_kernels.decoder_layers(*operands, index, layer_lengths)
        else:  # one row, the one-row SDPA attention
            script = _scripted()
            assert script is not None  # checked when this was built
            out = script(*operands)
        cache.advance_layers(rows, [i not in skip_attention for i in range(self._layers)])
        return out

    @property
    def cache_shape(self) -> tuple[int, int]:
        """(key heads, head dim) of this model's cache entries."""
        return self._kv_heads, self._head_dim

    def batchable(self) -> bool:
        """Whether :meth:`rows_of_sequences` can run: swift's kernels take every product and the
        attention (the runner decides whether they are used: ``ModelRunner.native_kernels``)."""
        return self._native_products and self._native_attention

    def rows_of_sequences(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        index: torch.Tensor,
        row_lengths: torch.Tensor,
        slots: torch.Tensor,
    ) -> torch.Tensor:
        """One token of each of several generations (``hidden``: ``[R, H]``), through every layer.

        ``keys``/``values``: per layer, the shared buffers ``[1, KVH, T, d]`` (swift_engine/batching/arena.py);
        row ``r`` writes its entry at ``slots[r]`` and attends over ``index[r, :row_lengths[r]]`` (its
        generation's entries, then that slot). Row by row the same operations as a one-token step
        over a cache of its own (:meth:`__call__`), so the same bits (tests/test_batching.py).
        """
        assert self.batchable(), "rows_of_sequences needs swift's kernels (see batchable)"
        none = [False] * self._layers
        kind = INT4_NATIVE if self._int4 else INT8_NATIVE
        operands = self._operands(hidden, cos, sin, keys, values, [0] * self._layers, none, none, kind)
        out = torch.ops.swift_kernels.decoder_layers(*operands, index, [row_lengths] * self._layers, slots)
        return cast(torch.Tensor, out)

    def _operands(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        lengths: list[int],
        skip_attention: list[bool],
        skip_mlp: list[bool],
        kind: int,
    ) -> tuple[Any, ...]:
        """The operands ``_layers`` and ``decoder_layers`` share, in their order (see :func:`_layers`)."""
        return (
            hidden,
            cos,
            sin,
            self._norm_weights,
            self._norm_eps,
            self._native_weights if kind == INT8_NATIVE else self._weights,
            self._scales,
            self._qkv_bias,
            keys,
            values,
            lengths,
            skip_attention,
            skip_mlp,
            self._q_heads,
            self._kv_heads,
            self._head_dim,
            self._scaling,
            kind,
            INT4_GROUP,
        )
