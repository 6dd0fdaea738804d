"""``cpu_kernels="auto"``: kernels chosen by measurement on this machine, saved, re-measured when it changes."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from swift_engine import SwiftConfig, SwiftEngine
from swift_engine.kernels import kernel_choice as kc
from swift_engine.kernels.costs import measurement_dir
from swift_engine.kernels.cpu_kernels import onednn_available
from swift_engine.model.runner import KernelPlan

from .conftest import CharTokenizer, tiny_model

pytestmark = [
    pytest.mark.skipif(not onednn_available(), reason="only PyTorch's kernels here: nothing to choose"),
    pytest.mark.usefixtures("own_measurements"),  # these tests watch the measuring itself
]

PROMPT = [3, 14, 15, 9, 26, 5, 35]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_model("qwen2", seed=2)


def _engine(model, store, **config) -> SwiftEngine:
    return SwiftEngine(model, CharTokenizer(), SwiftConfig(search={"enabled": False}, **config), profile_store=store)


def test_auto_keeps_the_fastest_measured_kernel_per_shape(model, tmp_path) -> None:
    engine = _engine(model, tmp_path)
    assert engine.runner.needs_kernel_choice and "torch" in engine.runner.candidates
    res = engine.generate(PROMPT, max_new_tokens=12)
    choice = engine.kernel_choice
    assert choice is not None and set(choice.timings_ms) == set(engine.runner.candidates)
    for shape in ("step", "verify"):
        fastest = min(choice.timings_ms, key=lambda k: choice.timings_ms[k][shape])
        assert getattr(choice, shape) == fastest
    assert engine.runner.plan == KernelPlan(choice.step, choice.verify)
    assert res.stats.kernels == engine.runner.kernels
    assert choice.machine and "threads" in choice.machine


def test_the_choice_is_saved_and_reused_until_the_machine_changes(model, tmp_path, monkeypatch) -> None:
    first = _engine(model, tmp_path)
    chosen = first.kernel_choice
    path = kc.kernel_file(measurement_dir(), first.fingerprint, first.runner)
    assert json.loads(path.read_text())["step"] == chosen.step

    def no_measuring(runner, *args, **kwargs):
        raise AssertionError("measured again although this machine's choice is saved")

    monkeypatch.setattr(kc, "measure_kernels", no_measuring)
    assert _engine(model, tmp_path).kernel_choice == chosen
    # another thread count is another machine as far as kernels go: a new key, measured again
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        assert kc.kernel_file(measurement_dir(), first.fingerprint, first.runner) != path
        with pytest.raises(AssertionError, match="measured again"):
            _engine(model, tmp_path).kernel_choice
    finally:
        torch.set_num_threads(threads)


def test_a_choice_saved_by_an_older_engine_is_measured_again(model, tmp_path, monkeypatch) -> None:
    """An older version's file timed passes this engine no longer makes (its prompt blocks): measured again."""
    first = _engine(model, tmp_path)
    assert first.kernel_choice is not None  # measured and saved
    path = kc.kernel_file(measurement_dir(), first.fingerprint, first.runner)
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "version": 1}))
    measured: list[int] = []
    real = kc.measure_kernels

    def counted(runner, *args, **kwargs):  # type: ignore[no-untyped-def]
        measured.append(1)
        return real(runner, *args, **kwargs)

    monkeypatch.setattr(kc, "measure_kernels", counted)
    assert _engine(model, tmp_path).kernel_choice is not None and measured == [1]
    assert json.loads(path.read_text())["version"] == kc._VERSION


def test_a_bad_choice_file_is_measured_again(model, tmp_path, caplog) -> None:
    engine = _engine(model, tmp_path)
    path = kc.kernel_file(measurement_dir(), engine.fingerprint, engine.runner)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"step": "turbo", "verify": "torch"}))
    with caplog.at_level(logging.WARNING, logger="swift_engine.kernels.kernel_choice"):
        choice = engine.kernel_choice
    assert "measuring again" in caplog.text
    assert choice.step in engine.runner.candidates
    assert json.loads(path.read_text())["step"] == choice.step


def test_fixed_kernels_are_not_measured(model, tmp_path) -> None:
    for mode in ("torch", "onednn", "packed"):
        engine = _engine(model, tmp_path, cpu_kernels=mode)
        assert engine.kernel_choice is None and engine.runner.kernels == mode


@pytest.mark.parametrize(
    "plan", [KernelPlan("torch", "packed"), KernelPlan("packed", "torch"), KernelPlan("onednn", "torch")]
)
def test_every_plan_decodes_the_same_tokens(model, tmp_path, plan: KernelPlan) -> None:
    """Mixed plans (a kernel per shape) keep greedy SWIFT output equal to plain greedy decoding."""
    reference = model.generate(torch.tensor([PROMPT]), max_new_tokens=30, min_new_tokens=30, do_sample=False)
    engine = _engine(model, tmp_path, cpu_kernels="onednn", skip_ratio=0.25)
    engine.runner.set_plan(plan)
    assert engine.runner.kernels == f"{plan.step}+{plan.verify}"
    res = engine.generate(PROMPT, max_new_tokens=30)
    assert res.token_ids == reference[0, len(PROMPT) :].tolist()
    assert res.stats.kernels == engine.runner.kernels
    engine.runner.set_plan(KernelPlan("torch", "torch"))  # lets go of the packed copy


def test_a_dropped_engine_lets_go_of_the_packed_weights(tmp_path) -> None:
    import gc

    model = tiny_model("llama", seed=4)
    engine = _engine(model, tmp_path, cpu_kernels="packed")
    kernels = model.__dict__["_swift_linear_kernels"]
    assert kernels.packed
    del engine
    gc.collect()
    assert not kernels.packed  # its only user is gone: the copy is freed
    first, second = _engine(model, tmp_path, cpu_kernels="packed"), _engine(model, tmp_path, cpu_kernels="packed")
    del first
    gc.collect()
    assert kernels.packed  # the second engine still uses it
    second.runner.set_plan(KernelPlan("torch", "torch"))
    assert not kernels.packed


def test_the_packed_copy_is_measured_and_reported(tmp_path) -> None:
    """``auto`` records what packing costs in memory; the stats say what a call's kernels held."""
    from swift_engine.kernels.cpu_kernels import linear_weight_bytes

    model = tiny_model("llama", seed=5)
    weights = linear_weight_bytes(model)
    engine = _engine(model, tmp_path)
    choice = engine.kernel_choice
    if "packed" not in choice.timings_ms:
        pytest.skip("oneDNN's packed weights disagree with F.linear here: not a candidate")
    # the blocked layout may pad, never shrink
    assert choice.extra_bytes["packed"] >= weights and choice.extra_bytes["torch"] == 0
    assert choice.extra_memory_bytes == (choice.extra_bytes["packed"] if "packed" in choice.plan else 0)
    engine.runner.set_plan(KernelPlan("packed", "packed"))
    packed = engine.generate(PROMPT, max_new_tokens=4).stats.kernel_memory_bytes
    assert packed == engine.runner.packed_bytes >= weights
    engine.runner.set_plan(KernelPlan("torch", "torch"))
    assert engine.generate(PROMPT, max_new_tokens=4).stats.kernel_memory_bytes == 0
