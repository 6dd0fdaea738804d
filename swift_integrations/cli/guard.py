"""What every ``swift-accel`` command shares at run time: its per-invocation state and its error reporting.

Errors are reported as one red line on stderr with exit status 1 (``--debug`` shows the traceback
instead): users of a command line want the message, not the stack. The state (the consoles and
the ``--debug``/``--verbose`` flags) is created by the root callback and carried in ``ctx.obj``;
the engine's log records go to the same stderr console for the length of one invocation.

The command modules import from here; nothing here imports them, so there is no cycle.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

#: Marks the logging handler this CLI installs, so a second invocation in one process replaces it.
_HANDLER_MARK = "_swift_cli_handler"


class CliError(Exception):
    """A user-facing error: reported as one red line, exit status 1."""


@dataclass
class State:
    """Per-invocation state, carried in ``ctx.obj``."""

    debug: bool = False
    verbose: bool = False
    out: Console = field(default_factory=Console)
    err: Console = field(default_factory=lambda: Console(stderr=True))


def install_logging(ctx: typer.Context, state: State) -> None:
    """Route the engine's log records (e.g. "profile file moved aside") to stderr, for this run only."""
    from rich.logging import RichHandler

    log = logging.getLogger("swift_engine")
    for handler in list(log.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            log.removeHandler(handler)
    handler = RichHandler(console=state.err, show_time=False, show_path=state.debug, markup=False)
    setattr(handler, _HANDLER_MARK, True)
    previous_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if state.debug else logging.INFO if state.verbose else logging.WARNING)

    def restore() -> None:
        log.removeHandler(handler)
        log.setLevel(previous_level)

    ctx.call_on_close(restore)


def state_of(ctx: typer.Context) -> State:
    """The invocation's state; a fresh one for a command invoked without the root callback."""
    obj = ctx.obj
    if not isinstance(obj, State):  # a command invoked without the root callback (embedding)
        obj = ctx.obj = State()
    return obj


def describe(exc: BaseException) -> str:
    """One line describing ``exc`` for a user: the message, without a traceback."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        errors = exc.errors()
        if errors:
            first = errors[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "value"
            message = f"invalid {where}: {first.get('msg', 'invalid value')}"
        else:
            message = str(exc)
    elif isinstance(exc, KeyError) and exc.args:
        message = f"not found: {exc.args[0]}"
    else:
        message = str(exc)
    message = " ".join(message.split())
    known = (CliError, ValueError, OSError, LookupError, ImportError, ValidationError)
    if not message:
        message = type(exc).__name__
    elif not isinstance(exc, known):
        message = f"{type(exc).__name__}: {message}"
    return message


@contextmanager
def guard(ctx: typer.Context) -> Iterator[State]:
    """Turn exceptions into one red line and exit status 1 (unless ``--debug``)."""
    state = state_of(ctx)
    try:
        yield state
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        state.err.print(Text("Interrupted.", style="red"))
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - the whole point: no tracebacks for users
        if state.debug:
            raise
        print_error(state, describe(exc))
        raise typer.Exit(1) from None


def print_error(state: State, message: str) -> None:
    """Show ``message`` as the one red ``Error:`` line on stderr."""
    # soft_wrap: never insert line breaks, so the error stays one line however long it is
    state.err.print(Text(f"Error: {message}", style="bold red"), soft_wrap=True, highlight=False)


def guarded(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with its errors reported like every ``swift-accel`` command's (one red line, or ``--debug``).

    For commands defined outside this package (``swift-bench``'s), which also run standalone; the
    wrapper keeps their signature, so typer sees the same options. ``command`` must take the
    context as ``ctx`` (typer passes it by keyword).
    """

    @functools.wraps(command)
    def run(**kwargs: Any) -> None:
        with guard(kwargs["ctx"]):
            command(**kwargs)

    return run
