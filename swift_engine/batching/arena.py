"""One key/value buffer per layer shared by the generations of a batch, each in a region of its own.

Why one buffer: a batched pass (``decoder_layers`` with ``slots``) takes each layer's keys and values
as one tensor and each row's keys as a list of positions in it, so the rows of every generation in
flight must live in the same tensor. Each generation gets a contiguous region (its prompt, its reply,
one spare entry), and its :class:`~swift_engine.model.kv_cache.SwiftKVCache` is a view of that region:
the ordinary prefill writes the prompt there, exactly as it would into a cache of its own, and a
row's keys are the region's first entries in order -- the same values, in the same order, as a call
alone attends over (so the same bits: row_attention.cpp scores every key by itself).

Regions are taken first-fit from the free space and given back when a generation ends; when none
fits, the buffers grow (doubling) and every live cache is pointed at its region in the new ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from swift_engine.model.kv_cache import SwiftKVCache, SwiftKVLayer

__all__ = ["KVArena", "Region"]


@dataclass
class Region:
    """Entries ``[start, start + size)`` of every layer, and the cache that views them."""

    start: int
    size: int
    cache: SwiftKVCache


class KVArena:
    """Per-layer key/value buffers ``[1, KVH, capacity, d]`` carved into regions (see the module docstring)."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim
        self.dtype, self.device = dtype, device
        self.capacity = 0
        self.keys: list[torch.Tensor] = []  # each [1, KVH, capacity, d]
        self.values: list[torch.Tensor] = []  # each [1, KVH, capacity, d]
        self._regions: list[Region] = []  # live, by start

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.keys) + sum(t.nbytes for t in self.values)

    def region_bytes(self, region: Region) -> int:
        """Memory ``region`` holds: its entries' keys and values in every layer."""
        element = torch.empty(0, dtype=self.dtype).element_size()
        return 2 * self.layers * self.kv_heads * self.head_dim * region.size * element

    def open(self, size: int) -> Region:
        """A region of ``size`` entries and an empty cache over it (grows the buffers where none is free)."""
        start = self._free_start(size)
        if start is None:
            self._grow(max(2 * self.capacity, self.capacity + size, 256))
            start = self._free_start(size)
            assert start is not None
        layers = []
        for i in range(self.layers):
            layer = SwiftKVLayer(size)
            layer.dtype, layer.device = self.dtype, self.device
            layer.is_initialized = True
            layers.append(layer)
        cache = SwiftKVCache(size)
        cache.layers.extend(layers)
        region = Region(start, size, cache)
        self._point(region)
        self._regions.append(region)
        self._regions.sort(key=lambda r: r.start)
        return region

    def close(self, region: Region) -> None:
        """Give ``region`` back (its cache must not be used again)."""
        self._regions = [r for r in self._regions if r is not region]

    def _free_start(self, size: int) -> int | None:
        at = 0
        for region in self._regions:
            if region.start - at >= size:
                return at
            at = region.start + region.size
        return at if self.capacity - at >= size else None

    def _grow(self, capacity: int) -> None:
        shape = (1, self.kv_heads, capacity, self.head_dim)
        keys = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)]
        values = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)]
        for old, new in ((self.keys, keys), (self.values, values)):
            for i in range(len(old)):
                new[i][:, :, : self.capacity] = old[i]
        self.keys, self.values, self.capacity = keys, values, capacity
        for region in self._regions:
            self._point(region)

    def _point(self, region: Region) -> None:
        """Make ``region``'s cache layers views of its entries in the current buffers."""
        end = region.start + region.size
        for i, layer in enumerate(region.cache.layers):
            assert isinstance(layer, SwiftKVLayer)
            layer._k = self.keys[i][:, :, region.start : end]
            layer._v = self.values[i][:, :, region.start : end]
