"""Reasoning ("thinking") text of ``<think>`` models, split from the reply (framework-free).

Reasoning models in the Qwen3 / DeepSeek-R1 style write their chain of thought first, inside a
``<think>...</think>`` block, and then the answer. Frameworks expect the two apart (LangChain:
``additional_kwargs["reasoning_content"]`` and reasoning content blocks; LlamaIndex: a
``ThinkingBlock``), and a chat template expects the reasoning back in a separate field of an
assistant message (Qwen3's ``reasoning_content``), not as text inside the answer. So the adapters
split every reply of a reasoning model here, and never show ``<think>`` text as content.

Which models: :func:`is_reasoning_template` reads the chat template (a template that writes or
cuts ``</think>``, or takes ``enable_thinking``); other models' replies are left exactly as they
are. Where the block starts: at the very start of the reply (after whitespace), or already in the
prompt, when the template's generation prompt opens ``<think>`` itself (DeepSeek-R1, Qwen3
"thinking" releases): :func:`reasoning_format` reads that off the rendered prompt. A ``<think>``
anywhere else is ordinary text (a model quoting the tag). A block that is never closed (the reply
was cut by ``max_tokens``) is reasoning to its end, with no content.

The same split is computed for a finished text (:func:`split_reasoning`) and incrementally for a
stream (:class:`ReasoningSplitter`): text deltas may cut a tag anywhere, so the splitter holds back
only what could still be the start of a tag (and the whitespace the split trims), and any cut of a
text into deltas gives exactly the split of the whole text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "THINK_CLOSE",
    "THINK_OPEN",
    "ReasoningFormat",
    "ReasoningSplitter",
    "is_reasoning_template",
    "reasoning_format",
    "split_reasoning",
]

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# A template that renders or strips reasoning mentions the closing tag (as a string literal) or
# takes the ``enable_thinking`` switch; an opening tag alone could be prose in a system prompt.
_REASONING_TEMPLATE_RE = re.compile(r"</think>|\benable_thinking\b")


def is_reasoning_template(template: object) -> bool:
    """Whether a chat template belongs to a ``<think>`` reasoning model (judged from its source)."""
    return isinstance(template, str) and bool(_REASONING_TEMPLATE_RE.search(template))


@dataclass(frozen=True)
class ReasoningFormat:
    """How a reasoning model's reply is laid out: its tags, and whether the prompt opened the block."""

    open: str = THINK_OPEN
    close: str = THINK_CLOSE
    #: The prompt already ends inside an open block: the reply starts with reasoning.
    started: bool = False

    def splitter(self) -> ReasoningSplitter:
        return ReasoningSplitter(started=self.started, open=self.open, close=self.close)

    def split(self, text: str) -> tuple[str, str]:
        return split_reasoning(text, started=self.started, open=self.open, close=self.close)


def reasoning_format(template: object, prompt_text: str) -> ReasoningFormat | None:
    """The :class:`ReasoningFormat` of a prompt rendered by ``template``; ``None`` for other models.

    ``started`` when the prompt (the template's generation prompt) ends with an open ``<think>``.
    A prompt that ends with a closed, empty block (Qwen3 with ``enable_thinking=False``) has not
    started one: the model answers directly.
    """
    if not is_reasoning_template(template):
        return None
    return ReasoningFormat(started=prompt_text.rstrip().endswith(THINK_OPEN))


def split_reasoning(
    text: str, *, started: bool = False, open: str = THINK_OPEN, close: str = THINK_CLOSE
) -> tuple[str, str]:
    """``(reasoning, content)`` of a finished reply.

    The reasoning is the text of a think block at the start of the reply (``started``: from the
    start up to the first ``close``), stripped of surrounding whitespace; the content is what
    follows the block, without the blank lines the model writes after ``</think>``. A reply with no
    block at its start is all content, untouched; a block never closed is all reasoning.
    """
    if not started:
        stripped = text.lstrip()
        if not stripped.startswith(open):
            return "", text
        text = stripped[len(open) :]
    reasoning, found, content = text.partition(close)
    if not found:
        return reasoning.strip(), ""
    return reasoning.strip(), content.lstrip()


def _held_prefix(text: str, tag: str) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of ``tag``."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


class ReasoningSplitter:
    """:func:`split_reasoning` for a stream: push text deltas, get ``(reasoning, content)`` deltas.

    Released text is final. What could still turn out to be a tag (a tail like ``"</thi"``), the
    whitespace around the reasoning that the split trims, and the start of a reply that might still
    open a block are held until the next delta decides them, or until :meth:`finish`.
    """

    def __init__(self, *, started: bool = False, open: str = THINK_OPEN, close: str = THINK_CLOSE) -> None:
        self.open = open
        self.close = close
        self._state: Literal["start", "reasoning", "after", "content"] = "reasoning" if started else "start"
        self._pending = ""
        self._reasoning_begun = False  # some reasoning was released (its leading whitespace is gone)
        #: All reasoning and content released so far.
        self.reasoning = ""
        self.content = ""

    def push(self, delta: str) -> tuple[str, str]:
        """Add a text delta; return the ``(reasoning, content)`` text that is now certain."""
        self._pending += delta
        reasoning, content = "", ""
        while True:
            if self._state == "start":
                head = self._pending.lstrip()
                if head.startswith(self.open):
                    self._state, self._pending = "reasoning", head[len(self.open) :]
                    continue
                if not head or self.open.startswith(head):
                    break  # may still open a block
                self._state = "content"
                continue
            if self._state == "reasoning":
                if not self._reasoning_begun:
                    self._pending = self._pending.lstrip()
                i = self._pending.find(self.close)
                if i >= 0:
                    reasoning += self._pending[:i].rstrip()
                    self._pending = self._pending[i + len(self.close) :]
                    self._state = "after"
                    continue
                body = self._pending[: len(self._pending) - _held_prefix(self._pending, self.close)]
                body = body.rstrip()  # whitespace before a possible close tag is trimmed
                reasoning += body
                self._pending = self._pending[len(body) :]
                break
            if self._state == "after":
                self._pending = self._pending.lstrip()
                if not self._pending:
                    break
                self._state = "content"
                continue
            content += self._pending
            self._pending = ""
            break
        return self._emit(reasoning, content)

    def finish(self) -> tuple[str, str]:
        """The end of the reply: release what was held (an unclosed block is reasoning to its end)."""
        reasoning, content = "", ""
        if self._state == "start":
            content = self._pending  # no block opened: the held start is content as it was
        elif self._state == "reasoning":
            reasoning = self._pending.strip() if not self._reasoning_begun else self._pending.rstrip()
        elif self._state == "content":
            content = self._pending
        self._pending = ""
        return self._emit(reasoning, content)

    def _emit(self, reasoning: str, content: str) -> tuple[str, str]:
        if reasoning:
            self._reasoning_begun = True
        self.reasoning += reasoning
        self.content += content
        return reasoning, content
