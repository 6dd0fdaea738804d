"""Which drafters a call uses, and which of them run at each step: the one place that decides.

Drafters are asked in priority order. Those that only look tokens up (``runs_model = False``) are
free and always asked; a drafter that spends model passes runs only while the free proposals so
far offer fewer than two tokens, since one verified copy of a long span beats paying for a draft
that mostly repeats it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from swift_engine.config import SwiftConfig
from swift_engine.drafters.base import Drafter, Proposal
from swift_engine.drafters.context import ContextDrafter
from swift_engine.drafters.layer_skip import DraftHead, LayerSkipDrafter
from swift_engine.drafters.memory import MemoryDrafter
from swift_engine.kernels.costs import CostModel
from swift_engine.model.kv_cache import SwiftKVCache
from swift_engine.model.runner import ModelRunner

if TYPE_CHECKING:
    from swift_engine.decoding.constraints import GrammarState
    from swift_engine.search.layer_search import SkipChoice

#: A paid drafter runs only when the free proposals are shorter than this.
_FREE_PROPOSAL_ENOUGH = 2


def drafters_for_call(
    runner: ModelRunner,
    cache: SwiftKVCache,
    config: SwiftConfig,
    costs: CostModel,
    head: DraftHead,
    tokens: list[int],
    skip: Callable[[], SkipChoice],
    profile: dict,
    grammar: GrammarState | None = None,
) -> list[Drafter]:
    """The drafters of one speculative call, in priority order (``tokens``: prompt and first token)."""
    drafters: list[Drafter] = []
    if config.context_drafts:
        drafters.append(ContextDrafter(tokens, costs, config.max_draft_len, profile.get(ContextDrafter.profile_key)))
    if config.draft_memory:
        memory = profile.get(MemoryDrafter.profile_key)
        drafters.append(
            MemoryDrafter(tokens, costs, config.max_draft_len, config.draft_memory, runner.vocab_size, memory)
        )
    gate = {"costs": costs, "payoff": profile.get(LayerSkipDrafter.profile_key)} if config.draft_payoff else {}
    drafters.append(LayerSkipDrafter(runner, cache, config, head, skip, grammar, **gate))
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
