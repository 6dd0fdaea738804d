"""The tool-call text format, writing side: how tools, past calls and results appear in a prompt.

The format is Hermes-style (what Qwen/Hermes chat templates use natively):

* Tools are described to the model in a system prompt (:func:`render_tools_system_prompt`) when the
  chat template has no ``tools`` support of its own.
* A call is ``<tool_call>\\n{"name": "<tool>", "arguments": {...}}\\n</tool_call>``
  (:func:`format_tool_call`); several calls are several blocks.
* A tool's result is ``<tool_response>\\n{"name": "<tool>", "content": "..."}\\n</tool_response>``
  (:func:`format_tool_result`), used where the template has no ``tool`` role.

It lives in the core because prompt rendering (:mod:`swift_engine.chat.prompting`) writes it; reading
calls back from generated text is the adapters' business (:mod:`swift_engine.chat.tool_calls`),
and so is constraining them (:mod:`swift_engine.decoding.constraints` holds the grammar side).
Framework-neutral: tools are OpenAI-format function dicts.

Other families' formats
-----------------------
A chat template with tool support of its own describes the tools in its own words and teaches the
model its own call syntax, so the model's calls come back in that syntax, not Hermes'.
:class:`ToolCallFormat` describes such a syntax (opening and closing text, the arguments' key,
whether calls form a JSON list, what call ids history needs) and :func:`detect_tool_format` reads
it off the template:

* Hermes / Qwen (:data:`HERMES`): the above; also every template that has no tool support (the
  Hermes system prompt then teaches this format) or whose format is not one of these.
* Llama 3.1 / 3.2 / 3.3 (:data:`LLAMA3_JSON`): a reply that calls a tool is one JSON object
  ``{"name": ..., "parameters": {...}}``, optionally after ``<|python_tag|>``; the template puts
  the tools in the first user message and renders one call per assistant message.
* Mistral (:data:`MISTRAL`): ``[TOOL_CALLS]`` then a JSON list of ``{"name", "arguments"}``; the
  template rejects history whose call ids are not 9 alphanumerics, so ids are mapped to such
  (:meth:`ToolCallFormat.history_call_id`).
* Gemma 2 / 3: their templates have no tool section at all, so they get the Hermes system prompt
  and the Hermes format, and are held to it by the grammar; that is the honest choice, since
  there is no official format to follow. The fine-tunes that do define one (FunctionGemma's
  ``<start_function_call>``, the ```` ```tool_code ```` convention of some Gemma 3 guides) write
  Python-like calls rather than JSON; a tokenizer that ships a ``response_template`` for them is
  still read by ``transformers``' ``parse_response`` (see :mod:`swift_engine.chat.tool_calls`),
  but it is not constrained here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

__all__ = [
    "HERMES",
    "LLAMA3_JSON",
    "MISTRAL",
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "TOOL_RESPONSE_CLOSE",
    "TOOL_RESPONSE_OPEN",
    "ToolCallFormat",
    "detect_tool_format",
    "fit_tool_history",
    "format_tool_call",
    "format_tool_result",
    "render_tools_system_prompt",
    "tool_call_format",
    "tool_function",
    "without_call_content",
]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
TOOL_RESPONSE_OPEN = "<tool_response>"
TOOL_RESPONSE_CLOSE = "</tool_response>"


def tool_function(tool: dict[str, Any]) -> dict[str, Any]:
    """The ``{"name", "description", "parameters"}`` part of an OpenAI-format tool dict.

    Accepts both ``{"type": "function", "function": {...}}`` and the bare function dict.
    """
    if not isinstance(tool, dict):
        raise TypeError(f"tools must be OpenAI-format dicts, got {type(tool).__name__}")
    fn = tool.get("function", tool) if tool.get("type", "function") == "function" else tool
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise ValueError(f"tool has no function name: {tool!r}")
    return fn


def render_tools_system_prompt(tools: Sequence[dict[str, Any]]) -> str:
    """The system-prompt text that describes ``tools`` to a model whose template can't.

    ``tools`` are OpenAI-format function dicts. The text is the Hermes function-calling prompt:
    one JSON line per tool inside ``<tools></tools>``, then the call format. The renderers append
    it to the conversation's system message (or add a system message holding only this).
    """
    lines = []
    for tool in tools:
        fn = tool_function(tool)
        entry = {
            "name": fn["name"],
            "description": fn.get("description", ""),
            "parameters": fn.get("parameters") or {"type": "object", "properties": {}},
        }
        lines.append(json.dumps(entry, ensure_ascii=False))
    return (
        "You are a function calling AI model. You may call one or more functions to assist with the "
        "user query. Here are the available tools:\n<tools>\n"
        + "\n".join(lines)
        + "\n</tools>\nFor each function call, return a JSON object with the function name and arguments "
        f"within {TOOL_CALL_OPEN}{TOOL_CALL_CLOSE} tags:\n{TOOL_CALL_OPEN}\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n'
        f"{TOOL_CALL_CLOSE}"
    )


def format_tool_call(name: str, args: dict[str, Any] | None) -> str:
    """One past call as the model should see it in history (the same text it is asked to write)."""
    body = json.dumps({"name": name, "arguments": args or {}}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def format_tool_result(
    content: str, *, name: str | None = None, tool_call_id: str | None = None, is_error: bool = False
) -> str:
    """A tool's result as message text, for templates without a ``tool`` role.

    ``tool_call_id`` is accepted for symmetry but not shown: ids are noise to a small model and the
    name identifies the tool well enough in a sequential loop.
    """
    del tool_call_id
    body: dict[str, Any] = {}
    if name:
        body["name"] = name
    body["content"] = content
    if is_error:
        body["status"] = "error"
    return f"{TOOL_RESPONSE_OPEN}\n{json.dumps(body, ensure_ascii=False)}\n{TOOL_RESPONSE_CLOSE}"


# --------------------------------------------------------------------------------------- formats

_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class ToolCallFormat(BaseModel):
    """How a model family writes tool calls: what the grammar, the prefill and the parser follow.

    A reply's calls are ``open`` + the call JSON (a list of them if ``json_list``) + ``close``;
    each call is ``{"name": ..., "<arguments_key>": {...}}``. In ``auto`` mode the model's own
    ``triggers`` (its opening marker) start a grammar-constrained call; a forced call prefills
    the opening (:meth:`begin`, or :meth:`call_head` for a single allowed tool). Framework-free
    and hashable: it is part of the grammar cache's key
    (:class:`~swift_engine.decoding.constraints.ToolCallConstraint`).
    """

    model_config = ConfigDict(frozen=True)

    name: Literal["hermes", "llama3_json", "mistral"] = "hermes"
    #: Text a reply's call block starts with, exactly as the template writes it in history.
    open: str = TOOL_CALL_OPEN + "\n"
    #: Text a call block ends with ("" where the reply simply ends: the end-of-turn token).
    close: str = "\n" + TOOL_CALL_CLOSE
    #: Texts that start a call in free text (each a prefix of some call's opening).
    triggers: tuple[str, ...] = (TOOL_CALL_OPEN,)
    arguments_key: Literal["arguments", "parameters"] = "arguments"
    #: The calls of a block are one JSON list (Mistral), not one object per block.
    json_list: bool = False
    #: One call per reply: the template renders one call per assistant message (Llama 3.x).
    one_call: bool = False
    #: Past calls' ids must be exactly this many ASCII letters and digits (Mistral: 9); 0: any id.
    call_id_length: int = 0

    @property
    def begin(self) -> str:
        """The text before a block's first call (what a forced call prefills)."""
        return self.open + ("[" if self.json_list else "")

    @property
    def end(self) -> str:
        """The text after a block's last call."""
        return ("]" if self.json_list else "") + self.close

    def call_head(self, name: str) -> str:
        """A reply's text up to the arguments of a call to ``name`` (what a forced single tool prefills)."""
        return self.begin + '{"name": ' + json.dumps(name, ensure_ascii=False) + f', "{self.arguments_key}": '

    def call_object(self, name: str, args: dict[str, Any] | None) -> dict[str, Any]:
        return {"name": name, self.arguments_key: args or {}}

    def format_calls(self, calls: Sequence[tuple[str, dict[str, Any] | None]]) -> str:
        """The text a model of this family writes for ``calls`` (``(name, arguments)`` pairs).

        What the grammar produces and the parser reads back; Llama's several calls (which its
        template can't render) are joined with ``"; "``, as vLLM's ``llama3_json`` parser reads them.
        """
        if self.name == "hermes":
            return "\n".join(format_tool_call(name, args) for name, args in calls)
        if self.json_list:
            body = json.dumps([self.call_object(n, a) for n, a in calls], ensure_ascii=False)
            return self.open + body + self.close
        return "; ".join(
            self.open + json.dumps(self.call_object(n, a), ensure_ascii=False) + self.close for n, a in calls
        )

    def history_call_id(self, call_id: str) -> str:
        """``call_id`` as the template accepts it in history: itself, or (Mistral) 9 alphanumerics.

        The mapping is a hash, so a call and its result (which carry the same id) get the same
        short id, across calls and processes; an id that already fits is kept.
        """
        n = self.call_id_length
        if n <= 0 or (len(call_id) == n and call_id.isascii() and call_id.isalnum()):
            return call_id
        value = int.from_bytes(hashlib.sha256(call_id.encode("utf-8")).digest(), "big")
        out = []
        for _ in range(n):
            value, digit = divmod(value, len(_ALNUM))
            out.append(_ALNUM[digit])
        return "".join(out)


#: Hermes / Qwen: ``<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>``, one block per call.
HERMES = ToolCallFormat()
#: Llama 3.1-3.3: ``{"name": ..., "parameters": {...}}`` (after ``<|python_tag|>``, optionally), one per reply.
LLAMA3_JSON = ToolCallFormat(
    name="llama3_json",
    open="",
    close="",
    triggers=('{"name": ', "<|python_tag|>"),
    arguments_key="parameters",
    one_call=True,
)
#: Mistral (Nemo, v3 tekken): ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``, 9-character ids.
MISTRAL = ToolCallFormat(
    name="mistral",
    open="[TOOL_CALLS]",
    close="",
    triggers=("[TOOL_CALLS]",),
    json_list=True,
    call_id_length=9,
)

_TEMPLATE_TOOLS_RE = re.compile(r"\btools\b")


def detect_tool_format(template: object) -> ToolCallFormat:
    """The :class:`ToolCallFormat` a chat template teaches its model (read off its Jinja source).

    Only a template with tool support of its own can teach one; every other template (a dict of
    named templates included: the renderer describes tools itself then) gets :data:`HERMES`, which
    the renderer's Hermes system prompt teaches. Checked in order: ``<tool_call>`` (Hermes and
    Qwen, Llama-based Hermes fine-tunes included), ``[TOOL_CALLS]`` (Mistral; followed by a space
    where the template writes one, as Mistral v0.3's does), ``<|python_tag|>`` or the Llama 3
    ``"parameters"`` call with an ``ipython`` role (Llama 3.1-3.3).
    """
    if not isinstance(template, str) or not _TEMPLATE_TOOLS_RE.search(template):
        return HERMES
    if TOOL_CALL_OPEN in template:
        return HERMES
    if "[TOOL_CALLS]" in template:
        return MISTRAL.model_copy(update={"open": "[TOOL_CALLS] "}) if "[TOOL_CALLS] " in template else MISTRAL
    if "<|python_tag|>" in template or ('"parameters"' in template and "ipython" in template):
        return LLAMA3_JSON
    return HERMES


def tool_call_format(tokenizer: Any, chat_template: str | None = None) -> ToolCallFormat:
    """The format of the model behind ``tokenizer`` (its chat template's, or ``chat_template``'s)."""
    return detect_tool_format(chat_template or getattr(tokenizer, "chat_template", None))


def fit_tool_history(messages: list[dict[str, Any]], fmt: ToolCallFormat) -> list[dict[str, Any]]:
    """Hugging Face-shaped messages (native ``tool_calls``) made acceptable to ``fmt``'s template.

    * Call ids (Mistral): every assistant call id and tool-result ``tool_call_id`` goes through
      :meth:`ToolCallFormat.history_call_id`, so each pair keeps matching; a call or result
      without an id gets the id of its partner by position (the n-th result after a call message
      answers its n-th call).
    * One call per message (Llama 3.x): a message with several calls becomes several assistant
      messages of one call each, which the template renders as consecutive calls before their
      results (its own rendering raises on more than one).

    Other formats' messages are returned as they are.
    """
    if fmt.call_id_length <= 0 and not fmt.one_call:
        return messages
    out: list[dict[str, Any]] = []
    pending: list[str] = []  # ids of the latest calls not yet answered, in order
    for index, m in enumerate(messages):
        if m.get("role") == "assistant" and m.get("tool_calls"):
            calls = []
            for k, call in enumerate(m["tool_calls"]):
                call = dict(call)
                if fmt.call_id_length > 0:
                    call["id"] = fmt.history_call_id(str(call.get("id") or f"swift-{index}-{k}"))
                calls.append(call)
            pending = [str(c.get("id")) for c in calls]
            if fmt.one_call and len(calls) > 1:
                first = m.get("content")
                out += [dict(m, tool_calls=[c], content=first if k == 0 else "") for k, c in enumerate(calls)]
            else:
                out.append(dict(m, tool_calls=calls))
        elif m.get("role") == "tool" and fmt.call_id_length > 0:
            given = m.get("tool_call_id")
            call_id = fmt.history_call_id(str(given)) if given else (pending[0] if pending else None)
            if call_id in pending:
                pending.remove(call_id)
            out.append(dict(m, tool_call_id=call_id) if call_id else dict(m))
        else:
            out.append(m)
    return out


def without_call_content(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with the text of assistant messages that carry calls dropped.

    For templates that reject an assistant message with both (Mistral's v3 template): what the
    renderer tries before its last resort, which writes every call as Hermes text.
    """
    return [dict(m, content="") if m.get("tool_calls") and m.get("content") else m for m in messages]
