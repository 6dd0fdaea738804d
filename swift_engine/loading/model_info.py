"""What a model is, read without loading it: context length and chat template.

Frameworks ask before the first call (LangChain reads a chat model's ``profile`` when an agent's
middleware is built, to size summarization against the context window), and wrappers must stay
cheap to construct, so loading the weights to answer is not an option. This reads the few bytes
that say: a folder's ``config.json`` and ``tokenizer_config.json``, a GGUF file's key-value
header (it stops before the tensor table, so a 500 MB file costs milliseconds), or the same
files from the local Hugging Face cache for a hub id. Nothing here downloads.
"""

from __future__ import annotations

import functools
import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ModelInfo", "gguf_metadata", "read_model_info"]

#: config keys that hold the context length, most specific first
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
_GGUF_MAGIC = b"GGUF"
#: GGUF value types (the spec's numbering): struct format of the fixed-size ones
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


@dataclass(frozen=True)
class ModelInfo:
    """The model's context length and chat template, where its files say (``None``: unknown)."""

    context_length: int | None = None
    chat_template: str | None = None

    @property
    def reasoning(self) -> bool:
        """Whether the template is a thinking model's (it writes or switches ``<think>`` blocks)."""
        t = self.chat_template or ""
        return "<think>" in t or "enable_thinking" in t

    @property
    def tools(self) -> bool:
        """Whether the template renders tools itself (otherwise the engine describes them)."""
        return "tools" in (self.chat_template or "")


class _Header:
    """A cursor over a memory-mapped GGUF file (struct.unpack_from: no copies, no per-item reads)."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.pos = 0

    def read(self, fmt: str) -> Any:
        value = struct.unpack_from(fmt, self.data, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def skip(self, n: int) -> None:
        if self.pos + n > len(self.data):
            raise ValueError("truncated GGUF header")
        self.pos += n

    def string(self, keep: bool = True) -> str | None:
        n = self.read("<Q")
        start = self.pos
        self.skip(n)
        return bytes(self.data[start : self.pos]).decode("utf-8", errors="replace") if keep else None

    def value(self, kind: int, keep: bool) -> Any:
        if kind in _GGUF_SCALARS:
            return self.read(_GGUF_SCALARS[kind])
        if kind == _GGUF_STRING:
            return self.string(keep)
        if kind == _GGUF_ARRAY:
            item, count = self.read("<I"), self.read("<Q")
            if item in _GGUF_SCALARS:  # fixed-size items: one skip
                self.skip(struct.calcsize(_GGUF_SCALARS[item]) * count)
            elif item == _GGUF_STRING:  # a vocabulary (150k strings): lengths read in a tight loop
                data, pos = self.data, self.pos
                for _ in range(count):
                    pos += 8 + int.from_bytes(data[pos : pos + 8], "little")
                if pos > len(data):
                    raise ValueError("truncated GGUF header")
                self.pos = pos
            else:
                for _ in range(count):
                    self.value(item, False)
            return None
        raise ValueError(f"unknown GGUF value type {kind}")


def gguf_metadata(path: str | os.PathLike[str], wanted: set[str] | None = None) -> dict[str, Any]:
    """Scalar and string values of a GGUF file's header (only ``wanted`` keys and context lengths, if given).

    Arrays (the tokenizer's vocabulary) are skipped, and so is the tensor table after the header.
    """
    out: dict[str, Any] = {}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] != _GGUF_MAGIC:
            raise ValueError(f"{path} is not a GGUF file")
        h = _Header(data)
        h.skip(4)
        version = h.read("<I")
        if version < 2:
            raise ValueError(f"GGUF version {version} is not supported")
        h.read("<Q")  # tensor count
        for _ in range(h.read("<Q")):
            key = h.string()
            kind = h.read("<I")
            keep = wanted is None or key in wanted or str(key).endswith(".context_length")
            value = h.value(kind, keep)
            if keep and value is not None:
                out[str(key)] = value
    return out


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _from_config(config: dict[str, Any], tokenizer_config: dict[str, Any], template_file: Path | None) -> ModelInfo:
    nested = config.get("text_config")
    text: dict[str, Any] = nested if isinstance(nested, dict) else config
    context = next((int(text[k]) for k in _CONTEXT_KEYS if isinstance(text.get(k), int)), None)
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if not isinstance(template, str) and template_file is not None and template_file.is_file():
        template = template_file.read_text(encoding="utf-8")
    return ModelInfo(context, template if isinstance(template, str) else None)


def _from_gguf(path: Path) -> ModelInfo:
    st = path.stat()
    return _gguf_info(str(path.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=16)
def _gguf_info(path: str, mtime_ns: int, size: int) -> ModelInfo:
    """Memoised per file version (path, mtime, size): skipping a 150k-token vocabulary is slow enough
    to notice (docs/bench/measurements.md#loading), and every wrapper constructed over the model asks
    again."""
    meta = gguf_metadata(path, {"general.architecture", "tokenizer.chat_template"})
    arch = meta.get("general.architecture")
    context = meta.get(f"{arch}.context_length")
    template = meta.get("tokenizer.chat_template")
    return ModelInfo(
        int(context) if isinstance(context, int) else None, template if isinstance(template, str) else None
    )


def _cached_hub_file(repo_id: str, filename: str, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of transformers
        return None
    try:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
    except Exception:  # noqa: BLE001 - an id that is not a valid repo name: nothing cached
        return None
    return Path(found) if isinstance(found, str) else None


def read_model_info(
    model_id: str | os.PathLike[str] | None, gguf_file: str | None = None, revision: str | None = None
) -> ModelInfo:
    """The :class:`ModelInfo` of what ``SwiftEngine.from_pretrained`` would load, read without loading it.

    Never raises for a model it can't read (not downloaded yet, unknown layout): the fields are
    then ``None``, and loading the model will say what is wrong.
    """
    try:
        from swift_engine.loading.catalog import EMBEDDED_SHORT_NAME, installed

        if model_id is None and gguf_file is None:  # reading never downloads: a missing model reads as unknown
            embedded = installed(EMBEDDED_SHORT_NAME)
            return _from_gguf(embedded) if embedded is not None else ModelInfo()
        source = Path(os.path.expanduser(os.fspath(model_id))) if model_id is not None else None
        if model_id is not None and source is not None and not source.exists() and gguf_file is None:
            source = installed(os.fspath(model_id)) or source
        if source is not None and source.is_file():
            return _from_gguf(source)
        if source is not None and source.is_dir():
            if gguf_file:
                return _from_gguf(source / gguf_file)
            return _from_config(
                _json(source / "config.json"), _json(source / "tokenizer_config.json"), source / "chat_template.jinja"
            )
        if model_id is None:
            return _from_gguf(Path(os.path.expanduser(str(gguf_file))))
        repo = os.fspath(model_id)
        if gguf_file:
            found = _cached_hub_file(repo, gguf_file, revision)
            return _from_gguf(found) if found else ModelInfo()
        config = _cached_hub_file(repo, "config.json", revision)
        tok = _cached_hub_file(repo, "tokenizer_config.json", revision)
        template = _cached_hub_file(repo, "chat_template.jinja", revision)
        return _from_config(_json(config) if config else {}, _json(tok) if tok else {}, template)
    except (OSError, ValueError, struct.error):
        return ModelInfo()
