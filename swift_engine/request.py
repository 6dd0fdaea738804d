"""One generation call, validated: everything the decode loop needs, in one typed object."""

from __future__ import annotations

from dataclasses import dataclass

from .constraints import GrammarState
from .sampling import SamplingParams
from .stopping import StopStrings


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
