"""Loading a model for a command: the engine on the chosen profile store, with a spinner or download bars.

Heavy imports (torch, transformers) happen only here, inside the functions, and only the
commands that need a model call them, so ``swift-accel profiles list`` and ``swift-accel --help``
stay fast.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text

from swift_engine.store.profile_store import ProfileStore
from swift_integrations.cli.guard import State

if TYPE_CHECKING:  # pragma: no cover
    from swift_engine.engine import SwiftEngine

_EMBEDDED_LABEL = "the embedded SmolLM2-135M-Instruct"
_EMBEDDED_ALIAS = "embedded"


@dataclass
class Loaded:
    """A loaded engine, where its weights came from and how long loading took."""

    engine: "SwiftEngine"
    source: str
    seconds: float


def open_store(profile_dir: Path | None) -> ProfileStore:
    """The profile store at ``--profile-dir`` (default: ``$SWIFT_PROFILE_DIR``, else the user cache)."""
    return ProfileStore(profile_dir)


def _load_engine(
    model: str | None,
    gguf_file: str | None,
    device: str,
    dtype: str,
    profile_dir: Path | None,
    *,
    progress_bars: bool = False,
) -> Loaded:
    """Load a model and wrap it in an engine on the given store.

    A hub id that is not cached is downloaded (unless ``HF_HUB_OFFLINE=1``); ``progress_bars``
    keeps transformers' and huggingface_hub's bars on, for such downloads.
    """
    from transformers.utils import logging as hf_logging

    from swift_engine.engine import SwiftEngine

    t0 = time.perf_counter()
    bars = hf_logging.is_progress_bar_enabled()
    if not progress_bars:
        hf_logging.disable_progress_bar()  # our spinner says the same, without fighting it for the line
    try:
        engine = SwiftEngine.from_pretrained(
            model, gguf_file=gguf_file, device=device, dtype=dtype, profile_store=open_store(profile_dir)
        )
    finally:
        if bars and not progress_bars:
            hf_logging.enable_progress_bar()
    return Loaded(engine, _source(engine), time.perf_counter() - t0)


def _source(engine: "SwiftEngine") -> str:
    """Where the weights were read from (as ``from_pretrained`` recorded it)."""
    return str(engine.source or getattr(engine.model.config, "_name_or_path", "") or engine.model_name)


def load(
    state: State,
    model: str | None,
    gguf_file: str | None,
    device: str,
    dtype: str,
    profile_dir: Path | None,
    *,
    announce: bool = False,
) -> Loaded:
    """Load ``--model`` (default: the embedded one) under a spinner, or with download bars from the Hub.

    The fingerprint is hashed here too, so its cost shows under the same spinner; ``announce``
    prints the model, device, precision and load time to stderr.
    """
    from swift_engine.loading.hub import hub_download_expected

    model = model_arg(model)
    label = model or _EMBEDDED_LABEL
    if hub_download_expected(model, gguf_file=gguf_file):
        # huggingface_hub's download bars instead of the spinner, which would hide them
        state.err.print(Text(f"Downloading {label} from the Hugging Face Hub…", style="dim"), highlight=False)
        loaded = _load_engine(model, gguf_file, device, dtype, profile_dir, progress_bars=True)
        _ = loaded.engine.fingerprint
    else:
        with state.err.status(f"Loading {label}…", spinner="dots"):
            loaded = _load_engine(model, gguf_file, device, dtype, profile_dir)
            _ = loaded.engine.fingerprint  # hashed here, under the spinner
    engine = loaded.engine
    if announce:
        runner = engine.runner
        state.err.print(
            Text(
                f"Loaded {engine.model_name} on {runner.device} ({runner.precision}) in {loaded.seconds:.1f} s",
                style="dim",
            ),
            highlight=False,
        )
    return loaded


def model_arg(model: str | None) -> str | None:
    """``--model embedded`` names the embedded model (unless a file or folder has that name)."""
    if model is not None and model.strip().lower() == _EMBEDDED_ALIAS and not Path(model).exists():
        return None
    return model
