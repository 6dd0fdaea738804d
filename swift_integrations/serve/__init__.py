"""``python -m swift_integrations.serve``: the OpenAI-compatible HTTP server's entry point.

The server is an adapter like the LangChain and LlamaIndex ones (OpenAI's wire format over the
same generation events), so it lives in :mod:`swift_integrations.serve.app`; this module only
runs it and re-exports its API (``create_app``, ``serve``, ``start``, ``main``, ``APIError``), imported on
first use so the core never imports the adapters at import time.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = ("APIError", "create_app", "main", "serve", "start")
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module("swift_integrations.serve.app"), name)
    raise AttributeError(f"module 'swift_integrations.serve' has no attribute {name!r}")


if __name__ == "__main__":
    importlib.import_module("swift_integrations.serve.app").main()
