"""On the embedded SmolLM2-135M (fp32): SWIFT's greedy output is exactly transformers' greedy output."""

from __future__ import annotations

import pytest
import torch

from swift_engine import SwiftConfig, SwiftEngine

pytestmark = pytest.mark.slow

DOC = (
    "The Great Barrier Reef is the world's largest coral reef system, composed of over 2,900 individual reefs "
    "and 900 islands stretching for over 2,300 kilometres. It is located in the Coral Sea, off the coast of "
    "Queensland, Australia. Rising sea temperatures have caused mass coral bleaching events in 2016, 2017 and 2020."
)
PROMPTS = [
    [{"role": "user", "content": "Summarize this text in one sentence:\n" + DOC}],
    [{"role": "user", "content": f"Context: {DOC}\n\nQuestion: Where is the Great Barrier Reef located?"}],
    [{"role": "user", "content": "Write a Python function `fib(n)` that returns the n-th Fibonacci number."}],
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Name three primary colors."},
    ],
    [{"role": "user", "content": "Translate to French: The cat sleeps on the warm windowsill."}],
    "def quicksort(arr):\n    ",
]


@pytest.fixture(scope="module")
def references(smol) -> list[list[int]]:
    refs = []
    for p in PROMPTS:
        ids = smol.encode_prompt(p)
        out = smol.model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)
        refs.append(out[0, len(ids) :].tolist())
    return refs


@pytest.mark.parametrize(
    "name, config",
    [
        ("default", SwiftConfig()),  # search + context drafts: what users get
        ("layer-skip only", SwiftConfig(context_drafts=False, skip_ratio=0.2, search={"enabled": False})),
        ("full-vocab draft head", SwiftConfig(draft_vocab_size=None, skip_ratio=0.3, search={"enabled": False})),
    ],
)
def test_greedy_is_token_identical(smol, references, name, config) -> None:
    engine = SwiftEngine(smol.model, smol.tokenizer, config, model_name=smol.model_name)
    drafted = accepted = 0
    for prompt, ref in zip(PROMPTS, references):
        res = engine.generate(prompt, max_new_tokens=32, step_key="exactness")
        expected = ref
        if ref and ref[-1] in engine.eos_ids:
            assert res.finish_reason == "eos"
        assert res.token_ids == expected, f"[{name}] diverged on {str(prompt)[:60]}"
        drafted += res.stats.drafted_tokens
        accepted += res.stats.accepted_drafted_tokens
    if name != "default":
        assert accepted > 0, "layer-skip drafts were never accepted"


def test_context_drafts_carry_copies(smol) -> None:
    """A reply that copies its context is drafted from the context: several tokens per verify step."""
    engine = SwiftEngine(smol.model, smol.tokenizer, SwiftConfig(), model_name=smol.model_name)
    prompt = [{"role": "user", "content": "Repeat the following text exactly, word for word:\n" + DOC}]
    ids = smol.encode_prompt(prompt)
    ref = smol.model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, len(ids) :].tolist()
    res = engine.generate(prompt, max_new_tokens=32, step_key="copy")
    assert res.token_ids == ref
    s = res.stats
    assert s.context_accepted_tokens >= 20, s
    assert s.mean_accepted_per_step > 2.0, s
