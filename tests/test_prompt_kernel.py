"""Prompt blocks of weight-only (int8/int4) models on dequantized weights: routing, exactness, choice."""

from __future__ import annotations

import pytest
import torch

from swift_engine import SwiftConfig, SwiftEngine
from swift_engine.kernels import kernel_choice as kc
from swift_engine.kernels.native_build import kernels_label
from swift_engine.kernels.quantize import (
    Int4Linear,
    Int8Linear,
    dequantize_available,
    dequantized,
    int4_available,
    quantize,
)
from swift_engine.model.runner import ModelRunner

from .conftest import CharTokenizer, tiny_model

PRECISIONS = ["int8"] + (["int4"] if int4_available() else [])
PROMPTS = [list(range(5, 42)), [3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2, 6, 4], [7] * 30]


def _model(arch: str, precision: str) -> torch.nn.Module:
    model = tiny_model(arch, seed=3).to(torch.bfloat16)
    quantize(model, precision)
    return model


def test_this_builds_int4_packing_is_the_layout_dense_weight_reads() -> None:
    # fails when a PyTorch release changes the packing: the engine would then keep the kernel
    assert dequantize_available() == int4_available()


@pytest.mark.parametrize("kind", [Int8Linear, Int4Linear])
@pytest.mark.parametrize(("out", "inp"), [(64, 64), (80, 96), (208, 32), (16, 64)])  # whole 64-row blocks, tails
def test_dense_weight_is_the_weight_the_kernel_multiplies_by(kind: type, out: int, inp: int) -> None:
    if kind is Int4Linear and not dequantize_available():
        pytest.skip("no int4 kernel (or another packing) in this PyTorch build")
    torch.manual_seed(out + inp)
    q = kind(torch.nn.Linear(inp, out, bias=False))
    weight = q.dense_weight()
    assert weight.shape == (out, inp) and weight.dtype == torch.bfloat16
    # the kernel applied to the identity gives its weights back, rounded to bfloat16
    seen = q(torch.eye(inp, dtype=torch.bfloat16)).float().t()
    assert torch.allclose(weight.float(), seen, rtol=2**-7, atol=1e-6)
    biased = kind(torch.nn.Linear(inp, out, bias=True))
    x = torch.randn(3, 2 * 8, inp).to(torch.bfloat16)
    with dequantized():
        dense = biased(x).float()
    own = biased(x).float()
    assert dense.shape == own.shape and torch.allclose(dense, own, rtol=0.02, atol=0.02 * own.abs().max().item())


@pytest.mark.parametrize("precision", PRECISIONS)
def test_only_prompt_blocks_of_enough_rows_use_dequantized_weights(precision: str) -> None:
    runner = ModelRunner(_model("llama", precision), "auto")
    assert runner.prompt_candidates == ["torch", "dequantized"]
    prompt = torch.tensor(PROMPTS[0])
    ids = prompt[:30]

    def hidden(kernel: str, min_rows: int, ids: torch.Tensor, ancestors: torch.Tensor | None = None) -> torch.Tensor:
        runner.set_prompt_kernel("torch")
        cache = runner.new_cache()
        runner.hidden(cache, prompt[:8], torch.arange(8))  # the same cached prefix, then the pass looked at
        runner.set_prompt_kernel(kernel, min_rows)
        return runner.hidden(cache, ids, torch.arange(8, 8 + len(ids)), ancestors)

    block, own = hidden("dequantized", 2, ids[8:]), hidden("torch", 2, ids[8:])
    assert not torch.equal(block, own)  # another product: the path was taken ...
    assert torch.allclose(block.float(), own.float(), atol=0.05 * own.float().abs().max().item())  # ... same model
    assert torch.equal(hidden("dequantized", 30, ids[8:]), own)  # 22 rows: below min_rows
    assert torch.equal(hidden("dequantized", 2, ids[8:9]), hidden("torch", 2, ids[8:9]))  # a one-token step
    chain = torch.ones(4, 4, dtype=torch.bool).tril_()
    # a verification tree must keep the kernel's bits (its rows are one-token steps' rows)
    assert torch.equal(hidden("dequantized", 2, ids[8:12], chain), hidden("torch", 2, ids[8:12], chain))
    native = f", {kernels_label()}" if runner.native_kernels else ""
    assert runner.kernels == "torch" + native
    runner.set_prompt_kernel("dequantized", 16)
    assert runner.kernels == f"torch{native}, prompt blocks dequantized from 16 rows"
    with pytest.raises(ValueError, match="not one of"):
        runner.set_prompt_kernel("packed")


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2"])
def test_greedy_swift_is_plain_decoding_with_dequantized_prompt_blocks(arch: str, precision: str, tmp_path) -> None:
    config = SwiftConfig(skip_ratio=0.25, search={"enabled": False}, prefill_block=8, cpu_kernels="auto")
    engine = SwiftEngine(_model(arch, precision), CharTokenizer(), config, profile_store=tmp_path)
    assert engine.kernel_choice is not None  # measured; then every block of 4 rows or more is dequantized
    engine.runner.set_prompt_kernel("dequantized", 4)
    drafted = 0
    for prompt in PROMPTS:
        plain = engine.generate(prompt, max_new_tokens=30, speculative=False)
        res = engine.generate(prompt, max_new_tokens=30)  # its prompt's blocks come from the prefix cache
        assert res.stats.cached_prompt_tokens > 0
        assert res.token_ids == plain.token_ids, f"{arch}/{precision}: SWIFT diverged on {prompt[:5]}..."
        drafted += res.stats.accepted_drafted_tokens
    assert drafted > 0


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.usefixtures("own_measurements")
def test_auto_measures_the_prompt_kernel_and_keeps_it_per_block_size(precision: str, tmp_path, monkeypatch) -> None:
    model = _model("qwen2", precision)

    def engine(block: int) -> SwiftEngine:
        config = SwiftConfig(search={"enabled": False}, prefill_block=block, cpu_kernels="auto")
        return SwiftEngine(model, CharTokenizer(), config, profile_store=tmp_path)

    first = engine(16)
    choice = first.kernel_choice
    assert choice is not None and choice.prompt_rows == 16
    assert set(choice.prompt_timings_ms) == {"torch", "dequantized"}
    faster = min(choice.prompt_timings_ms, key=lambda k: choice.prompt_timings_ms[k]["block"])
    assert choice.prompt == faster == first.runner.prompt_kernel
    assert 2 <= choice.prompt_min_rows <= 16 and "16-token prompt blocks" in choice.summary()
    assert first.generate(PROMPTS[0], max_new_tokens=6).stats.kernels == first.runner.kernels

    measured: list[int] = []
    real = kc.measure_kernels

    def counting(runner: ModelRunner, reps: int = 5, prompt_rows: int = 128) -> kc.KernelChoice:
        measured.append(prompt_rows)
        return real(runner, reps, prompt_rows)

    monkeypatch.setattr(kc, "measure_kernels", counting)
    assert engine(16).kernel_choice == choice and measured == []  # this machine's saved choice
    assert engine(32).kernel_choice.prompt_rows == 32 and measured == [32]  # another block size: measured


def test_dense_models_have_no_prompt_kernel_to_choose() -> None:
    for model in (tiny_model("llama"), tiny_model("llama").to(torch.bfloat16)):
        runner = ModelRunner(model, "auto")
        assert runner.prompt_candidates == ["torch"] and runner.prompt_kernel == "torch"
