"""The options several ``swift-accel`` commands share (model, GGUF file, device, dtype, profile store).

Declared once as ``Annotated`` types so every command spells, documents and defaults them the
same way; each command still states its own default (``device: DeviceOpt = "auto"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from swift_engine.store.records import validate_step_key
from swift_integrations.cli.guard import CliError

ModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model",
        "-m",
        help="Model folder, .gguf file or Hugging Face hub id (downloaded when not cached; HF_HUB_OFFLINE=1: "
        "the local cache only); 'embedded' (the default for commands that need a model): the embedded "
        "SmolLM2-135M-Instruct.",
        show_default=False,
    ),
]
GgufOpt = Annotated[
    Optional[str],
    typer.Option("--gguf-file", help="GGUF file inside the --model folder or hub repo.", show_default=False),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
DtypeOpt = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="auto (on CPU the file's precision: int4 for a 4-bit GGUF), float32, bfloat16, float16, int8 or int4.",
    ),
]
ProfileDirOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--profile-dir",
        help="Profile store directory (default: $SWIFT_PROFILE_DIR, else the user cache).",
        show_default=False,
    ),
]


def check_step_key(key: str | None) -> str | None:
    """``key`` validated as a step key (``None`` passes); a bad one is a :class:`CliError`."""
    if key is None:
        return None
    try:
        return validate_step_key(key)
    except ValueError as exc:
        raise CliError(f"bad step key: {exc}") from None
