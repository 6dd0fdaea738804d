"""The process-level engine cache: one :class:`~swift_engine.SwiftEngine` per model, shared by every wrapper.

This is the one deliberate process-wide cache of the project. Wrappers (a LangChain chat model,
an LLM, a LlamaIndex LLM; one per chain step, often dozens per process) are cheap configuration
objects; the weights behind them must be loaded once and shared, and so must the engine's
learned per-step skip profiles. Engines serialize their own generations, so sharing is safe.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from swift_engine import SwiftConfig, SwiftEngine

__all__ = ["clear_engine_cache", "get_engine"]

_ENGINES: dict[tuple[Any, ...], SwiftEngine] = {}
_KEY_LOCKS: dict[tuple[Any, ...], threading.Lock] = {}
_CACHE_LOCK = threading.Lock()


def _engine_key(
    model_id: Any, gguf_file: str | None, device: Any, dtype: Any, config: SwiftConfig | None
) -> tuple[Any, ...]:
    """The cache key: arguments that name the same model on the same device and dtype compare equal."""
    from swift_engine.loading import embedded_model_path, resolve_device, resolve_dtype

    if model_id is None and gguf_file is None:
        source = str(embedded_model_path().resolve())  # same key as naming the embedded file
    else:
        text = os.fspath(model_id) if model_id is not None else ""
        path = os.path.expanduser(text)
        source = os.path.realpath(path) if text and os.path.exists(path) else text
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    cfg = config.model_dump_json() if config is not None else None
    return (source, gguf_file, str(torch_device), str(torch_dtype), cfg)


def get_engine(
    model_id: str | os.PathLike[str] | None = None,
    gguf_file: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    config: SwiftConfig | None = None,
) -> SwiftEngine:
    """The shared :class:`~swift_engine.SwiftEngine` for these arguments, loaded on first use.

    Same arguments (after normalisation: ``None`` and the embedded model's file are one model,
    ``"auto"`` resolves to the device and dtype it means) return the same engine object, so every
    wrapper of one model in a process shares its weights and skip profiles. Loading is locked per
    key: concurrent first calls load once, and different models load in parallel.
    """
    key = _engine_key(model_id, gguf_file, device, dtype, config)
    with _CACHE_LOCK:
        engine = _ENGINES.get(key)
        if engine is not None:
            return engine
        key_lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with key_lock:
        with _CACHE_LOCK:
            engine = _ENGINES.get(key)
        if engine is None:
            from swift_engine import SwiftEngine

            engine = SwiftEngine.from_pretrained(
                None if model_id is None else os.fspath(model_id),
                gguf_file=gguf_file,
                device=device,
                dtype=dtype,
                config=config,
            )
            with _CACHE_LOCK:
                _ENGINES[key] = engine
    return engine


def clear_engine_cache() -> int:
    """Forget every cached engine (their memory is freed once no wrapper holds them); returns how many."""
    with _CACHE_LOCK:
        n = len(_ENGINES)
        _ENGINES.clear()
        _KEY_LOCKS.clear()
    return n
