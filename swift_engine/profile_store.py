"""Persistent skip profiles for SWIFT self-speculative decoding.

SWIFT drafts tokens by running the target model with a subset of its attention and
MLP sublayers skipped. Which subset works best depends on the model *and* on the
kind of text being generated, and finding it costs an on-the-fly search. This module
stores what that search learned so that it survives process restarts and is shared
between the many processes and threads that may run the same pipeline at once.

Profiles are keyed by a model fingerprint (a hex string computed elsewhere) and a
*step key* naming a pipeline stage (``"summarize"``, ``"agent:plan"``, ...). Each
(fingerprint, step key) pair lives in its own JSON file so that writers touching
different steps never contend, and every write is atomic and lock-guarded so that
concurrent writers merge instead of clobbering each other.

The module is deliberately framework-free: it must never import LangChain or
LlamaIndex, because the integrations depend on it, not the other way round.
"""

from __future__ import annotations

import builtins
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import platformdirs
from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

logger = logging.getLogger(__name__)

__all__ = [
    "ENV_PROFILE_DIR",
    "EXPORT_SCHEMA",
    "EXPORT_VERSION",
    "MAX_STEP_KEY_LENGTH",
    "SCHEMA_VERSION",
    "ProfileRecord",
    "ProfileStore",
    "SkipSet",
    "default_profile_dir",
    "safe_step_name",
    "validate_fingerprint",
    "validate_step_key",
]

#: Newest record schema this code understands. Files with a newer version were written
#: by a newer release; we set them aside rather than silently misreading them.
SCHEMA_VERSION = 1
#: Environment variable overriding the default profile directory.
ENV_PROFILE_DIR = "SWIFT_PROFILE_DIR"
#: Marker and version of our own bulk export format (``export_json``/``import_json``).
EXPORT_SCHEMA = "swift-profiles"
EXPORT_VERSION = 1
#: Step keys are user-visible labels, not payloads; a bound keeps file names sane.
MAX_STEP_KEY_LENGTH = 200

# Fingerprints become directory names, so they must be a single safe path component.
_FINGERPRINT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SLUG_UNSAFE_RE = re.compile(r"[^a-z0-9._-]+")
_SLUG_MAX = 48
_KEY_HASH_LEN = 16
_RECORD_SUFFIX = ".json"
_LOCK_SUFFIX = ".lock"
_DEFAULT_LOCK_TIMEOUT_S = 60.0
_LOCK_POLL_S = 0.005


# --------------------------------------------------------------------------- validation


def validate_step_key(key: str) -> str:
    """Check that ``key`` is usable as a step key and return it unchanged.

    The exact string is the identity of a profile (it is hashed into the file name),
    so we do not normalise it; we only reject keys that are almost certainly bugs
    (blank), that would make unwieldy file names (too long), or that would corrupt
    logs and terminals (control characters).

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
    def _sorted_unique_non_negative(cls, value: list[int]) -> list[int]:
        negatives = [index for index in value if index < 0]
        if negatives:
            raise ValueError(f"layer indices must be non-negative, got {negatives}")
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


class ProfileRecord(BaseModel):
    """Everything known about the skip profile of one (model, step) pair.

    Besides the current best skip set it keeps the search state (observations,
    iterations, convergence) so that the on-the-fly search can resume across runs
    instead of starting over, plus usage counters and free-form stats from other
    components in ``extra``.
    """

    model_config = ConfigDict(extra="ignore")

    schema_version: int = SCHEMA_VERSION
    model_fingerprint: str
    model_name: str = ""
    step_key: str
    skip: SkipSet = Field(default_factory=SkipSet.empty)
    #: Teacher-forced draft match rate of ``skip`` (None until measured).
    score: float | None = None
    expected_speedup: float | None = None
    #: Search iterations done so far.
    iterations: int = Field(default=0, ge=0)
    converged: bool = False
    #: True when no profile beat plain decoding; the engine then decodes plainly and
    #: re-probes now and then.
    plain: bool = False
    #: Optimiser observations, e.g. {"attention": [...], "mlp": [...], "score": 0.7, "speedup": 1.1}.
    observations: list[dict[str, Any]] = Field(default_factory=list)
    tokens_seen: int = Field(default=0, ge=0)
    calls: int = Field(default=0, ge=0)
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    #: Free-form per-step stats from other components (e.g. drafting-source acceptance).
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

    @field_validator("step_key")
    @classmethod
    def _valid_step_key(cls, value: str) -> str:
        return validate_step_key(value)


# --------------------------------------------------------------------------- file helpers


def _fsync_directory(directory: Path) -> None:
    """Persist a rename on POSIX; best effort because not every OS/filesystem allows it."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old or the new content.

    The temp file lives in the same directory so ``os.replace`` is a same-filesystem
    rename (atomic); the fsync makes sure a crash cannot leave a renamed-but-empty file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(path.parent)


def _timestamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def _short_error(error: ValidationError) -> str:
    """First validation error in one line: enough to diagnose, short enough for a log."""
    errors = error.errors()
    if not errors:
        return str(error)
    first = errors[0]
    location = ".".join(str(part) for part in first.get("loc", ())) or "<root>"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{location}: {first.get('msg', 'invalid')}{more}"


class _InvalidRecordFile(Exception):
    """Internal: a record file exists but cannot be trusted (reason in ``args[0]``)."""


# --------------------------------------------------------------------------- store


class ProfileStore:
    """File-backed store of :class:`ProfileRecord`, safe across threads and processes.

    Layout: ``<directory>/<fingerprint>/<safe_step_name(step_key)>.json`` with a
    ``.json.lock`` file next to each record. Reads are lock-free (writes are atomic
    renames, so a reader never sees a torn file); every mutation happens under the
    record's :class:`filelock.FileLock`. Lock files are never deleted, because
    removing a lock file another process is waiting on would let two writers in.

    Files that cannot be trusted (invalid JSON, wrong schema, a newer
    ``schema_version``, or a record stored under the wrong path) are renamed to
    ``<name>.corrupt-<timestamp>`` with a warning and treated as absent, so a bad
    file degrades to "search again" instead of crashing a pipeline.

    The store holds no mutable in-memory state; instances are cheap and any number of
    them may point at the same directory.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        lock_timeout: float = _DEFAULT_LOCK_TIMEOUT_S,
    ) -> None:
        """Create a store rooted at ``directory`` (see :func:`default_profile_dir`).

        The directory is created lazily on the first write, so constructing a store
        (e.g. at import time of an integration) never touches the filesystem.
        ``lock_timeout`` bounds how long a write waits for another writer before
        raising :class:`filelock.Timeout`; waiting forever would hide a stuck process.
        """
        self._directory = Path(directory).expanduser() if directory is not None else default_profile_dir()
        self._lock_timeout = lock_timeout

    @property
    def directory(self) -> Path:
        """Root directory of the store."""
        return self._directory

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self._directory)!r})"

    # ----------------------------------------------------------------- paths & locks

    def path_for(self, fingerprint: str, step_key: str) -> Path:
        """Path of the JSON file holding the (fingerprint, step_key) record."""
        validate_fingerprint(fingerprint)
        return self._directory / fingerprint / f"{safe_step_name(step_key)}{_RECORD_SUFFIX}"

    @contextmanager
    def _lock_for(self, path: Path) -> Iterator[None]:
        """Hold the record's inter-process lock.

        A fresh lock object per operation: flock() on separate open file descriptions
        excludes other threads as well as other processes, and no lock object becomes
        shared mutable state. The short poll interval keeps hand-over latency low when
        many workers update the same record (filelock's default is 50 ms).
        """
        lock = FileLock(str(path) + _LOCK_SUFFIX, timeout=self._lock_timeout)
        with lock.acquire(poll_interval=_LOCK_POLL_S):
            yield

    def _record_files(self, fingerprint: str | None) -> Iterator[tuple[str, Path]]:
        """Yield (fingerprint, path) of every record file, in a stable order."""
        if fingerprint is not None:
            validate_fingerprint(fingerprint)
            fingerprint_dirs = [self._directory / fingerprint]
        else:
            try:
                fingerprint_dirs = sorted(p for p in self._directory.iterdir() if p.is_dir())
            except FileNotFoundError:
                return
        for fingerprint_dir in fingerprint_dirs:
            if not _FINGERPRINT_RE.fullmatch(fingerprint_dir.name):
                continue  # not ours (e.g. a stray folder); leave it alone
            try:
                names = sorted(os.listdir(fingerprint_dir))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                # Dot-files are in-flight temp files; .lock/.corrupt-* do not end in .json.
                if name.startswith(".") or not name.endswith(_RECORD_SUFFIX):
                    continue
                yield fingerprint_dir.name, fingerprint_dir / name

    # ----------------------------------------------------------------- reading

    @staticmethod
    def _parse(path: Path, expected_fingerprint: str, expected_stem: str | None) -> ProfileRecord | None:
        """Read and validate one record file.

        Returns None when the file does not exist; raises :class:`_InvalidRecordFile`
        when it exists but must not be trusted. ``expected_stem`` None means "derive
        it from the path" (used when listing).
        """
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except IsADirectoryError as exc:
            raise _InvalidRecordFile("is a directory, not a record file") from exc
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _InvalidRecordFile(f"invalid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise _InvalidRecordFile(f"expected a JSON object, found {type(data).__name__}")
        version = data.get("schema_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
            raise _InvalidRecordFile(f"schema_version {version} is newer than the supported version {SCHEMA_VERSION}")
        try:
            record = ProfileRecord.model_validate(data)
        except ValidationError as exc:
            raise _InvalidRecordFile(f"not a ProfileRecord ({_short_error(exc)})") from exc
        stem = expected_stem if expected_stem is not None else path.name[: -len(_RECORD_SUFFIX)]
        if record.model_fingerprint != expected_fingerprint or safe_step_name(record.step_key) != stem:
            raise _InvalidRecordFile(
                f"holds the record for fingerprint {record.model_fingerprint!r} / step key "
                f"{record.step_key!r}, which does not belong at this path"
            )
        return record

    def _set_aside(self, path: Path, reason: str) -> None:
        """Rename an untrusted file out of the way (never delete: it may be evidence)."""
        target = path.with_name(f"{path.name}.corrupt-{_timestamp()}")
        counter = 1
        while target.exists():
            target = path.with_name(f"{path.name}.corrupt-{_timestamp()}-{counter}")
            counter += 1
        try:
            os.replace(path, target)
        except FileNotFoundError:
            return  # someone else already dealt with it
        except OSError as exc:
            logger.warning("Ignoring unreadable profile file %s (%s); could not move it aside: %s", path, reason, exc)
            return
        logger.warning("Profile file %s is unusable (%s); moved it aside to %s", path, reason, target.name)

    def _load_locked(self, path: Path, fingerprint: str, stem: str | None) -> ProfileRecord | None:
        """Read a record while holding its lock, setting it aside if it is bad.

        Quarantining only under the lock matters: otherwise a reader that saw a bad
        file could rename away the good record a concurrent writer just replaced it with.
        """
        try:
            return self._parse(path, fingerprint, stem)
        except _InvalidRecordFile as exc:
            self._set_aside(path, str(exc))
            return None

    def _load(self, path: Path, fingerprint: str, stem: str | None) -> ProfileRecord | None:
        """Lock-free read; only takes the lock when the file looks bad."""
        try:
            return self._parse(path, fingerprint, stem)
        except _InvalidRecordFile as exc:
            first_reason = str(exc)
        try:
            with self._lock_for(path):
                return self._load_locked(path, fingerprint, stem)
        except OSError as exc:  # read-only directory, lock timeout (filelock.Timeout is an OSError)
            logger.warning(
                "Ignoring unusable profile file %s (%s); could not lock it to move it aside: %s",
                path,
                first_reason,
                exc,
            )
            return None

    def get(self, fingerprint: str, step_key: str) -> ProfileRecord | None:
        """Return the stored record, or None if there is none (or it was unusable)."""
        path = self.path_for(fingerprint, step_key)
        return self._load(path, fingerprint, path.name[: -len(_RECORD_SUFFIX)])

    def list(self, fingerprint: str | None = None) -> builtins.list[ProfileRecord]:
        """All usable records, optionally only those of one model fingerprint.

        Unusable files are set aside exactly as :meth:`get` does, so one bad file never
        hides the others.
        """
        records: builtins.list[ProfileRecord] = []
        for fp, path in self._record_files(fingerprint):
            record = self._load(path, fp, None)
            if record is not None:
                records.append(record)
        records.sort(key=lambda r: (r.model_fingerprint, r.step_key))
        return records

    # ----------------------------------------------------------------- writing

    @staticmethod
    def _serialise(record: ProfileRecord) -> bytes:
        return (record.model_dump_json(indent=2) + "\n").encode("utf-8")

    def put(self, record: ProfileRecord) -> None:
        """Store ``record`` as is, replacing any existing record for its key.

        Use :meth:`update` instead when the new value depends on the old one (counters,
        merged observations): ``put`` does not see concurrent writers' changes.
        """
        record = ProfileRecord.model_validate(record.model_dump())  # re-validate: models are mutable
        path = self.path_for(record.model_fingerprint, record.step_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock_for(path):
            _atomic_write_bytes(path, self._serialise(record))

    def update(
        self,
        fingerprint: str,
        step_key: str,
        fn: Callable[[ProfileRecord | None], ProfileRecord | None],
    ) -> ProfileRecord | None:
        """Atomically read-modify-write one record; this is how concurrent writers merge.

        ``fn`` receives a private copy of the current record (None if absent or
        unusable) while the record's lock is held, so no other thread or process can
        write in between. It should be quick and must not call back into this store for
        the same record (that would self-deadlock).

        If ``fn`` returns a record, it is stored with ``updated_at`` set to now and
        returned. If it returns None, nothing is written and the record that is stored
        (possibly None) is returned.

        Raises:
            ValueError: if ``fn`` returns a record for a different fingerprint or step key.
        """
        path = self.path_for(fingerprint, step_key)
        stem = path.name[: -len(_RECORD_SUFFIX)]
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock_for(path):
            current = self._load_locked(path, fingerprint, stem)
            result = fn(current)
            if result is None:
                return current
            if result.model_fingerprint != fingerprint or result.step_key != step_key:
                raise ValueError(
                    f"update() for ({fingerprint!r}, {step_key!r}) got a record for "
                    f"({result.model_fingerprint!r}, {result.step_key!r})"
                )
            data = result.model_dump()
            data["updated_at"] = time.time()
            new = ProfileRecord.model_validate(data)
            _atomic_write_bytes(path, self._serialise(new))
            return new

    def delete(self, fingerprint: str, step_key: str) -> bool:
        """Remove one record; returns whether there was a file to remove."""
        path = self.path_for(fingerprint, step_key)
        if not path.exists():
            return False
        return self._remove(path)

    def _remove(self, path: Path) -> bool:
        with self._lock_for(path):
            try:
                path.unlink()
            except FileNotFoundError:
                return False
        _fsync_directory(path.parent)
        return True

    def reset(self, fingerprint: str | None = None, step_key: str | None = None) -> int:
        """Remove records so their search starts over; returns how many were removed.

        With no arguments everything goes; ``fingerprint`` limits it to one model and
        ``step_key`` to one step (across all models when ``fingerprint`` is None).
        Files are matched by name, so unreadable record files are removed too.
        """
        stem = safe_step_name(step_key) if step_key is not None else None
        removed = 0
        for _, path in builtins.list(self._record_files(fingerprint)):
            if stem is not None and path.name != f"{stem}{_RECORD_SUFFIX}":
                continue
            if self._remove(path):
                removed += 1
        if removed:
            logger.info("Reset %d SWIFT profile(s) in %s", removed, self._directory)
        return removed

    # ----------------------------------------------------------------- our JSON format

    def export_json(self, path: str | os.PathLike[str], fingerprint: str | None = None) -> int:
        """Write all (or one model's) records to ``path`` in our full format.

        Unlike the reference format this keeps search state and statistics, so it is
        the one to use for moving profiles between machines. Returns the record count.
        """
        records = self.list(fingerprint)
        document = {
            "schema": EXPORT_SCHEMA,
            "version": EXPORT_VERSION,
            "profiles": [record.model_dump(mode="json") for record in records],
        }
        _atomic_write_bytes(Path(path), (json.dumps(document, indent=2) + "\n").encode("utf-8"))
        return len(records)

    def import_json(self, path: str | os.PathLike[str]) -> int:
        """Load records written by :meth:`export_json`, replacing same-key records.

        The whole document is validated before anything is written, so a bad file
        leaves the store untouched. Returns the number of records imported.

        Raises:
            ValueError: if the file is not a valid ``swift-profiles`` document.
        """
        source = Path(path)
        try:
            document = json.loads(source.read_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{source} is not valid JSON: {exc}") from exc
        if not isinstance(document, dict) or document.get("schema") != EXPORT_SCHEMA:
            raise ValueError(f"{source} is not a {EXPORT_SCHEMA!r} export (missing or wrong 'schema' field)")
        version = document.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= EXPORT_VERSION:
            raise ValueError(f"{source} has export version {version!r}; this code supports up to {EXPORT_VERSION}")
        entries = document.get("profiles")
        if not isinstance(entries, list):
            raise ValueError(f"{source}: 'profiles' must be a list")
        records: builtins.list[ProfileRecord] = []
        for index, entry in enumerate(entries):
            try:
                records.append(ProfileRecord.model_validate(entry))
            except ValidationError as exc:
                raise ValueError(f"{source}: profile #{index} is invalid: {_short_error(exc)}") from exc
        for record in records:
            self.put(record)
        return len(records)

    # ----------------------------------------------------------------- reference format

    def export_reference(self, path: str | os.PathLike[str], fingerprint: str | None = None) -> int:
        """Write records as the reference SWIFT ``skip_layers.json`` mapping.

        Keys are ``f"{model_name or fingerprint}_{step_key}"``. Records marked ``plain``
        and empty skip sets are left out: the reference format can only express "skip
        these layers", and replaying an empty set would just be slower plain decoding.
        When two records map to the same key the most recently updated one wins.
        Returns the number of entries written.
        """
        chosen: dict[str, ProfileRecord] = {}
        for record in self.list(fingerprint):
            if record.plain or not (record.skip.attention or record.skip.mlp):
                continue
            key = f"{record.model_name or record.model_fingerprint}_{record.step_key}"
            previous = chosen.get(key)
            if previous is not None:
                logger.warning(
                    "Reference export key %r is shared by fingerprints %s and %s; keeping the newer record",
                    key,
                    previous.model_fingerprint,
                    record.model_fingerprint,
                )
                if previous.updated_at >= record.updated_at:
                    continue
            chosen[key] = record
        document = {
            key: {"attention": list(record.skip.attention), "mlp": list(record.skip.mlp)}
            for key, record in sorted(chosen.items())
        }
        _atomic_write_bytes(Path(path), (json.dumps(document, indent=2) + "\n").encode("utf-8"))
        return len(document)

    def import_reference(
        self,
        path: str | os.PathLike[str],
        fingerprint: str,
        model_name: str,
        num_layers: int | None = None,
    ) -> builtins.list[ProfileRecord]:
        """Import a reference SWIFT ``skip_layers.json`` for one model.

        Entries keyed ``f"{model_name}_<step>"`` become step ``<step>``; if no key has
        that prefix (files often use a different model spelling), every entry is
        imported with its whole key as the step key. Imported records are marked
        ``converged`` with no score: they are known-good cached configurations, so the
        engine should use them rather than search again. Existing records for the same
        steps keep their usage counters, ``created_at`` and ``extra``.

        Everything is validated before anything is written.

        Raises:
            ValueError: naming the offending entry, if the file is malformed or an
                index is negative, not an integer, or ``>= num_layers``.
        """
        validate_fingerprint(fingerprint)
        if num_layers is not None and num_layers <= 0:
            raise ValueError(f"num_layers must be positive, got {num_layers}")
        source = Path(path)
        try:
            document = json.loads(source.read_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{source} is not valid JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise ValueError(f"{source}: expected a JSON object mapping '<model>_<task>' to skip layers")

        prefix = f"{model_name}_" if model_name else None
        matching = [key for key in document if prefix is not None and key.startswith(prefix)]
        if matching:
            selected = [(key, key[len(prefix or "") :]) for key in matching]
        else:
            selected = [(key, key) for key in document]

        parsed: builtins.list[tuple[str, SkipSet]] = []
        for entry_key, step_key in selected:
            skip = self._parse_reference_entry(source, entry_key, step_key, document[entry_key], num_layers)
            parsed.append((step_key, skip))

        imported: builtins.list[ProfileRecord] = []
        for step_key, skip in parsed:

            def merge(current: ProfileRecord | None, step_key: str = step_key, skip: SkipSet = skip) -> ProfileRecord:
                base = current.model_dump() if current is not None else {}
                base.update(
                    model_fingerprint=fingerprint,
                    model_name=model_name,
                    step_key=step_key,
                    skip=skip.model_dump(),
                    score=None,
                    expected_speedup=None,
                    converged=True,
                    plain=False,
                    observations=[],
                    iterations=0,
                )
                return ProfileRecord.model_validate(base)

            record = self.update(fingerprint, step_key, merge)
            if record is not None:  # always true: merge never returns None
                imported.append(record)
        logger.info("Imported %d reference skip profile(s) from %s for %s", len(imported), source, fingerprint)
        return imported

    @staticmethod
    def _parse_reference_entry(
        source: Path, entry_key: str, step_key: str, value: object, num_layers: int | None
    ) -> SkipSet:
        """Validate one ``{"attention": [...], "mlp": [...]}`` entry with errors naming it."""
        where = f"{source}: entry {entry_key!r}"
        try:
            validate_step_key(step_key)
        except ValueError as exc:
            raise ValueError(f"{where} gives an unusable step key: {exc}") from exc
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be an object with 'attention' and 'mlp' lists")
        lists: dict[str, builtins.list[int]] = {}
        for field in ("attention", "mlp"):
            indices = value.get(field, [])
            if not isinstance(indices, list):
                raise ValueError(f"{where}: {field!r} must be a list of layer indices")
            for index in indices:
                if not isinstance(index, int) or isinstance(index, bool):
                    raise ValueError(f"{where}: {field} index {index!r} is not an integer")
                if index < 0:
                    raise ValueError(f"{where}: {field} index {index} is negative")
                if num_layers is not None and index >= num_layers:
                    raise ValueError(
                        f"{where}: {field} index {index} is out of range for a model with {num_layers} layers"
                    )
            lists[field] = indices
        return SkipSet(attention=lists["attention"], mlp=lists["mlp"])
