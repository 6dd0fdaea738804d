"""One-token steps (and, on swift's kernels, verification trees) as one TorchScript call: bitwise the
Python loop and the modules, used exactly where it applies."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from swift_engine.decoding.tree import TokenTree
from swift_engine.kernels.native_build import native_status
from swift_engine.kernels.quantize import int4_available, quantize
from swift_engine.model.runner import ModelRunner

from .conftest import tiny_config, wide_tiny_model

PRECISIONS = ["int8"] + (["int4"] if int4_available() else [])
PROMPT = torch.tensor([3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2, 6, 4])


#: PyTorch's kernels, and swift's kernels where they run here (then trees are scripted too)
KERNELS = ["torch"] + (["auto"] if native_status().loaded else [])


def _runner(arch: str, precision: str, kernels: str = "torch", **overrides: object) -> ModelRunner:
    model = wide_tiny_model(arch, seed=5, **overrides).to(torch.bfloat16)  # int4 stacks its q/k/v
    quantize(model, precision)
    return ModelRunner(model, kernels)


def _tree() -> TokenTree:
    """A chain with branches: rows whose ancestors are not a prefix of the tree."""
    tree = TokenTree.with_root(11)
    chain = tree.insert([12, 13, 14, 15], source=1, budget=16)
    tree.add(21, 0)
    tree.add(22, chain[1])
    tree.add(24, tree.add(23, chain[0]))
    return tree


def _steps(runner: ModelRunner, n: int = 6) -> list[torch.Tensor]:
    """Hidden states of ``n`` one-token steps after the prompt, then of a verification tree's rows."""
    cache = runner.new_cache()
    runner.hidden(cache, PROMPT, torch.arange(len(PROMPT)))
    out = []
    for i in range(n):
        out.append(runner.hidden(cache, torch.tensor([7 + i]), torch.tensor([len(PROMPT) + i])))
    past, cpu = len(PROMPT) + n, torch.device("cpu")
    # a draft: three steps skipping attention in layer 1 (its cache lags) and the MLP in layer 2
    with runner.skipper.skipping({1}, {2}):
        for i in range(3):
            out.append(runner.hidden(cache, torch.tensor([20 + i]), torch.tensor([past + i])))
    cache.truncate(past)
    tree = _tree()
    out.append(runner.hidden(cache, torch.tensor(tree.tokens), tree.positions(past, cpu), tree.ancestors(cpu)))
    return out


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_scripted_steps_are_bitwise_the_python_loop(arch: str, precision: str, kernels: str, monkeypatch) -> None:
    overrides = {"sliding_window": None} if arch == "mistral" else {}
    runner = _runner(arch, precision, kernels, **overrides)
    fast = runner.fast
    assert fast is not None and fast.scripted is not None
    calls: list[bool] = []
    real = type(fast.scripted).__call__

    def counted(self, *args):  # type: ignore[no-untyped-def]
        out = real(self, *args)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(type(fast.scripted), "__call__", counted)
    scripted = _steps(runner)
    # every step went through the script; the prompt block, the draft's and the tree's too where swift's
    # kernels attend their rows (the draft's first step, its layers still at one length, in any case)
    native = runner.native_kernels
    assert calls == ([True] if native else []) + [True] * 6 + [True, native, native] + [native]
    script = fast.scripted
    fast.scripted = None
    python = _steps(runner)
    fast.scripted = script
    runner.fast = None
    modules = _steps(runner)
    for i, (a, b, c) in enumerate(zip(scripted, python, modules, strict=True)):
        assert torch.equal(a, b), f"{arch}/{precision}/{kernels}: pass {i} differs from the Python loop"
        assert torch.equal(a, c), f"{arch}/{precision}/{kernels}: pass {i} differs from the modules"


def test_it_applies_only_where_the_step_is_what_it_computes(monkeypatch) -> None:
    runner = _runner("llama", "int8")
    assert runner.fast is not None and runner.fast.scripted is not None
    script = runner.fast.scripted
    cache = runner.new_cache()
    runner.hidden(cache, PROMPT, torch.arange(len(PROMPT)))
    past = len(PROMPT)
    seen: list[bool] = []
    real = type(script).__call__

    def spy(self, *args):  # type: ignore[no-untyped-def]
        out = real(self, *args)
        seen.append(out is not None)
        return out

    monkeypatch.setattr(type(script), "__call__", spy)
    runner.hidden(cache, torch.tensor([5]), torch.tensor([past]))  # a plain step: scripted
    assert seen == [True]
    with runner.skipper.skipping({1}, set()):  # a draft's first step: scripted too (skips layer 1's attention)
        runner.hidden(cache, torch.tensor([6]), torch.tensor([past + 1]))
    assert seen == [True, True]
    cache.truncate(past + 1)
    with runner.skipper.skipping({1}, set()):  # leaves layer 1 one entry shorter
        runner.hidden(cache, torch.tensor([6]), torch.tensor([past + 1]))
    seen.clear()
    # uneven cache: declined on PyTorch's kernels (the one-row SDPA call reads one length for all layers)
    step = runner.hidden(cache, torch.tensor([7]), torch.tensor([past + 2]))
    assert seen == [False] and step.shape == (1, 128)
    seen.clear()
    fresh = runner.new_cache()
    runner.hidden(fresh, PROMPT, torch.arange(past))
    runner.hidden(fresh, PROMPT[:3], torch.arange(past, past + 3))  # a prompt block: the Python loop
    assert seen == []
    chain = torch.ones(3, 3, dtype=torch.bool).tril_()
    runner.hidden(fresh, PROMPT[3:6], torch.arange(past + 3, past + 6), chain)  # a chain, aten: declined
    assert seen == [False]
    monkeypatch.undo()
    # a sliding window, dense weights and the float32 default are not what the script computes
    assert _runner("mistral", "int8").fast.scripted is None  # type: ignore[union-attr]
    dense = ModelRunner(AutoModelForCausalLM.from_config(tiny_config("llama")).eval(), "torch")
    assert dense.fast is not None and dense.fast.scripted is None
