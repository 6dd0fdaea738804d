"""The server's errors, in OpenAI's error shape: :class:`APIError` and what an engine failure means to a client.

Every error the server answers is ``{"error": {"message", "type", "param", "code"}}`` with an HTTP
status, never a traceback: request checks raise :func:`bad_request`, and :func:`engine_error` maps
what the engine raised (a deadline, a closed engine, a bad argument) to the status a client can act on.
"""

import logging
from typing import Any

__all__ = ["APIError", "bad_request", "engine_error"]

log = logging.getLogger(__name__)


class APIError(Exception):
    """A request the server answers with an OpenAI-style error body (``{"error": {...}}``)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None) -> APIError:
    """A 400 naming the offending request field (``param``)."""
    return APIError(400, message, param=param)


def engine_error(exc: BaseException) -> APIError:
    """What a failure inside the engine means to the client."""
    from swift_engine.request import EngineClosedError, GenerationTimeout

    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, GenerationTimeout):
        return APIError(504, str(exc), code="timeout", type="timeout_error")
    if isinstance(exc, EngineClosedError):
        return APIError(503, "the model was unloaded; the server is shutting down", type="server_error")
    if isinstance(exc, ValueError):  # the engine's argument checks, a grammar that doesn't compile
        return bad_request(str(exc))
    log.exception("generation failed", exc_info=exc)
    return APIError(500, f"internal error: {type(exc).__name__}", type="server_error")
