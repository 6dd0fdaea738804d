"""``swift-accel chat``: a conversation with a model, SWIFT-accelerated, with statistics after each reply.

Interactive by default (a prompt loop with ``/exit``, ``/reset`` and ``/help``), or one message
with ``--prompt``: the reply goes to stdout, the statistics to stderr, so it pipes. Replies stream
as they are decoded; the oldest exchanges are dropped when the conversation outgrows the context
window, and a reply that fails (too long, interrupted) drops only that turn.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.text import Text

from swift_engine.chat.prompting import engine_chat_prompt
from swift_integrations.cli.guard import CliError, State, describe, guard, print_error
from swift_integrations.cli.loading import load
from swift_integrations.cli.options import (
    DeviceOpt,
    DtypeOpt,
    GgufOpt,
    ModelOpt,
    ProfileDirOpt,
    check_step_key,
)
from swift_integrations.cli.profile_display import format_speedup

if TYPE_CHECKING:  # pragma: no cover
    from swift_engine.engine import SwiftEngine
    from swift_engine.results import GenerationResult, GenerationStats

#: The chat's own commands, shown when it starts, on /help and after an unknown command.
_CHAT_HELP = "/exit or Ctrl-D quits, /reset clears the history, /help lists the commands"


@dataclass
class _ChatOptions:
    """How every reply of one chat is generated (from the command's options)."""

    max_tokens: int
    temperature: float
    top_p: float
    step_key: str | None
    seed: int | None
    speculative: bool


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
    with guard(ctx) as state:
        step_key = check_step_key(step_key)
        if prompt == "-":
            prompt = sys.stdin.read()
        if prompt is not None and not prompt.strip():
            raise CliError("--prompt is empty")
        opts = _ChatOptions(max_tokens, temperature, top_p, step_key, seed, speculative=not no_swift)
        loaded = load(state, model, gguf_file, device, dtype, profile_dir, announce=prompt is None)
        engine = loaded.engine
        history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        if prompt is not None:
            messages = [*history, {"role": "user", "content": prompt}]
            result = _reply(state, engine, messages, opts)
            state.err.print(_status_line(result.stats), highlight=False, soft_wrap=True)
            return
        _interactive(state, engine, history, opts)


def _interactive(state: State, engine: "SwiftEngine", base: list[dict[str, str]], opts: _ChatOptions) -> None:
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
            print_error(state, describe(exc))
            history.pop()
            continue
        history.append({"role": "assistant", "content": result.text})
        out.print(_status_line(result.stats), highlight=False, soft_wrap=True)


def _fit(engine: "SwiftEngine", messages: list[dict[str, str]], state: State) -> list[dict[str, str]]:
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
    state: State,
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
        part("expected", format_speedup(stats.expected_speedup))
    return line
