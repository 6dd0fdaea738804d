"""A call that started alone and moves into the engine's batch after its first token.

Why: calls arriving together (a LangChain ``batch``, a RAG map step, a server under load) find the
first of them already decoding alone, with SWIFT, when the others join the batch; that call then
took turns with the batch's passes for its whole reply instead of adding one row to them
(docs/bench/batch). So a call that decodes alone checks, right after its prompt is prefilled and its
first token picked, whether others are in flight; if so it hands what it has to the batch, which
continues it in the shared passes from its cache -- as a call that joined the batch from the start
would continue (plain decoding: the same tokens greedy SWIFT gives; the same generator, so a seeded
sample draws what it draws alone).

:class:`~swift_engine.decode_loop.DecodeCall` makes it (``handover``), the engine passes it on
(``SwiftEngine._stream``), :class:`~swift_engine.batching.batcher.Batcher` continues from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from swift_engine.decoding.stopping import TextStream
from swift_engine.model.kv_cache import SwiftKVCache
from swift_engine.results import GenerationStats

__all__ = ["Handover"]


@dataclass
class Handover:
    """Where a call stands after its first token, for the batch to continue it."""

    #: the call's cache: entries ``[0, prompt_tokens)`` (the first token is fed at the batch's next pass)
    cache: SwiftKVCache
    prompt_tokens: int
    #: the tokens committed so far (the first one), and their text as the caller has received it
    out: list[int]
    text: TextStream
    #: the call's own random draws (None: greedy)
    generator: torch.Generator | None
    stats: GenerationStats
    #: ``time.perf_counter()`` at the call's start, and the most tokens it may produce
    started: float
    max_new_tokens: int
