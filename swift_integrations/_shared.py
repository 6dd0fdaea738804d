"""Plumbing shared by the framework adapters (LangChain, LlamaIndex); framework-free.

* :func:`get_engine`: the process-level engine cache.
* Step keys: :func:`system_prompt_step_key` (the last-resort key of a call) and
  :func:`step_key_from_run_info` (a LangChain-style run's metadata, name and tags).
* :func:`stats_metadata` / :func:`usage_from_stats` / :func:`merge_stats`: engine statistics in the
  shape the adapters report.
* :func:`render_chat_prompt`: role/content message dicts (plus tool calls and tool results) to
  prompt token ids, through the model's chat template or a documented plain format.
* :func:`aiter_in_thread`: run a blocking generation off the event loop, cancellably.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import itertools
import os
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .tool_calls import format_tool_call, format_tool_result, render_tools_system_prompt

if TYPE_CHECKING:  # pragma: no cover
    from swift_engine import GenerationStats, SwiftConfig, SwiftEngine

T = TypeVar("T")

# ------------------------------------------------------------------------------------ argument checks


def check_engine(engine: Any) -> Any:
    """``engine`` if it is an engine (or ``None``); the adapters' ``engine=`` validator."""
    if engine is not None and not (hasattr(engine, "stream") and hasattr(engine, "tokenizer")):
        raise ValueError(f"engine must be a swift_engine.SwiftEngine, got {type(engine).__name__}")
    return engine


def check_stop_strings(stops: Sequence[str] | None) -> list[str]:
    """``stops`` as a list, after checking that every one is a non-empty string."""
    out = list(stops or [])
    if any(not isinstance(s, str) or not s for s in out):
        raise ValueError("stop strings must be non-empty strings")
    return out


# ------------------------------------------------------------------------------------ engine cache
#
# This is the one deliberate process-wide cache of the project. Wrappers (a LangChain chat model,
# an LLM, a LlamaIndex LLM; one per chain step, often dozens per process) are cheap configuration
# objects; the weights behind them must be loaded once and shared, and so must the engine's
# learned per-step skip profiles. Engines serialize their own generations, so sharing is safe.

_ENGINES: dict[tuple[Any, ...], SwiftEngine] = {}
_KEY_LOCKS: dict[tuple[Any, ...], threading.Lock] = {}
_CACHE_LOCK = threading.Lock()


def _engine_key(model_id: Any, gguf_file: str | None, device: Any, dtype: Any, config: SwiftConfig | None) -> tuple[Any, ...]:
    from swift_engine.loading import embedded_model_path, resolve_device, resolve_dtype

    if model_id is None and gguf_file is None:
        source = str(embedded_model_path().resolve())  # same key as naming the embedded file
    else:
        text = os.fspath(model_id) if model_id is not None else ""
        path = os.path.expanduser(text)
        source = os.path.realpath(path) if text and os.path.exists(path) else text
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    cfg = config.model_dump_json() if config is not None else None
    return (source, gguf_file, str(torch_device), str(torch_dtype), cfg)


def get_engine(
    model_id: str | os.PathLike[str] | None = None,
    gguf_file: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    config: SwiftConfig | None = None,
) -> SwiftEngine:
    """The shared :class:`~swift_engine.SwiftEngine` for these arguments, loaded on first use.

    Same arguments (after normalisation: ``None`` and the embedded model's file are one model,
    ``"auto"`` resolves to the device and dtype it means) return the same engine object, so every
    wrapper of one model in a process shares its weights and skip profiles. Loading is locked per
    key: concurrent first calls load once, and different models load in parallel.
    """
    key = _engine_key(model_id, gguf_file, device, dtype, config)
    with _CACHE_LOCK:
        engine = _ENGINES.get(key)
        if engine is not None:
            return engine
        key_lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with key_lock:
        with _CACHE_LOCK:
            engine = _ENGINES.get(key)
        if engine is None:
            from swift_engine import SwiftEngine

            engine = SwiftEngine.from_pretrained(
                None if model_id is None else os.fspath(model_id),
                gguf_file=gguf_file,
                device=device,
                dtype=dtype,
                config=config,
            )
            with _CACHE_LOCK:
                _ENGINES[key] = engine
    return engine


def clear_engine_cache() -> int:
    """Forget every cached engine (their memory is freed once no wrapper holds them); returns how many."""
    with _CACHE_LOCK:
        n = len(_ENGINES)
        _ENGINES.clear()
        _KEY_LOCKS.clear()
    return n


# ------------------------------------------------------------------------------------ step keys

#: Tags that frameworks add by themselves; they say where a run sits, not what it is.
_AUTO_TAG_RE = re.compile(r"^(seq:step:\d+|graph:step:\d+|map:key:.*|branch:.*|condition:.*|langsmith:.*|langgraph:.*|nostream)$")


def system_prompt_step_key(system_text: str | None) -> str | None:
    """``"system:<12 hex>"``, a fingerprint of the system prompt (whitespace-normalised); ``None`` if empty.

    The last resort of step-key resolution: calls that share a system prompt are usually the same
    pipeline step, and calls with different ones usually are not.
    """
    if not system_text or not system_text.strip():
        return None
    norm = " ".join(system_text.split())
    return "system:" + hashlib.sha256(norm.encode("utf-8")).hexdigest()[:12]


def user_tags(tags: Sequence[str] | None) -> list[str]:
    """The tags a user set (framework-generated position tags removed), sorted and unique."""
    return sorted({t for t in (tags or ()) if isinstance(t, str) and t.strip() and not _AUTO_TAG_RE.match(t)})


def step_key_from_run_info(
    metadata: dict[str, Any] | None,
    run_name: str | None = None,
    tags: Sequence[str] | None = None,
    *,
    fallback: str | None = None,
) -> str | None:
    """Step key from a run's context, in order of precedence:

    1. ``metadata["swift_step"]`` (explicit, used verbatim);
    2. the engine's ``swift_step(...)`` context block (explicit, verbatim);
    3. ``fallback`` (the wrapper's own ``step_key`` field, verbatim);
    4. ``metadata["langgraph_node"]`` → ``"langgraph:<node>"``;
    5. the run name → ``"run:<name>"``;
    6. the user's tags → ``"tags:<a>+<b>"``.

    ``None`` when none applies (the caller then fingerprints the system prompt).
    """
    from swift_engine.step_context import current_step

    md = metadata or {}
    explicit = md.get("swift_step")
    if isinstance(explicit, str) and explicit.strip():
        return explicit
    ctx = current_step()
    if ctx:
        return ctx
    if fallback:
        return fallback
    node = md.get("langgraph_node")
    if isinstance(node, str) and node.strip() and not node.startswith("__"):
        return _capped(f"langgraph:{node}")
    if run_name and run_name.strip():
        return _capped(f"run:{run_name}")
    tl = user_tags(tags)
    if tl:
        return _capped("tags:" + "+".join(tl))
    return None


def _capped(key: str) -> str:
    """Derived keys stay within the engine's 200-character limit (long ones keep a hash of the rest)."""
    if len(key) <= 200:
        return key
    return key[:187] + "#" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


# ------------------------------------------------------------------------------------ statistics


def merge_stats(stats: Sequence[GenerationStats]) -> GenerationStats | None:
    """One :class:`GenerationStats` for a reply made of several generations (a steered tool call)."""
    if not stats:
        return None
    if len(stats) == 1:
        return stats[0]
    last = stats[-1]
    merged = last.model_copy(deep=True)
    for name in ("prompt_tokens", "new_tokens", "verify_steps", "draft_steps", "drafted_tokens", "accepted_drafted_tokens", "search_iterations"):
        setattr(merged, name, sum(getattr(s, name) for s in stats))
    for name in ("prefill_time_s", "wall_time_s"):
        setattr(merged, name, sum(getattr(s, name) for s in stats))
    merged.search_ran = any(s.search_ran for s in stats)
    return merged.finalize()


def usage_from_stats(stats: GenerationStats | None) -> dict[str, int]:
    """``{"input_tokens", "output_tokens", "total_tokens"}`` of a generation."""
    if stats is None:
        return {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    return {
        "input_tokens": int(stats.prompt_tokens),
        "output_tokens": int(stats.new_tokens),
        "total_tokens": int(stats.prompt_tokens + stats.new_tokens),
    }


def stats_metadata(stats: GenerationStats | None, *, model_name: str, finish_reason: str, step_key: str | None) -> dict[str, Any]:
    """Response metadata of one reply: what every adapter reports.

    Top level: ``model_name``, ``finish_reason``, ``step_key``, ``acceptance_rate``,
    ``mean_accepted_per_step``, ``search_ran``, ``swift_profile`` (``mode``, skipped
    ``attention``/``mlp`` layers, ``score``); ``swift_stats``: every counter of the generation.
    """
    md: dict[str, Any] = {"model_name": model_name, "finish_reason": finish_reason}
    if stats is None:
        md["step_key"] = step_key
        return md
    md.update(
        step_key=stats.step_key,
        acceptance_rate=stats.acceptance_rate,
        mean_accepted_per_step=stats.mean_accepted_per_step,
        search_ran=stats.search_ran,
        swift_profile={
            "mode": stats.mode,
            "skip_attention": list(stats.skip_attention),
            "skip_mlp": list(stats.skip_mlp),
            "score": stats.profile_score,
        },
        swift_stats=stats.model_dump(mode="json"),
    )
    return md


# ------------------------------------------------------------------------------------ prompts

_TOOLS_RE = re.compile(r"\btools\b")
_TOOL_CALLS_RE = re.compile(r"\btool_calls\b")
_TOOL_ROLE_RE = re.compile(r"""['"]tool['"]""")

#: Role labels of the plain format (models without a chat template).
PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
#: Stop strings that end an assistant turn in the plain format.
PLAIN_STOPS = ["\nUser:", "\nSystem:", "\nTool:"]


@dataclass(frozen=True)
class TemplateSupport:
    """What a chat template renders natively (judged from its source)."""

    tools: bool = False
    tool_calls: bool = False
    tool_role: bool = False

    @classmethod
    def of(cls, template: str | None) -> "TemplateSupport":
        if not template or not isinstance(template, str):
            return cls()
        return cls(
            tools=bool(_TOOLS_RE.search(template)),
            tool_calls=bool(_TOOL_CALLS_RE.search(template)),
            tool_role=bool(_TOOL_ROLE_RE.search(template)),
        )


@dataclass
class RenderedPrompt:
    """A prompt ready for the engine: ``ids``; ``text`` for debugging; ``stop``: extra stop strings."""

    text: str
    ids: list[int]
    stop: list[str] = field(default_factory=list)
    native_tools: bool = False


def _tool_call_text(calls: Sequence[dict[str, Any]]) -> str:
    return "\n".join(format_tool_call(c["name"], c.get("arguments") or {}) for c in calls)


def _hf_messages(messages: Sequence[dict[str, Any]], support: TemplateSupport) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            if support.tool_calls:
                out.append(
                    {
                        "role": "assistant",
                        "content": content,
                        "tool_calls": [
                            {"type": "function", "id": c.get("id"), "function": {"name": c["name"], "arguments": c.get("arguments") or {}}}
                            for c in m["tool_calls"]
                        ],
                    }
                )
            else:
                text = _tool_call_text(m["tool_calls"])
                out.append({"role": "assistant", "content": f"{content}\n{text}" if content else text})
        elif role == "tool":
            if support.tool_role:
                msg = {"role": "tool", "content": content}
                for k in ("tool_call_id", "name"):
                    if m.get(k):
                        msg[k] = m[k]
                out.append(msg)
            else:
                out.append(
                    {
                        "role": "user",
                        "content": format_tool_result(content, name=m.get("name"), tool_call_id=m.get("tool_call_id"), is_error=bool(m.get("is_error"))),
                    }
                )
        else:
            msg = {"role": role, "content": content}
            if m.get("name"):
                msg["name"] = m["name"]
            out.append(msg)
    return out


def with_system_text(messages: list[dict[str, Any]], extra: str) -> list[dict[str, Any]]:
    """Append ``extra`` to the first system message, or add a system message holding it."""
    out = [dict(m) for m in messages]
    for m in out:
        if m["role"] == "system":
            m["content"] = f"{m['content']}\n\n{extra}" if m["content"] else extra
            return out
    return [{"role": "system", "content": extra}, *out]


def _normalized(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A conservative form strict templates accept: one system message first, no tool role, roles alternating."""
    systems = [m["content"] for m in messages if m["role"] == "system" and m["content"]]
    out: list[dict[str, Any]] = [{"role": "system", "content": "\n\n".join(systems)}] if systems else []
    for m in messages:
        if m["role"] == "system":
            continue
        role = "assistant" if m["role"] == "assistant" else "user"
        content = m.get("content") or ""
        if m["role"] == "tool":
            content = format_tool_result(content, name=m.get("name"))
        if m["role"] == "assistant" and m.get("tool_calls"):
            text = "\n".join(format_tool_call(c["function"]["name"], c["function"]["arguments"]) for c in m["tool_calls"])
            content = f"{content}\n{text}" if content else text
        if out and out[-1]["role"] == role:
            out[-1]["content"] = f"{out[-1]['content']}\n\n{content}"
        else:
            out.append({"role": role, "content": content})
    return out


def render_plain(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None, prefill: str = "") -> str:
    """The documented plain format for models without a chat template.

    Blocks separated by a blank line, each ``"<Role>: <text>"`` with roles ``System``, ``User``,
    ``Assistant`` and ``Tool``; the tools prompt (:func:`render_tools_system_prompt`) joins the
    system block; past tool calls are written in the ``<tool_call>`` format inside the assistant
    block and tool results as ``<tool_response>`` blocks. The prompt ends with ``"Assistant:"``
    (plus a space and the prefill, if any). Generation stops at :data:`PLAIN_STOPS`.
    """
    msgs = [dict(m) for m in messages]
    if tools:
        msgs = with_system_text(msgs, render_tools_system_prompt(tools))
    blocks = []
    for m in msgs:
        content = m.get("content") or ""
        if m["role"] == "assistant" and m.get("tool_calls"):
            text = _tool_call_text(m["tool_calls"])
            content = f"{content}\n{text}" if content else text
        if m["role"] == "tool":
            content = format_tool_result(content, name=m.get("name"), is_error=bool(m.get("is_error")))
        label = PLAIN_ROLES.get(m["role"], m["role"].capitalize())
        blocks.append(f"{label}: {content}")
    blocks.append("Assistant:" + (f" {prefill}" if prefill else ""))
    return "\n\n".join(blocks)


def render_chat_prompt(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    *,
    tools: Sequence[dict[str, Any]] | None = None,
    prefill: str = "",
    chat_template: str | None = None,
) -> RenderedPrompt:
    """Token ids for a conversation, through the model's chat template.

    ``messages``: dicts with ``role`` (``system``/``user``/``assistant``/``tool``) and ``content``
    (text); assistant messages may carry ``tool_calls`` (``[{"id", "name", "arguments": dict}]``),
    tool messages ``tool_call_id``, ``name`` and ``is_error``; any message may carry ``name``.
    ``tools``: OpenAI-format tool dicts. ``prefill``: text the assistant turn starts with.

    Templates that reference ``tools`` / ``tool_calls`` / a ``tool`` role get those natively; for
    the rest, tools are described in the system prompt, past calls are written as ``<tool_call>``
    blocks and results as ``<tool_response>`` blocks in a user turn (see :mod:`.tool_calls`). If a
    strict template rejects the conversation (double system messages, roles not alternating, ...),
    it is rendered again in a normalised form. Without any chat template: :func:`render_plain`.
    """
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        text = render_plain(messages, tools, prefill)
        return RenderedPrompt(text=text, ids=list(tokenizer(text)["input_ids"]), stop=list(PLAIN_STOPS))
    support = TemplateSupport.of(template)
    hf = _hf_messages(messages, support)
    native = bool(tools) and support.tools
    if tools and not native:
        hf = with_system_text(hf, render_tools_system_prompt(tools))
    extra: dict[str, Any] = {"tools": list(tools)} if native else {}
    if chat_template:
        extra["chat_template"] = chat_template
    try:
        text = tokenizer.apply_chat_template(hf, tokenize=False, add_generation_prompt=True, **extra)
    except Exception:  # noqa: BLE001 - jinja raises TemplateError or anything the template's raise_exception makes
        text = tokenizer.apply_chat_template(_normalized(hf), tokenize=False, add_generation_prompt=True, **extra)
    text += prefill
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return RenderedPrompt(text=text, ids=ids, native_tools=native)


# ------------------------------------------------------------------------------------ async

_thread_ids = itertools.count(1)
_ITEM, _ERROR, _DONE = object(), object(), object()


async def aiter_in_thread(factory: Callable[[], Iterator[T]], *, name: str = "swift-generate") -> AsyncIterator[T]:
    """Iterate a blocking iterator in a worker thread without blocking the event loop.

    ``factory`` is called in the worker (in a copy of the caller's context, so context variables
    such as the engine's step key follow). When the consumer stops early (``break``, ``aclose()``,
    task cancellation) the worker stops after the item it is on and closes the iterator *in the
    worker thread*, which ends the engine's generation and releases its lock.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[object, Any]] = asyncio.Queue()
    stop = threading.Event()
    ctx = contextvars.copy_context()

    def post(kind: object, payload: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, payload))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            stop.set()

    def work() -> None:
        try:
            it = factory()
            try:
                for item in it:
                    if stop.is_set():
                        break
                    post(_ITEM, item)
                    if stop.is_set():
                        break
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            post(_ERROR, exc)
        else:
            post(_DONE, None)

    thread = threading.Thread(target=ctx.run, args=(work,), name=f"{name}-{next(_thread_ids)}", daemon=True)
    thread.start()
    try:
        while True:
            kind, payload = await queue.get()
            if kind is _ITEM:
                yield payload
            elif kind is _ERROR:
                raise payload
            else:
                return
    finally:
        stop.set()
