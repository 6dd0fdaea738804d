"""Admission control (:class:`Slots`): how many requests the server holds at once, the rest refused (429).

The limit is ``max_queue`` (:data:`~swift_integrations.serve.settings.DEFAULT_MAX_QUEUE`); a
refused client may retry.
"""

from swift_integrations.serve.errors import APIError

__all__ = ["Slot", "Slots"]


class Slots:
    """Admission control: at most ``limit`` requests in the server at once (running or waiting).

    Admitted requests decode together in the engine's shared passes (up to ``SwiftConfig.batch_rows``
    of them; swift_engine/batching), the rest wait for a place in the batch. Past ``limit`` a request
    is refused at once and the client may retry: queueing more only lengthens every wait.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self) -> "Slot":
        if self.used >= self.limit:
            raise APIError(
                429,
                f"the server is busy ({self.limit} requests in progress); retry later",
                code="rate_limit_exceeded",
                type="rate_limit_error",
            )
        self.used += 1
        return Slot(self)


class Slot:
    """One admitted request's place, held until its reply is sent (or its stream ends)."""

    def __init__(self, slots: Slots) -> None:
        self.slots: Slots | None = slots

    def release(self) -> None:
        """Give the slot back (idempotent: a stream's end and its response's cleanup both call it)."""
        if self.slots is not None:
            self.slots.used -= 1
            self.slots = None
