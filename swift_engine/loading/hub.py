"""Hugging Face hub ids: the only sources that may reach the network.

As ``HuggingFacePipeline.from_model_id`` does: online, a hub id that is not cached is downloaded
(huggingface_hub's own progress bars); offline (``HF_HUB_OFFLINE=1``, or ``local_files_only=True``)
it is read from the local Hugging Face cache only, and one that is not there fails fast with
:class:`ModelNotAvailableError`, whose one-line message says how to get it. Local folders, GGUF files
and the embedded model never come here.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from swift_engine.loading.gguf import _load_gguf_cached, _no_kwargs_for_gguf
from swift_engine.loading.local import _has_weights, _load_dense, _looks_like_path

__all__ = ["ModelNotAvailableError", "hub_download_expected"]

logger = logging.getLogger(__name__)


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


class _HubRequest(NamedTuple):
    """One hub id to load: what was asked for, whether it may be downloaded, and with which credentials."""

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


def _env_true(name: str) -> bool:
    """Whether environment variable ``name`` is set to a true value, as huggingface_hub reads it."""
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


def _in_cache(hub: _HubRequest, gguf_file: str | None) -> bool:
    """Whether ``hub`` (or its ``gguf_file``) is in the local Hugging Face cache; no network."""
    from huggingface_hub import try_to_load_from_cache

    if gguf_file is not None:
        found = try_to_load_from_cache(hub.repo_id, gguf_file, cache_dir=hub.hf_cache_dir, revision=hub.revision)
        return isinstance(found, str)
    return _cached_snapshot(hub) is not None


def _unknown_short_name(hub: _HubRequest) -> ModelNotAvailableError:
    """A name without an owner that is neither a catalog short name nor cached: no hub retries.

    Hub ids have an owner (``owner/name``); the few legacy ones without (``gpt2``) load when cached.
    A bare name is far more often a mistyped short name, so it fails at once and lists the real ones.
    """
    from swift_engine.loading.catalog import CATALOG

    names = ", ".join(CATALOG)
    return ModelNotAvailableError(
        f"{hub.repo_id!r} is not a model swift knows: it is not one of its short names ({names}; "
        "`swift-accel models` lists them), not a local path, and not a Hugging Face hub id in the local cache "
        "(hub ids are 'owner/name', e.g. 'HuggingFaceTB/SmolLM2-360M-Instruct').",
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


_UNREACHABLE = "the Hugging Face Hub could not be reached"


def _check_hub_id(hub: _HubRequest, gguf_file: str | None) -> None:
    """A ValueError for what cannot be a hub id; at once, for a bare name that is no cached model."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(hub.repo_id)
    except HFValidationError as exc:
        raise ValueError(
            f"{hub.repo_id!r} is neither an existing local path nor a valid Hugging Face hub id ({exc})."
        ) from exc
    if "/" not in hub.repo_id and not _in_cache(hub, gguf_file):
        raise _unknown_short_name(hub)


def hub_gguf_path(hub: _HubRequest, gguf_file: str) -> pathlib.Path:
    """The local copy of ``gguf_file`` in the hub repo: from the Hugging Face cache, downloaded when
    missing and allowed (huggingface_hub's progress bar), else one :class:`ModelNotAvailableError`."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    _check_hub_id(hub, gguf_file)
    _no_kwargs_for_gguf(hub.model_kwargs, f"{gguf_file!r} in {hub.repo_id!r}")
    try:
        return pathlib.Path(
            hf_hub_download(
                hub.repo_id,
                gguf_file,
                revision=hub.revision,
                local_files_only=hub.offline is not None,
                token=hub.token,
            )
        )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise _not_available(hub, hub.offline or _UNREACHABLE, gguf_file) from exc


def cached_hub_gguf(repo_id: str, gguf_file: str, revision: str | None = None) -> pathlib.Path | None:
    """``gguf_file`` of hub repo ``repo_id`` where the Hugging Face cache has it; never downloads."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError

    try:
        found = try_to_load_from_cache(repo_id, gguf_file, revision=revision)
    except (HFValidationError, ValueError):
        return None
    return pathlib.Path(found) if isinstance(found, str) else None


def _load_from_hub(
    hub: _HubRequest,
    gguf_file: str | None,
    dtype: torch.dtype,
    conv_cache: Callable[[], pathlib.Path],
    attn_implementation: str,
) -> tuple[Any, Any, str, str]:
    """Load a hub id: from the local Hugging Face cache when offline, else downloading what is missing.

    Returns (model, tokenizer, model name, source read); :func:`~swift_engine.loading.load.load_model`
    places the model on its device, as for every other source.
    """
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    if gguf_file is not None:
        local = hub_gguf_path(hub, gguf_file)
        model, tokenizer, source = _load_gguf_cached(local, conv_cache(), dtype, attn_implementation)
        return model, tokenizer, pathlib.Path(gguf_file).stem, source
    _check_hub_id(hub, None)

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
        return model, tokenizer, hub.repo_id, str(snapshot)

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
            raise _not_available(hub, _UNREACHABLE) from exc
        raise
    snapshot = _cached_snapshot(hub)
    return model, tokenizer, hub.repo_id, str(snapshot) if snapshot else hub.repo_id


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
