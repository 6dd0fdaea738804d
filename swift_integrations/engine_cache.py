"""The process-level engine cache: one :class:`~swift_engine.SwiftEngine` per model, shared by every wrapper.

This is the one deliberate process-wide cache of the project. Wrappers (a LangChain chat model,
an LLM, a LlamaIndex LLM; one per chain step, often dozens per process) are cheap configuration
objects; the weights behind them must be loaded once and shared, and so must the engine's
learned per-step skip profiles. Engines serialize their own generations, so sharing is safe.

Lifetime, as Ollama's ``keep_alive``: by default an engine stays loaded while the process lives
(reloading costs seconds to minutes). A wrapper's ``keep_alive`` (seconds, or ``"30s"``/``"5m"``/
``"1h"``; ``0``: unload after each call; negative: keep; ``None``: no change) unloads the engine once it
has been idle that long, counted from the end of its last call, never during one. The last call's
``keep_alive`` wins, as in Ollama. :func:`release_engine` (a wrapper's ``close()``) unloads at
once. An unloaded engine is closed (:meth:`SwiftEngine.close`) and forgotten, so its memory goes
back once no caller holds it; wrappers fetch engines per call, so the next call loads it again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from swift_engine import SwiftConfig, SwiftEngine

__all__ = [
    "EngineLifetime",
    "clear_engine_cache",
    "get_engine",
    "get_engine_if_loaded",
    "keep_alive_seconds",
    "loaded_engines",
    "release_engine",
    "release_wrapper_engine",
    "touch_engine",
    "wrapper_engine",
]

logger = logging.getLogger(__name__)

_ENGINES: dict[tuple[Any, ...], SwiftEngine] = {}
_KEY_LOCKS: dict[tuple[Any, ...], threading.Lock] = {}
_TIMERS: dict[tuple[Any, ...], threading.Timer] = {}
_CACHE_LOCK = threading.Lock()

_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def keep_alive_seconds(value: float | int | str | None) -> float | None:
    """``keep_alive`` as seconds: ``None`` (not set: leave the engine's schedule as it is),
    ``math.inf`` (keep loaded) or a finite number; raises ``ValueError`` on anything else.

    Accepts what Ollama accepts: a number of seconds, or a duration such as ``"30s"``, ``"5m"``,
    ``"1h"``; a negative value keeps the engine loaded.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"keep_alive must be seconds or a duration like '5m', got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if m is None:
            raise ValueError(f"keep_alive must be seconds or a duration like '30s', '5m', '1h', got {value!r}")
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if seconds != seconds or seconds == float("inf"):
        raise ValueError(f"keep_alive must be finite, got {value!r}")
    return math.inf if seconds < 0 else seconds


def _engine_key(
    model_id: Any,
    gguf_file: str | None,
    device: Any,
    dtype: Any,
    config: SwiftConfig | None,
    revision: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[Any, ...]:
    """The cache key: arguments that name the same model on the same device and dtype compare equal."""
    from swift_engine.loading import auto_precision, embedded_model_path, is_auto_dtype, precision_name, resolve_device

    if model_id is None and gguf_file is None:
        source = str(embedded_model_path().resolve())  # same key as naming the embedded file
    else:
        text = os.fspath(model_id) if model_id is not None else ""
        path = os.path.expanduser(text)
        if text and not os.path.exists(path) and gguf_file is None:
            from swift_engine.loading.catalog import CATALOG, catalog_path

            if text.strip().lower() in CATALOG:  # a short name: same key as naming its file
                path = str(catalog_path(text.strip().lower()))
        source = os.path.realpath(path) if text and os.path.exists(path) else text
    torch_device = resolve_device(device)
    if is_auto_dtype(dtype) and torch_device.type == "cpu" and gguf_file is not None and not os.path.exists(path):
        precision = "auto"  # a hub GGUF: its header is read once it is downloaded; one key before and after
    elif is_auto_dtype(dtype) and torch_device.type == "cpu":  # the file's precision: one engine with "int4" if Q4
        precision = auto_precision(model_id, gguf_file, revision).precision
    else:
        precision = precision_name(dtype, torch_device)
    cfg = config.model_dump_json() if config is not None else None
    extra = json.dumps(model_kwargs, sort_keys=True, default=repr) if model_kwargs else None
    return (source, gguf_file, str(torch_device), precision, cfg, revision, extra)


def get_engine(
    model_id: str | os.PathLike[str] | None = None,
    gguf_file: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    config: SwiftConfig | None = None,
    *,
    revision: str | None = None,
    local_files_only: bool | None = None,
    model_kwargs: dict[str, Any] | None = None,
    token: str | None = None,
) -> SwiftEngine:
    """The shared :class:`~swift_engine.SwiftEngine` for these arguments, loaded on first use.

    Same arguments (after normalisation: ``None`` and the embedded model's file are one model,
    ``"auto"`` resolves to the device and dtype it means) return the same engine object, so every
    wrapper of one model in a process shares its weights and skip profiles. Loading is locked per
    key: concurrent first calls load once, and different models load in parallel.
    ``revision``, ``local_files_only`` and ``model_kwargs`` go to the loader (hub models);
    ``local_files_only`` and ``token`` (a Hub token) are not part of the key: they say where
    weights may come from, not which.
    """
    key = _engine_key(model_id, gguf_file, device, dtype, config, revision, model_kwargs)
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

            hub: dict[str, Any] = {}
            if revision is not None:
                hub["revision"] = revision
            if local_files_only is not None:
                hub["local_files_only"] = local_files_only
            if model_kwargs:
                hub["model_kwargs"] = dict(model_kwargs)
            if token is not None:
                hub["token"] = token
            engine = SwiftEngine.from_pretrained(
                None if model_id is None else os.fspath(model_id),
                gguf_file=gguf_file,
                device=device,
                dtype=dtype,
                config=config,
                **hub,
            )
            with _CACHE_LOCK:
                _ENGINES[key] = engine
    return engine


def wrapper_engine(fields: Any) -> SwiftEngine:
    """The engine of an adapter's fields (``engine``, or ``model_id``, ``gguf_file``, ``device``, ...).

    Fetched from the cache on every call rather than kept by the wrapper, so that ``keep_alive``
    and :func:`release_wrapper_engine` can really unload it.
    """
    if fields.engine is not None:
        return fields.engine  # type: ignore[no-any-return]
    return get_engine(
        fields.model_id,
        fields.gguf_file,
        fields.device,
        fields.dtype,
        fields.swift_config,
        revision=fields.revision,
        local_files_only=fields.local_files_only,
        model_kwargs=fields.model_kwargs,
        token=_secret(getattr(fields, "api_key", None)),
    )


def _secret(value: Any) -> str | None:
    """A pydantic ``SecretStr`` (or plain string) as text; ``None`` stays ``None``."""
    if value is None:
        return None
    return str(value.get_secret_value()) if hasattr(value, "get_secret_value") else str(value)


def release_wrapper_engine(fields: Any) -> bool:
    """An adapter's ``close()``: unload its cached engine now. An ``engine=`` of the caller's stays open."""
    if fields.engine is not None:
        return False
    engine = get_engine_if_loaded(
        fields.model_id,
        fields.gguf_file,
        fields.device,
        fields.dtype,
        fields.swift_config,
        fields.revision,
        fields.model_kwargs,
    )
    return engine is not None and release_engine(engine)


class EngineLifetime:
    """``close()`` and ``with ... as llm:`` for the adapters (mixed into each wrapper class)."""

    def close(self) -> None:
        """Unload this wrapper's model now (from the engine cache); the next call loads it again.

        Every wrapper of the same model shares the engine, so they reload too. An engine passed as
        ``engine=`` is the caller's, and is left open.
        """
        release_wrapper_engine(self)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def get_engine_if_loaded(
    model_id: str | os.PathLike[str] | None = None,
    gguf_file: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    config: SwiftConfig | None = None,
    revision: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> SwiftEngine | None:
    """The cached engine for these arguments, or ``None`` (never loads one)."""
    key = _engine_key(model_id, gguf_file, device, dtype, config, revision, model_kwargs)
    with _CACHE_LOCK:
        return _ENGINES.get(key)


def loaded_engines() -> list[SwiftEngine]:
    """The engines this cache holds now (what ``ollama ps`` would list), oldest first."""
    with _CACHE_LOCK:
        return list(_ENGINES.values())


def _key_of(engine: SwiftEngine) -> tuple[Any, ...] | None:
    for key, cached in _ENGINES.items():
        if cached is engine:
            return key
    return None


def touch_engine(engine: SwiftEngine, keep_alive: float | None) -> None:
    """After a call: unload ``engine`` once idle for ``keep_alive`` seconds.

    ``None`` changes nothing (the call didn't ask); ``math.inf`` keeps the engine loaded. Engines
    passed in by the caller (not from this cache) are left alone: they are the caller's.
    """
    if keep_alive is None:
        return
    with _CACHE_LOCK:
        key = _key_of(engine)
        if key is None:
            return
        old = _TIMERS.pop(key, None)
        if old is not None:
            old.cancel()
        if keep_alive == math.inf:
            return
        if keep_alive <= 0:
            timer = None
        else:
            timer = threading.Timer(keep_alive, _expire, (key, engine, keep_alive))
            timer.daemon = True  # never keeps the process alive
            _TIMERS[key] = timer
    if timer is None:
        _expire(key, engine, 0.0)
    else:
        timer.start()


def _expire(key: tuple[Any, ...], engine: SwiftEngine, keep_alive: float) -> None:
    """Unload ``engine`` if it is still cached and idle long enough; else look again later."""
    with _CACHE_LOCK:
        if _ENGINES.get(key) is not engine:
            return
        idle = time.monotonic() - engine.last_used
        if engine.active_calls == 0 and idle >= keep_alive:
            _forget(key)
            closing: SwiftEngine | None = engine
        else:
            closing = None
            wait = max(keep_alive - idle, 0.05) if engine.active_calls == 0 else max(keep_alive, 0.05)
            timer = threading.Timer(wait, _expire, (key, engine, keep_alive))
            timer.daemon = True
            _TIMERS[key] = timer
            timer.start()
    if closing is not None:
        logger.info("unloading %s after %.3g s idle (keep_alive)", closing.model_name, keep_alive)
        closing.close()


def _forget(key: tuple[Any, ...]) -> None:
    """Drop a cache entry and its timer (caller holds ``_CACHE_LOCK``)."""
    _ENGINES.pop(key, None)
    _KEY_LOCKS.pop(key, None)
    timer = _TIMERS.pop(key, None)
    if timer is not None:
        timer.cancel()


def release_engine(engine: SwiftEngine) -> bool:
    """Unload a cached engine now: forget it and close it. False if the cache doesn't hold it.

    Calls still running on it fail with ``EngineClosedError``; wrappers' next calls load it again.
    """
    with _CACHE_LOCK:
        key = _key_of(engine)
        if key is None:
            return False
        _forget(key)
    engine.close()
    return True


def clear_engine_cache() -> int:
    """Forget every cached engine (their memory is freed once no wrapper holds them); returns how many."""
    with _CACHE_LOCK:
        n = len(_ENGINES)
        for timer in _TIMERS.values():
            timer.cancel()
        _TIMERS.clear()
        _ENGINES.clear()
        _KEY_LOCKS.clear()
    return n
