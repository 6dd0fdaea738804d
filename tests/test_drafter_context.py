"""The context drafter: n-gram lookup, acceptance by match length, proposals sized by the cost model (no model)."""

from __future__ import annotations

from swift_engine.config import TreeConfig
from swift_engine.decoding.tree import SOURCE_CONTEXT, TokenTree, build_tree
from swift_engine.decoding.verification import Verdict
from swift_engine.drafters import ContextAcceptance, ContextDrafter, ContextIndex
from swift_engine.kernels.costs import CostModel

#: 2-core CPU costs of SmolLM2-135M (seconds), with the noise seen in practice: 2 tokens slower than 4
COSTS = {
    "verify_s": {"1": 0.056, "2": 0.093, "4": 0.085, "8": 0.079, "16": 0.112, "32": 0.125},
    "draft_s_at": {"0.0": 0.056, "0.5": 0.045},
    "head_s": 0.012,
}


def test_the_longest_match_wins_and_reports_its_length():
    idx = ContextIndex([1, 2, 3, 4, 5, 9, 3, 4, 7, 1, 2, 3, 4])
    cont, order = idx.best(3)
    assert (cont, order) == ([5, 9, 3], 4)  # "1 2 3 4" matched: what followed it
    idx.extend([8])
    assert idx.best(3) == ([], 0)  # "8" never occurred before
    idx = ContextIndex([5, 6, 7, 5])
    assert idx.best(10) == ([6, 7, 5], 1)
    assert idx.best(0) == ([], 0)


def _observe(acc: ContextAcceptance, order: int, accepted: int, proposed: int) -> None:
    """One verify step whose context chain of ``proposed`` tokens had ``accepted`` accepted."""
    tree = TokenTree.with_root(0)
    nodes = tree.insert(list(range(1, proposed + 1)), SOURCE_CONTEXT, 64)
    path = [0] + nodes[:accepted]
    acc.observe(tree, path, order)


def test_weak_matches_stop_being_drafted_while_strong_ones_continue():
    costs = CostModel.from_dict(COSTS)
    acc = ContextAcceptance()
    for _ in range(30):
        _observe(acc, 1, 0, 3)  # single-token matches: always wrong
        _observe(acc, 4, 6, 8)  # 4-token matches: long copies
        _observe(acc, 2, 0, 8)  # 2-token matches: bursty, wrong 4 times in 5 ...
        _observe(acc, 2, 0, 8)
        _observe(acc, 2, 0, 8)
        _observe(acc, 2, 0, 8)
        _observe(acc, 2, 8, 8)  # ... and right all along the fifth time
    assert acc.first_rate(1) < 0.1 and acc.first_rate(4) > 0.9 and acc.continue_rate(4) > 0.8
    assert 0.15 < acc.first_rate(2) < 0.25 and acc.continue_rate(2) > 0.9  # not one blended per-token rate
    assert acc.draft_length(costs, 20, 1) == 0
    assert acc.draft_length(costs, 20, 1, probe=True) == 3  # re-probed now and then
    assert acc.draft_length(costs, 20, 4) >= 4
    assert acc.draft_length(costs, 20, 0) == 0  # no match, no draft
    restored = ContextAcceptance.from_dict(acc.to_dict())
    assert restored.first_rate(1) == acc.first_rate(1) and restored.continue_rate(4) == acc.continue_rate(4)
    assert ContextAcceptance.from_dict({"hits": 3, "misses": 2}).first_rate(4) == ContextAcceptance().first_rate(
        4
    )  # older format: prior
    assert ContextAcceptance.from_dict({"by_order_v2": "garbage"}).first_rate(2) == ContextAcceptance().first_rate(2)


def _verify_greedy(tree: TokenTree, truth: list[int]) -> Verdict:
    """What verification keeps when the full model would say ``truth`` after the root."""
    path, node = [0], 0
    for tok in truth:
        nxt = tree.children()[node].get(tok)
        if nxt is None:
            break
        node = nxt
        path.append(node)
    accepted = [tree.tokens[n] for n in path[1:]]
    return Verdict(path=path, accepted=accepted, bonus=truth[len(accepted)], path_argmax=truth[: len(path)])


def test_context_drafter_proposes_copies_and_learns_from_verification():
    """A repeated sentence: the drafter copies it, learns that 4-token matches pay, keeps that in the profile."""
    costs = CostModel.from_dict(COSTS)
    sentence = [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    seq = sentence + [1, 2] + sentence[:4]  # the reply starts repeating the sentence
    drafter = ContextDrafter(seq, costs, max_draft_len=8)
    proposal = drafter.propose(root=seq[-1], past=len(seq) - 1, budget=8)
    assert proposal is not None and proposal.source == SOURCE_CONTEXT and proposal.steps == 0
    assert proposal.tokens == seq[4 : 4 + len(proposal.tokens)] and len(proposal.tokens) >= 2
    tree = build_tree(seq[-1], [proposal], TreeConfig())
    verdict = _verify_greedy(tree, sentence[4:] + [99])
    before = drafter.acceptance.first_rate(4)
    drafter.observe(tree, verdict, verdict.accepted + [verdict.bonus])
    assert drafter.acceptance.first_rate(4) > before  # the copy was right: 4-token matches count up
    assert drafter.index.tokens[-1] == verdict.bonus  # the index follows the committed tokens
    # the learned rates survive in the step's profile
    again = ContextDrafter(seq, costs, 8, profile=drafter.profile_state())
    assert again.acceptance.first_rate(4) == drafter.acceptance.first_rate(4)
    # no earlier occurrence of the last token: nothing to propose
    assert ContextDrafter([1, 2, 3], costs, 8).propose(root=3, past=2, budget=8) is None
