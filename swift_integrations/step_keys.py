"""Step keys both adapters derive the same way (which learned skip profile a call uses).

:func:`step_key_from_run_info` reads a run's metadata, name and tags (LangChain hands them to a
model; :mod:`swift_integrations.langchain.steps` finds the run name); :func:`system_prompt_step_key` is every
adapter's last resort. Framework-free.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["step_key_from_run_info", "system_prompt_step_key", "user_tags"]

#: Tags that frameworks add by themselves; they say where a run sits, not what it is.
_AUTO_TAG_RE = re.compile(
    r"^(seq:step:\d+|graph:step:\d+|map:key:.*|branch:.*|condition:.*|langsmith:.*|langgraph:.*|nostream)$"
)


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
