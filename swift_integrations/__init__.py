"""Framework adapters for the SWIFT engine.

``from swift_integrations import SwiftChatModel, SwiftLLM`` (LangChain; needs ``langchain-core``)
and ``SwiftLlamaIndexLLM`` (LlamaIndex; needs ``llama-index-core``). Each adapter is imported on
first access, so LangChain users don't need LlamaIndex installed and vice versa. The adapters'
own packages, :mod:`swift_integrations.langchain` and :mod:`swift_integrations.llamaindex`, import
eagerly.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import swift_engine  # noqa: F401 - first, so that OpenMP's spin count is set before torch loads (its __init__)

try:
    __version__ = version("swift-accel")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0"

#: Public name → the module (relative to this package) that defines it.
_EXPORTS = {
    "SwiftChatModel": "langchain.chat_models",
    "SwiftLLM": "langchain.llms",
    "SwiftLlamaIndexLLM": "llamaindex.llm",
    "get_engine": "engine_cache",
    "release_engine": "engine_cache",
    "clear_engine_cache": "engine_cache",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # pragma: no cover
    from swift_integrations.engine_cache import clear_engine_cache, get_engine, release_engine
    from swift_integrations.langchain.chat_models import SwiftChatModel
    from swift_integrations.langchain.llms import SwiftLLM
    from swift_integrations.llamaindex.llm import SwiftLlamaIndexLLM


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'swift_integrations' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
