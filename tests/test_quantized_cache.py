"""int4/int8 weights kept beside a GGUF's conversion (loading/quantized_cache.py): a later load builds the
model from them, bitwise the model quantized in memory, and a bad file is ignored, never trusted."""

from __future__ import annotations

import pathlib

import pytest
import torch

from swift_engine.kernels.quantize import int4_available, quantized_precision
from swift_engine.loading import load_model, model_fingerprint, quantized_cache
from swift_engine.loading.quantized_cache import weights_file

pytestmark = pytest.mark.skipif(not int4_available(), reason="this PyTorch build lacks the int4 CPU kernel")


@pytest.fixture()
def cache(tmp_path: pathlib.Path) -> pathlib.Path:
    """A conversion cache of its own holding the embedded model's conversion (linked from the machine's
    cache when it has one: converting again would take ~15 s), and no kept weights."""
    from swift_engine.loading.catalog import embedded_model_path
    from swift_engine.loading.gguf import _default_cache_dir, _gguf_cache_key, _gguf_digest

    name = _gguf_cache_key(_gguf_digest(embedded_model_path()))
    machine = _default_cache_dir() / "models" / name
    if machine.is_dir():
        entry = tmp_path / "models" / name
        entry.mkdir(parents=True)
        for f in machine.iterdir():
            if not f.name.startswith("weights-"):
                (entry / f.name).symlink_to(f)
    return tmp_path


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("precision", ["int4", "int8"])
def test_a_second_load_reads_the_kept_weights_and_is_bitwise_the_first(
    cache: pathlib.Path, precision, monkeypatch, caplog
) -> None:
    first = load_model(None, device="cpu", dtype=precision, cache_dir=cache)  # quantizes, keeps
    (entry,) = (p for p in (cache / "models").iterdir() if p.is_dir())
    kept = weights_file(entry, precision)
    assert kept.is_file()
    monkeypatch.setattr(quantized_cache, "quantize", lambda *a: pytest.fail("quantized again"))
    second = load_model(None, device="cpu", dtype=precision, cache_dir=cache)
    assert "Ignoring" not in caplog.text
    assert second.source == str(entry) and quantized_precision(second.model) == precision
    a, b = _state(first.model), _state(second.model)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert model_fingerprint(first.model) == model_fingerprint(second.model)  # the same profiles
    unstacked = [
        p
        for n, p in second.model.named_parameters()
        if not n.endswith(
            (
                "q_proj.qweight",
                "k_proj.qweight",
                "v_proj.qweight",
                "q_proj.scales",
                "k_proj.scales",
                "v_proj.scales",
                "_proj.bias",
            )
        )
    ]
    assert all(p.data_ptr() % 64 == 0 for p in unstacked)  # PyTorch's kernels load them aligned
    ids = first.tokenizer("The sea is", return_tensors="pt").input_ids
    with torch.inference_mode():  # PyTorch's own kernels (the modules' forward) on the kept weights
        assert torch.equal(first.model(ids).logits, second.model(ids).logits)


def test_a_kept_file_that_does_not_match_is_ignored_and_replaced(cache: pathlib.Path, caplog) -> None:
    load_model(None, device="cpu", dtype="int4", cache_dir=cache)
    (entry,) = (p for p in (cache / "models").iterdir() if p.is_dir())
    kept = weights_file(entry, "int4")
    kept.write_bytes(b"not safetensors")
    again = load_model(None, device="cpu", dtype="int4", cache_dir=cache)
    assert quantized_precision(again.model) == "int4" and "Ignoring the kept int4 weights" in caplog.text
    assert kept.stat().st_size > 1_000_000  # quantized again, and kept again
