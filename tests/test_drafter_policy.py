"""The drafting policy and the tree builder: free drafters first, a paid one only when needed (no model)."""

from __future__ import annotations

from typing import Any, ClassVar

from swift_engine.config import TreeConfig
from swift_engine.decoding.tree import SOURCE_CONTEXT, SOURCE_LAYER_SKIP, Proposal, TokenTree, build_tree
from swift_engine.decoding.verification import Verdict
from swift_engine.drafters import propose


class _Scripted:
    """A drafter that proposes a fixed chain, and counts how often it was asked."""

    profile_key: ClassVar[str | None] = None

    def __init__(self, tokens: list[int], source: int, runs_model: bool, **extra: Any) -> None:
        self.tokens, self.source, self.runs_model, self.extra = tokens, source, runs_model, extra
        self.asked = 0

    def propose(self, root: int, past: int, budget: int) -> Proposal | None:
        self.asked += 1
        return Proposal(self.tokens[:budget], self.source, **self.extra) if self.tokens else None

    def observe(self, tree: TokenTree, verdict: Verdict, new_tokens: list[int]) -> None:
        pass

    def profile_state(self) -> dict[str, Any] | None:
        return None


def test_a_paid_drafter_runs_only_when_free_proposals_are_short() -> None:
    copy = _Scripted([5, 6, 7], SOURCE_CONTEXT, runs_model=False)
    model = _Scripted([5, 8], SOURCE_LAYER_SKIP, runs_model=True, confidences=[0.9, 0.5], alternates=[[9], [10]])
    assert [p.tokens for p in propose([copy, model], root=1, past=10, budget=8)] == [[5, 6, 7]]
    assert model.asked == 0
    copy.tokens = [5]  # one free token is not enough: the model drafts too
    assert [p.tokens for p in propose([copy, model], root=1, past=10, budget=8)] == [[5], [5, 8]]
    assert model.asked == 1
    assert propose([copy, model], root=1, past=10, budget=1)[1].tokens == [5]  # the budget caps every proposal


def test_tree_shares_agreeing_prefixes_and_branches_where_the_draft_was_unsure() -> None:
    copy = Proposal([5, 6, 7], SOURCE_CONTEXT)
    draft = Proposal([5, 8], SOURCE_LAYER_SKIP, confidences=[0.95, 0.1], alternates=[[9], [10, 11]])
    tree = build_tree(1, [copy, draft], TreeConfig(), budget=16)
    assert tree.tokens[:4] == [1, 5, 6, 7]
    assert tree.sources[1] == SOURCE_CONTEXT | SOURCE_LAYER_SKIP  # both proposed 5: one node
    eight = tree.children()[1][8]
    assert tree.sources[eight] == SOURCE_LAYER_SKIP
    assert 10 in tree.children()[1]  # a runner-up beside the unsure second token
    small = build_tree(1, [copy, draft], TreeConfig(), budget=4)
    assert len(small) == 4 and small.tokens == [1, 5, 6, 7]  # the first proposal claims the budget first
