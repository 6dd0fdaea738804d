"""Retrieval-augmented answers with LlamaIndex and SWIFT, fully offline.

The corpus is real text that ships with Python: the docstrings of a few standard-library modules
(``json``, ``csv``, ``heapq``, ``functools``) and of their public functions and classes. Retrieval
is BM25 (``llama-index-retrievers-bm25``: no embedding model, nothing downloaded). Answers come
from :class:`swift_integrations.SwiftLlamaIndexLLM` on the embedded SmolLM2-135M-Instruct.

The synthesizer runs in ``refine`` mode, so each question makes two kinds of LLM call: a first
answer from the best chunk (LlamaIndex's ``text_qa`` prompt) and a refinement with the next chunk
(the ``refine`` prompt). Each kind gets its own SWIFT step key, so each learns its own skip
profile; asking again reuses them. The script prints every call's step key and statistics.

Run: ``python examples/llamaindex_rag.py [question ...]``
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
from collections.abc import Iterator
from typing import Any

from llama_index.core import Document, Settings
from llama_index.core.bridge.pydantic import Field
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMCompletionEndEvent
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import BaseNode
from llama_index.retrievers.bm25 import BM25Retriever

from swift_integrations import SwiftLlamaIndexLLM

MODULES = ("json", "csv", "heapq", "functools")
QUESTIONS = (
    "What does heapq.heappush do?",
    "How do I read rows from a CSV file with the csv module?",
)


def stdlib_documents(modules: tuple[str, ...] = MODULES) -> list[Document]:
    """One document per module: its docstring, then the docstrings of its public names."""
    docs = []
    for name in modules:
        module = importlib.import_module(name)
        parts = [inspect.getdoc(module) or ""]
        public = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
        for attr in sorted(public):
            obj = getattr(module, attr, None)
            if not callable(obj):
                continue
            doc = inspect.getdoc(obj)
            if doc:
                parts.append(f"{name}.{attr}: {doc}")
        docs.append(Document(text="\n\n".join(p for p in parts if p), metadata={"module": name}, id_=f"stdlib:{name}"))
    return docs


def build_nodes(chunk_size: int = 128) -> list[BaseNode]:
    """The corpus split into small chunks (small prompts for a small model on a CPU)."""
    return SentenceSplitter(chunk_size=chunk_size, chunk_overlap=0).get_nodes_from_documents(stdlib_documents())


def build_query_engine(
    llm: SwiftLlamaIndexLLM, nodes: list[BaseNode] | None = None, top_k: int = 2
) -> RetrieverQueryEngine:
    """BM25 over the stdlib corpus, answers synthesized by ``llm`` in refine mode."""
    retriever = BM25Retriever.from_defaults(nodes=nodes if nodes is not None else build_nodes(), similarity_top_k=top_k)
    return RetrieverQueryEngine.from_args(retriever, llm=llm, response_mode="refine")


class LLMCallRecorder(BaseEventHandler):
    """Collects the final response of every LLM call; ``with recording() as rec: ...; rec.calls``."""

    calls: list = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "LLMCallRecorder"

    def handle(self, event: Any, **kwargs: Any) -> None:
        if isinstance(event, (LLMChatEndEvent, LLMCompletionEndEvent)) and event.response is not None:
            self.calls.append(event.response)

    @property
    def raws(self) -> list[dict[str, Any]]:
        """The ``raw`` of each call: the prompt the model received and the SWIFT statistics."""
        return [c.raw or {} for c in self.calls]


@contextlib.contextmanager
def recording() -> Iterator[LLMCallRecorder]:
    """Record the LLM calls made inside the block (through LlamaIndex's instrumentation)."""
    rec = LLMCallRecorder()
    root = get_dispatcher()
    root.add_event_handler(rec)
    try:
        yield rec
    finally:
        root.event_handlers = [h for h in root.event_handlers if h is not rec]


def plain_baseline(llm: SwiftLlamaIndexLLM, raws: list[dict[str, Any]]) -> dict[str, float]:
    """Re-decode the recorded calls' exact prompts with plain ``transformers`` greedy ``generate``.

    Same prompt tokens, same number of new tokens: the speed-up of the RAG example against plain
    decoding, and a check that SWIFT's answers are the plain model's answers.
    """
    import time

    import torch

    engine = llm.swift_engine
    from swift_engine.model.llama_family import transformers_model

    # transformers' class over the engine's weights (the engine's own classes' view built here, untimed)
    tok, model = engine.tokenizer, transformers_model(engine.model)
    swift_s = plain_s = own_s = 0.0
    tokens = 0
    same = 0
    for raw in raws:
        stats = raw["swift_stats"]
        ids = torch.tensor([tok(raw["prompt"], add_special_tokens=False)["input_ids"]], device=model.device)
        n = stats["new_tokens"]
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False
            )
        plain_s += time.perf_counter() - t
        # the engine's own loop without drafts (same CPU kernels): what drafting adds on top
        own_s += engine.generate(ids[0].tolist(), max_new_tokens=n, speculative=False).stats.wall_time_s
        swift_s += stats["wall_time_s"]
        tokens += n
        # min_new_tokens keeps plain decoding going where SWIFT stopped at EOS, so compare the prefix
        same += tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip().startswith(raw["text"].strip())
    return {
        "calls": len(raws),
        "tokens": tokens,
        "swift_tok_s": tokens / swift_s,
        "plain_tok_s": tokens / plain_s,
        "own_tok_s": tokens / own_s,
        "speedup": plain_s / swift_s,
        "speedup_vs_own": own_s / swift_s,
        "same_text": same,
    }


def main(questions: list[str]) -> None:
    llm = SwiftLlamaIndexLLM(max_tokens=64)
    Settings.llm = llm  # nothing falls back to a hosted default model
    engine = build_query_engine(llm)
    warm: list[dict[str, Any]] = []
    for round_ in (1, 2):
        print(f"=== round {round_} ===")
        for q in questions:
            with recording() as rec:
                response = engine.query(q)
            if round_ == 2:
                warm.extend(rec.raws)
            print(f"\nQ: {q}\nA: {str(response).strip()}")
            for sn in response.source_nodes:
                print(
                    f"   source [{sn.node.metadata.get('module')}] score={sn.score:.2f}: "
                    f"{sn.node.get_content()[:70]!r}..."
                )
            for r in rec.raws:
                s = r.get("swift_stats", {})
                print(
                    f"   llm call step_key={r.get('step_key')!r}: {s.get('prompt_tokens')} prompt + "
                    f"{s.get('new_tokens')} new tokens, {s.get('tokens_per_s', 0):.1f} tok/s, mode={s.get('mode')}, "
                    f"acceptance={r.get('acceptance_rate', 0):.2f}, "
                    f"search_ran={r.get('search_ran')}"
                )
    b = plain_baseline(llm, warm)
    print(
        f"\nround 2 (learned profiles) against plain transformers greedy decoding of the same {b['calls']} prompts: "
        f"SWIFT {b['swift_tok_s']:.1f} tok/s, plain {b['plain_tok_s']:.1f} tok/s, speed-up {b['speedup']:.2f}x "
        f"({b['tokens']} tokens; same text in {b['same_text']}/{b['calls']} calls); the engine without drafts "
        f"{b['own_tok_s']:.1f} tok/s, so drafting adds {b['speedup_vs_own']:.2f}x"
    )
    print("\nlearned step profiles:")
    for rec in llm.swift_engine.store.profile_store.list():
        print(f"   {rec.step_key!r}: calls={rec.calls} iterations={rec.iterations} skip={rec.skip} plain={rec.plain}")


if __name__ == "__main__":
    main(sys.argv[1:] or list(QUESTIONS))
