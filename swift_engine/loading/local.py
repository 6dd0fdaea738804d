"""Local transformers checkpoints: a folder (or a hub id transformers resolves) loaded densely.

Every route ends here sooner or later: a model folder, a cached hub snapshot, a hub id being
downloaded, and a GGUF file's conversion-cache entry are all regular transformers checkpoints. Also
what tells a path from a hub id and a checkpoint folder from one that only has a config.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

# ``model_kwargs`` keys that also go to the tokenizer and to the hub-cache look-ups, so that model and
# tokenizer come from the same place with the same credentials.
_SHARED_MODEL_KWARGS = ("token", "cache_dir", "trust_remote_code")
# Weight files, one of which a usable transformers checkpoint folder has at its top level.
_CHECKPOINT_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@contextlib.contextmanager
def quiet_weight_loading() -> Iterator[None]:
    """transformers' per-load "Loading weights" bar off while a model loads, unless asked for.

    A bar on every load of a model already on disk is noise in an application's output (and a
    server's log); a download keeps huggingface_hub's own bars, which this leaves alone. Logging
    swift at INFO (``swift-accel -v``, ``logging.getLogger("swift_engine").setLevel("INFO")``) or
    transformers' verbosity at INFO keeps the bar.
    """
    from transformers.utils import logging as hf_logging

    asked = logging.getLogger("swift_engine").isEnabledFor(logging.INFO) or hf_logging.get_verbosity() <= logging.INFO
    if asked or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def _looks_like_path(text: str) -> bool:
    """Whether a string that does not exist on disk was meant as a path rather than a hub id."""
    return (
        text.startswith(("/", "./", "../", "~", "\\"))
        or text.lower().endswith(".gguf")
        or os.path.isabs(text)
        or text.count("/") > 1
    )


def _load_dense(
    source: str,
    dtype: torch.dtype,
    attn_implementation: str,
    model_kwargs: dict[str, Any] | None = None,
    *,
    revision: str | None = None,
    local_files_only: bool = True,
    token: str | bool | None = None,
    load_tokenizer: Callable[[], Any] | None = None,
) -> tuple[Any, Any]:
    """Load a regular transformers checkpoint: a folder, or a hub id (downloading only when
    ``local_files_only`` is False). ``model_kwargs`` go to the model's ``from_pretrained``; their
    hub-access keys (``_SHARED_MODEL_KWARGS``) and ``token`` go to the tokenizer's too.
    ``load_tokenizer`` replaces ``AutoTokenizer`` (a conversion entry's kept tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = dict(model_kwargs or {})
    if token is not None:
        extra["token"] = token
    shared = {key: extra[key] for key in _SHARED_MODEL_KWARGS if key in extra}
    with quiet_weight_loading():
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=dtype,
            attn_implementation=attn_implementation,
            revision=revision,
            local_files_only=local_files_only,
            **extra,
        )
    if load_tokenizer is not None:
        return model, load_tokenizer()
    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, local_files_only=local_files_only, **shared)
    return model, tokenizer


def _has_weights(folder: pathlib.Path) -> bool:
    """Whether ``folder`` has a weights file at its top level (a config alone is not a checkpoint)."""
    return any(p.suffix in _CHECKPOINT_WEIGHT_SUFFIXES for p in folder.iterdir())
