"""The entry point: :func:`load_model` turns a model argument into a model and its tokenizer.

It decides what ``model_id`` names (the embedded model, a catalog short name, a GGUF file, a folder,
a hub id), hands it to the module that reads that kind of source (:mod:`~swift_engine.loading.gguf`,
:mod:`~swift_engine.loading.local`, :mod:`~swift_engine.loading.hub`), and gives every result the
same tail: device and dtype placement, eval mode, a pad token, and int8/int4 weight-only
quantization when asked. :class:`ModelNotAvailableError` is re-exported here, as the error a caller
of :func:`load_model` catches.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from swift_engine.kernels.quantize import quantize, quantized_precision, weight_only_precision
from swift_engine.loading.catalog import CATALOG, EMBEDDED_MODEL_NAME, embedded_model_path, resolve
from swift_engine.loading.file_precision import FilePrecision, float_file_precision, gguf_file_precision
from swift_engine.loading.gguf import (
    _default_cache_dir,
    _gguf_cache_key,
    _is_complete_entry,
    _load_gguf_cached,
    _no_kwargs_for_gguf,
    gguf_digest,
)
from swift_engine.loading.hub import (
    ModelNotAvailableError,
    _HubRequest,
    _load_from_hub,
    _offline_reason,
    cached_hub_gguf,
    hub_gguf_path,
)
from swift_engine.loading.local import _load_dense, _looks_like_path
from swift_engine.loading.precision import resolve_device, resolve_dtype
from swift_engine.loading.quantized_cache import load_quantized, quantize_and_keep

__all__ = ["LoadedModel", "ModelNotAvailableError", "load_model"]

logger = logging.getLogger(__name__)

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


class LoadedModel(NamedTuple):
    """What :func:`load_model` returns.

    ``source`` is the path (or hub id) that was actually read, so callers and tests can tell a fresh
    GGUF conversion from a load out of the conversion cache.
    """

    model: Any
    tokenizer: Any
    model_name: str
    source: str


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


def is_auto_dtype(dtype: object) -> bool:
    """Whether ``dtype`` is ``"auto"`` (any case or spacing)."""
    return isinstance(dtype, str) and dtype.strip().lower() == "auto"


def auto_precision(
    model_id: str | os.PathLike[str] | None = None, gguf_file: str | None = None, revision: str | None = None
) -> FilePrecision:
    """What ``dtype="auto"`` runs ``model_id`` at on a CPU (:mod:`swift_engine.loading.file_precision`).

    Read from the file's header, nothing loaded or downloaded. A catalog name that is not installed
    raises as :func:`load_model` would; a hub GGUF (``gguf_file`` in a hub repo) is read from the
    Hugging Face cache, and until it is there is reported as a float checkpoint (:func:`load_model`
    downloads it first and follows its header).
    """
    path = _gguf_source(model_id, gguf_file, revision)
    return gguf_file_precision(path) if path is not None else float_file_precision()


def _is_hub_id(model_id: str | os.PathLike[str] | None) -> bool:
    """Whether :func:`load_model` treats ``model_id`` as a hub id (no such path, and not written as one)."""
    if model_id is None or isinstance(model_id, os.PathLike):
        return False
    return not pathlib.Path(model_id).expanduser().exists() and not _looks_like_path(model_id)


def _gguf_source(
    model_id: str | os.PathLike[str] | None, gguf_file: str | None, revision: str | None = None
) -> pathlib.Path | None:
    """The local GGUF file ``model_id`` names, resolved as :func:`load_model` resolves it; else ``None``."""
    if model_id is None:
        return embedded_model_path() if gguf_file is None else None
    text = os.fspath(model_id)
    path = pathlib.Path(text).expanduser()
    if not path.exists():
        if gguf_file is None:
            return resolve(text)
        return cached_hub_gguf(text, gguf_file, revision) if _is_hub_id(text) else None
    if path.is_file():
        return path if path.suffix.lower() == ".gguf" else None
    if gguf_file is not None:
        named = pathlib.Path(gguf_file).expanduser()
        named = named if named.is_absolute() else path / named
        return named if named.is_file() else None
    if (path / "config.json").is_file():
        return None
    ggufs = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".gguf"]
    return ggufs[0] if len(ggufs) == 1 else None


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
    _quantize_to: str | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    Resolution order for ``model_id``:

    * ``None``: the embedded SmolLM2-135M-Instruct GGUF, through the conversion cache.
    * a short name of :mod:`swift_engine.loading.catalog` (``"smollm2-135m"``, ``"qwen2.5-coder-0.5b"``): that
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

    ``dtype="auto"`` on a CPU follows the file (:func:`auto_precision`): a 4-bit GGUF (the embedded
    model is ``Q4_1``) loads at int4, a 5- to 8-bit one at int8, float files at float32. On CUDA it is
    bfloat16 (float16 without bf16 support). ``dtype="float32"`` gives ``transformers``' own output.

    ``cache_dir`` is where GGUF conversions are kept (default ``$SWIFT_CACHE_DIR`` or the user cache
    folder); it is unrelated to the Hugging Face cache. At int4/int8 a GGUF file's quantized weights
    are kept there too, so later processes skip quantizing (:mod:`swift_engine.loading.quantized_cache`).
    ``_quantize_to`` is internal (the weight-only branch's own call).
    """
    extra = _check_model_kwargs(model_kwargs)
    if token is not None and "token" in extra:
        raise ValueError("token was given twice, as token= and as model_kwargs['token']; pass it once.")
    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        raise ValueError(f"revision must be a non-empty string (a branch, tag or commit hash), got {revision!r}")
    if local_files_only is not None and not isinstance(local_files_only, bool):
        raise ValueError(f"local_files_only must be True, False or None, got {local_files_only!r}")
    torch_device = resolve_device(device)
    if is_auto_dtype(dtype) and torch_device.type == "cpu" and gguf_file is not None and _is_hub_id(model_id):
        # a hub GGUF's precision is in its header: fetch the file first (the load would), then follow it
        hub = _HubRequest(str(model_id), revision, _offline_reason(local_files_only), extra, token)
        local = hub_gguf_path(hub, gguf_file)
        return load_model(
            local, device=torch_device, dtype=dtype, cache_dir=cache_dir, attn_implementation=attn_implementation
        )
    if is_auto_dtype(dtype) and torch_device.type == "cpu":
        chosen = auto_precision(model_id, gguf_file, revision)
        logger.info("precision %s", chosen.describe())
        dtype = chosen.precision
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
            _quantize_to=weight_only,  # GGUF sources: quantized weights kept beside their conversion
        )
        if quantized_precision(loaded.model) is None:  # other sources are quantized here, every load
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
        if _quantize_to is None:
            model, tokenizer, source = _load_gguf_cached(path, conv_cache(), torch_dtype, attn_implementation)
            return _finalize(model, tokenizer, torch_device, torch_dtype, name, source)
        # weight-only: the quantized weights kept in the conversion's entry, else quantize and keep them
        digest = gguf_digest(path, conv_cache())
        entry = conv_cache() / "models" / _gguf_cache_key(digest)
        complete = _is_complete_entry(entry, digest)
        kept = load_quantized(entry, digest, _quantize_to, attn_implementation) if complete else None
        if kept is not None:
            return _finalize(kept[0], kept[1], torch_device, torch_dtype, name, str(entry))
        model, tokenizer, source = _load_gguf_cached(path, conv_cache(), torch_dtype, attn_implementation, digest)
        quantize_and_keep(model, entry if _is_complete_entry(entry, digest) else None, digest, _quantize_to)
        return _finalize(model, tokenizer, torch_device, torch_dtype, name, source)

    if model_id is None:
        if gguf_file is not None:
            raise ValueError("gguf_file needs model_id (a folder or hub id); model_id=None means the embedded model.")
        local_source("the embedded default model (model_id=None)")
        return from_gguf(embedded_model_path(), EMBEDDED_MODEL_NAME)

    text = os.fspath(model_id)
    path = pathlib.Path(text).expanduser()

    if not path.exists() and gguf_file is None:
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
    model, tokenizer, name, source = _load_from_hub(hub, gguf_file, torch_dtype, conv_cache, attn_implementation)
    return _finalize(model, tokenizer, torch_device, torch_dtype, name, source)
