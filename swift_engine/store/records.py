"""What a profile record is: its schema, its limits, and the rules for its keys.

A :class:`ProfileRecord` holds everything known about the skip profile of one (model
fingerprint, step key) pair. Records are read back from disk and drive the search, so every
field is validated strictly (types and ranges, the ``extra`` keys this package writes
included): a record that lies about one value is not trusted for the others. The
fingerprint and step key also become a directory and a file name, hence
:func:`validate_fingerprint`, :func:`validate_step_key` and :func:`safe_step_name`.

Storing records (locking, atomic writes, what happens to unusable files) is
:mod:`swift_engine.store.profile_store`'s business; this module touches no file.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import unicodedata
from pathlib import Path
from typing import Annotated, Any

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, Strict, StrictInt, ValidationError, field_validator

__all__ = [
    "ENV_PROFILE_DIR",
    "EXPORT_SCHEMA",
    "EXPORT_VERSION",
    "DRAFT_MEMORY_VERSION",
    "MAX_DRAFT_LEN",
    "MAX_DRAFT_MEMORY_TOKENS",
    "MAX_IMPORT_BYTES",
    "MAX_LAYERS",
    "MAX_MODEL_NAME_LENGTH",
    "MAX_OBSERVATIONS",
    "MAX_RECORD_BYTES",
    "MAX_SPEEDUP",
    "MAX_STEP_KEY_LENGTH",
    "SCHEMA_VERSION",
    "DraftMemory",
    "ProfileRecord",
    "SkipSet",
    "default_profile_dir",
    "escape_nonprintable",
    "safe_step_name",
    "validate_fingerprint",
    "validate_step_key",
]

#: Newest record schema this code understands. Files with a newer version were written
#: by a newer release; we leave them alone (read as absent, never overwritten).
SCHEMA_VERSION = 1
#: Environment variable overriding the default profile directory.
ENV_PROFILE_DIR = "SWIFT_PROFILE_DIR"
#: Marker and version of our own bulk export format (``export_json``/``import_json``).
EXPORT_SCHEMA = "swift-profiles"
EXPORT_VERSION = 1
#: Step keys are user-visible labels, not payloads; a bound keeps file names sane.
MAX_STEP_KEY_LENGTH = 200
#: Model names are display labels; longer ones are cut (see :class:`ProfileRecord`).
MAX_MODEL_NAME_LENGTH = 256
#: Layer indices must be below this: no real model has that many layers, and the bound
#: keeps a hostile record from making the search allocate per-index state without limit.
MAX_LAYERS = 1024
#: Most optimiser observations a record may hold (the search keeps far fewer).
MAX_OBSERVATIONS = 1000
#: Largest draft length a record may name (the engine's ``max_draft_len`` bound).
MAX_DRAFT_LEN = 256
#: Largest expected speed-up a record may claim; anything above is not a measurement.
MAX_SPEEDUP = 1000.0
#: Largest record file that is read; a real record is a few KiB.
MAX_RECORD_BYTES = 1 << 20
#: Largest export file :meth:`ProfileStore.import_json` / ``import_reference`` read.
MAX_IMPORT_BYTES = 64 << 20

# Fingerprints become directory names, so they must be a single safe path component.
_FINGERPRINT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SLUG_UNSAFE_RE = re.compile(r"[^a-z0-9._-]+")
_SLUG_MAX = 48
_KEY_HASH_LEN = 16


# --------------------------------------------------------------------------- validation


def validate_step_key(key: str) -> str:
    """Check that ``key`` is usable as a step key and return it unchanged.

    The exact string is the identity of a profile (it is hashed into the file name),
    so we do not normalise it; we only reject keys that are almost certainly bugs
    (blank), that would make unwieldy file names (too long), or that would corrupt
    logs and terminals (control characters). Other invisible characters (e.g. bidi
    overrides) are allowed in keys but shown escaped, see :func:`escape_nonprintable`.

    Raises:
        ValueError: if the key is blank, longer than 200 characters, contains control
            characters or lone surrogates, or is not a string.
    """
    if not isinstance(key, str):
        raise ValueError(f"step key must be a string, got {type(key).__name__}")
    if not key.strip():
        raise ValueError("step key must be a non-empty string (got an empty or whitespace-only key)")
    if len(key) > MAX_STEP_KEY_LENGTH:
        raise ValueError(
            f"step key is {len(key)} characters long; at most {MAX_STEP_KEY_LENGTH} are allowed "
            f"(key starts with {key[:40]!r})"
        )
    for position, char in enumerate(key):
        category = unicodedata.category(char)
        if category == "Cc":
            raise ValueError(f"step key {key!r} contains control character {char!r} at position {position}")
        if category == "Cs":
            raise ValueError(f"step key {key!r} contains a lone surrogate at position {position}")
    return key


def validate_fingerprint(fingerprint: str) -> str:
    """Check that a model fingerprint is a single safe path component and return it.

    Fingerprints are used verbatim as directory names; anything that could escape the
    profile directory (``..``, slashes) or break on some filesystem is rejected.

    Raises:
        ValueError: if the fingerprint is not 1-128 characters of ``[A-Za-z0-9._-]``
            starting with an alphanumeric character.
    """
    if not isinstance(fingerprint, str) or not _FINGERPRINT_RE.fullmatch(fingerprint):
        raise ValueError(
            f"model fingerprint {fingerprint!r} is not valid: expected 1-128 characters of "
            "letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return fingerprint


def escape_nonprintable(text: str) -> str:
    """``text`` with every non-printable character written as a Python escape (``\\x1b``).

    Step keys and model names end up in terminals and logs; control characters,
    bidi overrides and other invisible code points in them could rewrite what a user
    sees. Printable text (any script, spaces included) is returned unchanged, so the
    result is idempotent.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)


def safe_step_name(step_key: str) -> str:
    """Return the file-name stem used for ``step_key``.

    A readable slug keeps the directory browsable by humans, and the hash of the
    exact key guarantees that keys sharing a slug (``agent:plan`` vs ``agent/plan``,
    or keys differing only in case on a case-insensitive filesystem) never collide.
    """
    validate_step_key(step_key)
    slug = _SLUG_UNSAFE_RE.sub("_", step_key.lower()).strip("._-")[:_SLUG_MAX].rstrip("._-") or "step"
    digest = hashlib.sha256(step_key.encode("utf-8")).hexdigest()[:_KEY_HASH_LEN]
    return f"{slug}-{digest}"


def default_profile_dir() -> Path:
    """Return the profile directory used when none is given.

    ``SWIFT_PROFILE_DIR`` wins so deployments and tests can redirect storage without
    code changes; otherwise profiles live in the per-user cache, since they are
    re-derivable (by searching again) and should not clutter config or data dirs.
    """
    override = os.environ.get(ENV_PROFILE_DIR)
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_cache_dir("swift")) / "profiles"


# --------------------------------------------------------------------------- models

#: A layer index as stored: a real integer (not a bool, float or string) in range.
#: Format of a step's draft memory (``extra["draft_memory"]``); other versions are left alone.
DRAFT_MEMORY_VERSION = 1
#: Most tokens a step's draft memory may hold (its JSON stays far below MAX_RECORD_BYTES).
MAX_DRAFT_MEMORY_TOKENS = 16384

_LayerIndex = Annotated[int, Strict(), Field(ge=0, lt=MAX_LAYERS)]
_Count = Annotated[int, Strict(), Field(ge=0, le=2**31)]


class SkipSet(BaseModel):
    """Which sublayers the draft pass skips.

    Indices are kept sorted and unique so that two equal skip sets always compare,
    hash and serialise identically - the optimiser relies on that to recognise
    configurations it has already evaluated.
    """

    model_config = ConfigDict(extra="ignore")

    attention: list[StrictInt] = Field(default_factory=list)
    mlp: list[StrictInt] = Field(default_factory=list)

    @field_validator("attention", "mlp")
    @classmethod
    def _sorted_unique_in_range(cls, value: list[int]) -> list[int]:
        negatives = [index for index in value if index < 0]
        if negatives:
            raise ValueError(f"layer indices must be non-negative, got {negatives}")
        too_large = [index for index in value if index >= MAX_LAYERS]
        if too_large:
            raise ValueError(f"layer indices must be below {MAX_LAYERS}, got {too_large[:5]}")
        return sorted(set(value))

    @classmethod
    def empty(cls) -> SkipSet:
        """A skip set that skips nothing, i.e. plain (non-speculative) decoding."""
        return cls(attention=[], mlp=[])

    def ratio(self, num_layers: int) -> float:
        """Fraction of all ``2 * num_layers`` sublayers that are skipped.

        This is the main knob trading draft speed against draft quality, so callers
        use it to bound and report the search.
        """
        if num_layers <= 0:
            raise ValueError(f"num_layers must be positive, got {num_layers}")
        return (len(self.attention) + len(self.mlp)) / (2 * num_layers)

    def key(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Hashable form, for dictionaries and sets of already-tried configurations."""
        return (tuple(self.attention), tuple(self.mlp))

    def max_index(self) -> int:
        """Largest layer index used, or -1 when nothing is skipped."""
        return max([*self.attention, *self.mlp], default=-1)


class _Observation(BaseModel):
    """One optimiser observation as stored; the keys the search reads must be well typed.

    Keys are optional (other writers may store partial entries; the search only uses
    complete ones) and unknown keys are kept, but a present key with a wrong type or an
    out-of-range value makes the whole record invalid: a record that lies about one
    observation is not trusted for the others.
    """

    model_config = ConfigDict(extra="allow")

    attention: list[_LayerIndex] = Field(default_factory=list, max_length=MAX_LAYERS)
    mlp: list[_LayerIndex] = Field(default_factory=list, max_length=MAX_LAYERS)
    score: Annotated[float, Strict(), Field(allow_inf_nan=False, ge=0.0, le=1.0)] = 0.0
    speedup: Annotated[float, Strict(), Field(allow_inf_nan=False, ge=0.0, le=MAX_SPEEDUP)] = 0.0


_TokenId = Annotated[int, Strict(), Field(ge=0, lt=2**31)]


class DraftMemory(BaseModel):
    """A step's earlier outputs (token ids), newest last: what the memory drafter copies from.

    Kept in the step's profile record, so it shares the record's validation, atomic writes and
    bounds. A call stores only what it added (``outputs``: its own reply) and :meth:`merged`
    folds that into what the store holds, so concurrent calls of one step all keep their
    outputs. Bounded by ``max_tokens`` (the oldest outputs go first).
    """

    model_config = ConfigDict(extra="ignore")

    version: Annotated[int, Strict(), Field(ge=1)] = DRAFT_MEMORY_VERSION
    max_tokens: Annotated[int, Strict(), Field(ge=0, le=MAX_DRAFT_MEMORY_TOKENS)] = 4096
    outputs: list[list[_TokenId]] = Field(default_factory=list, max_length=MAX_DRAFT_MEMORY_TOKENS)
    #: the memory drafter's acceptance statistics (drafters/memory.py re-validates them)
    acceptance: dict[str, Any] | None = None

    @field_validator("outputs")
    @classmethod
    def _bounded(cls, value: list[list[int]]) -> list[list[int]]:
        if sum(len(o) for o in value) > MAX_DRAFT_MEMORY_TOKENS:
            raise ValueError(f"more than {MAX_DRAFT_MEMORY_TOKENS} tokens")
        return value

    def trimmed(self) -> DraftMemory:
        """The newest outputs that fit in ``max_tokens``."""
        kept: list[list[int]] = []
        total = 0
        for out in reversed(self.outputs):
            if total + len(out) > self.max_tokens:
                break
            kept.insert(0, out)
            total += len(out)
        return self.model_copy(update={"outputs": kept})

    @staticmethod
    def merged(stored: Any, added: DraftMemory) -> dict[str, Any]:
        """``stored`` (the record's value, possibly absent or of another version) with ``added`` folded in.

        An output seen before moves to the newest end instead of being kept twice. A stored memory
        of a newer version is left as it is (a newer release wrote it).
        """
        base = None
        if isinstance(stored, dict):
            try:
                base = DraftMemory.model_validate(stored)
            except ValidationError:
                base = None
        if base is not None and base.version > added.version:
            return dict(stored)
        outputs = list(base.outputs) if base is not None and base.version == added.version else []
        for out in added.outputs:
            if out in outputs:
                outputs.remove(out)
            outputs.append(out)
        merged = added.model_copy(update={"outputs": outputs}).trimmed()
        return merged.model_dump()


class _KnownExtra(BaseModel):
    """The ``extra`` keys this package writes, typed; other keys pass through untouched.

    ``since_improvement`` and ``best_draft_len`` are the search's (step_profiles.py),
    ``calls_since_probe`` the plain-decoding re-probe counter (search.py) and
    ``context_acceptance`` the context drafter's statistics (drafters/context.py, which
    re-validates its own content), ``draft_memory`` the memory drafter's earlier outputs.
    Absent keys are fine; ``null`` or a wrong type is not.
    """

    model_config = ConfigDict(extra="allow")

    since_improvement: _Count = 0
    best_draft_len: Annotated[int, Strict(), Field(ge=1, le=MAX_DRAFT_LEN)] = 4
    calls_since_probe: _Count = 0
    context_acceptance: dict[str, Any] | None = None
    draft_memory: DraftMemory | None = None


def _validation_summary(error: ValidationError) -> str:
    """First validation error in one line: enough to diagnose, short enough for a log."""
    errors = error.errors()
    if not errors:
        return str(error)
    first = errors[0]
    location = ".".join(str(part) for part in first.get("loc", ())) or "<root>"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{location}: {first.get('msg', 'invalid')}{more}"


class ProfileRecord(BaseModel):
    """Everything known about the skip profile of one (model, step) pair.

    Besides the current best skip set it keeps the search state (observations,
    iterations, convergence) so that the on-the-fly search can resume across runs
    instead of starting over, plus usage counters and stats from other components in
    ``extra``. Every field is range-checked (finite numbers, bounded lists), because
    records are read back from disk and drive the search.
    """

    model_config = ConfigDict(extra="ignore")

    schema_version: int = SCHEMA_VERSION
    model_fingerprint: str
    #: Display label of the model. Non-printable characters are stored escaped
    #: (``\\x1b``) and it is cut at MAX_MODEL_NAME_LENGTH characters: a label must never
    #: break a terminal, nor fail the call that writes it.
    model_name: str = ""
    step_key: str
    skip: SkipSet = Field(default_factory=SkipSet.empty)
    #: Teacher-forced draft match rate of ``skip`` (None until measured).
    score: Annotated[float, Field(allow_inf_nan=False, ge=0.0, le=1.0)] | None = None
    expected_speedup: Annotated[float, Field(allow_inf_nan=False, ge=0.0, le=MAX_SPEEDUP)] | None = None
    #: Search iterations done so far.
    iterations: int = Field(default=0, ge=0)
    converged: bool = False
    #: True when no profile beat plain decoding; the engine then decodes plainly and
    #: re-probes now and then.
    plain: bool = False
    #: Optimiser observations, e.g. {"attention": [...], "mlp": [...], "score": 0.7, "speedup": 1.1}.
    observations: list[dict[str, Any]] = Field(default_factory=list, max_length=MAX_OBSERVATIONS)
    tokens_seen: int = Field(default=0, ge=0)
    calls: int = Field(default=0, ge=0)
    created_at: float = Field(default_factory=time.time, ge=0.0, allow_inf_nan=False)
    updated_at: float = Field(default_factory=time.time, ge=0.0, allow_inf_nan=False)
    #: Per-step stats from other components (e.g. drafting-source acceptance); the keys
    #: this package writes are typed (see ``_KnownExtra``), others are kept as they are.
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("schema_version")
    @classmethod
    def _supported_schema(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"schema_version must be >= 1, got {value}")
        if value > SCHEMA_VERSION:
            raise ValueError(f"schema_version {value} is newer than the supported version {SCHEMA_VERSION}")
        return value

    @field_validator("model_fingerprint")
    @classmethod
    def _valid_fingerprint(cls, value: str) -> str:
        return validate_fingerprint(value)

    @field_validator("model_name")
    @classmethod
    def _displayable_model_name(cls, value: str) -> str:
        return escape_nonprintable(value)[:MAX_MODEL_NAME_LENGTH]

    @field_validator("step_key")
    @classmethod
    def _valid_step_key(cls, value: str) -> str:
        return validate_step_key(value)

    @field_validator("observations")
    @classmethod
    def _valid_observations(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        checked = []
        for index, entry in enumerate(value):
            try:
                observation = _Observation.model_validate(entry)
            except ValidationError as exc:
                raise ValueError(f"observation #{index} is invalid ({_validation_summary(exc)})") from None
            checked.append(observation.model_dump(exclude_unset=True))
        return checked

    @field_validator("extra")
    @classmethod
    def _valid_extra(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            _KnownExtra.model_validate(value)
        except ValidationError as exc:
            raise ValueError(f"invalid extra ({_validation_summary(exc)})") from None
        return value
