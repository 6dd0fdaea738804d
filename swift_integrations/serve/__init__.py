"""The OpenAI-compatible HTTP server: OpenAI's wire format over the same generation events as the other adapters.

``python -m swift_integrations.serve`` (or ``swift-accel serve``) serves one model; point any
OpenAI client at ``http://127.0.0.1:8000/v1``. The server is an adapter like the LangChain and
LlamaIndex ones, so it lives with them. Its modules, one idea each:

* :mod:`~swift_integrations.serve.app`: :func:`create_app`, the FastAPI app and its routes;
* :mod:`~swift_integrations.serve.request_fields` and :mod:`~swift_integrations.serve.calls`: a request
  body read and checked, and made into a generation call;
* :mod:`~swift_integrations.serve.delivery` and :mod:`~swift_integrations.serve.response_bodies`: the
  call run in a worker thread, its reply whole or streamed (SSE), in OpenAI's shapes;
* :mod:`~swift_integrations.serve.admission`, :mod:`~swift_integrations.serve.errors`: the request
  limit (429) and OpenAI's error shape (:class:`APIError`);
* :mod:`~swift_integrations.serve.settings`: defaults and the exposure rule both deployments share;
* :mod:`~swift_integrations.serve.command`: the command line (:func:`serve`, :func:`start`, :func:`main`);
* :mod:`~swift_integrations.serve.ray_serve`, :mod:`~swift_integrations.serve.ray_store`: replicas on
  Ray Serve sharing one profile store.

This package re-exports ``create_app``, ``serve``, ``start``, ``main`` and ``APIError``, imported on
first use: importing it imports neither FastAPI nor uvicorn (the ``serve`` extra), so the command
line and the core load without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from swift_integrations.serve.app import create_app
    from swift_integrations.serve.command import main, serve, start
    from swift_integrations.serve.errors import APIError

#: Each re-exported name and the module that holds it.
_EXPORTS = {
    "APIError": "swift_integrations.serve.errors",
    "create_app": "swift_integrations.serve.app",
    "main": "swift_integrations.serve.command",
    "serve": "swift_integrations.serve.command",
    "start": "swift_integrations.serve.command",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'swift_integrations.serve' has no attribute {name!r}")
