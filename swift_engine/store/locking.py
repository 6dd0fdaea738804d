"""The inter-process lock of one profile record: :func:`lock_record`.

Every mutation of a record happens under its :class:`filelock.FileLock`, on the file
``<record>.json.lock`` beside it (see :mod:`swift_engine.store.names`). A lock file is only
deleted by a process that holds it, and every locker checks after acquiring that its lock
file is still the one at the path (retrying otherwise), so deleting lock files never lets
two writers in (except against old releases without that check, which then may lose one merge).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from filelock import FileLock

from swift_engine.store.errors import ProfileStoreUnavailable
from swift_engine.store.names import _LOCK_SUFFIX
from swift_engine.store.safe_files import _Dir, new_file_lock

__all__ = ["holds_current_lock_file", "lock_record"]

# The store's logger: its messages kept the name they had before the store was split in modules.
logger = logging.getLogger("swift_engine.store.profile_store")

_DEFAULT_LOCK_TIMEOUT_S = 60.0
_LOCK_POLL_S = 0.005


@contextmanager
def lock_record(directory: _Dir, name: str, timeout: float) -> Iterator[None]:
    """Hold the inter-process lock of record ``name`` in ``directory``.

    A fresh lock object per operation: flock() on separate open file descriptions
    excludes other threads as well as other processes, and no lock object becomes
    shared mutable state. The short poll interval keeps hand-over latency low when
    many workers update the same record (filelock's default is 50 ms). A negative
    ``timeout`` waits forever.

    Whatever filelock raises (its Timeout, OSError, NotImplementedError where
    flock is missing, RuntimeError for a would-be deadlock) becomes one
    :class:`ProfileStoreUnavailable`, so callers need a single ``except OSError``.
    """
    lock_name = name + _LOCK_SUFFIX
    lock_path = str(directory.path / lock_name)
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
        if holds_current_lock_file(lock, directory, lock_name):
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


def holds_current_lock_file(lock: FileLock, directory: _Dir, lock_name: str) -> bool:
    """Whether the file ``lock`` holds is still the one named ``lock_name`` in ``directory``."""
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


def _release(lock: FileLock) -> None:
    """Release a lock; a failure to unlock is logged, never raised over the caller's result."""
    try:
        lock.release()
    except Exception as exc:  # noqa: BLE001 - releasing must not mask the operation's outcome
        logger.warning("Could not release profile lock %s: %s", lock.lock_file, exc)
