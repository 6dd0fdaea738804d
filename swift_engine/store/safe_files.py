"""Filesystem safety for files whose content or type nobody vouches for.

Profile records and measured cost files live in a directory other processes (and other
accounts, for a group-shared store) write to as well, so everything read there is untrusted
and every write must be safe to interrupt. This module holds what those files have in common,
nothing specific to profiles:

* *Bounded, non-blocking, no-follow reads* (:func:`read_regular_file`, :meth:`_Dir.open`):
  a FIFO cannot stall a reader, a device or directory is refused after ``fstat``, at most a
  given number of bytes is read, and symbolic links are not followed (``O_NOFOLLOW``,
  relative to a directory descriptor opened with ``O_NOFOLLOW``, so a link swapped in after
  a check redirects nothing).
* *Atomic writes honouring the umask* (:func:`write_file_atomic`, :meth:`_Dir.write_atomic`):
  a fresh temporary file (mode ``0o666`` less the umask; nothing is ``chmod``-ed) renamed
  into place, so readers see the old content or the new one, never a torn file, and a link
  at the target is replaced rather than written through. :func:`new_file_lock` makes
  filelock create its lock files the same way.
* *Strict JSON* (:func:`loads_strict_json`): no ``NaN``/``Infinity``, finite floats,
  bounded integer literals and nesting.

Used by the profile store (:mod:`swift_engine.store.profile_store`) and the cost files
(:mod:`swift_engine.kernels.costs`). It holds no mutable state of its own.
"""

from __future__ import annotations

import errno
import inspect
import json
import math
import os
import secrets
import stat
import threading
from contextlib import suppress
from pathlib import Path
from typing import Any

from filelock import FileLock

__all__ = [
    "FileTooLarge",
    "NotARegularFile",
    "UnusableDirectory",
    "loads_strict_json",
    "new_file_lock",
    "read_regular_file",
    "write_file_atomic",
]

#: Longest integer literal strict JSON accepts (parsing huge ones is quadratic).
_MAX_INT_DIGITS = 30

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
# Directory-relative operations (openat & co.) make checks and uses refer to the same directory.
_HAVE_DIR_FD = (
    bool(_O_DIRECTORY and _O_NOFOLLOW)
    and {os.open, os.stat, os.unlink, os.rename} <= os.supports_dir_fd
    and os.listdir in os.supports_fd
)


# --------------------------------------------------------------------------- errors


class _MessageError(OSError):
    """An OSError whose text is its message alone (no ``[Errno n]`` prefix)."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class UnusableDirectory(_MessageError):
    """A directory cannot be used: a symbolic link where links are not followed, not a
    directory, or it cannot be opened.

    The profile store reports it as its own ``ProfileStoreUnavailable`` (same errno and
    message); other callers treat it like any other :class:`OSError`.
    """


class NotARegularFile(_MessageError):
    """A path that must be a regular file is a symbolic link, FIFO, device or directory."""


class FileTooLarge(ValueError):
    """A file is larger than the bound its reader accepts (its content is unusable)."""


# --------------------------------------------------------------------------- files


def _describe_mode(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _read_fd(fd: int, limit: int) -> bytes:
    """Read a whole regular file from ``fd``, refusing anything else or more than ``limit`` bytes."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise NotARegularFile(errno.EINVAL, f"is {_describe_mode(info.st_mode)}")
    if info.st_size > limit:
        raise FileTooLarge(f"is {info.st_size} bytes; at most {limit} are read")
    chunks: list[bytes] = []
    total = 0
    while total <= limit:  # the size may change under us: never read more than limit + 1
        chunk = os.read(fd, min(1 << 16, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > limit:
        raise FileTooLarge(f"is more than {limit} bytes")
    return b"".join(chunks)


def read_regular_file(path: str | os.PathLike[str], limit: int, *, follow_symlinks: bool = False) -> bytes:
    """Read a small regular file without ever blocking or reading without bound.

    The file is opened non-blocking (a FIFO cannot stall us), checked with ``fstat``
    (a FIFO, device or directory is refused), and at most ``limit`` bytes are read.
    Unless ``follow_symlinks`` is set, a symbolic link at ``path`` is refused too.

    Raises:
        FileNotFoundError: if there is no file at ``path``.
        NotARegularFile: if ``path`` is a link (when not followed), FIFO, device or directory.
        FileTooLarge: if the file holds more than ``limit`` bytes.
        OSError: if it cannot be read (permissions, I/O errors, ...).
    """
    info = os.stat(path, follow_symlinks=follow_symlinks)
    if not stat.S_ISREG(info.st_mode):  # do not even open devices or FIFOs
        raise NotARegularFile(errno.EINVAL, f"{path} is {_describe_mode(info.st_mode)}")
    flags = os.O_RDONLY | _O_NONBLOCK | _O_CLOEXEC | _O_BINARY | (0 if follow_symlinks else _O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotARegularFile(errno.ELOOP, f"{path} is a symbolic link") from exc
        raise
    try:
        return _read_fd(fd, limit)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _Dir:
    """An open directory; names inside it resolve relative to that open directory.

    With directory descriptors (POSIX), checking a file and then using it refer to the
    same directory even if someone swaps the directory's path for a symbolic link in
    between. Without them (Windows) the same calls go by path, after an ``lstat`` check.
    """

    __slots__ = ("fd", "path")

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def open_dir(cls, path: Path, *, follow_symlinks: bool) -> _Dir:
        """Open ``path`` as a directory.

        Raises:
            FileNotFoundError: if it does not exist.
            UnusableDirectory: if it is a symbolic link (and links are not
                followed), is not a directory, or cannot be opened.
        """
        try:
            info = os.stat(path, follow_symlinks=follow_symlinks)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise UnusableDirectory(exc.errno, f"cannot use directory {path}: {exc.strerror}") from exc
        if not stat.S_ISDIR(info.st_mode):
            raise UnusableDirectory(
                errno.ENOTDIR, f"{path} is {_describe_mode(info.st_mode)}, not a directory the store may use"
            )
        if not _HAVE_DIR_FD:
            return cls(path, None)
        flags = os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC | (0 if follow_symlinks else _O_NOFOLLOW)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise
        except OSError as exc:  # ELOOP/ENOTDIR: swapped for something else since the stat
            raise UnusableDirectory(exc.errno, f"cannot use directory {path}: {exc.strerror}") from exc
        return cls(path, fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> _Dir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _name(self, name: str) -> str:
        return name if self.fd is not None else os.path.join(self.path, name)

    def lstat(self, name: str) -> os.stat_result:
        return os.stat(self._name(name), dir_fd=self.fd, follow_symlinks=False)

    def exists(self, name: str) -> bool:
        try:
            self.lstat(name)
        except FileNotFoundError:
            return False
        return True

    def open(self, name: str, flags: int, mode: int = 0o666) -> int:
        """``os.open`` of ``name`` in this directory, never through a symbolic link."""
        return os.open(self._name(name), flags | _O_NOFOLLOW | _O_CLOEXEC | _O_BINARY, mode, dir_fd=self.fd)

    def unlink(self, name: str) -> None:
        os.unlink(self._name(name), dir_fd=self.fd)

    def replace(self, source: str, target: str) -> None:
        os.replace(self._name(source), self._name(target), src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def listdir(self) -> list[str]:
        return os.listdir(self.fd if self.fd is not None else self.path)

    def fsync(self) -> None:
        """Persist renames in this directory; best effort (not every OS/filesystem allows it)."""
        if os.name != "posix":
            return
        try:
            fd = os.open(self._name("."), os.O_RDONLY | _O_CLOEXEC, dir_fd=self.fd)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def write_atomic(self, name: str, data: bytes) -> None:
        """Write ``data`` to ``name`` so readers see either the old or the new content.

        The temporary file is created exclusively (``O_EXCL``, random name, mode
        ``0o666`` filtered by the umask) in the same directory, so the final
        ``os.replace`` is an atomic same-filesystem rename; the fsync makes sure a crash
        cannot leave a renamed-but-empty file. Replacing renames over ``name`` itself:
        if it is a symbolic link the link is replaced, its target is never written.
        """
        tmp = f".{name}.{secrets.token_hex(8)}.tmp"
        fd = self.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.replace(tmp, name)
        except BaseException:
            with suppress(OSError):
                self.unlink(tmp)
            raise
        self.fsync()


def write_file_atomic(path: str | os.PathLike[str], data: bytes, *, follow_parent_symlink: bool = True) -> None:
    """Atomically replace the file at ``path`` with ``data`` (parent folders are created).

    The file is written through a fresh temporary file (mode ``0o666`` less the umask)
    and renamed into place, so a link at ``path`` is replaced, never written through.
    The parent directory is followed if it is a link, like any path a user gives (exports),
    unless ``follow_parent_symlink`` is False (files inside the store, e.g. cost files):
    then a linked parent raises :class:`UnusableDirectory`.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _Dir.open_dir(target.parent, follow_symlinks=follow_parent_symlink) as directory:
        directory.write_atomic(target.name, data)


# --------------------------------------------------------------------------- strict JSON


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid number here")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]!r} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text) > _MAX_INT_DIGITS:
        raise ValueError(f"integer literal of {len(text)} digits is out of range")
    return int(text)


def loads_strict_json(raw: bytes) -> Any:
    """Parse JSON strictly: no NaN/Infinity, finite floats, bounded integers and nesting.

    Raises:
        ValueError: describing why ``raw`` is not acceptable JSON.
    """
    try:
        return json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason})") from None


# --------------------------------------------------------------------------- umask and lock files

# The one piece of module-level mutable state here, and it must be: it serialises the
# set-and-restore of the umask, which is process-global, so a per-object lock would not
# keep two readers from restoring each other's temporary value.
_UMASK_LOCK = threading.Lock()


def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows.

    ``os.umask`` can only be read by setting it, which races with other threads
    creating files; Linux reports it in /proc. Elsewhere we set-and-restore under a
    lock (threads that create files without this lock may still see the brief change).
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8) & 0o777
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _filelock_applies_umask() -> bool:
    """Whether FileLock, given no mode, creates lock files with 0o666 less the umask.

    filelock 4 does (its default mode is a negative "unset" marker); filelock 3
    defaults to ``0o644`` and chmods to it, which locks every other account out of a
    group-shared store.
    """
    try:
        default = inspect.signature(FileLock).parameters["mode"].default
    except (KeyError, TypeError, ValueError):
        return False
    return isinstance(default, int) and default < 0


#: A fact about the installed filelock, decided once at import (a constant, not a cache).
_FILELOCK_APPLIES_UMASK = _filelock_applies_umask()


def new_file_lock(path: str, timeout: float) -> FileLock:
    """A FileLock whose lock file, when it creates one, honours the umask."""
    if _FILELOCK_APPLIES_UMASK:
        return FileLock(path, timeout=timeout)
    return FileLock(path, timeout=timeout, mode=0o666 & ~_current_umask())
