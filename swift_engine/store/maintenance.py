"""What happens to our files besides plain writes: setting aside, removing, evicting, cleaning up.

An unusable record is renamed aside as ``.corrupt-<timestamp>`` (:func:`set_aside`), never
deleted: it may be evidence. Explicit removals go through :func:`remove_record_files`.

A store keeps at most ``max_records`` records: creating one more evicts the least
recently updated ones (never the record being written), each through
:func:`evict_if_cold`. :meth:`ProfileStore.clean <swift_engine.store.profile_store.ProfileStore.clean>`
removes crash leftovers (stale temporary files, old set-aside files, lock files of records
that no longer exist) with :func:`clean_directory`; it runs on a reset, after evictions and
on a small random fraction of writes (:data:`_CLEAN_PROBABILITY`).

Only our own files are touched (:mod:`swift_engine.store.names`), a record is only removed
under its lock, and for eviction and clean-up a busy lock means "next time", never a wait.
Walking the store's fingerprint directories is the store's job; these functions get one
open directory.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from contextlib import suppress

from swift_engine.store.locking import lock_record
from swift_engine.store.names import (
    _CORRUPT_NAME_RE,
    _CORRUPT_TS_FORMAT,
    _LOCK_NAME_RE,
    _LOCK_SUFFIX,
    _TMP_NAME_RE,
    _timestamp,
)
from swift_engine.store.reading import read_record
from swift_engine.store.safe_files import _Dir

__all__ = ["clean_directory", "evict_if_cold", "prune_corrupt", "remove_record_files", "set_aside"]

# The store's logger: its messages kept the name they had before the store was split in modules.
logger = logging.getLogger("swift_engine.store.profile_store")

#: Temporary files older than this are leftovers of a crashed writer (a write takes ms).
_STALE_TMP_S = 15 * 60
#: Set-aside files kept per record (newest first), and the age after which they go anyway.
_KEEP_CORRUPT = 3
_CORRUPT_MAX_AGE_S = 30 * 24 * 3600
#: Share of writes that also run :meth:`ProfileStore.clean` (drawn from each store's own
#: generator, so the store never perturbs the global ``random`` state other code may have seeded).
_CLEAN_PROBABILITY = 1 / 64


def set_aside(directory: _Dir, name: str, reason: str) -> None:
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
        prune_corrupt(directory, time.time(), only=name)


def remove_record_files(directory: _Dir, name: str, leftovers: list[str], timeout: float) -> bool:
    """Under the record's lock, remove it, ``leftovers`` (its temp/set-aside files) and its lock file.

    Returns whether the record file itself was removed. The lock file goes last,
    while we still hold it (see :mod:`swift_engine.store.locking` for why that is safe).
    ``timeout`` bounds the wait for the lock (:func:`~swift_engine.store.locking.lock_record`).
    """
    removed = False
    with lock_record(directory, name, timeout):
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


def clean_directory(directory: _Dir, now: float, counts: dict[str, int]) -> None:
    """Remove our leftovers in one fingerprint directory, adding to ``counts`` how many of each kind went.

    The kinds are those of :meth:`ProfileStore.clean <swift_engine.store.profile_store.ProfileStore.clean>`:
    ``tmp``, ``corrupt`` and ``locks`` (each lock file removed while we hold it; a busy one
    is left for next time). A directory that cannot be listed is left for next time too.
    """
    try:
        names = set(directory.listdir())
    except OSError:
        return
    for name in sorted(names):
        if _TMP_NAME_RE.fullmatch(name):
            with suppress(OSError):
                if now - directory.lstat(name).st_mtime > _STALE_TMP_S:
                    directory.unlink(name)
                    counts["tmp"] += 1
    with suppress(OSError):
        counts["corrupt"] += prune_corrupt(directory, now, names=names)
    for name in sorted(names):
        match = _LOCK_NAME_RE.fullmatch(name)
        if match is None or match.group(1) in names:
            continue
        record_name = match.group(1)
        try:
            with lock_record(directory, record_name, timeout=0):
                if not directory.exists(record_name):
                    directory.unlink(name)
                    counts["locks"] += 1
        except OSError:
            continue  # busy or gone: next time


def prune_corrupt(directory: _Dir, now: float, *, names: set[str] | None = None, only: str | None = None) -> int:
    """Delete set-aside files beyond the newest few per record, or too old; returns the count."""
    if names is None:
        names = set(directory.listdir())
    by_record: dict[str, list[tuple[str, str]]] = {}
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


def evict_if_cold(directory: _Dir, fingerprint: str, name: str, mtime_ns: int) -> bool:
    """Remove record ``name`` and its lock file unless it changed since it was seen at ``mtime_ns``.

    Returns whether the record is gone (removed now, or already). A record written since
    (modification time changed) or written by a newer release stays. Raises
    :class:`OSError` (e.g. :class:`ProfileStoreUnavailable`) when its lock is busy: someone
    is writing it, so it is not cold either.
    """
    with lock_record(directory, name, timeout=0):
        try:
            info = directory.lstat(name)
        except FileNotFoundError:
            return True  # gone already
        if info.st_mtime_ns != mtime_ns:
            return False  # written since we looked: not cold
        if read_record(directory, fingerprint, name).status == "newer":
            return False
        directory.unlink(name)
        with suppress(FileNotFoundError):
            directory.unlink(name + _LOCK_SUFFIX)
        return True
