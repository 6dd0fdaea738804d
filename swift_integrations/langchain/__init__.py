"""LangChain models with SWIFT self-speculative decoding (needs ``langchain-core``).

* :class:`SwiftChatModel` (:mod:`~swift_integrations.langchain.chat_models`) — a ``BaseChatModel``:
  chat template, ``bind_tools``, ``with_structured_output``, reasoning models.
* :class:`SwiftLLM` (:mod:`~swift_integrations.langchain.llms`) — a ``BaseLLM``: prompt string in,
  continuation out.

Both share their fields and engine (:mod:`~swift_integrations.langchain.base`). Each call's step key
(which learned skip profile it uses) comes from the run it belongs to
(:mod:`~swift_integrations.langchain.steps`); :func:`swift_step` names the step of every call inside
a block, and :func:`config_step_key` says which key a call made with a given config would use.

Imported eagerly, like LangChain's partner packages: importing this package imports LangChain.
"""

from __future__ import annotations

from swift_engine.step_context import swift_step
from swift_integrations.langchain.chat_models import SwiftChatModel
from swift_integrations.langchain.llms import SwiftLLM
from swift_integrations.langchain.steps import config_step_key

__all__ = ["SwiftChatModel", "SwiftLLM", "config_step_key", "swift_step"]
