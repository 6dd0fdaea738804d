"""swift_engine: framework-free SWIFT self-speculative decoding (Xia et al., ICLR 2025).

Names are imported lazily so that light modules (profiles, steps) don't pay for torch and
transformers when used on their own (e.g. by the profile CLI or a worker process).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
    "ProfileStore": "profile_store",
    "ProfileRecord": "profile_records",
    "SkipSet": "profile_records",
    "ModelNotAvailableError": "loading",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from swift_engine.config import SearchConfig, SwiftConfig, TreeConfig
    from swift_engine.engine import SwiftEngine
    from swift_engine.loading.loader import ModelNotAvailableError
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
