"""swift_engine: framework-free SWIFT self-speculative decoding (Xia et al., ICLR 2025).

Names are imported lazily so that light modules (profiles, steps) don't pay for torch and
transformers when used on their own (e.g. by the profile CLI or a worker process). The packages
by concern, and a picture of them, are in ``docs/architecture.md``.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING, Any

try:
    __version__ = metadata.version("swift-accel")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0"

_EXPORTS = {
    "SwiftEngine": "engine",
    "SwiftConfig": "config",
    "SearchConfig": "config",
    "TreeConfig": "config",
    "GenerationResult": "results",
    "GenerationStats": "results",
    "StreamChunk": "results",
    "GenerationTimeout": "request",
    "EngineClosedError": "request",
    "swift_step": "step_context",
    "current_step": "step_context",
    "ProfileStore": "store.profile_store",
    "ProfileRecord": "store.records",
    "SkipSet": "store.records",
    "ModelNotAvailableError": "loading.hub",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from swift_engine.config import SearchConfig, SwiftConfig, TreeConfig
    from swift_engine.engine import SwiftEngine
    from swift_engine.loading.hub import ModelNotAvailableError
    from swift_engine.request import EngineClosedError, GenerationTimeout
    from swift_engine.results import GenerationResult, GenerationStats, StreamChunk
    from swift_engine.step_context import current_step, swift_step
    from swift_engine.store.profile_store import ProfileStore
    from swift_engine.store.records import ProfileRecord, SkipSet


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'swift_engine' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
