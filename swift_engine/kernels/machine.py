"""Which CPU this is: what measurements kept on disk (kernel choice, pass costs, row verdicts) are keyed by.

A measurement describes the machine it was taken on. Profile stores and measurement folders can be shared
(a network folder, ``$SWIFT_MEASUREMENT_DIR``, a copied store), so each kept measurement names the CPU it
holds for and another CPU measures its own.
"""

from __future__ import annotations

import functools
import hashlib
import platform

__all__ = ["cpu_identity", "cpu_key", "cpu_name"]


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
