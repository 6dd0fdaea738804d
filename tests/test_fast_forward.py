"""The decoder loop without the module plumbing gives bitwise what the ``transformers`` modules give."""

from __future__ import annotations

import pytest
import torch

from swift_engine.decoding.tree import TokenTree
from swift_engine.kernels.native_build import native_status
from swift_engine.kernels.quantize import QKV, Int4Linear, Int8Linear, int4_available, quantize
from swift_engine.model.fast_forward import FastDecoder
from swift_engine.model.runner import ModelRunner

from .conftest import TINY_ARCHS, tiny_model, wide_tiny_model

PRECISIONS = ["float32", "bfloat16", "int8"] + (["int4"] if int4_available() else [])
PROMPT = torch.tensor([3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2, 6, 4, 3, 3, 8, 3, 2, 7, 9, 5, 0, 2])


def _runner(arch: str, precision: str, wide: bool = False, kernels: str = "torch") -> ModelRunner:
    model = wide_tiny_model(arch, seed=4) if wide else tiny_model(arch, seed=4)
    if precision != "float32":
        model = model.to(torch.bfloat16)
    if precision in ("int8", "int4"):
        quantize(model, precision)
    return ModelRunner(model, kernels)  # type: ignore[arg-type]


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


@pytest.mark.parametrize("wide", [False, True], ids=["", "wide"])
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_every_pass_is_bitwise_the_modules(arch: str, precision: str, wide: bool) -> None:
    runner = _runner(arch, precision, wide)
    assert runner.fast is not None
    # weight-only q/k/v run as one product (int4 stacks them only in whole 64-row blocks: the
    # narrow models' 32-row k/v keep their own products); dense layers never
    stacked = {"float32": 0, "bfloat16": 0, "int8": 6, "int4": 6 if wide else 0}[precision]
    assert runner.fast.fused == stacked
    fast = _passes(runner)
    runner.fast = None
    modules = _passes(runner)
    for i, (a, b) in enumerate(zip(fast, modules, strict=True)):
        assert torch.equal(a, b), f"{arch}/{precision}: pass {i} differs from the modules'"


@pytest.mark.skipif(not native_status().loaded, reason="swift's kernels are not usable here")
@pytest.mark.parametrize("precision", [p for p in PRECISIONS if p in ("int8", "int4")])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_on_swifts_kernels_every_pass_is_bitwise_the_modules_on_them(arch: str, precision: str) -> None:
    # the fused layers (decoder_layers.cpp), the int8 tiles and the final norm as one op, against the
    # modules' own forward on the same kernels
    runner = _runner(arch, precision, wide=True, kernels="auto")
    assert runner.native_kernels and runner.fast is not None and runner.fast.scripted is not None
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


@pytest.mark.parametrize("precision", ["int8"] + (["int4"] if int4_available() else []))
def test_quantize_stores_q_k_v_side_by_side_with_their_own_values(precision: str) -> None:
    runner = _runner("qwen2", "float32", wide=True)  # q/k/v with biases
    attn = runner.decoder.layers[1].self_attn
    dense = [getattr(attn, n) for n in QKV]
    kind = Int8Linear if precision == "int8" else Int4Linear
    alone = [kind(m.to(torch.bfloat16)) for m in dense]  # each quantized on its own
    quantize(runner.decoder.to(torch.bfloat16), precision)
    stacked = [getattr(attn, n) for n in QKV]
    for attr in ("qweight", "bias") + (("scales",) if precision == "int8" else ()):
        tensors = [getattr(m, attr) for m in stacked]
        assert len({t.untyped_storage().data_ptr() for t in tensors}) == 1, attr  # one buffer
        for mine, own in zip(tensors, (getattr(m, attr) for m in alone), strict=True):
            assert mine.is_contiguous() and torch.equal(mine, own), attr
