"""The command's name and installed version (``swift-accel --version``, ``swift-accel info``).

The command is named after the distribution, ``swift-accel``: a bare ``swift`` would collide with
ModelScope's ms-swift and with Apple's Swift toolchain.
"""

from __future__ import annotations

from importlib import metadata

DIST_NAME = "swift-accel"


def installed_version(dist: str) -> str:
    """The installed version of the distribution ``dist``, or ``"not installed"``."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"
