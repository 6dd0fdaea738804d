"""The drafter protocol (what it proposes, :class:`~swift_engine.decoding.tree.Proposal`, is the tree's input).

Shaped after the small interfaces of gpt-fast's ``speculative_decode`` and transformers'
candidate generators (``get_candidates`` + ``update_candidate_strategy``): the decode loop asks
every drafter for a proposal, merges the proposals into one token tree, verifies it once and tells
every drafter what was kept. A drafter owns its state (an index, a draft head, acceptance
statistics) and rewinds any KV-cache entries it writes before ``propose`` returns, so the loop
never has to know how a proposal was made.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from swift_engine.decoding.tree import Proposal, TokenTree
from swift_engine.decoding.verification import Verdict


class Drafter(Protocol):
    """Proposes continuations of the committed sequence; learns from what verification kept."""

    #: the ``SOURCE_*`` bit its tree nodes carry
    source: ClassVar[int]
    #: whether proposing costs model passes (the policy runs such drafters only when needed)
    runs_model: ClassVar[bool]
    #: key of its per-step state in the step's profile record (``None``: it keeps none)
    profile_key: ClassVar[str | None]

    def propose(self, root: int, past: int, budget: int) -> Proposal | None:
        """Up to ``budget`` tokens after ``root`` (the next token, at position ``past``; not yet in the cache)."""
        ...

    def observe(self, tree: TokenTree, verdict: Verdict, new_tokens: list[int]) -> None:
        """Verification of ``tree`` committed ``new_tokens`` (accepted drafts and the bonus token)."""
        ...

    def profile_state(self) -> dict[str, Any] | None:
        """What to keep in the step's profile for the next call (``None``: nothing)."""
        ...
