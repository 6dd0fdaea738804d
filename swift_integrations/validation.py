"""Argument checks both adapters apply to their fields, so both reject bad values with one message."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["check_engine", "check_stop_strings", "check_timeout"]


def check_engine(engine: Any) -> Any:
    """``engine`` if it is an engine (or ``None``); the adapters' ``engine=`` validator."""
    if engine is not None and not (hasattr(engine, "stream") and hasattr(engine, "tokenizer")):
        raise ValueError(f"engine must be a swift_engine.SwiftEngine, got {type(engine).__name__}")
    return engine


def check_stop_strings(stops: Sequence[str] | None) -> list[str]:
    """``stops`` as a list, after checking that every one is a non-empty string."""
    out = list(stops or [])
    if any(not isinstance(s, str) or not s for s in out):
        raise ValueError("stop strings must be non-empty strings")
    return out


def check_timeout(timeout: Any) -> float | None:
    """A call's ``timeout`` in seconds (``None``: none), after checking it is a positive number."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)
