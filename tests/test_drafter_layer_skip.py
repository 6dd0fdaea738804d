"""The layer-skip drafter on a tiny model: drafts with the search's current choice, rewinds the cache."""

from __future__ import annotations

import torch

from swift_engine.config import SwiftConfig
from swift_engine.decoding.tree import SOURCE_CONTEXT, SOURCE_LAYER_SKIP, TokenTree
from swift_engine.decoding.verification import Verdict
from swift_engine.drafters import LayerSkipDrafter
from swift_engine.drafters.layer_skip import DraftPayoff
from swift_engine.kernels.costs import CostModel
from swift_engine.model.draft_head import DraftHead
from swift_engine.model.runner import ModelRunner
from swift_engine.search.state import PLAIN, SkipChoice

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


def _costs(plain_s: float = 0.1, pass_s: float = 0.06) -> CostModel:
    return CostModel(
        verify_s={
            1: plain_s,
            2: plain_s * 1.1,
            4: plain_s * 1.2,
            8: plain_s * 1.4,
            16: plain_s * 1.8,
            32: plain_s * 2.4,
        },
        draft_s_at={0.0: plain_s, 0.5: pass_s},
        head_s=0.0,
    )


def test_drafts_stop_while_they_do_not_pay_and_probe_until_they_do() -> None:
    """Passes whose tokens verification rejects (or a free draft also had) stop drafting; probes resume it."""
    runner = ModelRunner(tiny_model("llama", seed=3), "torch")
    cache = _prefilled(runner)
    config = SwiftConfig(draft_confidence=0.0, max_draft_len=5)
    skip = SkipChoice(frozenset({1, 2, 3}), frozenset({1, 2, 4}))  # half the sublayers: a pass costs 0.06 s
    drafter = LayerSkipDrafter(
        runner, cache, config, DraftHead(runner, None, PROMPT), lambda: skip, costs=_costs(), payoff=None
    )
    past = len(PROMPT)

    def step(accept: int, shared: bool = False) -> bool:
        proposal = drafter.propose(root=11, past=past, budget=3)
        if proposal is None:
            return False
        assert proposal.steps == 3
        tree = TokenTree.with_root(11)
        nodes = tree.insert(proposal.tokens, SOURCE_LAYER_SKIP | (SOURCE_CONTEXT if shared else 0), 8)
        path = [0, *nodes[:accept]]
        drafter.observe(tree, Verdict(path=path, accepted=proposal.tokens[:accept], bonus=1, path_argmax=[]), [1])
        return True

    assert step(accept=0)  # the prior (a token per pass) lets it try; verification rejects the chain
    assert not step(accept=0)  # 2 tokens' worth for 5 passes: 0.2 s saved for 0.3 s spent
    asked = [step(accept=3, shared=True) for _ in range(15)]  # chances 3..17: probes at the 8th and 16th
    assert asked.count(True) == 2
    assert drafter.payoff.gained == 2.0  # tokens a free draft proposed too are not this drafter's gain
    asked = [step(accept=3) for _ in range(40)]  # probes accepted alone: it pays again after 4 of them
    assert asked[-3:] == [True, True, True]
    saved = drafter.profile_state()
    assert saved is not None and saved["gained"] > 0 and 0 < saved["passes"] <= 48.0  # decayed, bounded


def test_payoff_read_from_a_profile_is_validated() -> None:
    assert DraftPayoff.from_dict({"gained": 1.0, "passes": 9.0}) == DraftPayoff(1.0, 9.0)
    for bad in (
        None,
        [],
        {"gained": "x", "passes": 1},
        {"gained": 1.0},
        {"gained": -1, "passes": 1},
        {"gained": 1.0, "passes": 0},
        {"gained": float("nan"), "passes": 1.0},
    ):
        assert DraftPayoff.from_dict(bad) == DraftPayoff()
    runner = ModelRunner(tiny_model("llama", seed=3), "torch")
    drafter = LayerSkipDrafter(
        runner,
        _prefilled(runner),
        SwiftConfig(),
        DraftHead(runner, None, PROMPT),
        lambda: PLAIN,
        costs=_costs(),
        payoff={"gained": 0.0, "passes": 40.0},
    )
    assert not drafter.payoff.pays(0.1, 0.06)
    # without costs (the drafter alone, as the tests above build it) there is no gate and nothing to keep
    bare = LayerSkipDrafter(runner, _prefilled(runner), SwiftConfig(), DraftHead(runner, None, PROMPT), lambda: PLAIN)
    assert bare.profile_state() is None


def test_the_engine_keeps_the_payoff_in_the_steps_profile(tmp_path) -> None:
    from swift_engine import SwiftEngine

    from .conftest import CharTokenizer

    model = tiny_model("llama", seed=1)
    gated = SwiftEngine(model, CharTokenizer(), SwiftConfig(skip_ratio=0.25), profile_store=tmp_path)
    plain = gated.generate(PROMPT, max_new_tokens=24, speculative=False).token_ids
    for _ in range(2):
        assert gated.generate(PROMPT, max_new_tokens=24, step_key="gated").token_ids == plain
    kept = gated.profiles.get("gated").extra["layer_skip_payoff"]
    assert DraftPayoff.from_dict(kept) == DraftPayoff(kept["gained"], kept["passes"])  # stored valid
    ungated = SwiftEngine(
        model,
        CharTokenizer(),
        SwiftConfig(skip_ratio=0.25, draft_payoff=False),
        profile_store=tmp_path,
    )
    assert ungated.generate(PROMPT, max_new_tokens=24, step_key="free").token_ids == plain
    assert "layer_skip_payoff" not in ungated.profiles.get("free").extra
