"""``swift-accel``: the command line of the SWIFT engine (chat, bench, profiles, info).

This module assembles the command tree: the typer app, its global options (``--debug``,
``--verbose``, ``--version``) and the commands, which live one idea per module - ``chat``
(:mod:`~swift_integrations.cli.chat`), ``models``/``pull``/``info``
(:mod:`~swift_integrations.cli.models`), ``serve`` (:mod:`~swift_integrations.cli.serve`), the
``profiles`` group (:mod:`~swift_integrations.cli.profiles`) and ``bench`` (``swift-bench``'s
command). The command modules never import this one, so there is no cycle; what they share is
in :mod:`~swift_integrations.cli.guard` (state, errors), :mod:`~swift_integrations.cli.options`
and :mod:`~swift_integrations.cli.loading`.

Everything the user sees goes through ``rich`` consoles created per invocation (stdout for
results, stderr for progress, status and errors); the library modules never print. Errors are
reported as one red line with exit status 1; ``swift-accel --debug ...`` shows the traceback instead.

Heavy imports (torch, transformers) happen only in the commands that load a model, so
``swift-accel profiles list`` and ``swift-accel --help`` stay fast.

The command is named after the distribution, ``swift-accel``: a bare ``swift`` would collide with
ModelScope's ms-swift and with Apple's Swift toolchain.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Optional

import typer
from rich.console import Console

from swift_integrations.bench.command import BenchCommand
from swift_integrations.bench.command import bench as _bench_command
from swift_integrations.cli.about import DIST_NAME, installed_version
from swift_integrations.cli.chat import chat
from swift_integrations.cli.flags import FlagCommand, FlagGroup
from swift_integrations.cli.guard import State, guarded, install_logging
from swift_integrations.cli.models import info, models, pull
from swift_integrations.cli.profiles import (
    profiles_export,
    profiles_import,
    profiles_list,
    profiles_reset,
    profiles_show,
)
from swift_integrations.cli.serve import serve

__all__ = ["app", "main"]


# ------------------------------------------------------------------------------------------------
# The app and its global options
# ------------------------------------------------------------------------------------------------

app = typer.Typer(
    cls=FlagGroup,
    name=DIST_NAME,
    help="SWIFT self-speculative decoding for local LLMs: chat, benchmark, manage skip profiles.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
profiles_app = typer.Typer(
    cls=FlagGroup,
    name="profiles",
    help="Inspect and manage the learned per-step skip profiles.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(profiles_app, name="profiles")


def _version_callback(value: bool) -> None:
    if value:
        Console().print(f"{DIST_NAME} {installed_version(DIST_NAME)}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug/--no-debug", help="Show full tracebacks and debug logs.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log the engine's progress.")] = False,
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version and exit."),
    ] = None,
) -> None:
    """SWIFT self-speculative decoding for local LLMs."""
    state = State(debug=debug, verbose=verbose)
    ctx.obj = state
    install_logging(ctx, state)


# ------------------------------------------------------------------------------------------------
# The commands, in the order ``swift-accel --help`` lists them
# ------------------------------------------------------------------------------------------------

app.command(cls=FlagCommand)(chat)
#: ``swift-accel bench``: the command of ``swift-bench`` (:mod:`swift_integrations.bench.command`), same options,
#: same exit status.
bench = app.command("bench", cls=BenchCommand)(guarded(_bench_command))
app.command(cls=FlagCommand)(models)
app.command(cls=FlagCommand)(pull)
app.command(cls=FlagCommand)(info)
app.command(cls=FlagCommand)(serve)

profiles_app.command("list", cls=FlagCommand)(profiles_list)
profiles_app.command("show", cls=FlagCommand)(profiles_show)
profiles_app.command("export", cls=FlagCommand)(profiles_export)
profiles_app.command("import", cls=FlagCommand)(profiles_import)
profiles_app.command("reset", cls=FlagCommand)(profiles_reset)


# ------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI (``argv`` defaults to ``sys.argv[1:]``) and return its exit status."""
    try:
        app(args=list(argv) if argv is not None else None, prog_name=DIST_NAME)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
