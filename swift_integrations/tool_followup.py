"""What a model is asked after its tool calls were answered: to decide itself, or to answer.

An agent loop hands tool results back to the model and expects, eventually, an answer. Small
models may not give one: measured on Qwen2.5-Coder-0.5B-Instruct (the catalog's agent model; its
own chat template, plain ``transformers`` greedy decoding, the same with our rendering), the turn
after a tool result is the call again, written as JSON text (``{"name": "get_weather", ...}``),
on every task tried; banning JSON at the start only moved it into a code fence. Asked again with
the question restated after the results and the tools not shown, it answers ("12 times 34 equals
408."). So ``tool_followup`` chooses per wrapper:

* ``"model"``: the model sees the tools and decides (several tool rounds possible);
* ``"answer"``: when the conversation ends with tool results, the tools are hidden and a user turn
  asks for the answer to the last question: one tool round per question, and an answer;
* ``"auto"`` (default): ``"answer"`` for catalog models measured to need it, else ``"model"``. The
  model is recognised by its weights (:func:`~swift_engine.loading.fingerprint.weights_identity`), so
  it makes no difference whether it was loaded by short name, by its GGUF path, from the conversion
  cache or behind the server.

Only calls in ``auto`` tool mode change; a forced ``tool_choice`` is always honoured.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

__all__ = ["ANSWER_INSTRUCTION", "ToolFollowup", "answer_turn", "wants_answer_turn"]

ToolFollowup = Literal["auto", "answer", "model"]

#: the user turn added after tool results in ``"answer"`` mode; ``{question}``: the last user message
ANSWER_INSTRUCTION = "Using the tool results above, answer in plain words: {question}"


def _resolved(mode: ToolFollowup, model: Any) -> Literal["answer", "model"]:
    if mode != "auto":
        return mode
    entry = _catalog_entry(model)
    return "answer" if entry is not None and entry.answer_after_tools else "model"


def _catalog_entry(model: Any) -> Any:
    """The catalog model ``model`` is: an engine by its weights' identity (however it was loaded: short
    name, GGUF path, conversion cache, behind the server), else a short name or the catalog file's path."""
    from swift_engine.loading.catalog import CATALOG

    if model is None:
        return None
    identity = getattr(model, "weights_identity", None)
    if isinstance(identity, str):
        return next((m for m in CATALOG.values() if m.identity and m.identity == identity), None)
    name = str(model).strip()
    entry = CATALOG.get(name.lower())
    if entry is None:  # the catalog's file named by its path (the same file name, e.g. a copy elsewhere)
        path = Path(name).expanduser()
        entry = next((m for m in CATALOG.values() if m.filename == path.name and path.is_file()), None)
    return entry


def wants_answer_turn(mode: ToolFollowup, model: Any, messages: Sequence[dict[str, Any]], tool_choice: str) -> bool:
    """Whether this call asks for the answer: ``"answer"`` mode, ``auto`` tools, last message a tool result.

    ``model``: the engine that answers (recognised by its weights), or a catalog short name or path.
    """
    return (
        tool_choice == "auto"
        and bool(messages)
        and messages[-1].get("role") == "tool"
        and _resolved(mode, model) == "answer"
    )


def answer_turn(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` (framework-neutral dicts) plus the user turn that asks for the answer."""
    question = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    return [*messages, {"role": "user", "content": ANSWER_INSTRUCTION.format(question=question).strip()}]
