"""``swift-accel``: the command line of the SWIFT engine (chat, bench, profiles, info).

Everything the user sees goes through ``rich`` consoles created per invocation (stdout for
results, stderr for progress, status and errors); the library modules never print. Errors are
reported as one red line with exit status 1; ``swift-accel --debug ...`` shows the traceback instead.

Heavy imports (torch, transformers) happen only in the commands that load a model, so
``swift-accel profiles list`` and ``swift-accel --help`` stay fast.

The command is named after the distribution, ``swift-accel``: a bare ``swift`` would collide with
ModelScope's ms-swift and with Apple's Swift toolchain.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from swift_engine.chat.prompting import engine_chat_prompt
from swift_engine.store.profile_store import ProfileStore
from swift_engine.store.records import ProfileRecord, escape_nonprintable, validate_step_key
from swift_integrations.bench.command import BenchCommand
from swift_integrations.bench.command import bench as _bench_command

if TYPE_CHECKING:  # pragma: no cover
    from swift_engine.engine import SwiftEngine
    from swift_engine.results import GenerationResult, GenerationStats

__all__ = ["app", "main"]

_DIST_NAME = "swift-accel"
_EMBEDDED_LABEL = "the embedded SmolLM2-135M-Instruct"
_EMBEDDED_ALIAS = "embedded"
#: Marks the logging handler this CLI installs, so a second invocation in one process replaces it.
_HANDLER_MARK = "_swift_cli_handler"
#: Stop strings of the plain "Role: text" transcript used for models without a chat template.
_CHAT_HELP = "/exit or Ctrl-D quits, /reset clears the history, /help lists the commands"


class CliError(Exception):
    """A user-facing error: reported as one red line, exit status 1."""


class ProfileFormat(str, Enum):
    swift = "swift"
    reference = "reference"


@dataclass
class _State:
    """Per-invocation state, carried in ``ctx.obj``."""

    debug: bool = False
    verbose: bool = False
    out: Console = field(default_factory=Console)
    err: Console = field(default_factory=lambda: Console(stderr=True))


@dataclass
class _Loaded:
    engine: "SwiftEngine"
    source: str
    seconds: float


# ------------------------------------------------------------------------------------------------
# The app and its global options
# ------------------------------------------------------------------------------------------------

app = typer.Typer(
    name=_DIST_NAME,
    help="SWIFT self-speculative decoding for local LLMs: chat, benchmark, manage skip profiles.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
profiles_app = typer.Typer(
    name="profiles",
    help="Inspect and manage the learned per-step skip profiles.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(profiles_app, name="profiles")


def _version_callback(value: bool) -> None:
    if value:
        Console().print(f"{_DIST_NAME} {_version(_DIST_NAME)}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks and debug logs.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log the engine's progress.")] = False,
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version and exit."),
    ] = None,
) -> None:
    """SWIFT self-speculative decoding for local LLMs."""
    state = _State(debug=debug, verbose=verbose)
    ctx.obj = state
    _install_logging(ctx, state)


def _install_logging(ctx: typer.Context, state: _State) -> None:
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


def _state(ctx: typer.Context) -> _State:
    obj = ctx.obj
    if not isinstance(obj, _State):  # a command invoked without the root callback (embedding)
        obj = ctx.obj = _State()
    return obj


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
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
def _guard(ctx: typer.Context) -> Iterator[_State]:
    """Turn exceptions into one red line and exit status 1 (unless ``--debug``)."""
    state = _state(ctx)
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
        _error(state, _describe(exc))
        raise typer.Exit(1) from None


def _error(state: _State, message: str) -> None:
    # soft_wrap: never insert line breaks, so the error stays one line however long it is
    state.err.print(Text(f"Error: {message}", style="bold red"), soft_wrap=True, highlight=False)


# ------------------------------------------------------------------------------------------------
# Shared options and helpers
# ------------------------------------------------------------------------------------------------

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
        help="auto, float32, bfloat16, float16, int8 or int4 (weight-only, bfloat16 activations; CPU).",
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
FormatOpt = Annotated[
    ProfileFormat,
    typer.Option(
        "--format", "-f", help="swift: everything, search state included; reference: SWIFT's skip_layers.json."
    ),
]


def _store(profile_dir: Path | None) -> ProfileStore:
    return ProfileStore(profile_dir)


def _load_engine(
    model: str | None,
    gguf_file: str | None,
    device: str,
    dtype: str,
    profile_dir: Path | None,
    *,
    progress_bars: bool = False,
) -> _Loaded:
    """Load a model and wrap it in an engine on the given store.

    A hub id that is not cached is downloaded (unless ``HF_HUB_OFFLINE=1``); ``progress_bars``
    keeps transformers' and huggingface_hub's bars on, for such downloads.
    """
    from transformers.utils import logging as hf_logging

    from swift_engine.engine import SwiftEngine

    t0 = time.perf_counter()
    bars = hf_logging.is_progress_bar_enabled()
    if not progress_bars:
        hf_logging.disable_progress_bar()  # our spinner says the same, without fighting it for the line
    try:
        engine = SwiftEngine.from_pretrained(
            model, gguf_file=gguf_file, device=device, dtype=dtype, profile_store=_store(profile_dir)
        )
    finally:
        if bars and not progress_bars:
            hf_logging.enable_progress_bar()
    return _Loaded(engine, _source(engine), time.perf_counter() - t0)


def _source(engine: "SwiftEngine") -> str:
    """Where the weights were read from (as ``from_pretrained`` recorded it)."""
    return str(engine.source or getattr(engine.model.config, "_name_or_path", "") or engine.model_name)


def _load(
    state: _State,
    model: str | None,
    gguf_file: str | None,
    device: str,
    dtype: str,
    profile_dir: Path | None,
    *,
    announce: bool = False,
) -> _Loaded:
    from swift_engine.loading.loader import hub_download_expected

    model = _model_arg(model)
    label = model or _EMBEDDED_LABEL
    if hub_download_expected(model, gguf_file=gguf_file):
        # huggingface_hub's download bars instead of the spinner, which would hide them
        state.err.print(Text(f"Downloading {label} from the Hugging Face Hub…", style="dim"), highlight=False)
        loaded = _load_engine(model, gguf_file, device, dtype, profile_dir, progress_bars=True)
        _ = loaded.engine.fingerprint
    else:
        with state.err.status(f"Loading {label}…", spinner="dots"):
            loaded = _load_engine(model, gguf_file, device, dtype, profile_dir)
            _ = loaded.engine.fingerprint  # hashed here, under the spinner
    engine = loaded.engine
    if announce:
        runner = engine.runner
        state.err.print(
            Text(
                f"Loaded {engine.model_name} on {runner.device} ({runner.precision}) in {loaded.seconds:.1f} s",
                style="dim",
            ),
            highlight=False,
        )
    return loaded


def _model_arg(model: str | None) -> str | None:
    """``--model embedded`` names the embedded model (unless a file or folder has that name)."""
    if model is not None and model.strip().lower() == _EMBEDDED_ALIAS and not Path(model).exists():
        return None
    return model


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _check_step_key(key: str | None) -> str | None:
    if key is None:
        return None
    try:
        return validate_step_key(key)
    except ValueError as exc:
        raise CliError(f"bad step key: {exc}") from None


# ------------------------------------------------------------------------------------------------
# chat
# ------------------------------------------------------------------------------------------------


@dataclass
class _ChatOptions:
    max_tokens: int
    temperature: float
    top_p: float
    step_key: str | None
    seed: int | None
    speculative: bool


@app.command()
def chat(
    ctx: typer.Context,
    model: ModelOpt = None,
    gguf_file: GgufOpt = None,
    step_key: Annotated[
        Optional[str],
        typer.Option("--step-key", "-k", help="Step key of the skip profile to use and refine (default: 'default')."),
    ] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", min=1, help="Maximum new tokens per reply.")] = 512,
    temperature: Annotated[float, typer.Option("--temperature", "-t", min=0.0, help="0 decodes greedily.")] = 0.0,
    top_p: Annotated[
        float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling (with --temperature > 0).")
    ] = 1.0,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Sampling seed.", show_default=False)] = None,
    system: Annotated[Optional[str], typer.Option("--system", "-s", help="System prompt.", show_default=False)] = None,
    prompt: Annotated[
        Optional[str],
        typer.Option(
            "--prompt",
            "-p",
            help="Answer this one message and exit ('-' reads it from stdin). The reply goes to stdout, "
            "the statistics to stderr.",
            show_default=False,
        ),
    ] = None,
    no_swift: Annotated[
        bool, typer.Option("--no-swift", help="Decode plainly, without SWIFT (for comparison).")
    ] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    profile_dir: ProfileDirOpt = None,
) -> None:
    """Chat with a model, SWIFT-accelerated, with live speed-up statistics after each reply."""
    with _guard(ctx) as state:
        step_key = _check_step_key(step_key)
        if prompt == "-":
            prompt = sys.stdin.read()
        if prompt is not None and not prompt.strip():
            raise CliError("--prompt is empty")
        opts = _ChatOptions(max_tokens, temperature, top_p, step_key, seed, speculative=not no_swift)
        loaded = _load(state, model, gguf_file, device, dtype, profile_dir, announce=prompt is None)
        engine = loaded.engine
        history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        if prompt is not None:
            messages = [*history, {"role": "user", "content": prompt}]
            result = _reply(state, engine, messages, opts)
            state.err.print(_status_line(result.stats), highlight=False, soft_wrap=True)
            return
        _interactive(state, engine, history, opts)


def _interactive(state: _State, engine: "SwiftEngine", base: list[dict[str, str]], opts: _ChatOptions) -> None:
    out = state.out
    out.print(Text(f"Chatting with {engine.model_name}. {_CHAT_HELP}.", style="dim"), highlight=False)
    history = list(base)
    while True:
        try:
            line = out.input("[bold cyan]you[/] › ")
        except (EOFError, KeyboardInterrupt):
            out.print()
            return
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command = text.split()[0].lower()
            if command in ("/exit", "/quit"):
                return
            if command == "/reset":
                history = list(base)
                out.print(Text("History cleared.", style="dim"))
            elif command == "/help":
                out.print(Text(_CHAT_HELP + ".", style="dim"))
            else:
                out.print(Text(f"Unknown command {command}; {_CHAT_HELP}.", style="yellow"))
            continue
        history.append({"role": "user", "content": line})
        try:
            result = _reply(state, engine, history, opts, prefix=Text("assistant › ", style="bold magenta"))
        except KeyboardInterrupt:
            out.print(Text("(interrupted; this turn was dropped)", style="yellow"))
            history.pop()
            continue
        except ValueError as exc:  # e.g. the conversation no longer fits: report, keep chatting
            if state.debug:
                raise
            _error(state, _describe(exc))
            history.pop()
            continue
        history.append({"role": "assistant", "content": result.text})
        out.print(_status_line(result.stats), highlight=False, soft_wrap=True)


def _fit(engine: "SwiftEngine", messages: list[dict[str, str]], state: _State) -> list[dict[str, str]]:
    """Drop the oldest exchanges while the conversation is too long for the context window."""
    ctx = engine.runner.context_length
    if ctx is None:
        return messages
    kept = list(messages)
    dropped = 0
    while True:
        prompt, _ = engine_chat_prompt(engine, kept)
        try:
            engine.encode_prompt(prompt)
            break
        except ValueError:
            first = 1 if kept and kept[0]["role"] == "system" else 0
            if len(kept) - first <= 1:
                raise  # the last message alone is too long: let the caller report it
            del kept[first : first + 2]
            dropped += 1
    if dropped:
        state.err.print(Text(f"(dropped the {dropped} oldest exchange(s) to fit the context window)", style="dim"))
    return kept


def _reply(
    state: _State,
    engine: "SwiftEngine",
    messages: list[dict[str, str]],
    opts: _ChatOptions,
    prefix: Text | None = None,
) -> "GenerationResult":
    """Stream one reply to stdout (after ``prefix``); return its result (text and statistics).

    A spinner runs on stderr until the first text arrives (prefill, and the search's first
    iterations); the prefix is printed only then, since stopping the spinner clears its line.
    """
    messages = _fit(engine, messages, state)
    prompt, stop = engine_chat_prompt(engine, messages)
    stream = engine.stream(
        prompt,
        max_new_tokens=opts.max_tokens,
        temperature=opts.temperature,
        top_p=opts.top_p,
        stop=stop,
        step_key=opts.step_key,
        seed=opts.seed,
        speculative=None if opts.speculative else False,
    )
    result: GenerationResult | None = None
    status = state.err.status(Text("thinking…", style="dim"), spinner="dots")
    status.start()
    spinning, started = True, False

    def start_text() -> None:
        nonlocal spinning, started
        if spinning:
            status.stop()
            spinning = False
        if not started:
            started = True
            if prefix is not None:
                state.out.print(prefix, end="")

    try:
        for chunk in stream:
            if chunk.result is not None:
                result = chunk.result
            elif chunk.text:
                start_text()
                state.out.print(chunk.text, end="", markup=False, highlight=False, emoji=False, soft_wrap=True)
    except BaseException:
        if started:
            state.out.print()  # end the partial reply's line before anything else is shown
        raise
    finally:
        if spinning:
            status.stop()
        stream.close()  # on an interrupt: end the generation (releases the engine)
    start_text()  # an empty reply still gets its prefix
    state.out.print()
    assert result is not None
    return result


def _status_line(stats: "GenerationStats") -> Text:
    """Acceptance rate, tokens per step, tok/s and the profile state of one reply, in one line."""
    line = Text()

    def part(label: str, value: str, style: str = "bold") -> None:
        if line:
            line.append(" · ", style="dim")
        line.append(f"{label} ", style="dim")
        line.append(value, style=style)

    part("mode", stats.mode, "green" if stats.mode == "swift" else "yellow")
    part("accept", f"{stats.acceptance_rate:.0%}" if stats.drafted_tokens else "–")
    part("tok/step", f"{stats.mean_accepted_per_step:.2f}")
    part("tok/s", f"{stats.tokens_per_s:.1f}")
    part("tokens", str(stats.new_tokens))
    part("step", stats.step_key)
    if stats.search_ran:
        part("search", f"{stats.search_iterations} it")
    if stats.expected_speedup is not None:
        part("expected", _speedup(stats.expected_speedup))
    return line


def _speedup(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "cached"
    return f"{value:.2f}x"


# ------------------------------------------------------------------------------------------------
# bench
# ------------------------------------------------------------------------------------------------


def _guarded(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with its errors reported like every ``swift-accel`` command's (one red line, or ``--debug``).

    For commands defined outside this module (``swift-bench``'s), which also run standalone; the
    wrapper keeps their signature, so typer sees the same options. ``command`` must take the
    context as ``ctx`` (typer passes it by keyword).
    """

    @functools.wraps(command)
    def run(**kwargs: Any) -> None:
        with _guard(kwargs["ctx"]):
            command(**kwargs)

    return run


#: ``swift-accel bench``: the command of ``swift-bench`` (tools/bench.py), same options, same exit status.
bench = app.command("bench", cls=BenchCommand)(_guarded(_bench_command))


# ------------------------------------------------------------------------------------------------
# info
# ------------------------------------------------------------------------------------------------


@app.command()
def models(ctx: typer.Context) -> None:
    """List the models this package can install by short name, and whether each is installed."""
    with _guard(ctx) as state:
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


@app.command()
def pull(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Short name of the model (see `swift-accel models`).")],
    force: Annotated[bool, typer.Option("--force", help="Download again even if installed.")] = False,
) -> None:
    """Install a model by its short name (from the package index; verified by its SHA-256); print its path."""
    with _guard(ctx) as state:
        from swift_engine.loading.catalog import CATALOG
        from swift_engine.loading.catalog import pull as pull_model

        if name not in CATALOG:
            raise CliError(f"unknown model {name!r}; known: {', '.join(sorted(CATALOG))}")
        with state.err.status(f"Installing {CATALOG[name].title}…", spinner="dots"):
            path = pull_model(name, force=force)
        state.out.print(str(path), highlight=False, soft_wrap=True)


@app.command()
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
    with _guard(ctx) as state:
        loaded = _load(state, model, gguf_file, device, dtype, profile_dir)
        engine = loaded.engine
        runner = engine.runner
        store = engine.profiles.store
        import torch
        import transformers

        from swift_engine.kernels.kernel_choice import cpu_name

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
            "kernels": runner.kernels,
            "kernels_measured": choice.summary() if choice is not None else None,
            "profile_store": str(store.directory),
            "profiles": len(engine.profiles.list()),
            "load_seconds": round(loaded.seconds, 2),
            "swift": _version(_DIST_NAME),
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
            "kernels": "Dense kernels",
            "kernels_measured": "Kernel timings",
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


# ------------------------------------------------------------------------------------------------
# profiles
# ------------------------------------------------------------------------------------------------


def _records(
    state: _State,
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
    engine = _load(state, model, gguf_file, device, dtype, profile_dir).engine
    return engine.profiles.list(), engine.fingerprint


def _layers(indices: Sequence[int]) -> str:
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


def _state_of(record: ProfileRecord) -> Text:
    if record.plain:
        return Text("plain", style="yellow")
    if record.converged and record.score is None and record.expected_speedup is None:
        return Text("cached", style="cyan")
    if record.converged:
        return Text("converged", style="green")
    return Text("searching", style="magenta")


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _shown(text: str) -> Text:
    """Text read from a profile, for a terminal: invisible characters escaped, never rich markup.

    Step keys and model names come from files anyone with access to the store may have written:
    raw escape sequences or bidi overrides could rewrite what the user sees, and a plain string
    cell would be parsed as rich markup (``[red]``) - so both are neutralised here.
    """
    return Text(escape_nonprintable(text))


def _profiles_tables(records: list[ProfileRecord]) -> list[Table]:
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
            padding=(0, 1),
        )
        table.add_column("Step", style="bold", overflow="fold", min_width=7)
        table.add_column("Attention skipped", min_width=9, ratio=1)
        table.add_column("MLP skipped", min_width=9, ratio=1)
        table.add_column("Score", justify="right", no_wrap=True)
        table.add_column("Speed-up", justify="right", no_wrap=True)
        table.add_column("Iter.", justify="right", no_wrap=True)
        table.add_column("State", no_wrap=True)
        table.add_column("Calls", justify="right", no_wrap=True)
        for r in group:
            table.add_row(
                _shown(r.step_key),
                _layers(r.skip.attention),
                _layers(r.skip.mlp),
                _score(r.score),
                _speedup(r.expected_speedup),
                str(r.iterations),
                _state_of(r),
                str(r.calls),
            )
        tables.append(table)
    return tables


@profiles_app.command("list")
def profiles_list(
    ctx: typer.Context,
    model: ModelOpt = None,
    gguf_file: GgufOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    profile_dir: ProfileDirOpt = None,
) -> None:
    """List the stored profiles (all models; with --model, only that model's)."""
    with _guard(ctx) as state:
        store = _store(profile_dir)
        records, fingerprint = _records(state, store, model, gguf_file, device, dtype, profile_dir)
        if not records:
            which = f" for fingerprint {fingerprint}" if fingerprint else ""
            state.out.print(Text(f"No profiles{which} in {store.directory}.", style="dim"), soft_wrap=True)
            return
        for table in _profiles_tables(records):
            state.out.print(table)
        models = len({r.model_fingerprint for r in records})
        state.out.print(
            Text(f"{len(records)} profile(s) of {models} model(s) in {store.directory}", style="dim"), soft_wrap=True
        )


@profiles_app.command("show")
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
    with _guard(ctx) as state:
        key = _check_step_key(key) or key
        store = _store(profile_dir)
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
                ("Step key", _shown(r.step_key)),
                ("Model", _shown(r.model_name or "unknown")),
                ("Fingerprint", r.model_fingerprint),
                ("State", _state_of(r)),
                ("Skip attention", f"{len(r.skip.attention)}: {_layers(r.skip.attention)}"),
                ("Skip MLP", f"{len(r.skip.mlp)}: {_layers(r.skip.mlp)}"),
                ("Score", _score(r.score)),
                ("Expected speed-up", _speedup(r.expected_speedup)),
                ("Iterations", str(r.iterations)),
                ("Observations", str(len(r.observations))),
                ("Calls", str(r.calls)),
                ("Tokens seen", str(r.tokens_seen)),
                ("Created", _when(r.created_at)),
                ("Updated", _when(r.updated_at)),
                ("File", str(store.path_for(r.model_fingerprint, r.step_key))),
            ]
            for name, value in sorted(r.extra.items()):
                rows.append((f"extra.{escape_nonprintable(name)}", _compact(value)))
            for label, value in rows:
                table.add_row(Text(label), value if isinstance(value, Text) else Text(str(value)))
            state.out.print(table)
            if r is not found[-1]:
                state.out.print()


def _compact(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@profiles_app.command("export")
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
    with _guard(ctx) as state:
        store = _store(profile_dir)
        if model is None and gguf_file is None:
            fmt = format.value
            count = store.export_json(path) if fmt == "swift" else store.export_reference(path)
        else:
            engine = _load(state, model, gguf_file, device, dtype, profile_dir).engine
            count = engine.profiles.export(path, format=format.value)
        state.out.print(
            f"Exported {count} profile(s) to {path} ({format.value} format).", highlight=False, soft_wrap=True
        )


@profiles_app.command("import")
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
    with _guard(ctx) as state:
        if not path.is_file():
            raise CliError(f"no profile file at {path}")
        store = _store(profile_dir)
        if format is ProfileFormat.swift:
            if model is not None or gguf_file is not None:
                state.err.print(
                    Text("Note: --model is not needed for swift-format files (they carry fingerprints).", style="dim")
                )
            count = store.import_json(path)
        else:
            engine = _load(state, model, gguf_file, device, dtype, profile_dir).engine
            count = engine.profiles.import_(path, format="reference")
        state.out.print(
            f"Imported {count} profile(s) from {path} into {store.directory}.", highlight=False, soft_wrap=True
        )


@profiles_app.command("reset")
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
    with _guard(ctx) as state:
        key = _check_step_key(key)
        store = _store(profile_dir)
        engine = None
        if model is not None or gguf_file is not None:
            engine = _load(state, model, gguf_file, device, dtype, profile_dir).engine
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


@app.command()
def serve(
    ctx: typer.Context,
    model: ModelOpt = None,
    gguf_file: GgufOpt = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (not loopback: needs --api-key).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 8000,
    api_key: Annotated[
        Optional[str], typer.Option("--api-key", help="Bearer token clients must send (default: $SWIFT_API_KEY).")
    ] = None,
    max_queue: Annotated[int, typer.Option("--max-queue", min=1, help="Requests admitted at once (429 past it).")] = 16,
    request_timeout: Annotated[
        float, typer.Option("--request-timeout", min=0.001, help="Seconds one generation may take.")
    ] = 300.0,
    profile_dir: ProfileDirOpt = None,
    tool_followup: Annotated[
        str,
        typer.Option(
            "--tool-followup",
            help="After tool results: ask for the answer ('answer'), let the model decide ('model'), or as "
            "measured for catalog models ('auto').",
        ),
    ] = "auto",
    ray: Annotated[bool, typer.Option("--ray", help="Serve engine replicas on Ray Serve (the ray extra).")] = False,
    replicas: Annotated[
        int, typer.Option("--replicas", min=1, help="With --ray: replicas (autoscaling: the minimum).")
    ] = 2,
    max_replicas: Annotated[
        Optional[int], typer.Option("--max-replicas", min=1, help="With --ray: autoscale up to this many replicas.")
    ] = None,
    replica_cpus: Annotated[
        float, typer.Option("--replica-cpus", min=0.01, help="With --ray: Ray CPUs (and torch threads) per replica.")
    ] = 1.0,
    store: Annotated[
        str,
        typer.Option(
            "--store",
            help="With --ray: share profiles through --profile-dir ('directory': one machine or a shared "
            "filesystem) or a Ray actor on the head node ('actor': no shared disk).",
        ),
    ] = "directory",
    ray_address: Annotated[
        Optional[str], typer.Option("--ray-address", help="With --ray: an existing cluster (default: $RAY_ADDRESS).")
    ] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions)."""
    with _guard(ctx):
        from swift_integrations.serve import start

        start(
            _model_arg(model),
            ray=ray,
            replicas=replicas,
            max_replicas=max_replicas,
            replica_cpus=replica_cpus,
            store=store,
            ray_address=ray_address,
            gguf_file=gguf_file,
            device=device,
            dtype=dtype,
            host=host,
            port=port,
            api_key=api_key,
            max_queue=max_queue,
            request_timeout=request_timeout,
            profile_dir=None if profile_dir is None else str(profile_dir),
            tool_followup=tool_followup,
        )


# ------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI (``argv`` defaults to ``sys.argv[1:]``) and return its exit status."""
    try:
        app(args=list(argv) if argv is not None else None, prog_name=_DIST_NAME)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
