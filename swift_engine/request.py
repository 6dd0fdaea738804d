"""One generation call, validated: everything the decode loop needs, in one typed object."""

from __future__ import annotations

import time
from dataclasses import dataclass

from swift_engine.decoding.constraints import GrammarState
from swift_engine.decoding.sampling import SamplingParams
from swift_engine.decoding.stopping import StopStrings


@dataclass(frozen=True)
class GenerationRequest:
    """What :meth:`SwiftEngine.stream` resolved from its arguments (prompt encoded, step key found)."""

    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams
    stops: StopStrings
    step_key: str
    #: seed of the sampling generator (``None``: a fresh random seed; unused when greedy)
    seed: int | None = None
    #: ``False`` decodes plainly through the same loop; ``None`` follows the engine's config
    speculative: bool | None = None
    #: the call's grammar matcher, when the output is constrained
    grammar: GrammarState | None = None
    #: seconds the call may take, from when it was made (``None``: no limit)
    timeout: float | None = None
    #: ``time.monotonic()`` when the call was made (the timeout counts from here)
    started: float = 0.0

    def check_deadline(self, produced: int) -> None:
        """Raise :class:`GenerationTimeout` once the call's ``timeout`` has passed."""
        if self.timeout is not None and time.monotonic() - self.started > self.timeout:
            raise GenerationTimeout(self.timeout, produced)


class GenerationTimeout(TimeoutError):
    """A call ran past its ``timeout``. The engine stays usable; the partial output is dropped.

    A ``TimeoutError`` (what HTTP clients raise for LangChain's ``timeout``), checked between
    decode steps and between prefill blocks, so it fires within one model pass of the limit.
    """

    def __init__(self, timeout: float, produced: int) -> None:
        super().__init__(
            f"generation timed out after {timeout:g} s ({produced} new tokens); raise the timeout or lower max_tokens"
        )
        self.timeout = timeout
        self.produced = produced


class EngineClosedError(RuntimeError):
    """The engine was closed (:meth:`SwiftEngine.close`); build or fetch a new one."""
