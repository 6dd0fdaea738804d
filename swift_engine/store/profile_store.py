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

Everything read from disk is untrusted: a profile is an optimisation, so a bad,
hostile or unexpected file may cost a search but must never fail a generation call.
The rules that follow from that:

*Which files are ours.* The store only ever renames, deletes or writes files whose
name is exactly one it produces, inside a fingerprint directory
(``<fingerprint>/``, see :func:`validate_fingerprint`):

* records ``<slug>-<16 hex>.json`` (the name :func:`safe_step_name` gives),
* their lock files ``<record>.json.lock``,
* in-flight temporary files ``.<record>.json.<random>.tmp``,
* set-aside files ``<record>.json.corrupt-<timestamp>``.

Any other file (``notes.json``, ``settings.json`` in a folder that happens to look
like a fingerprint, ...) is never opened for writing, renamed or deleted, and no lock
file is ever created beside it; the store skips it with a debug log. A file with a
record's name counts as ours whatever it contains, so an unparsable one may be set
aside - except a record written by a *newer* release (``schema_version`` above
:data:`SCHEMA_VERSION`, e.g. during a rolling upgrade): that one is left exactly as it
is, treated as absent by reads and never overwritten by :meth:`ProfileStore.update`
or :meth:`ProfileStore.put`. Explicit removals (:meth:`ProfileStore.delete`,
:meth:`ProfileStore.reset`) go by name and remove our files whatever they contain.

*Symbolic links.* The store directory itself may be a link (the user chose it), but
nothing *inside* it is ever followed: a fingerprint directory or record path that is
a symbolic link, FIFO, device or directory is skipped by reads with a warning, and
writes to it raise :class:`ProfileStoreUnavailable` (an :class:`OSError`, so callers
that already survive a read-only disk survive this too). Files are opened with
``O_NOFOLLOW`` relative to a directory descriptor opened with ``O_NOFOLLOW``, so a
link swapped in after a check redirects nothing.

*Bounded reads.* Records are opened non-blocking, must be regular files
(``fstat``), and at most :data:`MAX_RECORD_BYTES` are read; JSON with ``NaN`` or
``Infinity``, absurdly long numbers or deep nesting is invalid. Every field is
validated (types and ranges, ``extra`` keys the engine writes included); a file that
fails is set aside as ``.corrupt-<timestamp>`` and the step starts from scratch.

*Permissions.* Files and directories are created with modes ``0o666`` / ``0o777``
filtered by the process umask (and default ACLs) - the kernel applies the umask,
nothing is ``chmod``-ed afterwards. A store private to one account needs nothing; a
store shared by several accounts of one group works when its directory is
group-owned and setgid (``chmod 2775``) and every account runs with umask ``002``.

*Bounded size.* A store keeps at most ``max_records`` records (default
:data:`DEFAULT_MAX_RECORDS`): creating one more evicts the least recently updated
ones (never the record being written). :meth:`ProfileStore.clean` removes crash
leftovers (stale temporary files, old set-aside files, lock files of records that no
longer exist); it runs on :meth:`ProfileStore.reset`, after evictions and on a small
random fraction of writes.

The module is deliberately framework-free: it must never import LangChain or
LlamaIndex, because the integrations depend on it, not the other way round. What a
record is (schema, limits, key rules) lives in :mod:`swift_engine.store.records`,
the bounded no-follow reads and atomic writes in :mod:`swift_engine.store.safe_files`; the
names of both that this module always offered are still importable from here.
"""

from __future__ import annotations

import builtins
import datetime as _dt
import errno
import json
import logging
import os
import random
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NamedTuple

from filelock import FileLock
from pydantic import ValidationError

from swift_engine.store.records import (
    _FINGERPRINT_RE,
    _KEY_HASH_LEN,
    _SLUG_MAX,
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
    _validation_summary,
    default_profile_dir,
    escape_nonprintable,
    safe_step_name,
    validate_fingerprint,
    validate_step_key,
)
from swift_engine.store.safe_files import (
    _O_NONBLOCK,
    FileTooLarge,
    NotARegularFile,
    UnusableDirectory,
    _describe_mode,
    _Dir,
    _MessageError,
    _read_fd,
    loads_strict_json,
    new_file_lock,
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

_RECORD_SUFFIX = ".json"
_LOCK_SUFFIX = ".lock"
_DEFAULT_LOCK_TIMEOUT_S = 60.0
_LOCK_POLL_S = 0.005

# Exactly the names this store produces (see the module docstring); always fullmatch()ed.
# A slug is 1-48 characters of [a-z0-9._-] that starts and ends alphanumeric.
_STEM = rf"[a-z0-9](?:[a-z0-9._-]{{0,{_SLUG_MAX - 2}}}[a-z0-9])?-[0-9a-f]{{{_KEY_HASH_LEN}}}"
_RECORD_NAME_RE = re.compile(rf"{_STEM}\.json")
_LOCK_NAME_RE = re.compile(rf"({_STEM}\.json)\.lock")
# The temporary name is the one safe_files._Dir.write_atomic gives: ".<name>.<16 hex>.tmp".
_TMP_NAME_RE = re.compile(rf"\.({_STEM}\.json)\.[A-Za-z0-9_]{{6,32}}\.tmp")
_CORRUPT_NAME_RE = re.compile(rf"({_STEM}\.json)\.corrupt-(\d{{8}}T\d{{6}}\.\d{{6}}Z)(?:-\d{{1,6}})?")
_CORRUPT_TS_FORMAT = "%Y%m%dT%H%M%S.%fZ"

#: Temporary files older than this are leftovers of a crashed writer (a write takes ms).
_STALE_TMP_S = 15 * 60
#: Set-aside files kept per record (newest first), and the age after which they go anyway.
_KEEP_CORRUPT = 3
_CORRUPT_MAX_AGE_S = 30 * 24 * 3600
#: Share of writes that also run :meth:`ProfileStore.clean` (drawn from each store's own
#: generator, so the store never perturbs the global ``random`` state other code may have seeded).
_CLEAN_PROBABILITY = 1 / 64
#: Distinct (kind, path) pairs a store remembers having warned about (see ``_log_once``).
_LOGGED_ONCE_MAX = 4096


# --------------------------------------------------------------------------- errors


class ProfileStoreUnavailable(_MessageError):
    """The store (or one of its files) cannot be used for this operation right now.

    Raised for a lock that cannot be taken (timeout, filesystem without locking, ...)
    and for record paths that are not plain files we may replace (symbolic links,
    FIFOs, directories). It is an :class:`OSError` on purpose: callers that keep going
    when the disk is read-only or full keep going for these as well.
    """


@contextmanager
def _as_unavailable() -> Iterator[None]:
    """Report the file layer's :class:`UnusableDirectory` as :class:`ProfileStoreUnavailable`.

    Same errno, same message: only the class says that it was the store that could not go on.
    """
    try:
        yield
    except UnusableDirectory as exc:
        raise ProfileStoreUnavailable(exc.errno, exc.strerror) from exc


def check_update_result(result: ProfileRecord, fingerprint: str, step_key: str) -> None:
    """An update function must return the record it was asked for (``ValueError`` otherwise)."""
    if result.model_fingerprint != fingerprint or result.step_key != step_key:
        raise ValueError(
            f"update() for ({fingerprint!r}, {step_key!r}) got a record for "
            f"({result.model_fingerprint!r}, {result.step_key!r})"
        )


def _timestamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime(_CORRUPT_TS_FORMAT)


# --------------------------------------------------------------------------- store


class _Read(NamedTuple):
    """What reading one record file found.

    ``status`` is one of: ``absent``; ``ok`` (``record`` set); ``newer`` (a newer
    release's record: left alone); ``special`` (a link, FIFO, directory, ...: never
    touched by reads, refused by writes); ``unreadable`` (a regular file we cannot read:
    treated as absent, may be replaced); ``invalid`` (a regular file whose content is
    unusable: set aside).
    """

    status: str
    record: ProfileRecord | None = None
    reason: str = ""


class ProfileStore:
    """File-backed store of :class:`ProfileRecord`, safe across threads and processes.

    Layout: ``<directory>/<fingerprint>/<safe_step_name(step_key)>.json`` with a
    ``.json.lock`` file next to each record. Reads are lock-free (writes are atomic
    renames, so a reader never sees a torn file); every mutation happens under the
    record's :class:`filelock.FileLock`. A lock file is only deleted by a process that
    holds it, and every locker checks after acquiring that its lock file is still the
    one at the path (retrying otherwise), so deleting lock files never lets two writers
    in (except against old releases without that check, which then may lose one merge).

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

    @contextmanager
    def _lock_for(self, directory: _Dir, name: str, timeout: float | None = None) -> Iterator[None]:
        """Hold the inter-process lock of record ``name`` in ``directory``.

        A fresh lock object per operation: flock() on separate open file descriptions
        excludes other threads as well as other processes, and no lock object becomes
        shared mutable state. The short poll interval keeps hand-over latency low when
        many workers update the same record (filelock's default is 50 ms).

        Whatever filelock raises (its Timeout, OSError, NotImplementedError where
        flock is missing, RuntimeError for a would-be deadlock) becomes one
        :class:`ProfileStoreUnavailable`, so callers need a single ``except OSError``.
        """
        lock_name = name + _LOCK_SUFFIX
        lock_path = str(directory.path / lock_name)
        timeout = self._lock_timeout if timeout is None else timeout
        deadline = None if timeout < 0 else time.monotonic() + timeout
        while True:
            remaining = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            lock = new_file_lock(lock_path, remaining)
            try:
                lock.acquire(poll_interval=_LOCK_POLL_S)
            except (OSError, NotImplementedError, RuntimeError) as exc:  # filelock.Timeout is an OSError
                raise ProfileStoreUnavailable(
                    errno.EAGAIN, f"could not lock profile {directory.path / name}: {type(exc).__name__}: {exc}"
                ) from exc
            if self._holds_current_lock_file(lock, directory, lock_name):
                break
            # Our lock file was deleted (by a holder cleaning up) while we waited on it:
            # a lock on an unlinked file excludes nobody, so take the one now at the path.
            _release(lock)
            if deadline is not None and time.monotonic() >= deadline:
                raise ProfileStoreUnavailable(errno.EAGAIN, f"could not lock profile {directory.path / name}")
        try:
            yield
        finally:
            _release(lock)

    @staticmethod
    def _holds_current_lock_file(lock: FileLock, directory: _Dir, lock_name: str) -> bool:
        fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
        if not isinstance(fd, int):
            return True  # not a descriptor-based lock (e.g. a soft lock): nothing to compare
        try:
            held, current = os.fstat(fd), directory.lstat(lock_name)
        except FileNotFoundError:
            return False
        except OSError:
            return True
        return (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino)

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

    @staticmethod
    def _read(directory: _Dir, fingerprint: str, name: str) -> _Read:
        """Read and classify the record file ``name`` (see :class:`_Read`); never raises OSError."""
        try:
            info = directory.lstat(name)
        except FileNotFoundError:
            return _Read("absent")
        except OSError as exc:
            return _Read("unreadable", reason=f"cannot stat it: {exc.strerror or exc}")
        if not stat.S_ISREG(info.st_mode):
            return _Read("special", reason=f"it is {_describe_mode(info.st_mode)}")
        try:
            fd = directory.open(name, os.O_RDONLY | _O_NONBLOCK)
        except FileNotFoundError:
            return _Read("absent")
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return _Read("special", reason="it is a symbolic link")
            return _Read("unreadable", reason=f"cannot open it: {exc.strerror or exc}")
        try:
            raw = _read_fd(fd, MAX_RECORD_BYTES)
        except NotARegularFile as exc:
            return _Read("special", reason=f"it {exc.strerror}")
        except FileTooLarge as exc:
            return _Read("invalid", reason=f"it {exc}")
        except OSError as exc:
            return _Read("unreadable", reason=f"cannot read it: {exc.strerror or exc}")
        finally:
            os.close(fd)
        return ProfileStore._decode(raw, fingerprint, name)

    @staticmethod
    def _decode(raw: bytes, fingerprint: str, name: str) -> _Read:
        try:
            data = loads_strict_json(raw)
        except ValueError as exc:
            return _Read("invalid", reason=f"invalid JSON ({exc})")
        if not isinstance(data, dict):
            return _Read("invalid", reason=f"expected a JSON object, found {type(data).__name__}")
        version = data.get("schema_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
            return _Read("newer", reason=f"schema_version {version} is newer than the supported {SCHEMA_VERSION}")
        try:
            record = ProfileRecord.model_validate(data)
        except ValidationError as exc:
            return _Read("invalid", reason=f"not a ProfileRecord ({_validation_summary(exc)})")
        if record.model_fingerprint != fingerprint or f"{safe_step_name(record.step_key)}{_RECORD_SUFFIX}" != name:
            return _Read(
                "invalid",
                reason=f"holds the record for fingerprint {record.model_fingerprint!r} / step key "
                f"{record.step_key!r}, which does not belong at this path",
            )
        return _Read("ok", record)

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

    def _set_aside(self, directory: _Dir, name: str, reason: str) -> None:
        """Rename an untrusted record out of the way (never delete: it may be evidence).

        Only called with the record's lock held, for a regular file with our record
        name; older set-aside copies of the same record beyond the newest few are pruned.
        """
        target = f"{name}.corrupt-{_timestamp()}"
        counter = 1
        while directory.exists(target):
            target = f"{name}.corrupt-{_timestamp()}-{counter}"
            counter += 1
        path = directory.path / name
        try:
            directory.replace(name, target)
        except FileNotFoundError:
            return  # someone else already dealt with it
        except OSError as exc:
            logger.warning("Ignoring unusable profile file %s (%s); could not set it aside: %s", path, reason, exc)
            return
        logger.warning("Profile file %s is unusable (%s); set it aside as %s", path, reason, target)
        with suppress(OSError):
            self._prune_corrupt(directory, time.time(), only=name)

    def _load(self, directory: _Dir, fingerprint: str, name: str) -> ProfileRecord | None:
        """Lock-free read; takes the lock only to set an invalid file aside."""
        found = self._read(directory, fingerprint, name)
        if found.status == "invalid":
            try:
                with self._lock_for(directory, name):
                    # Quarantine only what is still bad under the lock: a writer may have
                    # replaced the file with a good record since we read it.
                    found = self._read(directory, fingerprint, name)
                    if found.status == "invalid":
                        self._set_aside(directory, name, found.reason)
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
                found = self._read(directory, fingerprint, name)
                if found.status == "newer":
                    self._report(path, found)
                    return None, False
                if found.status == "special":
                    raise ProfileStoreUnavailable(
                        errno.EINVAL, f"profile path {path} is not a regular file ({found.reason}); not writing it"
                    )
                if found.status == "invalid":
                    self._set_aside(directory, name, found.reason)
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
            return self._remove_record_files(directory, name, [])

    def _remove_record_files(self, directory: _Dir, name: str, leftovers: builtins.list[str]) -> bool:
        """Under the record's lock, remove it, ``leftovers`` (its temp/set-aside files) and its lock file.

        Returns whether the record file itself was removed. The lock file goes last,
        while we still hold it (see the class docstring for why that is safe).
        """
        removed = False
        with self._lock_for(directory, name):
            try:
                directory.unlink(name)
                removed = True
            except FileNotFoundError:
                pass
            except OSError as exc:  # e.g. a directory carrying our record's name
                logger.warning("Could not remove profile %s: %s", directory.path / name, exc)
            for leftover in leftovers:
                with suppress(FileNotFoundError):
                    directory.unlink(leftover)
            with suppress(FileNotFoundError):
                directory.unlink(name + _LOCK_SUFFIX)
        directory.fsync()
        return removed

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
                        if self._remove_record_files(directory, record_name, leftovers):
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
                    with self._lock_for(directory, name, timeout=0):
                        try:
                            info = directory.lstat(name)
                        except FileNotFoundError:
                            evicted += 1  # gone already
                            continue
                        if info.st_mtime_ns != mtime:
                            continue  # written since we looked: not cold
                        if self._read(directory, fp, name).status == "newer":
                            continue
                        directory.unlink(name)
                        with suppress(FileNotFoundError):
                            directory.unlink(name + _LOCK_SUFFIX)
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
                try:
                    names = set(directory.listdir())
                except OSError:
                    continue
                for name in sorted(names):
                    if _TMP_NAME_RE.fullmatch(name):
                        with suppress(OSError):
                            if now - directory.lstat(name).st_mtime > _STALE_TMP_S:
                                directory.unlink(name)
                                counts["tmp"] += 1
                with suppress(OSError):
                    counts["corrupt"] += self._prune_corrupt(directory, now, names=names)
                for name in sorted(names):
                    match = _LOCK_NAME_RE.fullmatch(name)
                    if match is None or match.group(1) in names:
                        continue
                    record_name = match.group(1)
                    try:
                        with self._lock_for(directory, record_name, timeout=0):
                            if not directory.exists(record_name):
                                directory.unlink(name)
                                counts["locks"] += 1
                    except OSError:
                        continue  # busy or gone: next time
        if any(counts.values()):
            logger.info("Cleaned profile store %s: %s", self._directory, counts)
        return counts

    @staticmethod
    def _prune_corrupt(directory: _Dir, now: float, *, names: set[str] | None = None, only: str | None = None) -> int:
        """Delete set-aside files beyond the newest few per record, or too old; returns the count."""
        if names is None:
            names = set(directory.listdir())
        by_record: dict[str, builtins.list[tuple[str, str]]] = {}
        for name in names:
            match = _CORRUPT_NAME_RE.fullmatch(name)
            if match is not None and (only is None or match.group(1) == only):
                by_record.setdefault(match.group(1), []).append((name[len(match.group(1)) :], name))
        removed = 0
        for items in by_record.values():
            items.sort(reverse=True)  # the timestamp suffix sorts chronologically: newest first
            for index, (_, name) in enumerate(items):
                match = _CORRUPT_NAME_RE.fullmatch(name)
                assert match is not None
                try:
                    moved = _dt.datetime.strptime(match.group(2), _CORRUPT_TS_FORMAT)
                    age = now - moved.replace(tzinfo=_dt.timezone.utc).timestamp()
                except ValueError:
                    age = 0.0
                if index >= _KEEP_CORRUPT or age > _CORRUPT_MAX_AGE_S:
                    with suppress(FileNotFoundError):
                        directory.unlink(name)
                        removed += 1
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
        with _as_unavailable():
            write_file_atomic(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
        return len(records)

    @staticmethod
    def _read_document(source: Path) -> Any:
        """Read a user-supplied JSON file for import, bounded like records are."""
        try:
            raw = read_regular_file(source, MAX_IMPORT_BYTES, follow_symlinks=True)
        except (NotARegularFile, FileTooLarge) as exc:
            raise ValueError(f"{source} cannot be imported: {exc}") from exc
        try:
            return loads_strict_json(raw)
        except ValueError as exc:
            raise ValueError(f"{source} is not valid JSON: {exc}") from exc

    def import_json(self, path: str | os.PathLike[str]) -> int:
        """Load records written by :meth:`export_json`, replacing same-key records.

        The whole document is validated (every record as strictly as when read from
        the store) before anything is written, so a bad file leaves the store
        untouched. Records of a newer release already in the store are kept. Returns
        the number of records imported.

        Raises:
            ValueError: if the file is not a valid ``swift-profiles`` document.
        """
        source = Path(path)
        document = self._read_document(source)
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
                raise ValueError(f"{source}: profile #{index} is invalid: {_validation_summary(exc)}") from exc
        return sum(1 for record in records if self._put(record))

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
        with _as_unavailable():
            write_file_atomic(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
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
        document = self._read_document(source)
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
            if record is not None:  # None: a newer release's record is kept
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
                if index >= MAX_LAYERS:
                    raise ValueError(f"{where}: {field} index {index} is out of range (at most {MAX_LAYERS} layers)")
            lists[field] = indices
        return SkipSet(attention=lists["attention"], mlp=lists["mlp"])


def _release(lock: FileLock) -> None:
    """Release a lock; a failure to unlock is logged, never raised over the caller's result."""
    try:
        lock.release()
    except Exception as exc:  # noqa: BLE001 - releasing must not mask the operation's outcome
        logger.warning("Could not release profile lock %s: %s", lock.lock_file, exc)


def _is_our_auxiliary(name: str) -> bool:
    """Whether ``name`` is one of our lock, temporary or set-aside files."""
    return bool(_LOCK_NAME_RE.fullmatch(name) or _TMP_NAME_RE.fullmatch(name) or _CORRUPT_NAME_RE.fullmatch(name))


def _group_by_record(names: builtins.list[str]) -> dict[str, builtins.list[str]]:
    """Our files in a directory listing, grouped by the record name they belong to."""
    groups: dict[str, builtins.list[str]] = {}
    for name in names:
        if _RECORD_NAME_RE.fullmatch(name):
            groups.setdefault(name, []).append(name)
            continue
        for pattern in (_LOCK_NAME_RE, _TMP_NAME_RE, _CORRUPT_NAME_RE):
            match = pattern.fullmatch(name)
            if match is not None:
                groups.setdefault(match.group(1), []).append(name)
                break
    return groups
