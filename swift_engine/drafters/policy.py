"""Which drafters a call uses, and which of them run at each step: the one place that decides.

Drafters are asked in priority order. Those that only look tokens up (``runs_model = False``) are
free and always asked; a drafter that spends model passes runs only while the free proposals so
far offer fewer than two tokens, since one verified copy of a long span beats paying for a draft
that mostly repeats it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from swift_engine.config import SwiftConfig
from swift_engine.decoding.tree import Proposal
from swift_engine.drafters.base import Drafter
from swift_engine.drafters.context import ContextDrafter
from swift_engine.drafters.layer_skip import LayerSkipDrafter
from swift_engine.drafters.memory import MemoryDrafter
from swift_engine.kernels.costs import CostModel
from swift_engine.model.draft_head import DraftHead
from swift_engine.model.kv_cache import SwiftKVCache
from swift_engine.model.runner import ModelRunner

if TYPE_CHECKING:
    from swift_engine.decoding.constraints import GrammarState
    from swift_engine.search.state import SkipChoice

#: A paid drafter runs only when the free proposals are shorter than this.
_FREE_PROPOSAL_ENOUGH = 2


@dataclass(frozen=True)
class DraftContext:
    """What one speculative call gives the drafters it uses (built once per call by the decode loop)."""

    runner: ModelRunner
    #: the call's KV cache: a drafter rewinds whatever it writes before ``propose`` returns
    cache: SwiftKVCache
    config: SwiftConfig
    costs: CostModel
    #: the layer-skip draft's output head over a vocabulary subset
    head: DraftHead
    #: prompt ids and the first generated token, ``[len(prompt) + 1]``: what context and memory drafts index
    tokens: list[int]
    #: the layer-set search's current choice (it may change mid-call)
    skip: Callable[[], SkipChoice]
    #: the step's stored per-drafter state (by each drafter's ``profile_key``)
    profile: dict[Any, Any] = field(default_factory=dict)
    #: the call's grammar matcher, when the output is constrained
    grammar: GrammarState | None = None


def drafters_for_call(call: DraftContext) -> list[Drafter]:
    """The drafters of one speculative call, in priority order."""
    config, costs, profile = call.config, call.costs, call.profile
    drafters: list[Drafter] = []
    if config.context_drafts:
        drafters.append(
            ContextDrafter(call.tokens, costs, config.max_draft_len, profile.get(ContextDrafter.profile_key))
        )
    if config.draft_memory:
        memory = profile.get(MemoryDrafter.profile_key)
        drafters.append(
            MemoryDrafter(call.tokens, costs, config.max_draft_len, config.draft_memory, call.runner.vocab_size, memory)
        )
    gate = {"costs": costs, "payoff": profile.get(LayerSkipDrafter.profile_key)} if config.draft_payoff else {}
    drafters.append(LayerSkipDrafter(call.runner, call.cache, config, call.head, call.skip, call.grammar, **gate))
    return drafters


def propose(drafters: Sequence[Drafter], root: int, past: int, budget: int) -> list[Proposal]:
    """Every proposal for the step after ``root``, in priority order (at most ``budget`` tokens each)."""
    proposals: list[Proposal] = []
    for drafter in drafters:
        if drafter.runs_model and max((len(p) for p in proposals), default=0) >= _FREE_PROPOSAL_ENOUGH:
            continue
        proposal = drafter.propose(root, past, budget)
        if proposal is not None:
            proposals.append(proposal)
    return proposals
