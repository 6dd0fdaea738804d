"""Prompt KV kept across calls, so a pipeline's shared prefix is prefilled once.

An agent sends the same system prompt, tool schemas and history again with every turn; a RAG
chain sends the same instructions with every question. This cache keeps the keys and values the
full model computed for earlier prompts and lets a call start from the longest cached prefix of
its own prompt (the idea of llama.cpp's ``cache_prompt`` and vLLM's automatic prefix caching).

Why it is exact: a prompt is always prefilled in fixed blocks of ``block`` tokens at fixed positions
(``[0, B)``, ``[B, 2B)``, ...), one model pass per block, whether or not anything is cached. So a
block's keys, values and hidden states are computed by the same pass, on the same inputs, in every
run, and are bitwise the same whether they come from this cache or are computed again. (Prefilling
the same tokens in a different split changes float rounding, which can flip a near-tie between two
tokens later on: measured, a one-pass prefill and a blocked one differ in the low digits;
docs/bench/measurements.md#decoding.) Only prompt blocks are kept, never tokens a call decoded:
those were computed by verification passes of other shapes.

The blocks form a tree keyed by their token ids (a radix tree with one block per edge), so
prompts that share a beginning share its blocks. It is bounded in bytes and evicts the least
recently used leaf first: a block is touched after its descendants on every use, so no block is
evicted before a block that continues it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)

__all__ = ["CachedBlock", "PrefixCache", "default_budget_bytes"]

#: Share of the memory available at engine start that ``prefix_cache=True`` may use, and its bounds.
_SHARE = 0.10
_MIN_BYTES = 64 * 2**20
_MAX_BYTES = 2 * 2**30


def default_budget_bytes(device: torch.device) -> int:
    """What ``prefix_cache=True`` may hold: a tenth of the memory available now, 64 MiB to 2 GiB."""
    free: int | None
    if device.type == "cuda":
        free = int(torch.cuda.mem_get_info(device)[0])
    else:
        from swift_engine.kernels.cpu_kernels import available_memory_bytes

        free = available_memory_bytes()
    if free is None:
        return _MIN_BYTES
    return int(min(_MAX_BYTES, max(_MIN_BYTES, _SHARE * free)))


@dataclass(eq=False)
class CachedBlock:
    """One prefilled block: its tokens, every layer's keys and values, and the final hidden states."""

    tokens: tuple[int, ...]
    #: per decoder layer: (keys, values), each ``[..., block, head_dim]``
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    #: the decoder's final hidden states of the block's tokens, ``[block, hidden]``
    hidden: torch.Tensor
    parent: CachedBlock | None = None
    children: dict[tuple[int, ...], CachedBlock] = field(default_factory=dict)
    nbytes: int = 0

    def __post_init__(self) -> None:
        self.nbytes = self.hidden.nbytes + sum(k.nbytes + v.nbytes for k, v in self.kv)


class PrefixCache:
    """Bounded, LRU, thread-safe store of prefilled prompt blocks of one engine.

    The blocks are valid for one model, dtype and kernel plan: ``tag`` names the plan they were
    computed with, and a lookup with another tag empties the cache first.
    """

    def __init__(self, max_bytes: int, block: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"prefix cache size must be >= 0 bytes, got {max_bytes}")
        if block < 1:
            raise ValueError(f"prefill block must be >= 1 token, got {block}")
        self.max_bytes = int(max_bytes)
        self.block = int(block)
        self._roots: dict[tuple[int, ...], CachedBlock] = {}
        #: every block, least recently used first (always a leaf; see the module docstring)
        self._lru: OrderedDict[int, CachedBlock] = OrderedDict()
        self._bytes = 0
        self._tag: str | None = None
        self._lock = threading.Lock()
        #: blocks dropped to stay within ``max_bytes`` since the cache was made
        self.evicted_blocks = 0

    # -- reading --------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Memory the cached blocks hold now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._lru)

    def lookup(self, ids: Sequence[int], tag: str) -> list[CachedBlock]:
        """The cached blocks that begin ``ids``, longest chain first to last (empty: none)."""
        with self._lock:
            self._check_tag(tag)
            chain: list[CachedBlock] = []
            children = self._roots
            for start in range(0, len(ids) - self.block + 1, self.block):
                node = children.get(tuple(ids[start : start + self.block]))
                if node is None:
                    break
                chain.append(node)
                children = node.children
            self._touch(chain)
            return chain

    # -- writing --------------------------------------------------------------------------------
    def insert(self, chain: list[CachedBlock], new: list[CachedBlock], tag: str) -> None:
        """Add ``new`` blocks continuing ``chain`` (as returned by :meth:`lookup`), then evict to budget."""
        if not new:
            return
        with self._lock:
            if self._tag != tag or any(id(b) not in self._lru for b in chain):
                return  # the kernels changed, or the prefix was evicted, while this call ran
            parent = chain[-1] if chain else None
            for block in new:
                if block.nbytes > self.max_bytes:
                    break  # a block larger than the whole budget is never kept (nor what continues it)
                siblings = parent.children if parent is not None else self._roots
                existing = siblings.get(block.tokens)
                if existing is not None and id(existing) in self._lru:
                    block = existing  # another call cached it meanwhile (same pass, same values)
                else:
                    block.parent = parent
                    siblings[block.tokens] = block
                    self._lru[id(block)] = block
                    self._bytes += block.nbytes
                chain = chain + [block]
                parent = block
            self._touch(chain)
            self._evict()

    def clear(self) -> None:
        """Drop every block (e.g. to return the memory)."""
        with self._lock:
            self._clear()

    # -- internals (lock held) --------------------------------------------------------------------
    def _check_tag(self, tag: str) -> None:
        if self._tag != tag:
            if self._lru:
                logger.info("prefix cache emptied: the engine's kernels changed (%s -> %s)", self._tag, tag)
            self._clear()
            self._tag = tag

    def _clear(self) -> None:
        self._roots = {}
        self._lru.clear()
        self._bytes = 0

    def _touch(self, chain: list[CachedBlock]) -> None:
        # deepest first, so that a block is always more recent than every block continuing it
        for block in reversed(chain):
            if id(block) in self._lru:
                self._lru.move_to_end(id(block))

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and self._lru:
            _, block = self._lru.popitem(last=False)  # a leaf: see _touch
            siblings = block.parent.children if block.parent is not None else self._roots
            siblings.pop(block.tokens, None)
            self._bytes -= block.nbytes
            self.evicted_blocks += 1
