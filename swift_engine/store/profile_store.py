"""Persistent skip profiles for SWIFT self-speculative decoding: :class:`ProfileStore`.

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

Everything read from disk is untrusted: a profile is an optimisation, so a bad,
hostile or unexpected file may cost a search but must never fail a generation call.
The rules that follow from that:

*Which files are ours.* The store only ever renames, deletes or writes files whose
name is exactly one it produces (records, their lock, temporary and set-aside files:
the scheme is :mod:`swift_engine.store.names`); any other file is skipped with a debug
log. A file with a record's name counts as ours whatever it contains, so an unparsable
one may be set aside - except a record written by a *newer* release (``schema_version``
above :data:`SCHEMA_VERSION`, e.g. during a rolling upgrade): that one is left exactly
as it is, treated as absent by reads and never overwritten by :meth:`ProfileStore.update`
or :meth:`ProfileStore.put`. Explicit removals (:meth:`ProfileStore.delete`,
:meth:`ProfileStore.reset`) go by name and remove our files whatever they contain.

*Symbolic links.* The store directory itself may be a link (the user chose it), but
nothing *inside* it is ever followed: a fingerprint directory or record path that is
a symbolic link, FIFO, device or directory is skipped by reads with a warning, and
writes to it raise :class:`ProfileStoreUnavailable` (an :class:`OSError`, so callers
that already survive a read-only disk survive this too). Files are opened with
``O_NOFOLLOW`` relative to a directory descriptor opened with ``O_NOFOLLOW``, so a
link swapped in after a check redirects nothing.

*Bounded reads.* Records are read bounded and classified, never trusted
(:mod:`swift_engine.store.reading`); a file whose content fails is set aside as
``.corrupt-<timestamp>`` and the step starts from scratch.

*Permissions.* Files and directories are created with modes ``0o666`` / ``0o777``
filtered by the process umask (and default ACLs) - the kernel applies the umask,
nothing is ``chmod``-ed afterwards. A store private to one account needs nothing; a
store shared by several accounts of one group works when its directory is
group-owned and setgid (``chmod 2775``) and every account runs with umask ``002``.

*Bounded size.* A store keeps at most ``max_records`` records (default
:data:`DEFAULT_MAX_RECORDS`), evicting the least recently updated ones, and
:meth:`ProfileStore.clean` removes crash leftovers (:mod:`swift_engine.store.maintenance`).

The module is deliberately framework-free: it must never import LangChain or
LlamaIndex, because the integrations depend on it, not the other way round. The rest
of the package: what a record is (schema, limits, key rules) in
:mod:`swift_engine.store.records`, the bounded no-follow reads and atomic writes in
:mod:`swift_engine.store.safe_files`, record locks in :mod:`swift_engine.store.locking`,
export and import in :mod:`swift_engine.store.transfer`. The names this module always
offered (of records, safe files and the naming scheme) are still importable from here.
"""

from __future__ import annotations

import builtins
import errno
import logging
import os
import random
import stat
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, suppress
from pathlib import Path
from typing import Any

from swift_engine.store import transfer
from swift_engine.store.errors import ProfileStoreUnavailable, _as_unavailable
from swift_engine.store.locking import _DEFAULT_LOCK_TIMEOUT_S, holds_current_lock_file, lock_record
from swift_engine.store.maintenance import (
    _CLEAN_PROBABILITY,
    clean_directory,
    evict_if_cold,
    remove_record_files,
    set_aside,
)
from swift_engine.store.names import _CORRUPT_NAME_RE as _CORRUPT_NAME_RE  # re-exported
from swift_engine.store.names import _LOCK_NAME_RE as _LOCK_NAME_RE  # re-exported
from swift_engine.store.names import (
    _LOCK_SUFFIX,
    _RECORD_NAME_RE,
    _RECORD_SUFFIX,
    _group_by_record,
    _is_our_auxiliary,
)
from swift_engine.store.names import _TMP_NAME_RE as _TMP_NAME_RE  # re-exported
from swift_engine.store.reading import _Read, read_record
from swift_engine.store.records import (
    _FINGERPRINT_RE,
    ENV_PROFILE_DIR,
    EXPORT_SCHEMA,
    EXPORT_VERSION,
    MAX_IMPORT_BYTES,
    MAX_LAYERS,
    MAX_MODEL_NAME_LENGTH,
    MAX_OBSERVATIONS,
    MAX_RECORD_BYTES,
    MAX_STEP_KEY_LENGTH,
    SCHEMA_VERSION,
    ProfileRecord,
    SkipSet,
    default_profile_dir,
    escape_nonprintable,
    safe_step_name,
    validate_fingerprint,
    validate_step_key,
)
from swift_engine.store.safe_files import (
    FileTooLarge,
    NotARegularFile,
    UnusableDirectory,
    _Dir,
    read_regular_file,
    write_file_atomic,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_RECORDS",
    "ENV_PROFILE_DIR",
    "EXPORT_SCHEMA",
    "EXPORT_VERSION",
    "MAX_IMPORT_BYTES",
    "MAX_LAYERS",
    "MAX_MODEL_NAME_LENGTH",
    "MAX_OBSERVATIONS",
    "MAX_RECORD_BYTES",
    "MAX_STEP_KEY_LENGTH",
    "SCHEMA_VERSION",
    "FileTooLarge",
    "NotARegularFile",
    "ProfileRecord",
    "ProfileStore",
    "ProfileStoreUnavailable",
    "SkipSet",
    "default_profile_dir",
    "escape_nonprintable",
    "read_regular_file",
    "safe_step_name",
    "validate_fingerprint",
    "validate_step_key",
    "write_file_atomic",
]


#: Records a store keeps by default before evicting the least recently updated ones.
DEFAULT_MAX_RECORDS = 512

#: Distinct (kind, path) pairs a store remembers having warned about (see ``_log_once``).
_LOGGED_ONCE_MAX = 4096


def check_update_result(result: ProfileRecord, fingerprint: str, step_key: str) -> None:
    """An update function must return the record it was asked for (``ValueError`` otherwise)."""
    if result.model_fingerprint != fingerprint or result.step_key != step_key:
        raise ValueError(
            f"update() for ({fingerprint!r}, {step_key!r}) got a record for "
            f"({result.model_fingerprint!r}, {result.step_key!r})"
        )


class ProfileStore:
    """File-backed store of :class:`ProfileRecord`, safe across threads and processes.

    Layout: ``<directory>/<fingerprint>/<safe_step_name(step_key)>.json`` with a
    ``.json.lock`` file next to each record. Reads are lock-free (writes are atomic
    renames, so a reader never sees a torn file); every mutation happens under the
    record's :class:`filelock.FileLock` (:mod:`swift_engine.store.locking` says why
    deleting lock files, as removals and clean-ups do, never lets two writers in).

    See the module docstring for which files the store considers its own, how it
    treats links, untrusted content and records of newer releases, and how it bounds
    its size. The store keeps no record in memory, only its own random generator (for the
    occasional clean-up) and which unusable files it already warned about; instances are
    cheap and any number of them may point at the same directory.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        lock_timeout: float = _DEFAULT_LOCK_TIMEOUT_S,
        max_records: int | None = DEFAULT_MAX_RECORDS,
    ) -> None:
        """Create a store rooted at ``directory`` (see :func:`default_profile_dir`).

        The directory is created lazily on the first write, so constructing a store
        (e.g. at import time of an integration) never touches the filesystem.
        ``lock_timeout`` bounds how long a write waits for another writer before
        raising :class:`ProfileStoreUnavailable`; waiting forever would hide a stuck
        process (a negative value waits forever). ``max_records`` bounds the number of
        records (least recently updated ones are evicted); ``None`` or 0 means no bound.
        """
        if max_records is not None and max_records < 0:
            raise ValueError(f"max_records must be >= 0 or None, got {max_records}")
        self._directory = Path(directory).expanduser() if directory is not None else default_profile_dir()
        self._lock_timeout = lock_timeout
        self._max_records = max_records or None
        self._init_process_state()

    def _init_process_state(self) -> None:
        """State that belongs to this object in this process, never copied with it."""
        self._rng = random.Random()
        self._logged_once: set[tuple[str, str]] = set()
        self._logged_once_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # Picklable (e.g. handed to a worker process) like a store without this state: a
        # copy gets its own lock, an empty warning memory and a freshly seeded generator.
        state = self.__dict__.copy()
        for name in ("_rng", "_logged_once", "_logged_once_lock"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_process_state()

    @property
    def directory(self) -> Path:
        """Root directory of the store."""
        return self._directory

    @property
    def max_records(self) -> int | None:
        """Most records kept (None: unbounded)."""
        return self._max_records

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self._directory)!r})"

    def _log_once(self, level: int, kind: str, path: object, message: str, *args: object) -> None:
        """Log at ``level`` the first time (per kind and path), at DEBUG afterwards.

        An unusable file is read on every call of its step; one warning says it, a warning
        per call would drown the logs. The memory of what was said is this store's, and bounded.
        """
        key = (kind, str(path))
        with self._logged_once_lock:
            first = key not in self._logged_once
            if first:
                if len(self._logged_once) >= _LOGGED_ONCE_MAX:
                    self._logged_once.clear()
                self._logged_once.add(key)
        logger.log(level if first else logging.DEBUG, message, *args)

    # ----------------------------------------------------------------- paths & locks

    def path_for(self, fingerprint: str, step_key: str) -> Path:
        """Path of the JSON file holding the (fingerprint, step_key) record."""
        validate_fingerprint(fingerprint)
        return self._directory / fingerprint / f"{safe_step_name(step_key)}{_RECORD_SUFFIX}"

    def _lock_for(self, directory: _Dir, name: str, timeout: float | None = None) -> AbstractContextManager[None]:
        """Hold the lock of record ``name`` (see :func:`~swift_engine.store.locking.lock_record`).

        ``timeout`` defaults to the store's ``lock_timeout``.
        """
        return lock_record(directory, name, self._lock_timeout if timeout is None else timeout)

    _holds_current_lock_file = staticmethod(holds_current_lock_file)

    def _fingerprint_names(self, fingerprint: str | None) -> builtins.list[str]:
        """Names of the fingerprint directories to look at, in a stable order."""
        if fingerprint is not None:
            return [validate_fingerprint(fingerprint)]
        names = []
        try:
            with os.scandir(self._directory) as entries:
                for entry in entries:
                    if not _FINGERPRINT_RE.fullmatch(entry.name):
                        logger.debug("Ignoring %s: not a fingerprint directory", entry.path)
                        continue
                    try:
                        if entry.is_dir():  # links to directories too: opening them warns
                            names.append(entry.name)
                    except OSError:
                        continue
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            self._log_once(
                logging.WARNING, "root", self._directory, "Cannot list profile directory %s: %s", self._directory, exc
            )
            return []
        return sorted(names)

    def _open_fingerprint_dir(self, fingerprint: str) -> _Dir | None:
        """Open one fingerprint directory for reading; None (with a warning) if unusable."""
        path = self._directory / fingerprint
        try:
            return _Dir.open_dir(path, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except UnusableDirectory as exc:
            self._log_once(logging.WARNING, "dir", path, "Ignoring profile directory %s: %s", path, exc.strerror)
            return None

    def _open_for_write(self, fingerprint: str) -> _Dir:
        """Create (mode 0o777 less the umask) and open a fingerprint directory for writing."""
        self._directory.mkdir(parents=True, exist_ok=True)
        path = self._directory / fingerprint
        with suppress(FileExistsError):
            os.mkdir(path, 0o777)
        try:
            with _as_unavailable():
                return _Dir.open_dir(path, follow_symlinks=False)
        except FileNotFoundError as exc:
            raise ProfileStoreUnavailable(errno.ENOENT, f"profile directory {path} vanished while opening it") from exc

    # ----------------------------------------------------------------- reading

    def _report(self, path: Path, found: _Read) -> None:
        """Log, once per file, why an existing file is treated as absent."""
        if found.status == "newer":
            self._log_once(
                logging.INFO,
                "newer",
                path,
                "Leaving profile %s alone: %s (written by a newer release); treating it as absent",
                path,
                found.reason,
            )
        elif found.status in ("special", "unreadable"):
            self._log_once(
                logging.WARNING,
                found.status,
                path,
                "Ignoring profile file %s: %s; treating it as absent and leaving it as it is",
                path,
                found.reason,
            )

    def _load(self, directory: _Dir, fingerprint: str, name: str) -> ProfileRecord | None:
        """Lock-free read; takes the lock only to set an invalid file aside."""
        found = read_record(directory, fingerprint, name)
        if found.status == "invalid":
            try:
                with self._lock_for(directory, name):
                    # Quarantine only what is still bad under the lock: a writer may have
                    # replaced the file with a good record since we read it.
                    found = read_record(directory, fingerprint, name)
                    if found.status == "invalid":
                        set_aside(directory, name, found.reason)
                        return None
            except OSError as exc:  # read-only directory, lock timeout, ...
                logger.warning(
                    "Ignoring unusable profile file %s (%s); could not lock it to set it aside: %s",
                    directory.path / name,
                    found.reason,
                    exc,
                )
                return None
        self._report(directory.path / name, found)
        return found.record if found.status == "ok" else None

    def get(self, fingerprint: str, step_key: str) -> ProfileRecord | None:
        """Return the stored record, or None if there is none (or it is unusable).

        Never raises for what it finds on disk: unusable files are reported in the log
        (invalid ones set aside) and read as absent.
        """
        path = self.path_for(fingerprint, step_key)
        directory = self._open_fingerprint_dir(fingerprint)
        if directory is None:
            return None
        with directory:
            return self._load(directory, fingerprint, path.name)

    def list(self, fingerprint: str | None = None) -> builtins.list[ProfileRecord]:
        """All usable records, optionally only those of one model fingerprint.

        Unusable records are handled exactly as :meth:`get` does, so one bad file never
        hides the others; files that are not ours are not even opened.
        """
        records: builtins.list[ProfileRecord] = []
        for fp in self._fingerprint_names(fingerprint):
            directory = self._open_fingerprint_dir(fp)
            if directory is None:
                continue
            with directory:
                try:
                    names = sorted(directory.listdir())
                except OSError as exc:
                    self._log_once(logging.WARNING, "list", directory.path, "Cannot list %s: %s", directory.path, exc)
                    continue
                for name in names:
                    if not _RECORD_NAME_RE.fullmatch(name):
                        if not _is_our_auxiliary(name):
                            logger.debug("Ignoring %s: not a profile record", directory.path / name)
                        continue
                    record = self._load(directory, fp, name)
                    if record is not None:
                        records.append(record)
        records.sort(key=lambda r: (r.model_fingerprint, r.step_key))
        return records

    # ----------------------------------------------------------------- writing

    @staticmethod
    def _serialise(record: ProfileRecord) -> bytes:
        return (record.model_dump_json(indent=2) + "\n").encode("utf-8")

    def _write(
        self,
        fingerprint: str,
        step_key: str,
        fn: Callable[[ProfileRecord | None], ProfileRecord | None],
        *,
        stamp: bool,
    ) -> tuple[ProfileRecord | None, bool]:
        """Read-modify-write under the record's lock; returns (stored record, whether written)."""
        path = self.path_for(fingerprint, step_key)
        name = path.name
        with self._open_for_write(fingerprint) as directory:
            with self._lock_for(directory, name):
                found = read_record(directory, fingerprint, name)
                if found.status == "newer":
                    self._report(path, found)
                    return None, False
                if found.status == "special":
                    raise ProfileStoreUnavailable(
                        errno.EINVAL, f"profile path {path} is not a regular file ({found.reason}); not writing it"
                    )
                if found.status == "invalid":
                    set_aside(directory, name, found.reason)
                elif found.status == "unreadable":
                    logger.warning("Replacing unreadable profile file %s (%s)", path, found.reason)
                current = found.record
                result = fn(current)
                if result is None:
                    return current, False
                check_update_result(result, fingerprint, step_key)
                data = result.model_dump()
                if stamp:
                    data["updated_at"] = time.time()
                new = ProfileRecord.model_validate(data)
                directory.write_atomic(name, self._serialise(new))
        self._maintain(fingerprint, name, created=found.status != "ok")
        return new, True

    def put(self, record: ProfileRecord) -> None:
        """Store ``record`` as is, replacing any existing record for its key.

        Use :meth:`update` instead when the new value depends on the old one (counters,
        merged observations): ``put`` does not see concurrent writers' changes. A record
        of a newer release at that path is left in place (logged), like :meth:`update`.

        Raises:
            ProfileStoreUnavailable: if the record cannot be locked or its path is not
                a regular file (e.g. a symbolic link).
        """
        self._put(record)

    def _put(self, record: ProfileRecord) -> bool:
        record = ProfileRecord.model_validate(record.model_dump())  # re-validate: models are mutable
        _, written = self._write(record.model_fingerprint, record.step_key, lambda _current: record, stamp=False)
        return written

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
        (possibly None) is returned. A record written by a newer release is left as it
        is: ``fn`` is not called and None is returned.

        Raises:
            ValueError: if ``fn`` returns a record for a different fingerprint or step key.
            ProfileStoreUnavailable: if the record cannot be locked or its path is not
                a regular file (e.g. a symbolic link).
        """
        record, _ = self._write(fingerprint, step_key, fn, stamp=True)
        return record

    def delete(self, fingerprint: str, step_key: str) -> bool:
        """Remove one record (and its lock file); returns whether there was a record.

        Goes by name: the file is removed whatever it contains (a newer release's
        record too), since the caller asked for exactly this record to go.
        """
        name = self.path_for(fingerprint, step_key).name
        directory = self._open_fingerprint_dir(fingerprint)
        if directory is None:
            return False
        with directory:
            if not directory.exists(name):
                return False
            return remove_record_files(directory, name, [], self._lock_timeout)

    def reset(self, fingerprint: str | None = None, step_key: str | None = None) -> int:
        """Remove records so their search starts over; returns how many were removed.

        With no arguments everything goes; ``fingerprint`` limits it to one model and
        ``step_key`` to one step (across all models when ``fingerprint`` is None).
        Files are matched by name only (this is an explicit request), so unreadable
        records and records of newer releases are removed too, together with their
        lock, temporary and set-aside files; fingerprint directories this emptied are
        removed. Files that are not ours are left untouched.
        """
        only = f"{safe_step_name(step_key)}{_RECORD_SUFFIX}" if step_key is not None else None
        removed = 0
        for fp in self._fingerprint_names(fingerprint):
            directory = self._open_fingerprint_dir(fp)
            if directory is None:
                continue
            emptied = False
            with directory:
                try:
                    names = directory.listdir()
                except OSError as exc:
                    logger.warning("Cannot list %s: %s", directory.path, exc)
                    continue
                groups = _group_by_record(names)
                for record_name in sorted(groups):
                    if only is not None and record_name != only:
                        continue
                    leftovers = [n for n in groups[record_name] if n != record_name and n != record_name + _LOCK_SUFFIX]
                    try:
                        if remove_record_files(directory, record_name, leftovers, self._lock_timeout):
                            removed += 1
                        emptied = True
                    except OSError as exc:
                        logger.warning("Could not reset profile %s: %s", directory.path / record_name, exc)
            if emptied:
                with suppress(OSError):  # not empty (foreign files, a concurrent writer): keep it
                    os.rmdir(self._directory / fp)
        if removed:
            logger.info("Reset %d SWIFT profile(s) in %s", removed, self._directory)
        with suppress(OSError):
            self.clean()
        return removed

    # ----------------------------------------------------------------- bounds & cleaning

    def _maintain(self, fingerprint: str, name: str, *, created: bool) -> None:
        """After a write: enforce ``max_records`` when a record was created; clean now and then.

        Best effort: maintenance never fails the write that triggered it.
        """
        try:
            evicted = self._enforce_limit(keep=(fingerprint, name)) if created and self._max_records else 0
            if evicted or self._rng.random() < _CLEAN_PROBABILITY:
                self.clean()
        except OSError as exc:
            logger.debug("Profile store maintenance in %s failed: %s", self._directory, exc)

    def _enforce_limit(self, keep: tuple[str, str]) -> int:
        """Evict the least recently updated records beyond ``max_records``; returns how many.

        Recency is the file's modification time (every write replaces the file). The
        record just written, records a newer release wrote, and records someone is
        writing right now (lock busy, or modified since we looked) are never evicted.
        """
        if not self._max_records:
            return 0
        entries: builtins.list[tuple[int, str, str]] = []
        for fp in self._fingerprint_names(None):
            directory = self._open_fingerprint_dir(fp)
            if directory is None:
                continue
            with directory:
                for name in directory.listdir():
                    if _RECORD_NAME_RE.fullmatch(name):
                        with suppress(OSError):
                            info = directory.lstat(name)
                            if stat.S_ISREG(info.st_mode):
                                entries.append((info.st_mtime_ns, fp, name))
        excess = len(entries) - self._max_records
        if excess <= 0:
            return 0
        entries.sort()
        evicted = 0
        for mtime, fp, name in entries:
            if evicted >= excess:
                break
            if (fp, name) == keep:
                continue
            directory = self._open_fingerprint_dir(fp)
            if directory is None:
                continue
            with directory:
                try:
                    if evict_if_cold(directory, fp, name, mtime):
                        evicted += 1
                except OSError as exc:
                    logger.debug("Not evicting %s: %s", directory.path / name, exc)
        if evicted:
            logger.info(
                "Evicted %d least recently updated profile(s) from %s (max_records=%d)",
                evicted,
                self._directory,
                self._max_records,
            )
        return evicted

    def clean(self) -> dict[str, int]:
        """Remove leftovers of ours; returns how many of each kind went.

        * ``tmp``: temporary files older than 15 minutes (a crashed writer's),
        * ``corrupt``: set-aside files beyond the newest 3 per record, or older than 30 days,
        * ``locks``: lock files whose record no longer exists, each removed while we
          hold it (a busy one is left for next time).

        Files that are not ours are never touched. Safe to call at any time.
        """
        counts = {"tmp": 0, "corrupt": 0, "locks": 0}
        now = time.time()
        for fp in self._fingerprint_names(None):
            directory = self._open_fingerprint_dir(fp)
            if directory is None:
                continue
            with directory:
                clean_directory(directory, now, counts)
        if any(counts.values()):
            logger.info("Cleaned profile store %s: %s", self._directory, counts)
        return counts

    # ----------------------------------------------------------------- export & import

    def export_json(self, path: str | os.PathLike[str], fingerprint: str | None = None) -> int:
        """:func:`~swift_engine.store.transfer.export_json` of this store."""
        return transfer.export_json(self, path, fingerprint)

    def import_json(self, path: str | os.PathLike[str]) -> int:
        """:func:`~swift_engine.store.transfer.import_json` into this store."""
        return transfer.import_json(self, path)

    def export_reference(self, path: str | os.PathLike[str], fingerprint: str | None = None) -> int:
        """:func:`~swift_engine.store.transfer.export_reference` of this store."""
        return transfer.export_reference(self, path, fingerprint)

    def import_reference(
        self,
        path: str | os.PathLike[str],
        fingerprint: str,
        model_name: str,
        num_layers: int | None = None,
    ) -> builtins.list[ProfileRecord]:
        """:func:`~swift_engine.store.transfer.import_reference` into this store."""
        return transfer.import_reference(self, path, fingerprint, model_name, num_layers)
