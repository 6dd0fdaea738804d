"""State attached to a model object: one instance per model, shared by every engine over it.

Layer-skip switches, kernel wrappers and the model's lock are installed on a model once; a second
engine over the same model must find and share them rather than wrap the wrappers. They are kept
as a plain attribute of the model (not a submodule), so ``state_dict`` and ``named_modules`` are
unchanged.

What is shared this way is *installed* once and never switched globally: which sublayers a pass
skips and which kernels it uses are per-call context (see :class:`~swift_engine.model.sublayer_skip.LayerSkipper`),
so a pass of one engine never changes what another caller of the same model computes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from torch import nn

T = TypeVar("T")

# Guards installation only (two engines built over one model in two threads must not both wrap
# it); it holds no data, and is never held while a model runs.
_INSTALL_LOCK = threading.Lock()

_MODEL_LOCK = "_swift_model_lock"


def attached(model: nn.Module, name: str, create: Callable[[nn.Module], T]) -> T:
    """The model's ``name`` state, created by ``create(model)`` on first use (once, across threads)."""
    existing = model.__dict__.get(name)
    if existing is not None:
        return existing
    with _INSTALL_LOCK:
        existing = model.__dict__.get(name)
        if existing is None:
            existing = create(model)
            model.__dict__[name] = existing
    return existing


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock every engine over ``model`` holds while it runs the model (one decode step at a time).

    Per model rather than per engine: two engines over one model take turns, so a plain engine and
    a SWIFT engine built on the same weights neither oversubscribe the cores nor disturb each
    other's timing. Re-entrant, because an engine's lazily measured costs run the model from
    inside a step.
    """
    return attached(model, _MODEL_LOCK, lambda _: threading.RLock())
