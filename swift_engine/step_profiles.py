"""Per-step skip profiles of one engine: search state in memory, records in the store.

The engine asks for the state of a step key at the start of a call and hands it back at the end;
in between only this call touches it (the engine serializes generations). The store makes the
state survive restarts and merges what concurrent processes learned.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .config import SearchConfig
from .profile_store import ProfileRecord, ProfileStore, SkipSet
from .search import Candidate, SearchState

logger = logging.getLogger(__name__)


class StepProfiles:
    """``engine.profiles``: list, get, export, import and reset the profiles of this model."""

    def __init__(
        self,
        store: ProfileStore,
        fingerprint: str,
        model_name: str,
        num_layers: int,
        start: Candidate,
        search: SearchConfig,
    ) -> None:
        self.store = store
        self.fingerprint = fingerprint
        self.model_name = model_name
        self.num_layers = num_layers
        self.start = start
        self.search = search
        self._states: dict[str, SearchState] = {}
        self._records: dict[str, ProfileRecord] = {}

    # -- engine side -----------------------------------------------------------------------
    def checkout(self, step_key: str) -> tuple[SearchState, ProfileRecord]:
        """The step's state (from memory, else the store, else the starting set) and its record."""
        record = self.store.get(self.fingerprint, step_key)
        state = self._states.get(step_key)
        if record is not None and (state is None or record.iterations > state.iterations):
            state = _state_from_record(record, self.start)
        if state is None:
            state = SearchState(best=self.start)
        if record is None:
            record = ProfileRecord(model_fingerprint=self.fingerprint, model_name=self.model_name, step_key=step_key)
        self._states[step_key] = state
        self._records[step_key] = record
        return state, record

    def commit(
        self, step_key: str, state: SearchState, *, plain: bool, tokens: int, extra: dict[str, Any]
    ) -> ProfileRecord | None:
        """Write the step's state back; counters from other processes are kept and added to."""

        def merge(current: ProfileRecord | None) -> ProfileRecord:
            base = current or ProfileRecord(
                model_fingerprint=self.fingerprint, model_name=self.model_name, step_key=step_key
            )
            ours_better = (
                current is None
                or state.iterations >= current.iterations
                or (state.best_speedup > (current.expected_speedup or 0.0))
            )
            update: dict[str, Any] = {
                "calls": base.calls + 1,
                "tokens_seen": base.tokens_seen + tokens,
                "extra": {**base.extra, **extra},
                "model_name": self.model_name,
            }
            if ours_better:
                update.update(
                    skip=SkipSet(attention=sorted(state.best.attention), mlp=sorted(state.best.mlp)),
                    score=state.best_score,
                    expected_speedup=state.best_speedup,
                    iterations=state.iterations,
                    converged=state.converged,
                    plain=plain,
                    observations=state.observations,
                )
                update["extra"].update(since_improvement=state.since_improvement, best_draft_len=state.best_draft_len)
            return base.model_copy(update=update)

        try:
            record = self.store.update(self.fingerprint, step_key, merge)
        except OSError as exc:  # a read-only or full disk must not break generation
            logger.warning("could not save the profile of step %r: %s", step_key, exc)
            return None
        if record is not None:
            self._records[step_key] = record
        return record

    # -- user side -------------------------------------------------------------------------
    def list(self) -> list[ProfileRecord]:
        return self.store.list(self.fingerprint)

    def get(self, step_key: str) -> ProfileRecord | None:
        return self.store.get(self.fingerprint, step_key)

    def reset(self, step_key: str | None = None) -> int:
        """Forget one step's profile (or all of this model's): the search starts over."""
        if step_key is None:
            self._states.clear()
        else:
            self._states.pop(step_key, None)
        return self.store.reset(self.fingerprint, step_key)

    def export(self, path: str | os.PathLike[str], format: str = "swift") -> int:
        """Write this model's profiles: ``"swift"`` (everything) or ``"reference"`` (SWIFT's skip_layers.json)."""
        if format == "swift":
            return self.store.export_json(path, self.fingerprint)
        if format == "reference":
            return self.store.export_reference(path, self.fingerprint)
        raise ValueError(f"unknown export format {format!r}; use 'swift' or 'reference'")

    def import_(self, path: str | os.PathLike[str], format: str = "swift") -> int:
        """Load profiles; imported sets count as converged (the paper's cached configuration)."""
        if not Path(path).exists():
            raise FileNotFoundError(f"no profile file at {path}")
        self._states.clear()
        if format == "swift":
            return self.store.import_json(path)
        if format == "reference":
            return len(self.store.import_reference(path, self.fingerprint, self.model_name, self.num_layers))
        raise ValueError(f"unknown import format {format!r}; use 'swift' or 'reference'")


def _state_from_record(record: ProfileRecord, start: Candidate) -> SearchState:
    best = Candidate(frozenset(record.skip.attention), frozenset(record.skip.mlp))
    if not best.attention and not best.mlp:
        best = start
    state = SearchState(
        best=best,
        best_score=record.score or 0.0,
        best_speedup=record.expected_speedup or 0.0,
        best_draft_len=int(record.extra.get("best_draft_len", 4)),
        iterations=record.iterations,
        since_improvement=int(record.extra.get("since_improvement", 0)),
        converged=record.converged,
        observations=list(record.observations),
    )
    for obs in state.observations:
        state.seen.add((tuple(obs.get("attention", [])), tuple(obs.get("mlp", []))))
    if record.converged and record.expected_speedup is None and record.score is None:
        # imported cached configuration: trust it without a score
        state.best_speedup = float("inf")
    return state
