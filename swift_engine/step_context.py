"""Which pipeline step a generation belongs to.

A ``contextvars`` variable (not a global) carries the step key, so it follows threads started with
``contextvars.copy_context()``, asyncio tasks and any framework's callbacks without passing it
through every signature.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from swift_engine.store.records import validate_step_key

_current_step: contextvars.ContextVar[str | None] = contextvars.ContextVar("swift_step", default=None)


@contextlib.contextmanager
def swift_step(key: str) -> Iterator[str]:
    """Tag every generation inside the block with ``key`` (e.g. ``with swift_step("summarize"):``)."""
    token = _current_step.set(validate_step_key(key))
    try:
        yield key
    finally:
        _current_step.reset(token)


def current_step() -> str | None:
    return _current_step.get()


def resolve_step_key(explicit: str | None, default: str) -> str:
    if explicit is not None:
        return validate_step_key(explicit)
    return current_step() or default
