"""Tests for swift_engine.loading, against the real embedded model and real tiny checkpoints.

The embedded GGUF conversion costs ~20 s, so it happens exactly once per session (module-scoped
fixture); every other embedded-model test reuses that conversion cache. The conversion cache's
failure modes (damaged entries, unwritable or full disks, concurrent writers) are tested on a tiny
GGUF written by the tests themselves, which converts in well under a second. Network access is
blocked for every test, which is how "never downloads" is checked.
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import importlib.util
import json
import logging
import os
import pathlib
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from swift_engine import loading
from swift_engine.loading import catalog
from swift_engine.loading import gguf as gguf_cache
from swift_engine.loading.catalog import EMBEDDED_MODEL_NAME, embedded_model_path
from swift_engine.loading.fingerprint import model_fingerprint
from swift_engine.loading.load import LoadedModel, load_model
from swift_engine.loading.precision import resolve_device, resolve_dtype

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

    def __init__(self, cache_dir: pathlib.Path, first: LoadedModel, second: LoadedModel):
        self.cache_dir = cache_dir
        self.first = first
        self.second = second


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedLoads]:
    cache_dir = tmp_path_factory.mktemp("swift-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _refuse_network)
        first = load_model(cache_dir=cache_dir, device="cpu", dtype="float32")
        second = load_model(cache_dir=cache_dir, device="cpu", dtype="float32")
    yield EmbeddedLoads(cache_dir, first, second)


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


def test_a_missing_embedded_model_offline_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == catalog.EMBEDDED_PACKAGE else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(catalog.importlib.util, "find_spec", find_spec)
    monkeypatch.setenv("SWIFT_MODELS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        FileNotFoundError, match=r"downloads are off \(HF_HUB_OFFLINE=1\).*swift-accel pull smollm2-135m"
    ):
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
    # the second load read that entry, not the GGUF file (source above): no timing needed to tell


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
        assert loaded.model.dtype == torch.float32  # as asked ("auto" would follow the file: int4)
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
def test_embedded_fingerprint_is_stable_and_only_samples_the_weights(embedded: EmbeddedLoads) -> None:
    model = embedded.second.model
    fp = model_fingerprint(model)
    assert fp == model_fingerprint(embedded.first.model)
    # cheap by construction (no wall clock): a value outside the sample does not change it, one inside does
    weight = model.get_input_embeddings().weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[weight.shape[0] // 2, 3] += 1.0
            assert model_fingerprint(model) == fp
            weight.view(-1)[0] += 1.0
            assert model_fingerprint(model) != fp
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert model_fingerprint(model) == fp
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


def test_weights_identity_is_the_same_at_every_dtype_and_differs_between_models(tmp_path: pathlib.Path) -> None:
    from swift_engine.loading.fingerprint import weights_identity

    _save_tiny(tmp_path / "m", seed=4)
    loads = {dtype: load_model(tmp_path / "m", device="cpu", dtype=dtype).model for dtype in ("float32", "bfloat16")}
    assert model_fingerprint(loads["float32"]) != model_fingerprint(loads["bfloat16"])  # the loaded form differs
    assert weights_identity(loads["float32"]) == weights_identity(loads["bfloat16"])  # the weights do not
    assert weights_identity(_tiny_model(seed=5)) != weights_identity(loads["float32"])


def test_fingerprint_is_deterministic_across_processes(tmp_path: pathlib.Path) -> None:
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


def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    """No offline switch in the environment or in huggingface_hub: hub ids may download."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)


def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    _online(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _hand_built_hub_cache(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, refs: dict[str, int]
) -> dict[str, pathlib.Path]:
    """An HF cache holding swift-test/tiny-llama, one snapshot per ref (ref -> seed); ref -> snapshot."""
    import huggingface_hub.constants as hf_constants

    hub_cache = tmp_path / "hub"
    repo = hub_cache / "models--swift-test--tiny-llama"
    (repo / "refs").mkdir(parents=True)
    snapshots = {}
    for i, (ref, seed) in enumerate(refs.items()):
        commit = str(i) * 40
        snapshots[ref] = repo / "snapshots" / commit
        _save_tiny(snapshots[ref], seed=seed)
        (repo / "refs" / ref).write_text(commit)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub_cache))
    return snapshots


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "local_files_only"])
def test_hub_id_in_local_hf_cache_loads(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """A hub id already in the local HF cache loads offline (cache layout built by hand).

    Run with ``peft`` installed too: transformers then probes the hub for an adapter config even
    with ``local_files_only=True``, which the loader must avoid.
    """
    (snapshot,) = _hand_built_hub_cache(tmp_path, monkeypatch, {"main": 4}).values()
    if how == "HF_HUB_OFFLINE":
        _offline(monkeypatch)
        loaded = load_model("swift-test/tiny-llama", device="cpu")
    else:
        _online(monkeypatch)
        loaded = load_model("swift-test/tiny-llama", device="cpu", local_files_only=True)
    assert loaded.model_name == "swift-test/tiny-llama"
    assert pathlib.Path(loaded.source) == snapshot
    assert loaded.model.config.num_hidden_layers == 4


def test_an_unknown_bare_name_fails_at_once_listing_the_short_names(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``model="smollm2"`` (a mistyped short name) used to spend ~25 s in hub retries: a name without an
    owner that is not cached fails before any connection, naming the catalog's short names; a cached
    legacy id without an owner (``gpt2``-style) still loads."""
    _hand_built_hub_cache(tmp_path, monkeypatch, {"main": 4})
    _online(monkeypatch)
    connections: list[object] = []

    def refuse(sock: socket.socket, address: object) -> None:
        connections.append(address)
        raise ConnectionRefusedError(111, "no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    with pytest.raises(loading.ModelNotAvailableError, match="smollm2-135m, qwen2.5-coder-0.5b") as info:
        load_model("smollm2", device="cpu")
    assert connections == [] and info.value.model_id == "smollm2"
    legacy = tmp_path / "hub" / "models--tiny-legacy"
    shutil.copytree(tmp_path / "hub" / "models--swift-test--tiny-llama", legacy, symlinks=True)
    _offline(monkeypatch)
    assert load_model("tiny-legacy", device="cpu").model.config.num_hidden_layers == 4


def test_hub_revision_selects_the_cached_snapshot(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``revision`` reaches the hub resolution: a branch/tag name through refs/, a commit hash directly."""
    snapshots = _hand_built_hub_cache(tmp_path, monkeypatch, {"main": 4, "v1": 5})
    _offline(monkeypatch)
    fingerprints = {}
    for rev in ("main", "v1"):
        loaded = load_model("swift-test/tiny-llama", device="cpu", revision=rev)
        assert pathlib.Path(loaded.source) == snapshots[rev]
        fingerprints[rev] = model_fingerprint(loaded.model)
    assert fingerprints["main"] != fingerprints["v1"]
    assert fingerprints["v1"] == model_fingerprint(_tiny_model(seed=5))
    default = load_model("swift-test/tiny-llama", device="cpu")  # revision None: main
    assert pathlib.Path(default.source) == snapshots["main"]
    by_commit = load_model("swift-test/tiny-llama", device="cpu", revision=snapshots["v1"].name)
    assert pathlib.Path(by_commit.source) == snapshots["v1"]

    with pytest.raises(loading.ModelNotAvailableError, match="at revision 'v2'") as info:
        load_model("swift-test/tiny-llama", device="cpu", revision="v2")
    assert "--revision v2" in str(info.value) and info.value.revision == "v2"


class _FakeHub(http.server.ThreadingHTTPServer):
    """A local stand-in for the Hugging Face Hub (HF_ENDPOINT), serving folders as repo revisions.

    Just enough of the Hub's HTTP API for huggingface_hub and transformers to resolve, list and
    download files: ``/{repo}/resolve/{rev}/{file}``, ``/api/models/{repo}[/revision/{rev}]`` and
    ``/api/models/{repo}/tree/{rev}[/{folder}]``. ``repos`` maps repo id -> revision -> (commit, folder).
    """

    def __init__(self, repos: dict[str, dict[str, tuple[str, pathlib.Path]]]):
        self.repos = repos
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), _FakeHubHandler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def lookup(self, repo: str, rev: str) -> tuple[str, pathlib.Path] | None:
        revisions = self.repos.get(repo, {})
        return revisions.get(rev) or next((v for v in revisions.values() if v[0] == rev), None)


class _FakeHubHandler(http.server.BaseHTTPRequestHandler):
    server: _FakeHub

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any) -> None:
        self._reply(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def do_GET(self) -> None:
        path = urllib.parse.urlparse(self.path).path
        self.server.requests.append(f"{self.command} {path} {self.headers.get('Authorization', '')}".rstrip())
        parts = path.strip("/").split("/")
        api = parts[:2] == ["api", "models"]
        repo = "/".join(parts[2:4] if api else parts[:2])
        rest = parts[4:] if api else parts[2:]
        if repo not in self.server.repos:
            return self._reply(404, b"{}", {"X-Error-Code": "RepoNotFound"})
        rev = rest[1] if len(rest) > 1 else "main"
        found = self.server.lookup(repo, rev)
        if found is None:
            return self._reply(404, b"{}", {"X-Error-Code": "RevisionNotFound"})
        commit, folder = found
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        if api and rest[:1] in ([], ["revision"]):
            return self._json({"id": repo, "sha": commit, "siblings": [{"rfilename": f} for f in files]})
        if api and rest[:1] == ["tree"]:
            sub = "/".join(rest[2:])
            tree = [
                {
                    "type": "file",
                    "path": f,
                    "size": (folder / f).stat().st_size,
                    "oid": hashlib.sha1(f.encode()).hexdigest(),
                }
                for f in files
                if not sub or f.startswith(sub + "/")
            ]
            if sub and not tree:
                return self._reply(404, b"{}", {"X-Error-Code": "EntryNotFound"})
            return self._json(tree)
        if not api and rest[:1] == ["resolve"]:
            name = "/".join(rest[2:])
            if name not in files:
                return self._reply(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
            data = (folder / name).read_bytes()
            etag = f'"{hashlib.sha256(data).hexdigest()}"'
            return self._reply(200, data, {"X-Repo-Commit": commit, "ETag": etag})
        return self._reply(404)

    do_HEAD = do_GET


_DOWNLOAD_SCRIPT = """
import json, os, socket, sys, time
from swift_engine.loading import ModelNotAvailableError, hub_download_expected, load_model, model_fingerprint

out = {"before": hub_download_expected("swift-test/tiny-llama")}
m = load_model("swift-test/tiny-llama", device="cpu")
out["main"] = [m.source, m.model_name, model_fingerprint(m.model)]
out["after"] = hub_download_expected("swift-test/tiny-llama")
m = load_model("swift-test/tiny-llama", device="cpu", revision="v1", model_kwargs={"use_cache": False}, token="hf_t1")
out["v1"] = [m.source, model_fingerprint(m.model), m.model.config.use_cache]
g = load_model("swift-test/tiny-gguf", gguf_file="tiny.gguf", device="cpu", cache_dir=sys.argv[1], token="hf_t2")
out["gguf"] = [g.source, g.model_name]

def refuse(*args, **kwargs):
    raise ConnectionRefusedError(111, "connection refused by the test")

socket.socket.connect = refuse  # from here on, the Hub is unreachable
time.sleep = lambda seconds: None  # huggingface_hub's retries back off for ~20 s
os.environ["HF_HUB_OFFLINE"] = "1"
out["offline"] = [load_model("swift-test/tiny-llama", device="cpu", revision=r).source for r in ("main", "v1")]
del os.environ["HF_HUB_OFFLINE"]
try:
    load_model("swift-test/never-downloaded", device="cpu")
except ModelNotAvailableError as exc:
    out["unreachable"] = str(exc)
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_hub_id_downloads_when_online(tmp_path: pathlib.Path) -> None:
    """Online, a hub id that is not cached is downloaded (at the asked revision) and cached; offline,
    the downloaded snapshots load without a connection; a Hub that cannot be reached is one clear
    error. Against a local fake Hub (HF_ENDPOINT), in a subprocess so the endpoint is read fresh."""
    main, v1, gguf_commit = "1" * 40, "2" * 40, "3" * 40
    _save_tiny(tmp_path / "repo-main", seed=5)
    _save_tiny(tmp_path / "repo-v1", seed=6)
    _write_tiny_gguf(tmp_path / "repo-gguf" / "tiny.gguf", seed=0)
    hub = _FakeHub(
        {
            "swift-test/tiny-llama": {"main": (main, tmp_path / "repo-main"), "v1": (v1, tmp_path / "repo-v1")},
            "swift-test/tiny-gguf": {"main": (gguf_commit, tmp_path / "repo-gguf")},
        }
    )
    thread = threading.Thread(target=hub.serve_forever, daemon=True)
    thread.start()
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1")
        root = pathlib.Path(__file__).resolve().parents[1]
        proc = subprocess.run(
            [sys.executable, "-c", _DOWNLOAD_SCRIPT, str(tmp_path / "conv")],
            capture_output=True,
            text=True,
            cwd=root,
            env=env,
            timeout=300,
        )
    finally:
        hub.shutdown()
        hub.server_close()
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("RESULT "), proc.stdout  # the loader prints nothing
    out = json.loads(lines[0].removeprefix("RESULT "))

    snapshots = tmp_path / "hf" / "hub" / "models--swift-test--tiny-llama" / "snapshots"
    assert out["before"] is True and out["after"] is False
    assert out["main"] == [str(snapshots / main), "swift-test/tiny-llama", model_fingerprint(_tiny_model(seed=5))]
    assert out["v1"] == [str(snapshots / v1), model_fingerprint(_tiny_model(seed=6)), False]
    assert any("/v1/" in r or "/v1 " in r for r in hub.requests), hub.requests  # the revision reached the Hub
    # token= reached the Hub, with the downloads of its own call only
    assert {r.split()[1] for r in hub.requests if "Bearer hf_t1" in r} >= {
        f"/swift-test/tiny-llama/resolve/{v1}/{name}" for name in ("config.json", "model.safetensors", "tokenizer.json")
    }
    assert any("/swift-test/tiny-gguf/resolve/" in r and r.endswith("Bearer hf_t2") for r in hub.requests)
    assert not any(main in r and "Bearer" in r for r in hub.requests)
    gguf_snapshot = tmp_path / "hf" / "hub" / "models--swift-test--tiny-gguf" / "snapshots" / gguf_commit
    assert out["gguf"] == [str(gguf_snapshot / "tiny.gguf"), "tiny"]
    assert out["offline"] == [str(snapshots / main), str(snapshots / v1)]
    message = out["unreachable"]
    assert "'swift-test/never-downloaded' is not in the local Hugging Face cache" in message
    assert "the Hugging Face Hub could not be reached" in message and "\n" not in message


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


UNCACHED = "swift-test/definitely-not-a-real-model-0123"


def _assert_one_clear_line(exc: BaseException, *needles: str) -> str:
    message = str(exc)
    assert "\n" not in message and message.strip() == message
    for needle in (UNCACHED, "is not in the local Hugging Face cache", f"`hf download {UNCACHED}", *needles):
        assert needle in message, (needle, message)
    return message


def test_uncached_hub_id_with_hf_hub_offline_is_one_clear_error(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HF_HUB_OFFLINE=1, set after huggingface_hub was imported: the cache only, no connection."""
    _offline(monkeypatch)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(loading.ModelNotAvailableError) as info:
        load_model(UNCACHED, device="cpu", cache_dir=tmp_path)
    _assert_one_clear_line(info.value, "HF_HUB_OFFLINE=1", "unset HF_HUB_OFFLINE")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    assert info.value.model_id == UNCACHED and info.value.revision is None
    # local_files_only=False cannot override the environment (huggingface_hub refuses every request)
    with pytest.raises(loading.ModelNotAvailableError, match="HF_HUB_OFFLINE"):
        load_model(UNCACHED, device="cpu", local_files_only=False)
    # the hub library's own switch (HF_HUB_OFFLINE read at its import) counts too
    import huggingface_hub.constants as hf_constants

    _online(monkeypatch)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(loading.ModelNotAvailableError, match="offline mode"):
        load_model(UNCACHED, device="cpu")
    from swift_engine import ModelNotAvailableError

    assert ModelNotAvailableError is loading.ModelNotAvailableError


def test_uncached_hub_id_with_local_files_only_is_one_clear_error(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _online(monkeypatch)
    with pytest.raises(loading.ModelNotAvailableError) as info:
        load_model(UNCACHED, device="cpu", cache_dir=tmp_path, local_files_only=True, revision="v1")
    _assert_one_clear_line(info.value, "local_files_only=True", "at revision 'v1'", "--revision v1`")
    with pytest.raises(loading.ModelNotAvailableError, match="'model.gguf' of the Hugging Face hub repo"):
        load_model(UNCACHED, gguf_file="model.gguf", device="cpu", local_files_only=True)
    # the engine's constructor passes the switches through
    from swift_engine import SwiftEngine

    with pytest.raises(loading.ModelNotAvailableError, match="at revision 'abc'"):
        SwiftEngine.from_pretrained(UNCACHED, device="cpu", revision="abc", local_files_only=True)


def test_hub_id_with_only_a_config_cached_is_one_clear_error(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repo whose config alone was fetched (say by AutoConfig) is not a loadable model offline."""
    (snapshot,) = _hand_built_hub_cache(tmp_path, monkeypatch, {"main": 4}).values()
    for path in snapshot.iterdir():
        if path.name != "config.json":
            path.unlink()
    _offline(monkeypatch)
    with pytest.raises(loading.ModelNotAvailableError, match="only its config is cached"):
        load_model("swift-test/tiny-llama", device="cpu")


def test_model_kwargs_reach_transformers(tmp_path: pathlib.Path) -> None:
    _save_tiny(tmp_path / "m", seed=0)
    plain = load_model(tmp_path / "m", device="cpu")
    assert plain.model.config.use_cache is True
    loaded = load_model(
        tmp_path / "m", device="cpu", model_kwargs={"use_cache": False, "low_cpu_mem_usage": True}
    )  # a config override and a loading option
    assert loaded.model.config.use_cache is False
    assert model_fingerprint(loaded.model) == model_fingerprint(plain.model)
    # and through the engine's constructor
    from swift_engine import ProfileStore, SwiftEngine

    engine = SwiftEngine.from_pretrained(
        str(tmp_path / "m"), device="cpu", model_kwargs={"use_cache": False}, profile_store=ProfileStore(tmp_path / "p")
    )
    assert engine.model.config.use_cache is False


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"attn_implementation": "eager"}, "attn_implementation"),
        ({"dtype": torch.float16, "device_map": "cpu"}, "device_map, dtype"),
        ({"torch_dtype": "float16"}, "torch_dtype"),
        ({"revision": "main", "local_files_only": True}, "local_files_only, revision"),
    ],
)
def test_model_kwargs_the_loader_sets_are_rejected(tmp_path: pathlib.Path, kwargs: dict[str, Any], named: str) -> None:
    _save_tiny(tmp_path / "m", seed=0)
    with pytest.raises(ValueError, match=f"model_kwargs cannot set {named}: the loader sets them itself") as info:
        load_model(tmp_path / "m", device="cpu", model_kwargs=kwargs)
    assert "\n" not in str(info.value)
    # checked before anything is looked up: a hub id offline gets the same error, not "not cached"
    with pytest.raises(ValueError, match="model_kwargs cannot set") as info:
        load_model(UNCACHED, device="cpu", local_files_only=True, model_kwargs=kwargs)
    assert not isinstance(info.value, loading.ModelNotAvailableError)


def test_token_is_given_once(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="token was given twice"):
        load_model(UNCACHED, device="cpu", token="a", model_kwargs={"token": "b"})
    _save_tiny(tmp_path / "m", seed=0)  # a local model ignores it, like local_files_only
    assert load_model(tmp_path / "m", device="cpu", token="a").source == str(tmp_path / "m")


def test_model_kwargs_with_a_gguf_source_are_rejected(tmp_path: pathlib.Path) -> None:
    """GGUF files (the embedded model too) are converted here; model_kwargs cannot apply to them."""
    with pytest.raises(ValueError, match="model_kwargs \\(use_cache\\) apply to transformers checkpoints"):
        load_model(None, device="cpu", model_kwargs={"use_cache": False})
    gguf = _write_tiny_gguf(tmp_path / "t.gguf", seed=0)
    with pytest.raises(ValueError, match="is a GGUF file"):
        load_model(gguf, device="cpu", cache_dir=tmp_path / "c", model_kwargs={"use_cache": False})
    assert not (tmp_path / "c").exists()  # rejected before converting anything
    load_model(gguf, device="cpu", cache_dir=tmp_path / "c", model_kwargs={})  # empty is no kwargs


def test_revision_with_a_local_model_is_an_error(tmp_path: pathlib.Path) -> None:
    """A local folder or file has no revisions: asking for one is a mistake, not something to ignore."""
    _save_tiny(tmp_path / "m", seed=0)
    gguf = _write_tiny_gguf(tmp_path / "t.gguf", seed=0)
    for source, what in ((tmp_path / "m", "local folder"), (gguf, "local file"), (None, "embedded default model")):
        with pytest.raises(
            ValueError, match=f"revision='v1' applies to Hugging Face hub ids, but the model is.*{what}"
        ):
            load_model(source, device="cpu", revision="v1")
    for bad in ("", "  "):
        with pytest.raises(ValueError, match="revision must be a non-empty string"):
            load_model(tmp_path / "m", device="cpu", revision=bad)
    # local_files_only means nothing to a local model (it never downloads): any value loads it
    for flag in (True, False, None):
        assert load_model(tmp_path / "m", device="cpu", local_files_only=flag).source == str(tmp_path / "m")


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
        load_model(device="cpu", dtype="int3")


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
        ("int8", torch.bfloat16),  # weight-only int8 computes in bfloat16
        ("int4", torch.bfloat16),  # and so does groupwise int4
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


@pytest.mark.parametrize("bad", ["int3", "fp64", "", "half-ish", torch.int8])
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


# --------------------------------------------------------------------------------------------------
# GGUF conversion cache robustness, on a tiny GGUF written here (converts in well under a second)
# --------------------------------------------------------------------------------------------------


def _byte_level_alphabet() -> list[str]:
    """GPT-2's byte -> printable character table: the base vocabulary of a byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b if b in printable else next(extra)) for b in range(256)]


def _write_tiny_gguf(path: pathlib.Path, seed: int, file_type: int | None = None) -> pathlib.Path:
    """A 2-layer llama GGUF with a byte-level BPE tokenizer (~150 kB), F32 tensors (``file_type``: the
    ``general.file_type`` its header claims, for ``dtype="auto"``; none by default).

    Every seed gives a file of the same size (same metadata and shapes), which is what the
    "same size and mtime, different content" test needs.
    """
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    hidden, ffn, layers, heads, kv_heads = 32, 64, 2, 4, 2
    tokens = ["<unk>", "<s>", "</s>", *_byte_level_alphabet(), "Ġt", "he", "Ġthe"]
    vocab = len(tokens)

    def weight(*shape: int) -> Any:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.add_block_count(layers)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (vocab - 3))
    writer.add_token_merges(["Ġ t", "h e", "Ġt he"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_tensor("token_embd.weight", weight(vocab, hidden))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.add_tensor("output.weight", weight(vocab, hidden))
    kv_dim = kv_heads * (hidden // heads)
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(hidden, hidden))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(kv_dim, hidden))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(kv_dim, hidden))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(hidden, hidden))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(ffn, hidden))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(ffn, hidden))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(hidden, ffn))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class TinyCache:
    """A tiny GGUF and a pristine conversion cache holding its one entry (never modified by tests)."""

    def __init__(self, gguf: pathlib.Path, cache_dir: pathlib.Path, entry: pathlib.Path, loaded: LoadedModel):
        self.gguf = gguf
        self.cache_dir = cache_dir
        self.entry = entry
        self.loaded = loaded

    def copy_cache(self, dest: pathlib.Path) -> pathlib.Path:
        """A private copy of the pristine cache for a test to damage; returns the copied entry."""
        shutil.copytree(self.cache_dir, dest)
        return dest / "models" / self.entry.name


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyCache:
    root = tmp_path_factory.mktemp("tiny-gguf")
    gguf = _write_tiny_gguf(root / "src" / "tiny.gguf", seed=0)
    cache_dir = root / "pristine-cache"
    loaded = load_model(gguf, cache_dir=cache_dir, device="cpu")
    assert loaded.source == str(gguf)
    (entry,) = _cache_entries(cache_dir)
    return TinyCache(gguf, cache_dir, entry, loaded)


def _hidden_dirs(cache_dir: pathlib.Path) -> list[str]:
    """Temp/trash folders left in the models folder (they are hidden)."""
    models = cache_dir / "models"
    return sorted(p.name for p in models.iterdir() if p.is_dir() and p.name.startswith(".")) if models.exists() else []


def _cache_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == gguf_cache.__name__ and r.levelno == logging.WARNING]


def _tiny_logits(loaded: LoadedModel) -> torch.Tensor:
    ids = torch.tensor([[3, 80, 120, 260, 261]])
    with torch.no_grad():
        return loaded.model(ids).logits.float()


def test_tiny_gguf_entry_records_digest_and_sizes(tiny: TinyCache) -> None:
    info = json.loads((tiny.entry / "swift_cache_info.json").read_text())
    digest = hashlib.sha256(tiny.gguf.read_bytes()).hexdigest()
    assert info["gguf_sha256"] == digest
    assert info["files"]["model.safetensors"] == (tiny.entry / "model.safetensors").stat().st_size
    assert {"config.json", "tokenizer.json"} <= set(info["files"])
    assert _hidden_dirs(tiny.cache_dir) == []
    hit = load_model(tiny.gguf, cache_dir=tiny.cache_dir, device="cpu")
    assert hit.source == str(tiny.entry)
    assert torch.allclose(_tiny_logits(hit), _tiny_logits(tiny.loaded), atol=1e-6)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file modes")
@pytest.mark.parametrize("read_only", ["models_dir", "cache_dir"])
def test_read_only_cache_dir_still_loads(
    tiny: TinyCache, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, read_only: str
) -> None:
    cache_dir = tmp_path / "cache"
    (cache_dir / "models").mkdir(parents=True)
    locked = cache_dir / "models" if read_only == "models_dir" else cache_dir
    if read_only == "cache_dir":
        (cache_dir / "models").rmdir()
    locked.chmod(0o555)
    try:
        loaded = load_model(tiny.gguf, cache_dir=cache_dir, device="cpu")
    finally:
        locked.chmod(0o755)
    assert loaded.source == str(tiny.gguf)
    assert torch.allclose(_tiny_logits(loaded), _tiny_logits(tiny.loaded), atol=1e-6)
    assert any("Could not save the conversion" in m for m in _cache_warnings(caplog))
    assert not (cache_dir / "models").exists() or list((cache_dir / "models").iterdir()) == []


def test_read_only_filesystem_still_loads(
    tiny: TinyCache, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EROFS stops root too, so this variant runs everywhere: no folder can be created in the cache."""
    models = tmp_path / "cache" / "models"
    models.mkdir(parents=True)
    real_mkdir = os.mkdir

    def read_only_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if pathlib.Path(path).parent == models:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only_mkdir)
    loaded = load_model(tiny.gguf, cache_dir=tmp_path / "cache", device="cpu")
    assert loaded.source == str(tiny.gguf)
    assert torch.allclose(_tiny_logits(loaded), _tiny_logits(tiny.loaded), atol=1e-6)
    assert any("Read-only file system" in m for m in _cache_warnings(caplog))
    assert _cache_entries(tmp_path / "cache") == [] and _hidden_dirs(tmp_path / "cache") == []


def _disk_full_oserror() -> Exception:
    return OSError(errno.ENOSPC, "No space left on device")


def _disk_full_safetensors() -> Exception:
    from safetensors import SafetensorError

    return SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("make_error", [_disk_full_oserror, _disk_full_safetensors], ids=["OSError", "SafetensorError"])
def test_disk_full_during_cache_write_still_loads(
    tiny: TinyCache,
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    make_error: Callable[[], Exception],
) -> None:
    """The weights writer fails half-way (as safetensors does on ENOSPC): no partial entry or temp folder stays."""
    import transformers.modeling_utils

    def disk_full(tensors: Any, filename: str, metadata: Any = None) -> None:
        pathlib.Path(filename).write_bytes(b"\0" * 1024)  # what made it to disk before the disk filled up
        raise make_error()

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_full)
    cache_dir = tmp_path / "cache"
    loaded = load_model(tiny.gguf, cache_dir=cache_dir, device="cpu")
    assert loaded.source == str(tiny.gguf)
    assert torch.allclose(_tiny_logits(loaded), _tiny_logits(tiny.loaded), atol=1e-6)
    assert any("No space left on device" in m for m in _cache_warnings(caplog))
    assert [p for p in (cache_dir / "models").iterdir() if p.is_dir()] == []


def _truncate_weights(entry: pathlib.Path) -> None:
    weights = entry / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _wrong_digest(entry: pathlib.Path) -> None:
    info_path = entry / "swift_cache_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info["gguf_sha256"] = "0" * 64
    info_path.write_text(json.dumps(info))


def _no_info_file(entry: pathlib.Path) -> None:
    (entry / "swift_cache_info.json").unlink(missing_ok=True)


def _no_tokenizer(entry: pathlib.Path) -> None:
    (entry / "tokenizer.json").unlink()


@pytest.mark.parametrize("damage", [_truncate_weights, _wrong_digest, _no_info_file, _no_tokenizer])
def test_damaged_entry_is_reconverted_not_trusted(
    tiny: TinyCache, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, damage: Callable[[pathlib.Path], None]
) -> None:
    cache_dir = tmp_path / "cache"
    entry = tiny.copy_cache(cache_dir)
    damage(entry)
    loaded = load_model(tiny.gguf, cache_dir=cache_dir, device="cpu")
    assert loaded.source == str(tiny.gguf)  # converted again, not loaded from the damaged entry
    assert torch.allclose(_tiny_logits(loaded), _tiny_logits(tiny.loaded), atol=1e-6)
    assert any("Ignoring the cached conversion" in m for m in _cache_warnings(caplog))
    # The damaged entry was replaced by a good one, which the next load uses.
    assert _cache_entries(cache_dir) == [entry] and _hidden_dirs(cache_dir) == []
    assert load_model(tiny.gguf, cache_dir=cache_dir, device="cpu").source == str(entry)


def test_cache_key_is_content_not_path_or_mtime(tiny: TinyCache, tmp_path: pathlib.Path) -> None:
    cache_dir = tmp_path / "cache"
    entry = tiny.copy_cache(cache_dir)
    copy = tmp_path / "elsewhere" / "renamed.gguf"
    copy.parent.mkdir()
    shutil.copyfile(tiny.gguf, copy)  # same bytes, another path and mtime
    assert load_model(copy, cache_dir=cache_dir, device="cpu").source == str(entry)
    later = copy.stat().st_mtime_ns + 3_600 * 10**9
    os.utime(copy, ns=(later, later))  # touched, content unchanged
    assert load_model(copy, cache_dir=cache_dir, device="cpu").source == str(entry)
    assert _cache_entries(cache_dir) == [entry]


def test_a_first_conversion_shows_its_progress_and_a_cache_hit_is_quiet(
    tiny: TinyCache, tmp_path: pathlib.Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    cache_dir = tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="swift_engine"):
        load_model(tiny.gguf, cache_dir=cache_dir, device="cpu")
    notices = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(notices) == 1 and notices[0].startswith(f"Preparing {tiny.gguf.name} for this machine (once")
    assert "Converting and de-quantizing GGUF tensors" in capfd.readouterr().err  # transformers' bar
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="swift_engine"):
        load_model(tiny.gguf, cache_dir=cache_dir, device="cpu")
    assert "Loading weights" not in capfd.readouterr().err and not caplog.records  # every later load: silent


def test_a_cache_hit_keeps_the_tokenizer_and_later_loads_read_it_back(
    tiny: TinyCache, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The kept tokenizer (tokenizer_cache.py) is the tokenizer AutoTokenizer builds, loaded without it."""
    import transformers

    cache_dir = tmp_path / "cache"
    entry = tiny.copy_cache(cache_dir)
    first = load_model(tiny.gguf, cache_dir=cache_dir, device="cpu")  # a hit: builds the tokenizer, keeps it
    (kept,) = entry.glob("tokenizer-*.pickle")
    assert stat.S_IMODE(kept.stat().st_mode) == stat.S_IMODE((entry / "config.json").stat().st_mode)
    built: list[str] = []
    real = transformers.AutoTokenizer.from_pretrained

    def counting(*args, **kwargs):  # the real loader; only its calls are counted
        built.append(str(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", counting)
    second = load_model(tiny.gguf, cache_dir=cache_dir, device="cpu")
    assert built == [] and type(second.tokenizer) is type(first.tokenizer)
    for text in ["abc", "hello  world\n", "\u00fcn\u00ef \U0001f600", ""]:
        assert second.tokenizer(text)["input_ids"] == first.tokenizer(text)["input_ids"]
    assert second.tokenizer.eos_token_id == first.tokenizer.eos_token_id
    kept.write_bytes(b"not a pickle")  # unusable: loaded from the files again, and rewritten
    with caplog.at_level(logging.WARNING):
        third = load_model(tiny.gguf, cache_dir=cache_dir, device="cpu")
    assert built == [str(entry)] and "Ignoring the kept tokenizer" in caplog.text
    assert third.tokenizer("abc")["input_ids"] == first.tokenizer("abc")["input_ids"]
    load_model(tiny.gguf, cache_dir=cache_dir, device="cpu")
    assert built == [str(entry)]


def test_different_content_with_same_size_and_mtime_is_a_miss(tmp_path: pathlib.Path) -> None:
    gguf = _write_tiny_gguf(tmp_path / "model.gguf", seed=0)
    cache_dir = tmp_path / "cache"
    first = load_model(gguf, cache_dir=cache_dir, device="cpu")
    assert first.source == str(gguf)
    before = gguf.stat()
    _write_tiny_gguf(gguf, seed=1)  # other weights, same path, same size ...
    os.utime(gguf, ns=(before.st_atime_ns, before.st_mtime_ns))  # ... and the old mtime (cp -p, rsync -t)
    assert gguf.stat().st_size == before.st_size and gguf.stat().st_mtime_ns == before.st_mtime_ns
    second = load_model(gguf, cache_dir=cache_dir, device="cpu")
    assert second.source == str(gguf)  # converted, not served the old weights
    assert not torch.allclose(_tiny_logits(first), _tiny_logits(second))
    assert len(_cache_entries(cache_dir)) == 2


def test_losing_the_rename_race_keeps_the_winners_entry(
    tiny: TinyCache, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer publishes the same conversion while this process converts: ours is dropped, the load succeeds."""
    cache_dir = tmp_path / "cache"
    models = cache_dir / "models"
    models.mkdir(parents=True)
    winner = models / tiny.entry.name
    real_convert = gguf_cache._load_gguf_direct

    def convert_while_a_peer_publishes(path: pathlib.Path, attn_implementation: str) -> tuple[Any, Any]:
        result = real_convert(path, attn_implementation)
        shutil.copytree(tiny.entry, winner)
        return result

    monkeypatch.setattr(gguf_cache, "_load_gguf_direct", convert_while_a_peer_publishes)
    loaded = load_model(tiny.gguf, cache_dir=cache_dir, device="cpu")
    assert loaded.source == str(tiny.gguf)
    assert torch.allclose(_tiny_logits(loaded), _tiny_logits(tiny.loaded), atol=1e-6)
    assert _cache_entries(cache_dir) == [winner] and _hidden_dirs(cache_dir) == []
    # The winner's entry is untouched (not replaced by ours) and valid.
    assert (winner / "swift_cache_info.json").read_text() == (tiny.entry / "swift_cache_info.json").read_text()
    assert load_model(tiny.gguf, cache_dir=cache_dir, device="cpu").source == str(winner)


_RACE_SCRIPT = """
import pathlib, sys, time
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig  # imported before the start signal
from swift_engine.loading.load import load_model

gguf, cache_dir, ready, go = sys.argv[1:5]
pathlib.Path(ready).touch()
deadline = time.monotonic() + 300
while not pathlib.Path(go).exists():
    if time.monotonic() > deadline:
        sys.exit("no start signal")
    time.sleep(0.005)
print("SOURCE", load_model(gguf, cache_dir=cache_dir, device="cpu").source)
"""


def test_two_processes_converting_at_once(tiny: TinyCache, tmp_path: pathlib.Path) -> None:
    """Both succeed and leave exactly one complete entry and no temp folder.

    The second process reaches the GGUF through a copy in another folder: the same weights must
    still end up in one entry.
    """
    copy = tmp_path / "copy" / "tiny-copy.gguf"
    copy.parent.mkdir()
    shutil.copyfile(tiny.gguf, copy)
    cache_dir = tmp_path / "cache"
    root = pathlib.Path(__file__).resolve().parents[1]
    go = tmp_path / "go"
    procs = []
    for i, gguf in enumerate([tiny.gguf, copy]):
        args = [sys.executable, "-c", _RACE_SCRIPT, str(gguf), str(cache_dir), str(tmp_path / f"ready{i}"), str(go)]
        procs.append(subprocess.Popen(args, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.monotonic() + 300
        while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() < deadline, "subprocesses did not start"
            time.sleep(0.05)
        go.touch()
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
        assert "SOURCE" in out
    (entry,) = _cache_entries(cache_dir)
    assert gguf_cache._is_complete_entry(entry, gguf_cache._gguf_digest(tiny.gguf))
    assert _hidden_dirs(cache_dir) == []


def test_stale_temp_folders_are_removed(tiny: TinyCache, tmp_path: pathlib.Path) -> None:
    models = tmp_path / "cache" / "models"
    stale = models / f".{tiny.entry.name}.tmp-999999-deadbeef"
    fresh = models / f".{tiny.entry.name}.tmp-999998-cafef00d"
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"\0" * 100)
    old = time.time() - 2 * 3600
    for path in (stale / "model.safetensors", stale):
        os.utime(path, (old, old))
    load_model(tiny.gguf, cache_dir=tmp_path / "cache", device="cpu")
    assert not stale.exists()  # left by a killed process
    assert fresh.exists()  # may belong to a live writer
    assert len(_cache_entries(tmp_path / "cache")) == 1


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_cache_files_honour_the_umask(tiny: TinyCache, tmp_path: pathlib.Path) -> None:
    """A cache shared through SWIFT_CACHE_DIR must be readable by others when the umask says so."""
    previous = os.umask(0o022)
    try:
        load_model(tiny.gguf, cache_dir=tmp_path / "cache", device="cpu")
    finally:
        os.umask(previous)
    (entry,) = _cache_entries(tmp_path / "cache")
    assert stat.S_IMODE(entry.stat().st_mode) == 0o755
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in entry.iterdir()}
    assert set(modes.values()) == {"0o644"}, modes
