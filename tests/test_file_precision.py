"""``dtype="auto"`` on a CPU follows the model file: 4-bit GGUFs at int4, 5- to 8-bit ones at int8,
float files at float32 (swift_engine.loading.file_precision)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from swift_engine.kernels.quantize import Int4Linear
from swift_engine.loading import auto_precision, load_model
from swift_engine.loading.file_precision import gguf_file_precision
from swift_integrations.engine_cache import _engine_key

gguf = pytest.importorskip("gguf")


def _gguf(path: Path, file_type: int | None) -> Path:
    """A GGUF file with only a header (no tensors): all that ``dtype="auto"`` reads."""
    writer = gguf.GGUFWriter(str(path), "llama")
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    "file_type, precision, kind",
    [
        (2, "int4", "Q4_0"),
        (3, "int4", "Q4_1"),
        (15, "int4", "Q4_K_M"),
        (12, "int4", "Q3_K_M"),  # below 4 bits: the lowest precision the engine has, above the file's
        (7, "int8", "Q8_0"),
        (17, "int8", "Q5_K_M"),
        (18, "int8", "Q6_K"),  # never below the file's precision
        (1, "float32", "F16"),
        (32, "float32", "BF16"),
        (0, "float32", "F32"),
    ],
)
def test_a_gguf_file_runs_at_its_own_precision(tmp_path, file_type, precision, kind) -> None:
    chosen = gguf_file_precision(_gguf(tmp_path / "m.gguf", file_type))
    assert (chosen.precision, chosen.file_kind) == (precision, kind)
    assert chosen.describe() == f"{precision} (dtype='auto' follows the file: {kind})"


def test_files_that_do_not_say_run_at_float32_and_say_why(tmp_path) -> None:
    assert gguf_file_precision(_gguf(tmp_path / "a.gguf", None)).file_kind == "GGUF with no general.file_type"
    unknown = gguf_file_precision(_gguf(tmp_path / "b.gguf", 999))
    assert unknown.precision == "float32" and "unknown general.file_type 999" in unknown.file_kind


def test_sources_resolve_as_the_loader_resolves_them(tmp_path) -> None:
    assert auto_precision(None).describe() == "int4 (dtype='auto' follows the file: Q4_1)"  # the embedded model
    q6 = _gguf(tmp_path / "q6.gguf", 18)
    assert auto_precision(str(q6)).precision == "int8"  # a .gguf file
    folder = tmp_path / "only-gguf"
    folder.mkdir()
    _gguf(folder / "m.gguf", 7)
    assert auto_precision(str(folder)).file_kind == "Q8_0"  # a folder whose one GGUF is the model
    assert auto_precision(str(tmp_path), gguf_file="q6.gguf").file_kind == "Q6_K"  # a folder and a named file
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert auto_precision(str(checkpoint)).describe() == "float32 (dtype='auto' follows the file: float checkpoint)"
    assert auto_precision("some-org/some-hub-model").precision == "float32"  # hub ids are not read (no download)


def test_a_hub_gguf_runs_at_the_precision_of_its_header(tmp_path, monkeypatch) -> None:
    """A GGUF named inside a hub repo: ``auto`` reads its header from the Hugging Face cache (never
    downloading for that), and :func:`load_model` fetches the file before deciding, then follows it."""
    from huggingface_hub import constants as hf_constants

    from swift_engine.kernels.quantize import quantized_precision

    from .test_loading import _write_tiny_gguf

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert auto_precision("swift-test/tiny-gguf", gguf_file="tiny.gguf").precision == "float32"  # not cached
    repo = tmp_path / "hub" / "models--swift-test--tiny-gguf"
    commit = "3" * 40
    _write_tiny_gguf(repo / "snapshots" / commit / "tiny.gguf", seed=0, file_type=7)  # a Q8_0 file
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert auto_precision("swift-test/tiny-gguf", gguf_file="tiny.gguf").file_kind == "Q8_0"
    loaded = load_model("swift-test/tiny-gguf", gguf_file="tiny.gguf", device="cpu", cache_dir=tmp_path / "conv")
    assert quantized_precision(loaded.model) == "int8" and loaded.model_name == "tiny"
    named = load_model(
        "swift-test/tiny-gguf", gguf_file="tiny.gguf", device="cpu", dtype="float32", cache_dir=tmp_path / "conv"
    )
    assert named.model.dtype == torch.float32 and quantized_precision(named.model) is None  # asked: as asked
    hub_key = _engine_key("swift-test/tiny-gguf", "tiny.gguf", "cpu", "auto", None)
    assert hub_key[3] == "auto"  # one engine before and after the download


def test_auto_is_the_same_engine_as_the_files_precision() -> None:
    """The engine cache keys "auto" by what it means: one engine, whichever way it is named."""
    embedded = _engine_key(None, None, "cpu", "auto", None)
    assert embedded == _engine_key(None, None, "cpu", "int4", None)
    assert embedded != _engine_key(None, None, "cpu", "float32", None)


def test_a_float_checkpoint_loads_at_float32_by_default(tmp_path) -> None:
    from .test_loading import _save_tiny

    folder = tmp_path / "tiny"
    _save_tiny(folder, seed=0)
    assert load_model(str(folder), device="cpu").model.dtype == torch.float32


@pytest.mark.slow  # loads and quantizes the embedded model
def test_the_embedded_model_loads_at_int4_by_default() -> None:
    model = load_model(device="cpu").model
    assert model.dtype == torch.bfloat16
    assert any(isinstance(m, Int4Linear) for m in model.modules())


def test_a_file_is_read_once_per_version(tmp_path) -> None:
    """Memoised (the adapters ask on every call), but a file rewritten in place is read again."""
    path = _gguf(tmp_path / "m.gguf", 18)
    assert gguf_file_precision(path).precision == "int8"
    mtime = path.stat().st_mtime_ns
    _gguf(path, 3)  # the same size: only the modification time tells the versions apart
    os.utime(path, ns=(mtime + 1_000_000_000, mtime + 1_000_000_000))
    assert gguf_file_precision(path).file_kind == "Q4_1"
