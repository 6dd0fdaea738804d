"""A file's SHA-256, hashed once per version of the file and remembered by its status.

Why: the GGUF file's digest names its conversion-cache entry, and hashing the whole file is what
keeps a replaced file from being served the old conversion (see ``gguf._gguf_digest``). But hashing
is a cost of every process: ~0.45 s of a second process's first call on the 491 MB agent model
(docs/bench/cold-start.md). So the digest is kept beside the conversions, with the file's status at
the time it was hashed, and reused while the status is unchanged.

What "unchanged" means: the same device, inode, size, modification *and* status-change times (in
nanoseconds). The status-change time (``st_ctime``) cannot be set from user space; any write,
rename over, ``cp -p`` or ``rsync -t`` replacement changes it, or the inode, even where the
modification time is preserved. As git does with its index ("racy git"), a file changed within the
last seconds is not remembered: a write in the same clock tick as the stat could leave every field
equal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swift_engine.store.safe_files import loads_strict_json, read_regular_file, write_file_atomic

logger = logging.getLogger(__name__)

__all__ = ["remembered_digest"]

#: a file whose status changed less than this long ago is hashed but not remembered (see above)
_RACY_S = 2.0
_MAX_RECORD_BYTES = 8 * 1024


class DigestRecord(BaseModel):
    """A file's digest and the status it had when hashed."""

    model_config = ConfigDict(extra="forbid")

    path: str
    device: int
    inode: int
    size: int = Field(ge=0)
    mtime_ns: int
    ctime_ns: int
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


def _status(path: pathlib.Path, real: str) -> dict[str, int | str]:
    st = os.stat(path)
    return {
        "path": real,
        "device": st.st_dev,
        "inode": st.st_ino,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }


def remembered_digest(path: pathlib.Path, folder: pathlib.Path, hash_file: Callable[[pathlib.Path], str]) -> str:
    """``hash_file(path)``, or the digest remembered in ``folder`` for this very version of the file.

    ``folder`` holds one small JSON record per file (named by its resolved path); an unreadable or
    invalid record is hashed again and overwritten, and a folder that cannot be written costs only
    the next process another hash.
    """
    real = os.path.realpath(path)
    record = folder / f"{hashlib.sha256(real.encode()).hexdigest()[:32]}.json"
    now = _status(path, real)
    try:
        kept = DigestRecord.model_validate(loads_strict_json(read_regular_file(record, _MAX_RECORD_BYTES)))
        if kept.model_dump(exclude={"sha256"}) == now:
            return kept.sha256
    except FileNotFoundError:
        pass
    except (OSError, ValueError, ValidationError) as exc:
        logger.debug("ignoring the digest record %s (%s); hashing the file", record, exc)
    digest = hash_file(path)
    after = _status(path, real)
    if after == now and time.time() - int(now["ctime_ns"]) / 1e9 > _RACY_S:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            data = json.dumps(DigestRecord.model_validate({**now, "sha256": digest}).model_dump()).encode()
            write_file_atomic(record, data, follow_parent_symlink=False)
        except (OSError, ValidationError) as exc:
            logger.debug("could not remember the digest of %s in %s: %s", path, record, exc)
    return digest
