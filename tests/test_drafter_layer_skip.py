"""The layer-skip drafter on a tiny model: drafts with the search's current choice, rewinds the cache."""

from __future__ import annotations

import torch

from swift_engine.config import SwiftConfig
from swift_engine.drafters import DraftHead, LayerSkipDrafter
from swift_engine.runner import ModelRunner
from swift_engine.search import PLAIN, SkipChoice
from swift_engine.tree import SOURCE_LAYER_SKIP, TokenTree
from swift_engine.verification import Verdict

from .conftest import tiny_model

PROMPT = [3, 14, 15, 9, 26, 5, 35, 8, 9, 7]


def _prefilled(runner: ModelRunner):
    cache = runner.new_cache(capacity=64)
    runner.hidden(cache, torch.tensor(PROMPT), torch.arange(len(PROMPT)))
    return cache


def test_drafts_with_the_current_choice_and_leaves_the_cache_as_it_was() -> None:
    runner = ModelRunner(tiny_model("llama", seed=3), "torch")
    cache = _prefilled(runner)
    config = SwiftConfig(draft_confidence=0.0, max_draft_len=5)  # no early stop: a full-length chain
    choice = [SkipChoice(frozenset({2}), frozenset({3}))]
    head = DraftHead(runner, None, PROMPT)
    drafter = LayerSkipDrafter(runner, cache, config, head, lambda: choice[0])

    proposal = drafter.propose(root=11, past=len(PROMPT), budget=4)
    assert proposal is not None and proposal.source == SOURCE_LAYER_SKIP
    assert len(proposal.tokens) == 4 == proposal.steps  # the budget caps it, one pass per token
    assert len(proposal.confidences) == len(proposal.alternates) == 4
    assert cache.get_seq_length() == len(PROMPT)  # rewound: verification starts from the committed cache

    # greedy chain = the skipped model's own greedy decoding from the root, over the full model's prompt cache
    ref = _prefilled(runner)
    tok, want = 11, []
    with runner.skipper.skipping(frozenset({2}), frozenset({3})):
        for i in range(4):
            hidden = runner.hidden(ref, torch.tensor([tok]), torch.tensor([len(PROMPT) + i]))
            tok = int(runner.logits(hidden[-1:]).argmax(-1))
            want.append(tok)
    assert proposal.tokens == want

    choice[0] = PLAIN  # the search found nothing that pays: no layer-skip draft
    assert drafter.propose(root=11, past=len(PROMPT), budget=4) is None


def test_observe_grows_the_draft_heads_vocabulary() -> None:
    runner = ModelRunner(tiny_model("llama", seed=3), "torch")
    head = DraftHead(runner, 8, PROMPT)  # ids 0..7 plus the prompt's tokens
    drafter = LayerSkipDrafter(runner, _prefilled(runner), SwiftConfig(), head, lambda: PLAIN)
    assert 60 not in head.vocab().tolist()
    tree = TokenTree.with_root(11)
    drafter.observe(tree, Verdict(path=[0], accepted=[], bonus=60, path_argmax=[60]), [60])
    assert 60 in head.vocab().tolist()
