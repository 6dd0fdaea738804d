"""Framework adapters for the SWIFT engine.

``from swift_integrations import SwiftChatModel, SwiftLLM`` (LangChain; needs ``langchain-core``)
and ``SwiftLlamaIndexLLM`` (LlamaIndex; needs ``llama-index-core``). Each adapter is imported on
first access, so LangChain users don't need LlamaIndex installed and vice versa.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "SwiftChatModel": "langchain",
    "SwiftLLM": "langchain",
    "SwiftLlamaIndexLLM": "llamaindex",
    "get_engine": "engine_cache",
    "release_engine": "engine_cache",
    "clear_engine_cache": "engine_cache",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from swift_integrations.engine_cache import clear_engine_cache, get_engine, release_engine
    from swift_integrations.langchain.chat_models import SwiftChatModel, SwiftLLM
    from swift_integrations.llamaindex.llm import SwiftLlamaIndexLLM


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'swift_integrations' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
