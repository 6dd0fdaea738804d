"""A KV cache that speculative decoding can rewind and compact in place.

Why not ``transformers.DynamicCache``: it grows by ``torch.cat`` (a copy of the whole layer per
step), its ``crop`` semantics changed between 5.14 and 5.20, and its sliding-window layers drop old
entries, which a rejected tree must be able to restore. Here every layer keeps a pre-allocated
buffer that grows geometrically; rewinding is setting a length, and keeping the accepted path of a
tree is one gather of the tree's own entries. Sliding windows are enforced by the attention mask
(see :mod:`swift_engine.model.masks`), not by eviction.
"""

from __future__ import annotations

from functools import partial
from typing import Any, cast

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class SwiftKVLayer(CacheLayerMixin):
    """One decoder layer's keys and values in a growable buffer with an explicit length."""

    is_compileable = False
    is_sliding = False

    def __init__(self, capacity: int | None = None, **kwargs: Any) -> None:
        super().__init__()
        #: entries to allocate up front (the generation's known maximum); None: grow from the first write
        self.capacity = capacity
        self.length = 0
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    # -- CacheLayerMixin -------------------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        n = key_states.shape[-2]
        cap = max(self.capacity, n) if self.capacity else max(256, 2 * n)
        self._k = key_states.new_empty((*key_states.shape[:-2], cap, key_states.shape[-1]))
        self._v = value_states.new_empty((*value_states.shape[:-2], cap, value_states.shape[-1]))
        self.is_initialized = True

    def _ensure_capacity(self, needed: int) -> None:
        assert self._k is not None and self._v is not None
        cap = self._k.shape[-2]
        if needed <= cap:
            return
        new_cap = max(needed, 2 * cap)
        for name in ("_k", "_v"):
            old = getattr(self, name)
            new = old.new_empty((*old.shape[:-2], new_cap, old.shape[-1]))
            new[..., : self.length, :] = old[..., : self.length, :]
            setattr(self, name, new)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        self._ensure_capacity(self.length + n)
        assert self._k is not None and self._v is not None  # allocated by lazy_initialization
        self._k[..., self.length : self.length + n, :] = key_states
        self._v[..., self.length : self.length + n, :] = value_states
        self.length += n
        keys, values = self.keys, self.values
        assert keys is not None and values is not None
        return keys, values

    def reserve(self, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The key and value buffers (``[..., capacity, d]``) with room for ``n`` entries after the
        last, for a caller that writes them itself and then calls :meth:`advance`; None before the
        first :meth:`update` (no buffers yet)."""
        if self._k is None or self._v is None:
            return None
        self._ensure_capacity(self.length + n)
        return self._k, self._v

    def advance(self, n: int) -> None:
        """Count ``n`` entries written after the last one into :meth:`reserve`'s buffers."""
        self.length += n

    @property  # type: ignore[override]
    def keys(self) -> torch.Tensor | None:
        return None if self._k is None else self._k[..., : self.length, :]

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:  # the base __init__ assigns None
        if value is not None:
            raise AttributeError("SwiftKVLayer.keys is read-only; use update()")

    @property  # type: ignore[override]
    def values(self) -> torch.Tensor | None:
        return None if self._v is None else self._v[..., : self.length, :]

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        if value is not None:
            raise AttributeError("SwiftKVLayer.values is read-only; use update()")

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.length = 0

    # -- speculative decoding ----------------------------------------------------------------
    def truncate(self, length: int) -> None:
        self.length = min(self.length, length)

    def keep(self, start: int, offsets: torch.Tensor) -> None:
        """Keep entries ``start + offsets`` (ascending) packed from ``start``; drop the rest."""
        if self._k is None:
            return
        assert self._v is not None  # allocated together with _k
        src = offsets + start
        k = self._k.index_select(-2, src)
        v = self._v.index_select(-2, src)
        n = offsets.numel()
        self._k[..., start : start + n, :] = k
        self._v[..., start : start + n, :] = v
        self.length = start + n

    def nbytes(self) -> int:
        if self._k is None:
            return 0
        assert self._v is not None  # allocated together with _k
        return self._k.nbytes + self._v.nbytes


class SwiftKVCache(Cache):
    """The engine's per-generation cache; layers appear lazily as the model writes them."""

    def __init__(self, capacity: int | None = None) -> None:
        # one allocation of the size the generation can reach, instead of doubling past it
        # transformers types this as a layer class, but only ever calls it with no arguments: a factory works
        super().__init__(
            layer_class_to_replicate=partial(SwiftKVLayer, capacity=capacity)  # type: ignore[arg-type]
        )

    @property
    def _swift_layers(self) -> list[SwiftKVLayer]:
        # every layer comes from the factory above
        return cast("list[SwiftKVLayer]", self.layers)

    def open_layers(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        """Create an empty cache's ``layers`` layers (buffers of ``kv_heads`` x ``head_dim`` entries, as a
        first write would make them), so that a caller writing entries itself (:meth:`reserve_layers`)
        can start with a prompt's first block."""
        if self.layers:
            raise RuntimeError("open_layers() starts an empty cache")
        empty = torch.empty((1, kv_heads, 0, head_dim), dtype=dtype, device=device)
        for idx in range(layers):
            self.update(empty, empty, idx)

    def reserve_layers(self, n: int, layers: int) -> tuple[list[int], list[torch.Tensor], list[torch.Tensor]] | None:
        """Room for ``n`` entries after the last in every layer, for a caller that writes them itself
        (``scripted_step.py``) and then calls :meth:`advance_layers`: each layer's count (a draft's
        skipped attention layers lag behind), and the layers' key and value buffers. None unless all
        ``layers`` exist."""
        if len(self.layers) != layers:
            return None
        lengths, keys, values = [], [], []
        for layer in self._swift_layers:
            buffers = layer.reserve(n)
            if buffers is None:
                return None
            lengths.append(layer.length)
            keys.append(buffers[0])
            values.append(buffers[1])
        return lengths, keys, values

    def advance_layers(self, n: int, written: list[bool]) -> None:
        """Count ``n`` more entries in the layers ``written`` says were written (see :meth:`reserve_layers`)."""
        for layer, wrote in zip(self._swift_layers, written, strict=True):
            if wrote:
                layer.advance(n)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        if layer_idx >= len(self.layers):
            return 0
        return self._swift_layers[layer_idx].get_seq_length()

    def truncate(self, length: int) -> None:
        """Rewind every layer to ``length`` entries (layers skipped by a draft may already be shorter)."""
        for layer in self._swift_layers:
            layer.truncate(length)

    def keep(self, start: int, offsets: torch.Tensor) -> None:
        """After verifying a tree written at ``start``, keep only the accepted nodes' entries."""
        for layer in self._swift_layers:
            if layer.length > start:
                layer.keep(start, offsets)

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self._swift_layers)

    def load(self, per_layer: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Start an empty cache from stored entries: ``(keys, values)`` per layer (a cached prefix)."""
        if self.get_seq_length() or any(layer.length for layer in self._swift_layers):
            raise RuntimeError("load() starts an empty cache")
        for idx, (keys, values) in enumerate(per_layer):
            self.update(keys, values, idx)

    def entries(self, start: int, end: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copies of every layer's entries ``[start, end)`` (to keep them beyond this generation)."""
        out = []
        for layer in self._swift_layers:
            keys, values = layer.keys, layer.values
            assert keys is not None and values is not None and layer.length >= end
            out.append((keys[..., start:end, :].clone(), values[..., start:end, :].clone()))
        return out
