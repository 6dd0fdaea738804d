"""bfloat16 and weight-only int8/int4: greedy SWIFT is token-identical to plain decoding at that precision.

Below float32 one ulp flips near-ties, so this rests on each verification row being bitwise its
one-token step: row-by-row attention (row_attention.py) and dense kernels checked row-invariant
(batch_invariance.py). The first test checks that property directly on hidden states; the others
check the outputs on tiny models of every architecture and on the embedded model.
"""

from __future__ import annotations

import random

import pytest
import torch

from swift_engine import SwiftConfig, SwiftEngine
from swift_engine.decoding.tree import TokenTree
from swift_engine.kernels.batch_invariance import invariant_rows, largest_invariant_rows
from swift_engine.kernels.quantize import (
    Int4Linear,
    Int8Linear,
    int4_available,
    int8_available,
    quantize,
    quantize_int8,
)
from swift_engine.model.runner import ModelRunner

from .conftest import TINY_ARCHS, CharTokenizer, tiny_model

pytestmark = pytest.mark.skipif(not int8_available(), reason="this PyTorch build lacks the int8 CPU kernel")

_rnd = random.Random(1)
PROMPTS = [[3, 14, 15, 9, 26, 5, 35], list(range(40, 70)), [7] * 12] + [
    [_rnd.randrange(96) for _ in range(_rnd.randrange(3, 60))] for _ in range(3)
]


PRECISIONS = ["bfloat16", "int8"] + (["int4"] if int4_available() else [])


def _model(arch: str, precision: str):
    model = tiny_model(arch).to(torch.bfloat16)
    if precision in ("int8", "int4"):
        quantize(model, precision)
    return model


def _tree() -> TokenTree:
    """A root, a 4-token chain and branches off it: rows whose ancestors are not laid out in order."""
    tree = TokenTree.with_root(11)
    chain = tree.insert([12, 13, 14, 15], source=1, budget=16)
    tree.add(21, 0)  # sibling of the chain's first token
    tree.add(22, chain[1])  # sibling of the chain's third token (parent: the second)
    branch = tree.add(23, chain[0])
    tree.add(24, branch)  # a grandchild on a branch: its ancestors are not a prefix of the tree
    return tree


@pytest.mark.parametrize("prompt_length", [30, 62])  # 62: the tree's rows straddle a 64-key padding boundary
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("arch", ["llama", "mistral", "gemma2"])
def test_a_tree_row_is_bitwise_its_one_token_steps(arch: str, precision: str, prompt_length: int) -> None:
    runner = ModelRunner(_model(arch, precision), "torch")
    assert runner.row_invariant  # below float32 it is on by default
    prompt = torch.tensor((PROMPTS[1] * 3)[:prompt_length])
    positions = torch.arange(len(prompt))
    tree = _tree()
    base = runner.new_cache()
    runner.hidden(base, prompt, positions)
    past = len(prompt)
    ids = torch.tensor(tree.tokens)
    rows = runner.hidden(base, ids, tree.positions(past, torch.device("cpu")), tree.ancestors(torch.device("cpu")))
    for node in range(len(tree)):
        path = [node]
        while tree.parents[path[0]] >= 0:
            path.insert(0, tree.parents[path[0]])
        cache = runner.new_cache()
        runner.hidden(cache, prompt, positions)
        for depth, step in enumerate(path):
            h = runner.hidden(cache, torch.tensor([tree.tokens[step]]), torch.tensor([past + depth]))
        assert torch.equal(h[0], rows[node]), f"{arch}/{precision}: tree row {node} differs from its steps"


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_greedy_swift_is_plain_decoding_at_low_precision(arch: str, precision: str) -> None:
    engine = SwiftEngine(
        _model(arch, precision), CharTokenizer(), SwiftConfig(skip_ratio=0.25, search={"enabled": False})
    )
    assert engine.runner.precision == precision
    drafted = 0
    for prompt in PROMPTS:
        plain = engine.generate(prompt, max_new_tokens=40, speculative=False)
        res = engine.generate(prompt, max_new_tokens=40)
        assert res.token_ids == plain.token_ids, f"{arch}/{precision}: SWIFT diverged on {prompt[:5]}..."
        drafted += res.stats.accepted_drafted_tokens
    assert drafted > 0  # verification trees of several rows were exercised
    cap = engine.config.tree.max_tree_tokens
    if engine.runner.native_kernels:  # swift's kernels are row-invariant by construction
        assert engine.runner.max_rows == cap
    else:  # PyTorch's, as far as this machine's check found (bfloat16 on one AMD Zen 4 VM: 20 rows)
        assert 1 <= engine.runner.max_rows <= cap


def test_float32_keeps_the_fused_attention_by_default() -> None:
    runner = ModelRunner(tiny_model("llama"), "torch")
    assert runner.precision == "float32" and not runner.row_invariant and runner.max_rows == 0


@pytest.mark.parametrize(("kind", "tolerance"), [(Int8Linear, 0.03), (Int4Linear, 0.15)])  # int4: groups of 32
def test_quantized_linear_is_close_to_the_float_layer(kind: type, tolerance: float) -> None:
    if kind is Int4Linear and not int4_available():
        pytest.skip("this PyTorch build lacks the int4 CPU kernel")
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96, bias=True)
    q = kind(linear)
    x = torch.randn(5, 64)
    out = q(x.to(torch.bfloat16)).float()
    ref = linear(x)
    assert (out - ref).abs().max() / ref.abs().max() < tolerance
    assert q(x[None].to(torch.bfloat16)).shape == (1, 5, 96)  # 3-D inputs, as the decoder passes them


def test_int8_row_subsets_agree_and_int4_refuses_shapes_its_kernel_cannot_take() -> None:
    torch.manual_seed(0)
    q = Int8Linear(torch.nn.Linear(64, 96, bias=True))
    x = torch.randn(5, 64).to(torch.bfloat16)
    ids = torch.tensor([3, 50, 95])
    weight, scales, bias = q.rows(ids)
    sub = torch.ops.aten._weight_int8pack_mm(x, weight, scales) + bias
    assert torch.equal(sub, q(x)[:, ids])
    with pytest.raises(ValueError, match="out_features % 16"):
        Int4Linear(torch.nn.Linear(64, 40))


@pytest.mark.skipif(not int4_available(), reason="this PyTorch build lacks the int4 CPU kernel")
def test_int4_gives_back_the_4_bit_grid_of_a_q4_1_gguf_file() -> None:
    """The embedded SmolLM2 is a Q4_1 file: int4 must land on its codes, not requantize them."""
    from swift_engine.loading.load import load_model

    loaded = load_model(None, dtype=torch.bfloat16)
    model = loaded.model
    layers = [f"model.layers.{i}.{name}" for i in (0, 11) for name in ("self_attn.q_proj", "mlp.down_proj")]
    dense = {name: model.get_submodule(name).weight.detach().float().clone() for name in layers}
    quantize(model, "int4")
    for name in layers:
        layer = model.get_submodule(name)
        assert isinstance(layer, Int4Linear)
        w = layer(torch.eye(layer.in_features, dtype=torch.bfloat16)).float().t()  # its weights, dequantized
        groups = dense[name].reshape(w.shape[0], -1, 32)
        step = (groups.amax(-1) - groups.amin(-1)) / 15  # the file's quantization step per block
        error = (w - dense[name]).abs().reshape(groups.shape).amax(-1) / step.clamp_min(1e-12)
        # every weight on the file's code; what is left is bfloat16 rounding of scale and zero
        assert error.max() < 0.25, f"{name}: {error.max():.3f} of a step off the file's grid"


def test_quantize_replaces_every_linear_and_unties_the_head() -> None:
    model = tiny_model("qwen2").to(torch.bfloat16)
    model.config.tie_word_embeddings = True
    n = quantize_int8(model)
    assert n == 6 * 7 + 1  # q, k, v, o, gate, up, down per layer, and the head
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    assert model.config.tie_word_embeddings is False
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    if int4_available():
        model = tiny_model("qwen2").to(torch.bfloat16)
        model.config.tie_word_embeddings = True
        assert quantize(model, "int4") == 6 * 7 + 1
        assert isinstance(model.lm_head, Int8Linear)  # the output head stays int8 (quality: docs/precision.md)
        assert sum(isinstance(m, Int4Linear) for m in model.modules()) == 6 * 7
        assert model.config.tie_word_embeddings is False
        assert ModelRunner(model, "torch").precision == "int4"
        layers = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.Linear(96, 40))  # 40 rows: not int4's shape
        assert quantize(layers.to(torch.bfloat16), "int4") == 2
        assert isinstance(layers[0], Int4Linear) and isinstance(layers[1], Int8Linear)


def test_row_check_finds_where_a_product_stops_being_row_invariant() -> None:
    x = torch.randn(8, 4)
    assert invariant_rows(lambda a: a * 2, x) == 8
    # a product that mixes rows once it sees more than 3 of them
    assert invariant_rows(lambda a: a + (a.sum(0) if a.shape[0] > 3 else 0), x) == 3
    model = _model("llama", "int8")
    assert largest_invariant_rows(model, model.get_output_embeddings(), 16, torch.bfloat16) == 16


def _counted_row_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows each row-invariance check covered, as the runner runs them (the real check)."""
    import swift_engine.model.runner as runner_module

    calls: list[int] = []
    real = runner_module.largest_invariant_rows

    def counting(*args, **kwargs):  # the real check; only its calls are counted
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(runner_module, "largest_invariant_rows", counting)
    return calls


def test_the_row_check_runs_once_per_model_kernel_and_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counted_row_checks(monkeypatch)
    model = _model("llama", "bfloat16")
    first, second = ModelRunner(model, "torch"), ModelRunner(model, "torch")
    verdict = first.measure_rows(16)  # this machine's: PyTorch's bfloat16 kernels may mix rows past a count
    assert 1 <= verdict <= 16 and calls == [16]
    # kept on the model
    assert second.measure_rows(16) == verdict and second.measure_rows(8) == verdict and calls == [16]
    assert ModelRunner(model, "torch").measure_rows(8) == min(8, verdict) and calls == [16]  # fewer rows: covered
    assert 1 <= ModelRunner(model, "torch").measure_rows(24) <= 24 and calls == [16, 24]  # more rows: checked again
    ModelRunner(_model("llama", "bfloat16"), "torch").measure_rows(16)
    assert len(calls) == 3  # another model


def test_a_later_process_reads_the_kept_row_verdict_instead_of_checking(
    monkeypatch: pytest.MonkeyPatch, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    calls = _counted_row_checks(monkeypatch)
    monkeypatch.setenv("SWIFT_MEASUREMENT_DIR", str(tmp_path / "machine"))  # this test's own measurements
    store = tmp_path / "profiles"

    def engine() -> SwiftEngine:  # a fresh model object each time: what a new process has
        return SwiftEngine(_model("llama", "int8"), CharTokenizer(), profile_store=store)

    first = engine()
    first.kernel_choice  # kernels and the row check settle (as at a first call)
    assert calls == [first.config.tree.max_tree_tokens]
    kept = list((tmp_path / "machine" / "_costs").glob("rows-*.json"))
    assert len(kept) == 1 and kept[0].name.startswith(f"rows-{first.fingerprint}-")
    second = engine()
    second.kernel_choice
    assert len(calls) == 1 and second.runner.max_rows == first.runner.max_rows  # read, not checked
    kept[0].write_text('{"checked_rows": "many"}')  # unusable: checked again, and rewritten
    third = engine()
    with caplog.at_level("WARNING"):
        third.kernel_choice
    assert len(calls) == 2 and "unusable row-invariance file" in caplog.text
    engine().calibrate()  # measuring again drops the verdict too
    assert not kept[0].exists()


def test_trees_stay_within_the_rows_the_kernels_keep_invariant(monkeypatch: pytest.MonkeyPatch) -> None:
    import swift_engine.decode_loop as decode_loop

    engine = SwiftEngine(
        _model("llama", "bfloat16"), CharTokenizer(), SwiftConfig(skip_ratio=0.25, search={"enabled": False})
    )
    engine.kernel_choice  # kernels and the row check settle first (as at a first call)
    engine.runner.max_rows = 3  # as if this machine's kernels changed results beyond 3 rows
    sizes: list[int] = []
    real = decode_loop.build_tree

    def recording(*args, **kwargs):  # the real tree builder; only its results are recorded
        tree = real(*args, **kwargs)
        sizes.append(len(tree))
        return tree

    monkeypatch.setattr(decode_loop, "build_tree", recording)
    for prompt in PROMPTS[:3]:
        plain = engine.generate(prompt, max_new_tokens=32, speculative=False)
        assert engine.generate(prompt, max_new_tokens=32).token_ids == plain.token_ids
    assert sizes and max(sizes) == 3


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
def test_embedded_model_greedy_swift_is_plain_decoding(precision: str) -> None:
    from swift_integrations.engine_cache import get_engine

    engine = get_engine(None, None, "cpu", precision)
    assert engine.runner.precision == precision
    prompts = [
        [{"role": "user", "content": "Write a Python function that checks whether a number is prime."}],
        [{"role": "user", "content": "Summarize: the fox jumped over the dog, which barked at the fox."}],
    ]
    accepted = 0
    for prompt in prompts:
        plain = engine.generate(prompt, max_new_tokens=48, speculative=False, step_key="lowp")
        for _ in range(2):  # the second call drafts from a warm profile and the step's draft memory
            res = engine.generate(prompt, max_new_tokens=48, step_key="lowp")
            assert res.token_ids == plain.token_ids, f"{precision}: diverged on {prompt[0]['content'][:40]}"
            accepted += res.stats.accepted_drafted_tokens
    assert accepted > 0


@pytest.mark.parametrize("arch", ["llama", "gemma2"])  # an sdpa model and an eager one
def test_other_users_of_the_model_compute_as_before(arch: str) -> None:
    model = tiny_model(arch).to(torch.bfloat16)
    prompt = torch.tensor([[1, 2, 3, 4, 5] * 8])
    before = model.generate(prompt, max_new_tokens=30, do_sample=False)
    engine = SwiftEngine(model, CharTokenizer(), SwiftConfig(search={"enabled": False}))
    engine.generate(prompt[0].tolist(), max_new_tokens=8)
    assert model.config._attn_implementation.startswith("swift_rows")
    assert torch.equal(model.generate(prompt, max_new_tokens=30, do_sample=False), before)


def test_row_invariant_passes_use_one_kernel_for_every_shape(tmp_path) -> None:
    from swift_engine.kernels.kernel_choice import KernelChoice
    from swift_engine.model.runner import KernelPlan

    mixed = KernelChoice(
        step="torch",
        verify="packed",
        timings_ms={"torch": {"step": 50.0, "verify": 90.0}, "packed": {"step": 70.0, "verify": 60.0}},
    )
    assert mixed.uniform().plan == KernelPlan("packed", "packed")  # 130 ms over both shapes, against 140
    engine = SwiftEngine(
        _model("llama", "bfloat16"),
        CharTokenizer(),
        SwiftConfig(search={"enabled": False}, cpu_kernels="auto"),
        profile_store=tmp_path,
    )
    with pytest.raises(ValueError, match="one kernel"):
        engine.runner.set_plan(KernelPlan("torch", "onednn"))
    plain = engine.generate(PROMPTS[1], max_new_tokens=24, speculative=False)
    assert engine.generate(PROMPTS[1], max_new_tokens=24).token_ids == plain.token_ids
    step, verify = engine.runner.plan
    assert step == verify and engine.runner.max_rows is not None and engine.runner.max_rows >= 1
