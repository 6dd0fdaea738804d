"""Click classes for the commands: on/off flags shown as flags in ``--help``, not ``--debug <bool>``.

typer's rich help prints every option's type, a flag's too (``--debug <bool>``), as if it took a
value. These classes give flags an empty one, so ``--help`` reads
``--debug`` and ``--quick --no-quick`` as users expect; options that take values are untouched.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand, TyperGroup

__all__ = ["FlagCommand", "FlagGroup"]


class _FlagsWithoutMetavar:
    """Mixin: flags (``is_flag``) of a command, its ``--help`` included, get an empty metavar."""

    def get_params(self, ctx: Any) -> list[Any]:  # typer's own (vendored) click types
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class FlagCommand(_FlagsWithoutMetavar, TyperCommand):
    """A typer command whose flags read as flags in ``--help``."""


class FlagGroup(_FlagsWithoutMetavar, TyperGroup):
    """A typer group (the root and ``profiles``) whose flags read as flags in ``--help``."""
