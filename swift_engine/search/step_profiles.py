"""Per-step skip profiles of one engine: search state in memory, records in the store.

The engine asks for the state of a step key at the start of a call and hands its own copy back at
the end (calls of one step may overlap: streams read in turn); the furthest-searched state is kept
in memory. The store makes the state survive restarts and merges what concurrent processes learned.

Profiles are an optimisation, so nothing here may fail a generation call: a record that cannot be
turned into a search state (say, skip indices beyond this model's layers) is ignored with a
warning and the step starts from the configured set, and a record that cannot be saved (read-only
or full disk, lock timeout, a newer release's record in the way) is logged and dropped.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, TypeVar

from swift_engine.config import SearchConfig
from swift_engine.search.state import MAX_OBSERVATIONS, Candidate, SearchState
from swift_engine.store.profile_store import ProfileStore
from swift_engine.store.records import DraftMemory, ProfileRecord, SkipSet

logger = logging.getLogger(__name__)

#: Step keys whose search state and record an engine keeps in memory; the least recently used
#: are dropped first (they are re-read from the store when their step runs again). Bounds the
#: memory of a long-lived engine that sees many distinct step keys.
MAX_CACHED_STEPS = 256

#: Expected speed-up credited to an imported (cached) skip set that carries no measurement: just
#: above break-even, so the set is drafted with (``best_speedup >= 1`` means "use it") and any set
#: a later search or probe actually measures as better replaces it. Finite on purpose: an infinite
#: prior could never be improved on, and is not a number a record may store.
IMPORTED_SPEEDUP = 1.0 + 1e-3

_V = TypeVar("_V")


def _remember(cache: OrderedDict[str, _V], key: str, value: _V) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > MAX_CACHED_STEPS:
        cache.popitem(last=False)


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
        self._states: OrderedDict[str, SearchState] = OrderedDict()
        self._records: OrderedDict[str, ProfileRecord] = OrderedDict()
        # the maps are touched from every thread that generates; OrderedDict reordering is not atomic
        self._lock = threading.Lock()

    # -- engine side -----------------------------------------------------------------------
    def checkout(self, step_key: str) -> tuple[SearchState, ProfileRecord]:
        """The step's state (from memory, else the store, else the starting set) and its record."""
        try:
            record = self.store.get(self.fingerprint, step_key)
        except OSError as exc:  # the store already turns what it reads into "absent"; be sure
            logger.warning("could not read the profile of step %r: %s", step_key, exc)
            record = None
        with self._lock:
            state = self._states.get(step_key)
        if record is not None and (state is None or record.iterations > state.iterations):
            try:
                state = _state_from_record(record, self.start, self.num_layers)
            except (ValueError, TypeError, KeyError) as exc:
                logger.warning("ignoring the stored profile of step %r (%s); starting from scratch", step_key, exc)
                state = None
        if state is None:
            state = SearchState(best=self.start)
        if record is None:
            record = ProfileRecord(model_fingerprint=self.fingerprint, model_name=self.model_name, step_key=step_key)
        with self._lock:
            _remember(self._states, step_key, state)
            _remember(self._records, step_key, record)
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
                "extra": _merge_extra(base.extra, extra),
                "model_name": self.model_name,
            }
            if ours_better:
                # Nothing measured yet (e.g. an imported set): store no score rather than the prior.
                measured = state.iterations > 0 or state.best_score > 0.0
                update.update(
                    skip=SkipSet(attention=sorted(state.best.attention), mlp=sorted(state.best.mlp)),
                    score=state.best_score if measured else None,
                    expected_speedup=state.best_speedup if measured else None,
                    iterations=state.iterations,
                    converged=state.converged,
                    plain=plain,
                    observations=state.observations,
                )
                update["extra"].update(since_improvement=state.since_improvement, best_draft_len=state.best_draft_len)
            return base.model_copy(update=update)

        with self._lock:  # the call searched on its own copy (SearchSession.open): keep the further one
            known = self._states.get(step_key)
            if known is None or state.iterations >= known.iterations:
                _remember(self._states, step_key, state)
        try:
            record = self.store.update(self.fingerprint, step_key, merge)
        except (OSError, ValueError) as exc:  # a read-only or full disk, or an unstorable state: not the call's problem
            logger.warning("could not save the profile of step %r: %s", step_key, exc)
            return None
        if record is not None:
            with self._lock:
                _remember(self._records, step_key, record)
        return record

    # -- user side -------------------------------------------------------------------------
    def list(self) -> list[ProfileRecord]:
        return self.store.list(self.fingerprint)

    def get(self, step_key: str) -> ProfileRecord | None:
        return self.store.get(self.fingerprint, step_key)

    def reset(self, step_key: str | None = None) -> int:
        """Forget one step's profile (or all of this model's): the search starts over."""
        with self._lock:
            if step_key is None:
                self._states.clear()
                self._records.clear()
            else:
                self._states.pop(step_key, None)
                self._records.pop(step_key, None)
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
        with self._lock:
            self._states.clear()
            self._records.clear()
        if format == "swift":
            return self.store.import_json(path)
        if format == "reference":
            return len(self.store.import_reference(path, self.fingerprint, self.model_name, self.num_layers))
        raise ValueError(f"unknown import format {format!r}; use 'swift' or 'reference'")


def _usable_observation(obs: dict[str, Any], num_layers: int) -> bool:
    """Whether the search can use ``obs``: all four keys, indices of this model, finite numbers.

    The store checks types and ranges of whatever keys are present; the search indexes all four
    and turns indices into per-layer parameters, so partial entries and indices beyond this model
    are dropped here rather than failing an iteration later.
    """
    try:
        layers = [*obs["attention"], *obs["mlp"]]
        numbers = (obs["score"], obs["speedup"])
    except (KeyError, TypeError):
        return False
    return all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < num_layers for i in layers) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in numbers
    )


def _state_from_record(record: ProfileRecord, start: Candidate, num_layers: int) -> SearchState:
    """The search state a stored record describes.

    Raises:
        ValueError: if the record's skip set names layers this model does not have.
    """
    out_of_range = [i for i in (*record.skip.attention, *record.skip.mlp) if i >= num_layers]
    if out_of_range:
        raise ValueError(f"its skip set names layers {out_of_range[:5]} of a model with {num_layers} layers")
    best = Candidate(frozenset(record.skip.attention), frozenset(record.skip.mlp))
    if not best.attention and not best.mlp:
        best = start
    observations = [dict(obs) for obs in record.observations if _usable_observation(obs, num_layers)]
    dropped = len(record.observations) - len(observations)
    if dropped:
        logger.debug("profile of step %r: dropped %d unusable observation(s)", record.step_key, dropped)
    if record.expected_speedup is not None:
        best_speedup = record.expected_speedup
    elif record.converged and record.score is None:
        best_speedup = IMPORTED_SPEEDUP  # an imported cached configuration: use it, but let measurements beat it
    else:
        best_speedup = 0.0
    state = SearchState(
        best=best,
        best_score=record.score or 0.0,
        best_speedup=best_speedup,
        best_draft_len=_extra_int(record, "best_draft_len", default=4, low=1),
        iterations=record.iterations,
        since_improvement=_extra_int(record, "since_improvement", default=0, low=0),
        converged=record.converged,
        observations=observations[-MAX_OBSERVATIONS:],
    )
    for obs in state.observations:
        state.seen.add((tuple(sorted(obs["attention"])), tuple(sorted(obs["mlp"]))))
    return state


def _extra_int(record: ProfileRecord, key: str, *, default: int, low: int) -> int:
    """An integer the search keeps in ``extra`` (validated by the store; re-checked, since records are mutable)."""
    value = record.extra.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        return default
    return value


def _merge_extra(stored: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """The record's extras with this call's: ours win, except the draft memory, which accumulates."""
    merged = {**stored, **ours}
    if ours.get("draft_memory") is not None:  # this call's additions (drafters/memory.py)
        added = DraftMemory.model_validate(ours["draft_memory"])
        merged["draft_memory"] = DraftMemory.merged(stored.get("draft_memory"), added)
    return merged
