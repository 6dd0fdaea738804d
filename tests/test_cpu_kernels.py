"""oneDNN linears on CPU: chosen where they apply, same tokens, and confined to the engine's passes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from swift_engine import SwiftConfig, SwiftEngine
from swift_engine.kernels.cpu_kernels import (
    PACK_MEMORY_SHARE,
    LinearKernels,
    available_memory_bytes,
    linear_weight_bytes,
    onednn_available,
    should_pack,
    use_onednn,
)

from .conftest import CharTokenizer, tiny_model

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN linear")


def test_mode_choice() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not use_onednn("torch", cpu, torch.float32)
    assert not use_onednn("auto", cuda, torch.float32)  # never on accelerators
    assert not use_onednn("onednn", cuda, torch.float32)
    assert not use_onednn("auto", cpu, torch.float16)  # auto: float32 and bfloat16 only
    assert use_onednn("auto", cpu, torch.bfloat16) == onednn_available()
    assert use_onednn("auto", cpu, torch.float32) == onednn_available()


@needs_onednn
def test_same_tokens_and_close_logits_as_stock_linears() -> None:
    prompt = list(range(10, 40))
    results = {}
    for mode in ("packed", "onednn", "torch"):
        model = tiny_model("llama", seed=3)
        engine = SwiftEngine(model, CharTokenizer(), SwiftConfig(cpu_kernels=mode, search={"enabled": False}))
        assert engine.runner.kernels == mode
        cache = engine.runner.new_cache()
        logits = engine.runner.forward(cache, torch.tensor(prompt), torch.arange(len(prompt)))
        res = engine.generate(prompt, max_new_tokens=40)
        results[mode] = (logits, res.token_ids)
    ref_logits, ref_ids = results["torch"]
    for mode in ("packed", "onednn"):
        logits, ids = results[mode]
        assert torch.allclose(logits, ref_logits, atol=1e-4, rtol=1e-4), mode
        assert ids == ref_ids, mode


@needs_onednn
def test_auto_packs_when_the_copy_fits_in_memory() -> None:
    model = tiny_model("llama", seed=3)
    assert should_pack("packed", model) and not should_pack("onednn", model) and not should_pack("torch", model)
    free = available_memory_bytes()
    assert should_pack("auto", model) == (free is not None and linear_weight_bytes(model) <= PACK_MEMORY_SHARE * free)
    # the copy is the wrapped layers' weights, and a tiny model's always fits
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    assert linear_weight_bytes(model) == sum(m.weight.numel() * 4 for m in linears)
    # auto measures among these (tests/test_kernel_choice.py); stock PyTorch is always one
    runner = SwiftEngine(model, CharTokenizer(), SwiftConfig(search={"enabled": False})).runner
    assert runner.candidates == ["torch", "onednn", "packed"]


@needs_onednn
def test_active_only_inside_engine_passes() -> None:
    """``model.generate`` on the same object (the benchmark's baseline) must run PyTorch's stock path."""
    model = tiny_model("qwen2", seed=1)
    engine = SwiftEngine(model, CharTokenizer(), SwiftConfig(cpu_kernels="packed", search={"enabled": False}))
    kernels = model.__dict__["_swift_linear_kernels"]
    assert isinstance(kernels, LinearKernels)
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    assert kernels.wrapped == len(linears) > 0
    seen: list[bool] = []
    handle = linears[0].register_forward_hook(lambda *_: seen.append(kernels.current() is not None))
    try:
        engine.generate([5, 6, 7, 8], max_new_tokens=6)
        engine_states = list(seen)
        seen.clear()
        model.generate(torch.tensor([[5, 6, 7, 8]]), max_new_tokens=6, do_sample=False)
        stock_states = list(seen)
    finally:
        handle.remove()
    assert engine_states and all(engine_states)
    assert stock_states and not any(stock_states)
    # a second engine over the same model shares the wrappers instead of wrapping twice
    SwiftEngine(model, CharTokenizer(), SwiftConfig(search={"enabled": False}))
    assert model.__dict__["_swift_linear_kernels"] is kernels
