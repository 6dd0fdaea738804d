"""Step keys of LlamaIndex calls: which pipeline step an LLM call belongs to.

LlamaIndex passes an LLM no run name or tags, so the step is read off what surrounds the call:

* the prompt template of a ``predict``-style call (:func:`prompt_step`, :func:`prompt_step_key`),
  whose ``prompt_type`` names the step (``text_qa``, ``refine``, ``summary``, ...);
* the instrumentation span the call runs in (:func:`span_step_key`): :class:`_SpanTracker`, a span
  handler on LlamaIndex's root dispatcher, keeps the open spans so a call can walk up to the
  component (and the named agent) it runs in.

:func:`step_key_for_call` applies the whole precedence (see :mod:`swift_integrations.llamaindex.llm`).
"""

from __future__ import annotations

import contextvars
import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from llama_index.core.base.llms.base import BaseLLM
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.dispatcher import active_instrument_tags
from llama_index.core.instrumentation.span import BaseSpan, active_span_id
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler

from swift_integrations.step_keys import system_prompt_step_key

__all__ = ["ensure_span_tracker", "prompt_step", "prompt_step_key", "span_step_key", "step_key_for_call"]

#: Step key derived from the prompt template of an enclosing ``predict``-style call.
_PROMPT_STEP_KEY: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "swift_llamaindex_prompt_key", default=None
)


def prompt_step_key(prompt: Any, llm: Any = None) -> str | None:
    """``"prompt:<prompt_type>"`` of a LlamaIndex prompt template (custom ones: plus a template hash)."""
    meta = getattr(prompt, "metadata", None) or {}
    kind = meta.get("prompt_type") if isinstance(meta, dict) else None
    kind = getattr(kind, "value", kind)
    if not isinstance(kind, str) or not kind.strip():
        return None
    if kind != "custom":
        return f"prompt:{kind}"
    try:
        text = str(prompt.get_template(llm=llm))
    except Exception:  # noqa: BLE001 - any template we can't read is keyed by its type name
        text = type(prompt).__name__
    return "prompt:custom:" + hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()[:10]


@contextmanager
def prompt_step(prompt: Any, llm: Any = None) -> Iterator[None]:
    """Calls made inside get ``prompt``'s step key (LlamaIndex formats the template before calling the LLM)."""
    token = _PROMPT_STEP_KEY.set(prompt_step_key(prompt, llm))
    try:
        yield
    finally:
        _PROMPT_STEP_KEY.reset(token)


class _TrackedSpan(BaseSpan):
    """What step-key resolution needs of an open span."""

    name: str = ""
    is_llm: bool = False
    label: str | None = None


class _SpanTracker(BaseSpanHandler[_TrackedSpan]):
    """Keeps the open spans (name, parent, owner) so a call can see which component it runs in.

    Only open spans are held (closed and dropped ones are forgotten at once), so memory stays
    bounded by the nesting depth times the concurrency.
    """

    @classmethod
    def class_name(cls) -> str:
        return "SwiftSpanTracker"

    def new_span(
        self,
        id_: str,
        bound_args: Any,
        instance: Any = None,
        parent_span_id: str | None = None,
        tags: Any = None,
        **kwargs: Any,
    ) -> _TrackedSpan:
        if len(self.open_spans) > 100_000:  # spans that never closed (abandoned generators): start over
            with self.lock:
                self.open_spans.clear()
        try:
            label = getattr(instance, "name", None) if instance is not None else None
        except Exception:  # noqa: BLE001 - a property that fails only means no label
            label = None
        return _TrackedSpan(
            id_=id_,
            parent_id=parent_span_id,
            name=id_.rsplit("-", 5)[0],  # ids are "<Class>.<method>-<uuid4>"
            is_llm=isinstance(instance, BaseLLM),
            label=label if isinstance(label, str) and label.strip() else None,
        )

    def prepare_to_exit_span(
        self, id_: str, bound_args: Any, instance: Any = None, result: Any = None, **kwargs: Any
    ) -> _TrackedSpan | None:
        return self.open_spans.get(id_)

    def prepare_to_drop_span(
        self, id_: str, bound_args: Any, instance: Any = None, err: BaseException | None = None, **kwargs: Any
    ) -> _TrackedSpan | None:
        return self.open_spans.get(id_)


_TRACKER: _SpanTracker | None = None
_TRACKER_LOCK = threading.Lock()


def ensure_span_tracker() -> _SpanTracker:
    """The process's span tracker, added to LlamaIndex's root dispatcher on first use."""
    global _TRACKER
    if _TRACKER is None:
        with _TRACKER_LOCK:
            if _TRACKER is None:
                tracker = _SpanTracker()
                get_dispatcher().add_span_handler(tracker)
                _TRACKER = tracker
    return _TRACKER


def span_step_key() -> str | None:
    """``"span:<Class.method>[@<name>]"`` of the nearest enclosing non-LLM span, if any."""
    tracker = _TRACKER
    if tracker is None:
        return None
    sid = active_span_id.get()
    method: str | None = None
    label: str | None = None
    for _ in range(256):  # bounded walk up the parents
        if not sid:
            break
        span = tracker.open_spans.get(sid)
        if span is None:
            break
        if not span.is_llm:
            method = method or span.name
            label = label or span.label
            if label:
                break
        sid = span.parent_id
    if method is None:
        return None
    key = f"span:{method}" + (f"@{label}" if label else "")
    return key[:200]


def step_key_for_call(
    explicit: str | None = None, system_text: str | None = None, *, fallback: str | None = None
) -> str | None:
    """The step key a call made here and now would use, in order of precedence.

    ``explicit`` (the call's ``step_key=``), ``instrument_tags({"swift_step": ...})``, an enclosing
    ``swift_step(...)`` block, ``fallback`` (the LLM's ``step_key`` field), the prompt template
    (:func:`prompt_step`), the enclosing span (:func:`span_step_key`), and last a fingerprint of
    ``system_text``; ``None`` (the engine's default) when none applies.
    """
    from swift_engine.step_context import current_step

    if isinstance(explicit, str) and explicit.strip():
        return explicit
    tag = (active_instrument_tags.get() or {}).get("swift_step")
    if isinstance(tag, str) and tag.strip():
        return tag
    ctx = current_step()
    if ctx:
        return ctx
    if fallback:
        return fallback
    return _PROMPT_STEP_KEY.get() or span_step_key() or system_prompt_step_key(system_text)
