"""Every supported architecture: SWIFT greedy output == transformers' greedy output, token for token."""

from __future__ import annotations

import pytest
import torch

from swift_engine import SwiftConfig, SwiftEngine
from swift_engine.model.sublayer_skip import UnsupportedArchitectureError

from .conftest import TINY_ARCHS, CharTokenizer, tiny_model

PROMPTS = [[3, 14, 15, 9, 26, 5, 35], list(range(40, 70)), [7] * 12]


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_greedy_identical_to_generate(arch: str) -> None:
    model = tiny_model(arch)
    engine = SwiftEngine(model, CharTokenizer(), SwiftConfig(skip_ratio=0.25, search={"enabled": False}))
    drafted = 0
    for prompt in PROMPTS:
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=48, min_new_tokens=48, do_sample=False)[
            0, len(prompt) :
        ].tolist()
        res = engine.generate(prompt, max_new_tokens=48)
        assert res.token_ids == ref, f"{arch}: SWIFT diverged from greedy decoding on {prompt[:5]}..."
        assert res.finish_reason == "length"
        assert res.stats.new_tokens == 48
        drafted += res.stats.drafted_tokens
        assert res.stats.verify_steps < 48  # at least one step accepted a draft token
    assert drafted > 0


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_skipping_changes_the_draft_not_the_weights(arch: str) -> None:
    model = tiny_model(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    engine = SwiftEngine(model, CharTokenizer(), SwiftConfig(search={"enabled": False}))
    runner = engine.runner
    ids = torch.tensor([1, 2, 3, 4])
    pos = torch.arange(4)
    full = runner.forward(runner.new_cache(), ids, pos)
    with runner.skipper.skipping({1, 2}, {2, 3}):
        skipped = runner.forward(runner.new_cache(), ids, pos)
    again = runner.forward(runner.new_cache(), ids, pos)
    assert not torch.allclose(full, skipped)
    torch.testing.assert_close(full, again)
    assert model.state_dict().keys() == before.keys()


def test_first_and_last_layer_are_never_skipped() -> None:
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="first and last"):
        SwiftEngine(model, CharTokenizer(), SwiftConfig(skip_attention=(0, 2)))
    with pytest.raises(ValueError, match="first and last"):
        SwiftEngine(model, CharTokenizer(), SwiftConfig(skip_mlp=(5,)))


def test_unsupported_architecture_is_a_clear_error() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50)).eval()
    with pytest.raises(UnsupportedArchitectureError, match="gpt2"):
        SwiftEngine(model, CharTokenizer())
