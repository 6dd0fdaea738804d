"""Step keys of LangChain calls: which run a chat model or LLM call belongs to.

LangChain gives a child runnable its parent's tags and metadata but not its run name, so a chat
model inside ``(prompt | llm).with_config(run_name="summarize")`` cannot see "summarize" in its
own config. :class:`_RunNames` remembers the name and parent of every running chain; a configure
hook attaches it to every callback manager in the process once this module is imported. It only
records chain starts and ends (dict operations) and runs inline.

:func:`config_step_key` resolves a key where the run's config is known (the models' public entry
points); :func:`runtime_step_key` where only a run manager (or the ambient config) is
(``generate()``, event streaming). Both follow :func:`swift_integrations.step_keys.step_key_from_run_info`.
"""

from __future__ import annotations

import re
import threading
from contextvars import ContextVar
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import ensure_config, var_child_runnable_config
from langchain_core.tracers.context import register_configure_hook

from swift_integrations.step_keys import step_key_from_run_info

__all__ = ["config_step_key", "runtime_step_key"]

#: Run names LangChain and LangGraph give by default (class names): they don't name a step.
_GENERIC_RUN_NAME_RE = re.compile(
    r"^(Runnable\w*|\w*PromptTemplate|\w*OutputParser|\w*Parser|LangGraph|Pregel|ChannelWrite|ChannelRead|<lambda>|\w*ToolNode)$"
)
_MAX_TRACKED_RUNS = 10_000


class _RunNames(BaseCallbackHandler):
    """Names and parents of the chains running right now (for the enclosing-run step key)."""

    run_inline = True
    ignore_llm = True
    ignore_chat_model = True
    ignore_retriever = True
    ignore_agent = True
    ignore_retry = True
    ignore_custom_event = True

    def __init__(self) -> None:
        self._runs: dict[Any, tuple[str | None, Any]] = {}
        self._lock = threading.Lock()

    def on_chain_start(
        self, serialized: Any, inputs: Any, *, run_id: Any, parent_run_id: Any = None, **kwargs: Any
    ) -> None:
        name = kwargs.get("name") or (serialized or {}).get("name")
        with self._lock:
            if len(self._runs) >= _MAX_TRACKED_RUNS:  # runs abandoned without an end event
                for key in list(self._runs)[: _MAX_TRACKED_RUNS // 2]:
                    del self._runs[key]
            self._runs[run_id] = (name if isinstance(name, str) else None, parent_run_id)

    def on_chain_end(self, outputs: Any, *, run_id: Any, **kwargs: Any) -> None:
        with self._lock:
            self._runs.pop(run_id, None)

    def on_chain_error(self, error: BaseException, *, run_id: Any, **kwargs: Any) -> None:
        with self._lock:
            self._runs.pop(run_id, None)

    def enclosing_name(self, parent_run_id: Any) -> str | None:
        """The nearest enclosing chain whose name was given by a user (not a class default)."""
        seen = 0
        with self._lock:
            while parent_run_id is not None and seen < 64:
                name, parent_run_id = self._runs.get(parent_run_id, (None, None))
                if name and "<" not in name and not _GENERIC_RUN_NAME_RE.match(name):
                    return name
                seen += 1
        return None


_RUN_NAMES = _RunNames()
_RUN_NAMES_VAR: ContextVar[_RunNames | None] = ContextVar("swift_langchain_run_names", default=_RUN_NAMES)
register_configure_hook(_RUN_NAMES_VAR, True)


def _run_name(config_run_name: str | None, callbacks: Any) -> str | None:
    """The run's own name if the config has one, else the nearest user-named enclosing chain."""
    if config_run_name:
        return config_run_name
    return _RUN_NAMES.enclosing_name(getattr(callbacks, "parent_run_id", None))


def config_step_key(config: RunnableConfig | None, *, fallback: str | None = None) -> str | None:
    """Step key of a call entered with ``config`` (``fallback``: the wrapper's own ``step_key``)."""
    cfg = ensure_config(config)
    run_name = _run_name(cfg.get("run_name"), cfg.get("callbacks"))
    return step_key_from_run_info(cfg.get("metadata"), run_name, cfg.get("tags"), fallback=fallback)


def runtime_step_key(run_manager: Any, *, fallback: str | None = None) -> str | None:
    """Step key of a call entered below the public methods: from its run manager, else the ambient config."""
    if run_manager is not None:
        name = _RUN_NAMES.enclosing_name(getattr(run_manager, "parent_run_id", None))
        return step_key_from_run_info(
            getattr(run_manager, "metadata", None), name, getattr(run_manager, "tags", None), fallback=fallback
        )
    cfg = var_child_runnable_config.get() or {}
    name = _run_name(cfg.get("run_name"), cfg.get("callbacks"))
    return step_key_from_run_info(cfg.get("metadata"), name, cfg.get("tags"), fallback=fallback)
