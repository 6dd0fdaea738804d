"""State attached to a model object: one instance per model, shared by every engine over it.

Layer-skip switches and kernel wrappers are installed on a model's modules once; a second engine
over the same model must find and share them rather than wrap the wrappers. They are kept as a
plain attribute of the model (not a submodule), so ``state_dict`` and ``named_modules`` are
unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

T = TypeVar("T")


def attached(model: nn.Module, name: str, create: Callable[[nn.Module], T]) -> T:
    """The model's ``name`` state, created by ``create(model)`` on first use."""
    existing = model.__dict__.get(name)
    if existing is None:
        existing = create(model)
        model.__dict__[name] = existing
    return existing
