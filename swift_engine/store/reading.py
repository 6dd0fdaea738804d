"""Reading one record file and saying what it is: :func:`read_record` and its :class:`_Read`.

Everything read from disk is untrusted: a profile is an optimisation, so a bad, hostile
or unexpected file may cost a search but must never fail a generation call. Reading
therefore never raises for what it finds; it classifies. Records are opened non-blocking
and without following links, must be regular files (``fstat``), and at most
:data:`~swift_engine.store.records.MAX_RECORD_BYTES` are read; JSON with ``NaN`` or
``Infinity``, absurdly long numbers or deep nesting is invalid, and so is a record that
fails validation or does not belong at its path. What to do about each outcome (log it,
set the file aside, refuse to write) is the store's decision
(:class:`~swift_engine.store.profile_store.ProfileStore`); this module takes no lock and
changes no file.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import NamedTuple

from pydantic import ValidationError

from swift_engine.store.names import _RECORD_SUFFIX
from swift_engine.store.records import (
    MAX_RECORD_BYTES,
    SCHEMA_VERSION,
    ProfileRecord,
    _validation_summary,
    safe_step_name,
)
from swift_engine.store.safe_files import (
    _O_NONBLOCK,
    FileTooLarge,
    NotARegularFile,
    _describe_mode,
    _Dir,
    _read_fd,
    loads_strict_json,
)

__all__ = ["decode_record", "read_record"]


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


def read_record(directory: _Dir, fingerprint: str, name: str) -> _Read:
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
    return decode_record(raw, fingerprint, name)


def decode_record(raw: bytes, fingerprint: str, name: str) -> _Read:
    """Classify the content ``raw`` of the record file ``name`` of ``fingerprint``."""
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
