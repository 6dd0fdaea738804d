"""The prompt sets of ``swift-bench``: the packaged one (``prompts/bench_prompts.json``) or a user's file.

A prompt belongs to a class (summarization, context QA, code, chat); the class is the step key of
every SWIFT call on it, so each class learns its own skip profile. Loading checks the file's shape
up front, so that a bad prompt set is one clear error before any model is loaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

#: The classes of the packaged prompt set, in run order.
DEFAULT_CLASSES = ("summarization", "context_qa", "code", "chat")


@dataclass(frozen=True)
class BenchPrompt:
    """One prompt of a set: its id, its class (the step key of its SWIFT calls) and its chat messages."""

    id: str
    cls: str
    messages: list[dict[str, str]]


def load_prompts(
    path: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
    per_class: int | None = None,
) -> list[BenchPrompt]:
    """The benchmark prompts (default: the packaged set), grouped by class in the requested order."""
    if path is None:
        text = resources.files("swift_integrations.bench").joinpath("prompts/bench_prompts.json").read_text("utf-8")
        source = "the packaged prompt set"
    else:
        text = Path(path).read_text("utf-8")
        source = str(path)
    data = json.loads(text)
    items = data["prompts"] if isinstance(data, dict) else data
    prompts: list[BenchPrompt] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        try:
            pid, cls, messages = str(item["id"]), str(item["class"]), item["messages"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"prompt #{i} of {source} needs 'id', 'class' and 'messages'") from exc
        if pid in seen:
            raise ValueError(f"duplicate prompt id {pid!r} in {source}")
        if not messages or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise ValueError(f"prompt {pid!r} of {source}: 'messages' must be a list of {{role, content}} dicts")
        seen.add(pid)
        prompts.append(BenchPrompt(pid, cls, list(messages)))
    available = list(dict.fromkeys(p.cls for p in prompts))
    wanted = list(classes) if classes else available
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise ValueError(f"unknown prompt class(es) {unknown}; {source} has {available}")
    out: list[BenchPrompt] = []
    for cls in wanted:
        of_class = [p for p in prompts if p.cls == cls]
        out.extend(of_class[:per_class] if per_class else of_class)
    return out
