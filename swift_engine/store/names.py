"""Which files in a profile store are ours: the on-disk naming scheme.

The store only ever renames, deletes or writes files whose name is exactly one it
produces, inside a fingerprint directory (``<fingerprint>/``, see
:func:`~swift_engine.store.records.validate_fingerprint`):

* records ``<slug>-<16 hex>.json`` (the name :func:`~swift_engine.store.records.safe_step_name` gives),
* their lock files ``<record>.json.lock``,
* in-flight temporary files ``.<record>.json.<random>.tmp``,
* set-aside files ``<record>.json.corrupt-<timestamp>``.

Any other file (``notes.json``, ``settings.json`` in a folder that happens to look
like a fingerprint, ...) is never opened for writing, renamed or deleted, and no lock
file is ever created beside it. The patterns here are always ``fullmatch()``-ed, so a
name is ours exactly when one of them matches all of it. This module only names files;
it touches none.
"""

from __future__ import annotations

import datetime as _dt
import re

from swift_engine.store.records import _KEY_HASH_LEN, _SLUG_MAX

_RECORD_SUFFIX = ".json"
_LOCK_SUFFIX = ".lock"

# Exactly the names this store produces (see the module docstring); always fullmatch()ed.
# A slug is 1-48 characters of [a-z0-9._-] that starts and ends alphanumeric.
_STEM = rf"[a-z0-9](?:[a-z0-9._-]{{0,{_SLUG_MAX - 2}}}[a-z0-9])?-[0-9a-f]{{{_KEY_HASH_LEN}}}"
_RECORD_NAME_RE = re.compile(rf"{_STEM}\.json")
_LOCK_NAME_RE = re.compile(rf"({_STEM}\.json)\.lock")
# The temporary name is the one safe_files._Dir.write_atomic gives: ".<name>.<16 hex>.tmp".
_TMP_NAME_RE = re.compile(rf"\.({_STEM}\.json)\.[A-Za-z0-9_]{{6,32}}\.tmp")
_CORRUPT_NAME_RE = re.compile(rf"({_STEM}\.json)\.corrupt-(\d{{8}}T\d{{6}}\.\d{{6}}Z)(?:-\d{{1,6}})?")
_CORRUPT_TS_FORMAT = "%Y%m%dT%H%M%S.%fZ"


def _timestamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime(_CORRUPT_TS_FORMAT)


def _is_our_auxiliary(name: str) -> bool:
    """Whether ``name`` is one of our lock, temporary or set-aside files."""
    return bool(_LOCK_NAME_RE.fullmatch(name) or _TMP_NAME_RE.fullmatch(name) or _CORRUPT_NAME_RE.fullmatch(name))


def _group_by_record(names: list[str]) -> dict[str, list[str]]:
    """Our files in a directory listing, grouped by the record name they belong to."""
    groups: dict[str, list[str]] = {}
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
