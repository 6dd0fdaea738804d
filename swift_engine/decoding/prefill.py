"""Prefill: cache a prompt's keys and values, reusing whole blocks an earlier call cached.

The prompt runs in passes of ``block`` tokens at fixed positions, so every block is computed the
same way whether or not an earlier call's block is reused (see :mod:`~swift_engine.decoding.prefix_cache`):
the cache changes the time, never a bit of the output.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import torch

from swift_engine.decoding.prefix_cache import CachedBlock, PrefixCache
from swift_engine.model.kv_cache import SwiftKVCache
from swift_engine.model.runner import ModelRunner


def load_blocks(cache: SwiftKVCache, chain: list[CachedBlock]) -> None:
    """Start the empty ``cache`` from the prefix cache's ``chain`` (every layer's entries, block after block)."""
    if chain:
        cache.load(
            [
                (torch.cat([b.kv[i][0] for b in chain], -2), torch.cat([b.kv[i][1] for b in chain], -2))
                for i in range(len(chain[0].kv))
            ]
        )


def prefill(
    runner: ModelRunner,
    cache: SwiftKVCache,
    prompt_ids: list[int],
    tail: int,
    *,
    block: int,
    prefix_cache: PrefixCache | None,
    check: Callable[[], None] = lambda: None,
) -> tuple[torch.Tensor, int]:
    """Cache the prompt; the final hidden states of its last ``tail`` tokens, and how many came cached.

    ``cache``: the call's empty KV cache, filled with the prompt's ``len(prompt_ids)`` entries.
    Returns ``(hidden [min(tail, len(prompt_ids)), H], cached_tokens)``: the caller takes the head
    over the rows it needs (the last one for the first token; the search's teacher window only if an
    iteration runs: a full-vocabulary head over many rows is not free). ``check`` runs between
    blocks (a long prompt's prefill honours the call's timeout there).
    """
    steps = prefill_blocks(runner, cache, prompt_ids, tail, block=block, prefix_cache=prefix_cache, check=check)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def prefill_blocks(
    runner: ModelRunner,
    cache: SwiftKVCache,
    prompt_ids: list[int],
    tail: int,
    *,
    block: int,
    prefix_cache: PrefixCache | None,
    check: Callable[[], None] = lambda: None,
) -> Generator[int, None, tuple[torch.Tensor, int]]:
    """:func:`prefill` a block at a time: yields the tokens each pass computed, returns what it returns.

    Why: the batch (swift_engine/batching) prefills a joining call's prompt between the passes of the
    calls already decoding, a few blocks at a time, so a long prompt cannot stall them; the blocks
    are the same ones at the same positions, hence the same bits, however they are spread.
    """
    tag = runner.kernels
    chain = prefix_cache.lookup(prompt_ids, tag) if prefix_cache is not None else []
    hidden: list[torch.Tensor] = [b.hidden for b in chain]  # each [block, H]
    load_blocks(cache, chain)
    start = cached = len(chain) * block
    new: list[CachedBlock] = []
    device = runner.device
    while start < len(prompt_ids):
        check()
        end = min(start + block, len(prompt_ids))
        ids = prompt_ids[start:end]
        hidden.append(runner.hidden(cache, torch.tensor(ids, device=device), torch.arange(start, end, device=device)))
        if prefix_cache is not None and end - start == block:
            new.append(CachedBlock(tuple(ids), cache.entries(start, end), hidden[-1].clone()))
        yield end - start
        start = end
    if prefix_cache is not None:
        prefix_cache.insert(chain, new, tag)
    # the same rows whatever came from the cache: their logits are bitwise the same too
    need = max(1, min(tail, len(prompt_ids)))
    last: list[torch.Tensor] = []
    for h in reversed(hidden):
        take = min(need, h.shape[0])
        last.insert(0, h[h.shape[0] - take :])
        need -= take
        if need == 0:
            break
    return (torch.cat(last) if len(last) > 1 else last[0]), cached
