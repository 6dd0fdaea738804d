"""How a skip profile is shown in a terminal: its layers, state, score, speed-up and times, and the tables.

Used by the ``profiles`` commands, and (the expected speed-up) by ``chat``'s status line, so both
print the same numbers the same way.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from swift_engine.store.records import ProfileRecord, escape_nonprintable


def format_speedup(value: float | None) -> str:
    """``1.37`` -> ``"1.37x"``; infinite -> ``"cached"``; none -> ``"-"``."""
    if value is None:
        return "-"
    if math.isinf(value):
        return "cached"
    return f"{value:.2f}x"


def format_layers(indices: Sequence[int]) -> str:
    """``[1, 3, 4, 5, 9]`` -> ``"1 3-5 9"`` (wraps between numbers); ``"-"`` when empty."""
    if not indices:
        return "-"
    parts: list[str] = []
    values = sorted(indices)
    start = prev = values[0]
    for v in values[1:] + [None]:  # type: ignore[list-item]
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return " ".join(parts)


def format_state(record: ProfileRecord) -> Text:
    """The record's search state: plain, cached (imported), converged or searching, in colour."""
    if record.plain:
        return Text("plain", style="yellow")
    if record.converged and record.score is None and record.expected_speedup is None:
        return Text("cached", style="cyan")
    if record.converged:
        return Text("converged", style="green")
    return Text("searching", style="magenta")


def format_time(ts: float) -> str:
    """A timestamp as local ``YYYY-MM-DD HH:MM``."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def format_score(value: float | None) -> str:
    """A search score to three decimals; ``"-"`` when there is none."""
    return "-" if value is None else f"{value:.3f}"


def escaped(text: str) -> Text:
    """Text read from a profile, for a terminal: invisible characters escaped, never rich markup.

    Step keys and model names come from files anyone with access to the store may have written:
    raw escape sequences or bidi overrides could rewrite what the user sees, and a plain string
    cell would be parsed as rich markup (``[red]``) - so both are neutralised here.
    """
    return Text(escape_nonprintable(text))


def compact_json(value: Any, limit: int = 160) -> str:
    """``value`` as one line of JSON, cut to ``limit`` characters (with an ellipsis)."""
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


#: the widest a step key is kept on one line before it folds (a 32-character hash key: system:<hash>)
STEP_WIDTH = 24


def profiles_tables(records: list[ProfileRecord]) -> list[Table]:
    """One table per model: each step's skipped sublayers, score, speed-up and search state."""
    from rich import box

    by_model: dict[str, list[ProfileRecord]] = {}
    for record in records:
        by_model.setdefault(record.model_fingerprint, []).append(record)
    tables = []
    for fingerprint, group in by_model.items():
        name = next((r.model_name for r in group if r.model_name), "") or "unknown model"
        table = Table(
            title=Text.assemble((escape_nonprintable(name), "bold"), "  ", (f"fingerprint {fingerprint}", "dim")),
            title_justify="left",
            box=box.SIMPLE_HEAD,
            padding=(0, 1, 0, 0),  # with the box's one-space divider: two spaces between columns
            pad_edge=False,
            show_edge=False,
        )
        # a step key reads whole at 80 columns (run:answer, langgraph:planner); the layer lists wrap instead
        widest = max((len(escaped(r.step_key)) for r in group), default=4)
        table.add_column("Step", style="bold", overflow="fold", width=min(max(widest, 4), STEP_WIDTH))
        table.add_column("Skipped attention", min_width=7)
        table.add_column("Skipped MLP", min_width=7)
        table.add_column("Score", justify="right", no_wrap=True)
        table.add_column("Speed", justify="right", no_wrap=True)
        table.add_column("Iter.", justify="right", no_wrap=True)
        table.add_column("State", no_wrap=True)
        table.add_column("Calls", justify="right", no_wrap=True)
        for r in group:
            table.add_row(
                escaped(r.step_key),
                format_layers(r.skip.attention),
                format_layers(r.skip.mlp),
                format_score(r.score),
                format_speedup(r.expected_speedup),
                str(r.iterations),
                format_state(r),
                str(r.calls),
            )
        tables.append(table)
    return tables
