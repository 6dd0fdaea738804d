"""``swift-bench``: SWIFT against plain decoding, on one model, in one process (the command line).

The command line is the typer command :func:`bench`, run both by ``swift-bench`` (:data:`app`)
and by ``swift-accel bench``; :func:`main` runs it from Python and returns its exit status. This
module holds the flags and the order of the steps; the work is elsewhere in the package:

* :mod:`swift_integrations.bench.methods`: the methods compared and their roles;
* :mod:`swift_integrations.bench.prompt_sets`: the prompt sets;
* :mod:`swift_integrations.bench.measure`: one timed generation per method (:class:`Bench`, :class:`Run`);
* :mod:`swift_integrations.bench.runner`: loading the engine, the warm-up, cold and warm phases;
* :mod:`swift_integrations.bench.summary`: from the runs to the result's medians;
* :mod:`swift_integrations.bench.report`: the tables, the markdown, the files written;
* :mod:`swift_integrations.bench.constrained`, :mod:`~swift_integrations.bench.pipeline`,
  :mod:`~swift_integrations.bench.serve`: ``--constrained``, ``--pipeline`` and ``--serve``.

``torch`` is imported inside the functions that use it, here and in every module above:
``swift-accel`` registers the command at start-up, and ``swift-accel --help`` or
``swift-accel profiles list`` must not pay for torch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from swift_integrations.bench.llama_cpp_baseline import baseline_for_model
from swift_integrations.bench.prompt_sets import DEFAULT_CLASSES, BenchPrompt, load_prompts
from swift_integrations.bench.report import render_markdown, write_outputs
from swift_integrations.bench.runner import (
    DEFAULT_MAX_NEW_TOKENS,
    bench_config,
    bench_meta,
    load_engine,
    run_benchmark,
    run_constrained,
)
from swift_integrations.cli.flags import FlagCommand, FlagGroup

#: The command's own names, and (``load_prompts``, ``run_benchmark``, ``render_markdown``) the ones
#: callers imported from this module before it was split (notebooks, scripts).
__all__ = ["BenchCommand", "Kernels", "app", "bench", "main", "load_prompts", "render_markdown", "run_benchmark"]

QUICK_MAX_NEW_TOKENS = 32
#: Exit status of ``main`` when our output differs from ``hf``'s.
EXIT_MISMATCH = 2

#: Where :class:`BenchCommand` leaves the raw arguments, in the click context's shared ``meta``.
_ARGV_KEY = "swift_integrations.bench.command.argv"


class BenchCommand(FlagCommand):
    """The benchmark's click command; it keeps the raw arguments it parses (``meta.argv`` of the result).

    Click hands the command only the parsed values, but the JSON records the command line as
    typed, so that a result can be rerun as it was made, whether it came from ``swift-bench``,
    ``swift-accel bench`` or :func:`main`.
    """

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]  # click's Context
        ctx.meta[_ARGV_KEY] = list(args)
        rest = super().parse_args(ctx, args)
        # words after the options only continue a space-separated --classes list; checked here, while
        # parsing, so that a stray word is a usage error (status 2) wherever the command runs
        extra = ctx.params.get("more_classes")
        if extra and not ctx.params.get("classes"):
            ctx.fail(f"Got unexpected extra argument{'s' if len(extra) > 1 else ''} ({' '.join(extra)})")
        return rest

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:  # type: ignore[override]  # click's Context
        # click lists hidden arguments in the usage line too; the rest of --classes is no usage of its own
        return [self.options_metavar or "[OPTIONS]"] + [
            piece for p in self.get_params(ctx) if not getattr(p, "hidden", False) for piece in p.get_usage_pieces(ctx)
        ]


class Kernels(str, Enum):
    """``--kernels``: the values of :attr:`~swift_engine.config.SwiftConfig.cpu_kernels`."""

    auto = "auto"
    packed = "packed"
    onednn = "onednn"
    torch = "torch"


def _chosen(value: str | None, known: Sequence[str], what: str) -> list[str] | None:
    """The comma-separated names in ``value`` (default: all ``known``); ``None`` after logging unknown ones."""
    names = [n.strip() for n in (value or ",".join(known)).split(",") if n.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown:
        logging.getLogger("swift-bench").error("unknown %s %s (known: %s)", what, ", ".join(unknown), ", ".join(known))
        return None
    return names


def _pipeline_bench(
    model: str | None,
    pipelines: str | None,
    max_new_tokens: int | None,
    quick: bool,
    json_path: str | None,
    markdown: str | None,
    llama: Any = None,
    dtype: str = "auto",
) -> int:
    """``--pipeline``: the pipelines' benchmark (swift_integrations.bench.pipeline; needs the dev extras)."""
    import importlib
    import types

    try:  # the adapters' package (not the core's): imported by name, so the core's type check stays in the core
        pipeline_bench: Any = importlib.import_module("swift_integrations.bench.pipeline")
    except ImportError as exc:  # langchain-huggingface, langgraph, llama-index: the dev extras
        logging.getLogger("swift-bench").error("--pipeline needs the dev extras (pip install -e '.[dev]'): %s", exc)
        return 1
    names = _chosen(pipelines, pipeline_bench.PIPELINES, "pipeline")
    if names is None:
        return 1
    args = types.SimpleNamespace(
        model=model,
        pipelines=names,
        methods=list(pipeline_bench.METHODS),
        max_new_tokens=max_new_tokens or (32 if quick else 64),
        quick=quick,
        json=json_path,
        markdown=None if markdown in (None, "-") else markdown,
        llama=llama,
        dtype=dtype,
    )
    return pipeline_bench.main(args)


def _soak_bench(
    model: str | None, requests: int, max_new_tokens: int | None, quick: bool, json_path: str | None, md: str | None
) -> int:
    """``--soak``: the server's memory under churn (swift_integrations.bench.soak)."""
    import types

    from swift_integrations.bench import soak

    args = types.SimpleNamespace(
        model=model,
        requests=min(requests, 300) if quick else requests,
        max_new_tokens=max_new_tokens or 8,
        json=json_path,
        markdown=None if md in (None, "-") else md,
    )
    return soak.main(args)


def _serve_bench(
    model: str | None,
    deployments: str | None,
    replicas: int,
    max_new_tokens: int | None,
    quick: bool,
    json_path: str | None,
    markdown: str | None,
) -> int:
    """``--serve``: the HTTP load benchmark (swift_integrations.bench.serve; needs the ray extra)."""
    import importlib
    import types

    try:
        serve_bench: Any = importlib.import_module("swift_integrations.bench.serve")
    except ImportError as exc:
        logging.getLogger("swift-bench").error("--serve needs the ray extra (pip install -e '.[ray]'): %s", exc)
        return 1
    names = _chosen(deployments, serve_bench.DEPLOYMENTS, "deployment")
    if names is None:
        return 1
    args = types.SimpleNamespace(
        model=model,
        deployments=names,
        replicas=replicas,
        max_new_tokens=max_new_tokens or (24 if quick else 48),
        quick=quick,
        json=json_path,
        markdown=None if markdown in (None, "-") else markdown,
    )
    return serve_bench.main(args)


def bench(
    ctx: typer.Context,
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model",
            help="Model folder, .gguf file or hub id (downloaded when not cached, unless HF_HUB_OFFLINE=1; "
            "default: embedded SmolLM2-135M).",
            show_default=False,
        ),
    ] = None,
    classes: Annotated[
        Optional[list[str]],
        typer.Option(
            "--classes",
            help=f"Prompt classes to run, space- or comma-separated (default: all: {', '.join(DEFAULT_CLASSES)}).",
            show_default=False,
        ),
    ] = None,
    more_classes: Annotated[
        Optional[list[str]],
        # the rest of a space-separated --classes list (click options take one value each)
        typer.Argument(hidden=True, show_default=False),
    ] = None,
    max_new_tokens: Annotated[
        Optional[int],
        typer.Option(
            "--max-new-tokens",
            help=f"Tokens per generation (default {DEFAULT_MAX_NEW_TOKENS}; {QUICK_MAX_NEW_TOKENS} with --quick).",
            show_default=False,
        ),
    ] = None,
    prompts_file: Annotated[
        Optional[str],
        typer.Option("--prompts-file", help="JSON prompt set (default: the packaged one).", show_default=False),
    ] = None,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed rounds of the warm phase.")] = 1,
    warmup_calls: Annotated[
        Optional[int],
        typer.Option(
            "--warmup-calls",
            help="Extra SWIFT calls per class between the cold and warm phases (default 3; 1 with --quick).",
            show_default=False,
        ),
    ] = None,
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype",
            help="auto, float32, bfloat16, float16, int8 or int4 (weight-only linears, bfloat16 activations; CPU).",
        ),
    ] = "auto",
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    no_hf_lookup: Annotated[
        bool, typer.Option("--no-hf-lookup", help="Skip transformers' prompt-lookup baseline.")
    ] = False,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help=f"Smoke test: 1 prompt per class, {QUICK_MAX_NEW_TOKENS} tokens, 1 warm-up call; "
            "1 structured-output case per kind.",
        ),
    ] = False,
    json_path: Annotated[
        Optional[str],
        typer.Option("--json", metavar="PATH", help="Write every measurement and summary as JSON.", show_default=False),
    ] = None,
    markdown: Annotated[
        Optional[str],
        typer.Option(
            "--markdown",
            metavar="PATH",
            help="Write the per-class table as markdown ('-': print it).",
            show_default=False,
        ),
    ] = None,
    constrained: Annotated[
        bool,
        typer.Option(
            "--constrained",
            help="Also run the structured-output cases (JSON schemas, forced tool calls): parse rates with and "
            "without a grammar, SWIFT+grammar against transformers+grammar.",
        ),
    ] = False,
    constrained_only: Annotated[
        bool, typer.Option("--constrained-only", help="Run only the structured-output cases.")
    ] = False,
    constrained_max_new_tokens: Annotated[
        int, typer.Option("--constrained-max-new-tokens", help="Token budget of a structured reply.")
    ] = 96,
    kernels: Annotated[
        Kernels,
        typer.Option("--kernels", help="Dense kernels of the engine's passes on CPU (SwiftConfig.cpu_kernels)."),
    ] = Kernels.auto,
    no_context_drafts: Annotated[
        bool,
        typer.Option(
            "--no-context-drafts",
            help="Layer-skip drafts only (the paper's algorithm alone): measures layer skipping against its ceiling.",
        ),
    ] = False,
    baseline: Annotated[
        Optional[list[str]],
        typer.Option(
            "--baseline",
            help="Extra baseline: 'llama.cpp' (llama-cpp-python on the same GGUF file and prompt tokens, in its own "
            "environment: `python -m venv ~/.venvs/llama-cpp && ~/.venvs/llama-cpp/bin/pip install llama-cpp-python`).",
            show_default=False,
        ),
    ] = None,
    llama_cpp_python: Annotated[
        Optional[str],
        typer.Option(
            "--llama-cpp-python",
            help="Python of the llama-cpp-python environment (default: $SWIFT_LLAMA_CPP_PYTHON, else "
            "~/.cache/swift-llama-cpp/venv/bin/python).",
            show_default=False,
        ),
    ] = None,
    gguf: Annotated[
        Optional[str],
        typer.Option(
            "--gguf",
            help="GGUF file llama.cpp runs (default: the one --model names, or the embedded model's).",
            show_default=False,
        ),
    ] = None,
    pipeline: Annotated[
        bool,
        typer.Option(
            "--pipeline",
            help="Benchmark whole pipelines instead (a LangGraph agent with tools, an LCEL RAG chain, a LlamaIndex "
            "refine engine) against ChatHuggingFace, the plain loop and SWIFT without prefix cache and draft memory.",
        ),
    ] = False,
    pipelines: Annotated[
        Optional[str],
        typer.Option(
            "--pipelines", help="With --pipeline: which, comma-separated (agent,rag,refine).", show_default=False
        ),
    ] = None,
    serve: Annotated[
        bool,
        typer.Option(
            "--serve",
            help="Load-test the HTTP server instead: one process and Ray Serve replicas, at concurrency 1, 4 and 16 "
            "(requests/s, p50/p95 latency, time to first token, errors, outputs against the single process).",
        ),
    ] = False,
    deployments: Annotated[
        Optional[str],
        typer.Option(
            "--deployments", help="With --serve: which, comma-separated (single,unbatched,ray).", show_default=False
        ),
    ] = None,
    replicas: Annotated[int, typer.Option("--replicas", min=1, help="With --serve: Ray Serve replicas.")] = 2,
    soak: Annotated[
        bool,
        typer.Option(
            "--soak",
            help="Soak the HTTP server instead: requests each with its own system prompt and step key, a third "
            "dropped mid-stream; the server's memory every 100 requests, and whether it levels off.",
        ),
    ] = False,
    soak_requests: Annotated[
        int, typer.Option("--soak-requests", min=200, help="With --soak: how many requests (300 with --quick).")
    ] = 1000,
    passes: Annotated[
        bool,
        typer.Option(
            "--passes",
            help="Measure the passes instead: the one-token step and passes of 2-32 rows as multiples of it, the bytes "
            "a step reads and its share of the machine's read bandwidth, for each --dtype (comma-separated, e.g. "
            "int4,int8) with swift's kernels and PyTorch's (--kernels auto and torch) side by side.",
        ),
    ] = False,
    batch: Annotated[
        bool,
        typer.Option(
            "--batch",
            help="Measure calls in flight at once instead: held-out prompts one after another, then from 2-8 "
            "threads with the engine's batching on and off, and LangChain's batch against a loop of invoke.",
        ),
    ] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log the engine's progress.")] = False,
) -> None:
    """Benchmark SWIFT against transformers' generate, prompt lookup and plain decoding, cold and warm.

    Exit status 2 when greedy SWIFT or the plain loop does not reproduce transformers' tokens exactly.

    swift-accel bench and swift-bench are the same command.
    \f
    The help shows the paragraphs above as typed (rich markup keeps line breaks): keep each on one line.
    """
    _configure_logging(verbose)
    if batch:
        raise typer.Exit(_batch_bench(model, device, dtype, max_new_tokens, quick, json_path, markdown))
    if passes:
        raise typer.Exit(_passes_bench(model, device, dtype, json_path, markdown))
    if soak:
        raise typer.Exit(_soak_bench(model, soak_requests, max_new_tokens, quick, json_path, markdown))
    if serve:
        raise typer.Exit(_serve_bench(model, deployments, replicas, max_new_tokens, quick, json_path, markdown))
    if pipeline:
        raise typer.Exit(
            _pipeline_with_baseline(
                model, pipelines, max_new_tokens, quick, json_path, markdown, dtype, baseline, llama_cpp_python, gguf
            )
        )
    prompts = _prompt_set(prompts_file, classes, more_classes, quick)
    max_new = max_new_tokens or (QUICK_MAX_NEW_TOKENS if quick else DEFAULT_MAX_NEW_TOKENS)
    warmup = warmup_calls if warmup_calls is not None else (1 if quick else 3)
    _check_baselines(baseline)
    result: dict[str, Any]
    with contextlib.ExitStack() as stack:
        profile_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="swift-bench-profiles-"))
        engine = load_engine(model, device, dtype, profile_dir, bench_config(kernels.value, not no_context_drafts))
        llama = _open_llama_cpp(stack, llama_cpp_python, gguf, model) if baseline and not constrained_only else None
        if constrained_only:
            result = {"meta": bench_meta(engine, engine.costs, max_new, 0, 0, False, 0.0)}
        else:
            result = run_benchmark(
                engine,
                prompts,
                max_new_tokens=max_new,
                repeats=repeats,
                warmup_calls=warmup,
                hf_lookup=not no_hf_lookup,
                progress=False if no_progress else None,
                llama_cpp=llama,
            )
            if llama is not None:
                result["meta"]["llama_cpp"] = {"version": llama.version, "gguf": llama.gguf, "threads": llama.threads}
        if constrained or constrained_only:
            result["constrained"] = run_constrained(engine, constrained_max_new_tokens, not no_progress, quick)
    result["meta"]["argv"] = list(ctx.meta.get(_ARGV_KEY, sys.argv[1:]))
    write_outputs(result, markdown, json_path)
    status = _exit_status(result)
    if status:
        raise typer.Exit(status)


def _passes_bench(model: str | None, device: str, dtype: str, json_path: str | None, markdown: str | None) -> int:
    """``--passes``: step and k-row passes per dtype and kernel set (:mod:`swift_integrations.bench.passes`)."""
    from swift_integrations.bench.passes import passes_markdown, run_passes

    dtypes = [d.strip() for d in dtype.split(",") if d.strip()] or ["auto"]

    with tempfile.TemporaryDirectory(prefix="swift-bench-profiles-") as profile_dir:

        def load(model_id: str | None, one_dtype: str, kernels: Any) -> Any:
            return load_engine(model_id, device, one_dtype, profile_dir, bench_config(kernels, True))

        result = run_passes(model, dtypes, ["auto", "torch"], load)
    _emit(result, passes_markdown(result), markdown, json_path)
    return 0


def _batch_bench(
    model: str | None,
    device: str,
    dtype: str,
    max_new_tokens: int | None,
    quick: bool,
    json_path: str | None,
    markdown: str | None,
) -> int:
    """``--batch``: concurrent calls with and without batching (:mod:`swift_integrations.bench.batch`)."""
    from swift_integrations.bench.batch import batch_markdown, run_batch_bench

    with tempfile.TemporaryDirectory(prefix="swift-bench-profiles-") as profile_dir:
        engine = load_engine(model, device, dtype, profile_dir)
        result = run_batch_bench(engine, load_prompts(), max_new_tokens or (24 if quick else 64))
    _emit(result, batch_markdown(result), markdown, json_path)
    return 2 if any(row["outputs_differing"] for row in result["rows"]) else 0


def _emit(result: dict[str, Any], text: str, markdown: str | None, json_path: str | None) -> None:
    """A measurement's table (printed, or to ``--markdown``) and its JSON (``--json``), with the command line."""
    result["meta"]["argv"] = sys.argv[1:]
    if markdown and markdown != "-":
        Path(markdown).write_text(text)
    else:
        typer.echo(text)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")


def _configure_logging(verbose: bool) -> None:
    """Log warnings (``--verbose``: the engine's progress too), unless the caller configured logging."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
        )


def _pipeline_with_baseline(
    model: str | None,
    pipelines: str | None,
    max_new_tokens: int | None,
    quick: bool,
    json_path: str | None,
    markdown: str | None,
    dtype: str,
    baseline: list[str] | None,
    llama_cpp_python: str | None,
    gguf: str | None,
) -> int:
    """``--pipeline``, with llama.cpp beside it when ``--baseline llama.cpp`` asks for it; the exit status."""
    with contextlib.ExitStack() as stack:
        llama = None
        if baseline:
            if set(baseline) - {"llama.cpp"}:
                logging.getLogger("swift-bench").error("unknown --baseline (known: llama.cpp)")
                raise typer.Exit(1)
            llama = _open_llama_cpp(stack, llama_cpp_python, gguf, model)
        return _pipeline_bench(model, pipelines, max_new_tokens, quick, json_path, markdown, llama, dtype)


def _prompt_set(
    prompts_file: str | None, classes: list[str] | None, more_classes: list[str] | None, quick: bool
) -> list[BenchPrompt]:
    """The prompts ``--classes`` (and the words after it) and ``--quick`` ask for; status 1 if unreadable."""
    wanted = [c for item in [*(classes or []), *(more_classes or [])] for c in item.split(",") if c.strip()] or None
    try:
        return load_prompts(prompts_file, wanted, per_class=1 if quick else None)
    except (OSError, ValueError) as exc:
        logging.getLogger("swift-bench").error("%s", exc)
        raise typer.Exit(1) from None


def _check_baselines(baseline: list[str] | None) -> None:
    """Status 1 for an unknown ``--baseline``, before any model is loaded."""
    unknown = sorted(set(baseline or ()) - {"llama.cpp"})
    if unknown:
        logging.getLogger("swift-bench").error("unknown --baseline %s (known: llama.cpp)", ", ".join(unknown))
        raise typer.Exit(1)


def _open_llama_cpp(stack: contextlib.ExitStack, python: str | None, gguf: str | None, model: str | None) -> Any:
    """The llama.cpp worker, closed with ``stack``; status 1 with one error line when it cannot start."""
    try:
        return stack.enter_context(baseline_for_model(python, gguf, model))
    except (OSError, RuntimeError) as exc:
        logging.getLogger("swift-bench").error("%s", exc)
        raise typer.Exit(1) from None


def _exit_status(result: dict[str, Any]) -> int:
    """0, or :data:`EXIT_MISMATCH` when an own method or a structured case did not reproduce its reference."""
    exact = result.get("exactness", {}).get("all_own_exact", True)
    if "constrained" in result:
        exact = exact and result["constrained"]["summary"]["all"]["exact"]
    return 0 if exact else EXIT_MISMATCH


#: ``swift-bench``: an app whose single command is :func:`bench` (``swift-accel bench`` registers the same one).
app = typer.Typer(
    cls=FlagGroup,
    name="swift-bench",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command(cls=BenchCommand)(bench)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``swift-bench`` with ``argv`` (default ``sys.argv[1:]``) and return its exit status.

    0 when every own method reproduced ``hf``'s greedy tokens, :data:`EXIT_MISMATCH` when one did
    not, 1 when the prompt set cannot be read, 2 for a usage error (click's status, as argparse's
    was). Other errors, a model that cannot be loaded say, propagate as exceptions.
    """
    try:
        app(args=list(argv) if argv is not None else None, prog_name="swift-bench")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
