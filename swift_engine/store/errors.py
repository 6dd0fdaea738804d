"""The one error the profile store raises for files it cannot use: :class:`ProfileStoreUnavailable`.

It lives apart from :mod:`swift_engine.store.profile_store` because the locking, the writes and
the import/export functions (:mod:`~swift_engine.store.locking`, :mod:`~swift_engine.store.transfer`)
all raise it, and none of them should have to import the store class to do so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from swift_engine.store.safe_files import UnusableDirectory, _MessageError

__all__ = ["ProfileStoreUnavailable"]


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
