"""The decoder loop without the module plumbing gives bitwise what the ``transformers`` modules give."""

from __future__ import annotations

import pytest
import torch

from swift_engine.fast_forward import FastDecoder
from swift_engine.quantize import int4_available, quantize
from swift_engine.runner import ModelRunner
from swift_engine.tree import TokenTree

from .conftest import TINY_ARCHS, tiny_model

PRECISIONS = ["float32", "bfloat16", "int8"] + (["int4"] if int4_available() else [])
PROMPT = torch.tensor([3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2, 6, 4, 3, 3, 8, 3, 2, 7, 9, 5, 0, 2])


def _runner(arch: str, precision: str) -> ModelRunner:
    model = tiny_model(arch, seed=4)
    if precision != "float32":
        model = model.to(torch.bfloat16)
    if precision in ("int8", "int4"):
        quantize(model, precision)
    return ModelRunner(model, "torch")


def _passes(runner: ModelRunner) -> list[torch.Tensor]:
    """Hidden states of a prompt block, one-token steps, a tree with branches, and a draft pass."""
    cache = runner.new_cache()
    out = [runner.hidden(cache, PROMPT[:24], torch.arange(24))]
    for i in range(24, 27):
        out.append(runner.hidden(cache, PROMPT[i : i + 1], torch.tensor([i])))
    tree = TokenTree.with_root(11)
    chain = tree.insert([12, 13, 14], source=1, budget=16)
    tree.add(21, 0)
    tree.add(22, chain[1])
    ids, dev = torch.tensor(tree.tokens), torch.device("cpu")
    out.append(runner.hidden(cache, ids, tree.positions(27, dev), tree.ancestors(dev)))
    cache.truncate(27)
    with runner.skipper.skipping({1, 3}, {2, 4}):  # a draft: skipped attention and MLP sublayers
        out.append(runner.hidden(cache, torch.tensor([5]), torch.tensor([27])))
        cache.truncate(27)
        # the search re-feeds cached tokens at their own positions, hiding their cached entries
        out.append(runner.hidden(cache, PROMPT[20:27], torch.arange(20, 27), past_visible=20))
    return out


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_every_pass_is_bitwise_the_modules(arch: str, precision: str) -> None:
    runner = _runner(arch, precision)
    assert runner.fast is not None
    fast = _passes(runner)
    runner.fast = None
    modules = _passes(runner)
    for i, (a, b) in enumerate(zip(fast, modules, strict=True)):
        assert torch.equal(a, b), f"{arch}/{precision}: pass {i} differs from the modules'"


def test_other_architectures_and_hooked_models_keep_their_modules() -> None:
    for arch in sorted(set(TINY_ARCHS) - {"llama", "mistral", "qwen2"}):
        assert ModelRunner(tiny_model(arch), "torch").fast is None, arch
    model = tiny_model("llama")
    handle = model.model.layers[2].mlp.register_forward_hook(lambda module, args, out: out * 2)
    assert FastDecoder.for_model(model, model.model, ModelRunner(tiny_model("llama"), "torch").skipper) is None
    assert ModelRunner(model, "torch").fast is None  # the hook runs, as the user asked
    handle.remove()
    # a hook added after the runner was made: its passes run through the modules while it is there
    runner = ModelRunner(model, "torch")
    assert runner.fast is not None and runner.fast.usable()
    plain = runner.hidden(runner.new_cache(), PROMPT[:8], torch.arange(8))
    seen: list[int] = []
    handle = model.model.layers[2].mlp.register_forward_hook(lambda module, args, out: seen.append(1))
    assert not runner.fast.usable()
    assert torch.equal(runner.hidden(runner.new_cache(), PROMPT[:8], torch.arange(8)), plain) and seen == [1]
    handle.remove()
    assert runner.fast.usable()
