"""``swift-accel profiles``: list, show, export, import and reset the learned per-step skip profiles.

Without ``--model`` these work on the whole store and load no model (listing stays fast); with
``--model`` they load it for its fingerprint and act on that model's profiles only. Export and
import speak two formats: ``swift`` (everything, search state included) and ``reference``
(SWIFT's ``skip_layers.json``, which names no model, so importing one needs the model).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table
from rich.text import Text

from swift_engine.store.profile_store import ProfileStore
from swift_engine.store.records import ProfileRecord, escape_nonprintable
from swift_integrations.cli.guard import CliError, State, guard
from swift_integrations.cli.loading import load, open_store
from swift_integrations.cli.options import DeviceOpt, DtypeOpt, GgufOpt, ModelOpt, ProfileDirOpt, check_step_key
from swift_integrations.cli.profile_display import (
    compact_json,
    escaped,
    format_layers,
    format_score,
    format_speedup,
    format_state,
    format_time,
    profiles_tables,
)


class ProfileFormat(str, Enum):
    """The file formats of ``profiles export`` and ``profiles import``."""

    swift = "swift"
    reference = "reference"


FormatOpt = Annotated[
    ProfileFormat,
    typer.Option(
        "--format", "-f", help="swift: everything, search state included; reference: SWIFT's skip_layers.json."
    ),
]


def _records(
    state: State,
    store: ProfileStore,
    model: str | None,
    gguf_file: str | None,
    device: str,
    dtype: str,
    profile_dir: Path | None,
) -> tuple[list[ProfileRecord], str | None]:
    """All records of the store, or (with ``--model``) only that model's, and its fingerprint."""
    if model is None and gguf_file is None:
        return store.list(), None
    engine = load(state, model, gguf_file, device, dtype, profile_dir).engine
    return engine.profiles.list(), engine.fingerprint


def profiles_list(
    ctx: typer.Context,
    model: ModelOpt = None,
    gguf_file: GgufOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    profile_dir: ProfileDirOpt = None,
) -> None:
    """List the stored profiles (all models; with --model, only that model's)."""
    with guard(ctx) as state:
        store = open_store(profile_dir)
        records, fingerprint = _records(state, store, model, gguf_file, device, dtype, profile_dir)
        if not records:
            which = f" for fingerprint {fingerprint}" if fingerprint else ""
            state.out.print(Text(f"No profiles{which} in {store.directory}.", style="dim"), soft_wrap=True)
            return
        for table in profiles_tables(records):
            state.out.print(table)
        models = len({r.model_fingerprint for r in records})
        state.out.print(
            Text(f"{len(records)} profile(s) of {models} model(s) in {store.directory}", style="dim"), soft_wrap=True
        )


def profiles_show(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The step key.", show_default=False)],
    model: ModelOpt = None,
    gguf_file: GgufOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    profile_dir: ProfileDirOpt = None,
) -> None:
    """Show everything stored about one step's profile (of every model, or of --model's)."""
    with guard(ctx) as state:
        key = check_step_key(key) or key
        store = open_store(profile_dir)
        records, fingerprint = _records(state, store, model, gguf_file, device, dtype, profile_dir)
        found = [r for r in records if r.step_key == key]
        if not found:
            which = f" of model {fingerprint}" if fingerprint else ""
            raise CliError(f"no profile for step key {key!r}{which} in {store.directory}")
        for r in found:
            table = Table.grid(padding=(0, 2))
            table.add_column(style="bold cyan", no_wrap=True)
            table.add_column(overflow="fold")
            rows: list[tuple[str, Any]] = [
                ("Step key", escaped(r.step_key)),
                ("Model", escaped(r.model_name or "unknown")),
                ("Fingerprint", r.model_fingerprint),
                ("State", format_state(r)),
                ("Skip attention", f"{len(r.skip.attention)}: {format_layers(r.skip.attention)}"),
                ("Skip MLP", f"{len(r.skip.mlp)}: {format_layers(r.skip.mlp)}"),
                ("Score", format_score(r.score)),
                ("Expected speed-up", format_speedup(r.expected_speedup)),
                ("Iterations", str(r.iterations)),
                ("Observations", str(len(r.observations))),
                ("Calls", str(r.calls)),
                ("Tokens seen", str(r.tokens_seen)),
                ("Created", format_time(r.created_at)),
                ("Updated", format_time(r.updated_at)),
                ("File", str(store.path_for(r.model_fingerprint, r.step_key))),
            ]
            for name, value in sorted(r.extra.items()):
                rows.append((f"extra.{escape_nonprintable(name)}", compact_json(value)))
            for label, value in rows:
                table.add_row(Text(label), value if isinstance(value, Text) else Text(str(value)))
            state.out.print(table)
            if r is not found[-1]:
                state.out.print()


def profiles_export(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="File to write.", show_default=False, dir_okay=False)],
    format: FormatOpt = ProfileFormat.swift,
    model: ModelOpt = None,
    gguf_file: GgufOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    profile_dir: ProfileDirOpt = None,
) -> None:
    """Export the profiles (all models, or --model's) to a JSON file."""
    with guard(ctx) as state:
        store = open_store(profile_dir)
        if model is None and gguf_file is None:
            fmt = format.value
            count = store.export_json(path) if fmt == "swift" else store.export_reference(path)
        else:
            engine = load(state, model, gguf_file, device, dtype, profile_dir).engine
            count = engine.profiles.export(path, format=format.value)
        state.out.print(
            f"Exported {count} profile(s) to {path} ({format.value} format).", highlight=False, soft_wrap=True
        )


def profiles_import(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="File to read.", show_default=False, dir_okay=False)],
    format: FormatOpt = ProfileFormat.swift,
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model",
            "-m",
            help="For --format reference: the model the file is for (default: 'embedded', the embedded model); "
            "swift-format files carry their own model fingerprints.",
            show_default=False,
        ),
    ] = None,
    gguf_file: GgufOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    profile_dir: ProfileDirOpt = None,
) -> None:
    """Import profiles from a JSON file (reference format: loads the model for its fingerprint)."""
    with guard(ctx) as state:
        if not path.is_file():
            raise CliError(f"no profile file at {path}")
        store = open_store(profile_dir)
        if format is ProfileFormat.swift:
            if model is not None or gguf_file is not None:
                state.err.print(
                    Text("Note: --model is not needed for swift-format files (they carry fingerprints).", style="dim")
                )
            count = store.import_json(path)
        else:
            engine = load(state, model, gguf_file, device, dtype, profile_dir).engine
            count = engine.profiles.import_(path, format="reference")
        state.out.print(
            f"Imported {count} profile(s) from {path} into {store.directory}.", highlight=False, soft_wrap=True
        )


def profiles_reset(
    ctx: typer.Context,
    key: Annotated[
        Optional[str], typer.Argument(help="Step key to reset (default: every step).", show_default=False)
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    model: ModelOpt = None,
    gguf_file: GgufOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    profile_dir: ProfileDirOpt = None,
) -> None:
    """Forget profiles so their search starts over (one step or all; every model, or --model's)."""
    with guard(ctx) as state:
        key = check_step_key(key)
        store = open_store(profile_dir)
        engine = None
        if model is not None or gguf_file is not None:
            engine = load(state, model, gguf_file, device, dtype, profile_dir).engine
            records = engine.profiles.list()
        else:
            records = store.list()
        doomed = [r for r in records if key is None or r.step_key == key]
        if not doomed:
            what = f"step key {key!r}" if key is not None else "any step"
            state.out.print(
                Text(f"No profiles for {what} in {store.directory}; nothing to reset.", style="dim"), soft_wrap=True
            )
            return
        if not yes:
            what = f"the profile of step {key!r}" if key is not None else "every profile"
            models = len({r.model_fingerprint for r in doomed})
            typer.confirm(
                f"Remove {what} ({len(doomed)} record(s), {models} model(s)) from {store.directory}?",
                abort=True,
            )
        removed = engine.profiles.reset(key) if engine is not None else store.reset(None, key)
        state.out.print(f"Removed {removed} profile(s).", highlight=False)
