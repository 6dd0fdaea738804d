"""swift_engine: framework-free SWIFT self-speculative decoding (Xia et al., ICLR 2025).

Names are imported lazily so that light modules (profiles, steps) don't pay for torch and
transformers when used on their own (e.g. by the profile CLI or a worker process). The packages
by concern, and a picture of them, are in ``docs/architecture.md``.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib import metadata
from typing import TYPE_CHECKING, Any

# OpenMP (libgomp, PyTorch's CPU threads) spins 300,000 pauses (~15 ms here) after each parallel
# region before it sleeps; a spinning team steals a core from the kernels' own worker threads
# (kernels/native/pool.cpp) and from other teams: measured on the 2-vCPU Xeon, a one-token int4 step
# took 8.3 ms with the default and 5.4-6.0 ms with 10,000, from any thread. libgomp reads it once,
# when torch is first imported, so only a process that has not imported torch yet gets it, and a
# value the user set wins (docs/guarantees.md#threads).
if "torch" not in sys.modules:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

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
