"""This machine: which CPU it is (what kept measurements are keyed by), and where its caches live.

A measurement describes the machine it was taken on. Measurement folders can be shared (a network home
folder, ``$SWIFT_MEASUREMENT_DIR``), so each kept measurement names the CPU it holds for and another CPU
measures its own. What a machine computes once -- GGUF conversions, kept int4/int8 weights, the
measurements -- lives under :func:`cache_root`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from pathlib import Path

__all__ = ["CACHE_ENV_VAR", "cache_root", "cpu_identity", "cpu_key", "cpu_name"]

#: where this machine's caches live, when set (see :func:`cache_root`)
CACHE_ENV_VAR = "SWIFT_CACHE_DIR"


def cache_root() -> Path:
    """``$SWIFT_CACHE_DIR`` if set, else the platform's per-user cache folder for "swift"."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("swift"))


@functools.cache
def cpu_identity() -> tuple[str, str]:
    """CPU model name and a digest of its flags (Linux ``/proc/cpuinfo``; ``platform`` elsewhere)."""
    name, flags = "", ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and not name:
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(value.split()))
    except OSError:
        pass
    return name or platform.processor() or platform.machine(), hashlib.sha256(flags.encode()).hexdigest()[:12]


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for reports that must name the machine."""
    return cpu_identity()[0]


def cpu_key() -> str:
    """A short key of the CPU's model name and flags, for file names."""
    name, flags = cpu_identity()
    return hashlib.sha256(f"{name}; {flags}".encode()).hexdigest()[:10]
