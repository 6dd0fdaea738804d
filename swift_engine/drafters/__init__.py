"""Drafters: what proposes tokens for the full model to verify.

A drafter is one small object behind one protocol (:class:`~swift_engine.drafters.base.Drafter`):
``propose`` a continuation of the committed sequence, ``observe`` what verification kept. Each
lives in its own module with its own test; :mod:`~swift_engine.drafters.policy` is the one place
that decides which drafters a call uses and when each runs. Adding a drafter is its module, its
test and one line there.
"""

from __future__ import annotations

from swift_engine.drafters.base import Drafter
from swift_engine.drafters.context import ContextAcceptance, ContextDrafter, ContextIndex
from swift_engine.drafters.layer_skip import Draft, LayerSkipDrafter, draft_chain
from swift_engine.drafters.memory import MemoryDrafter, MemoryIndex
from swift_engine.drafters.policy import DraftContext, drafters_for_call, propose

__all__ = [
    "ContextAcceptance",
    "ContextDrafter",
    "ContextIndex",
    "DraftContext",
    "Draft",
    "Drafter",
    "LayerSkipDrafter",
    "MemoryDrafter",
    "MemoryIndex",
    "draft_chain",
    "drafters_for_call",
    "propose",
]
