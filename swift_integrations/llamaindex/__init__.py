"""LlamaIndex LLM with SWIFT self-speculative decoding (needs ``llama-index-core``).

:class:`SwiftLlamaIndexLLM` (:mod:`~swift_integrations.llamaindex.llm`) is a ``FunctionCallingLLM``:
``Settings.llm``, query engines, chat engines, ``FunctionAgent`` / ``AgentWorkflow``. Each call's
step key (which learned skip profile it uses) comes from the prompt template or the component it
runs in (:mod:`~swift_integrations.llamaindex.steps`); :func:`swift_step` names the step of every
call inside a block, and :func:`prompt_step` gives the calls inside it a prompt template's step key.

Imported eagerly: importing this package imports LlamaIndex.
"""

from __future__ import annotations

from swift_engine.step_context import swift_step
from swift_integrations.llamaindex.llm import SwiftLlamaIndexLLM
from swift_integrations.llamaindex.steps import prompt_step

__all__ = ["SwiftLlamaIndexLLM", "prompt_step", "swift_step"]
