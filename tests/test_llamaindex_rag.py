"""RAG for real: a BM25 index over standard-library docstrings, answered by SwiftLlamaIndexLLM.

The index, retriever and query engine are the ones of ``examples/llamaindex_rag.py`` (imported
from there, so the example is exercised too). Nothing is downloaded: BM25 needs no embedding
model, and ``Settings.llm`` is set so nothing falls back to a hosted model.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("llama_index.retrievers.bm25")

from llama_index.core import Settings  # noqa: E402
from llama_index.core.schema import MetadataMode  # noqa: E402

from swift_integrations import SwiftLlamaIndexLLM  # noqa: E402

from .test_llamaindex import ScriptedEngine  # noqa: E402

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "llamaindex_rag.py"
QUESTION = "What does heapq.heappush do?"


@pytest.fixture(scope="module")
def rag():
    """The example module, imported from its file."""
    spec = importlib.util.spec_from_file_location("llamaindex_rag_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def nodes(rag):
    return rag.build_nodes()


@pytest.fixture
def settings_llm():
    """Set ``Settings.llm`` for the test and put the previous value back."""
    previous = Settings._llm

    def use(llm: SwiftLlamaIndexLLM) -> SwiftLlamaIndexLLM:
        Settings.llm = llm
        return llm

    yield use
    Settings._llm = previous


def test_the_corpus_is_real_stdlib_text(rag, nodes) -> None:
    modules = {n.metadata["module"] for n in nodes}
    assert modules == set(rag.MODULES)
    assert len(nodes) > 20
    text = "\n".join(n.get_content() for n in nodes)
    assert "heappush" in text and "csv.reader" in text and "lru_cache" in text and "JSONDecoder" in text


def test_bm25_retrieves_the_relevant_module(rag, nodes) -> None:
    from llama_index.retrievers.bm25 import BM25Retriever

    retriever = BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=2)
    hits = retriever.retrieve(QUESTION)
    assert [h.node.metadata["module"] for h in hits] == ["heapq", "heapq"]
    assert "heappush" in hits[0].node.get_content()


def _check_rag_calls(rec, response) -> list[str]:
    """Both kinds of synthesizer call happened, with the retrieved text in their prompts; their step keys."""
    raws = rec.raws
    keys = [r["step_key"] for r in raws]
    assert keys == ["prompt:text_qa", "prompt:refine"]
    assert len(response.source_nodes) == 2
    for raw, source in zip(raws, response.source_nodes):
        assert source.node.get_content(metadata_mode=MetadataMode.LLM) in raw["prompt"]  # the context reached the model
        assert QUESTION in raw["prompt"]
        assert (
            raw["swift_stats"]["new_tokens"] > 0
            and raw["usage"]["completion_tokens"] == raw["swift_stats"]["new_tokens"]
        )
    assert raws[0]["text"].strip() in raws[1]["prompt"]  # refine saw the first answer
    assert str(response).strip() == raws[-1]["text"].strip()
    return keys


def test_refine_synthesis_step_keys_and_prompts_scripted(rag, nodes, smol, settings_llm) -> None:
    """The adapter's side of the RAG flow, with scripted answers (fast)."""
    eng = ScriptedEngine(smol, ["heappush adds an item to the heap.", "heappush pushes an item onto the heap."])
    llm = settings_llm(SwiftLlamaIndexLLM(engine=eng, max_tokens=32))
    engine = rag.build_query_engine(llm, nodes)
    with rag.recording() as rec:
        response = engine.query(QUESTION)
    _check_rag_calls(rec, response)


@pytest.mark.slow
def test_rag_answers_with_swift_and_reuses_step_profiles(rag, nodes, smol, settings_llm) -> None:
    llm = settings_llm(SwiftLlamaIndexLLM(engine=smol, max_tokens=16))
    engine = rag.build_query_engine(llm, nodes)

    with rag.recording() as first:
        response = engine.query(QUESTION)
    keys = _check_rag_calls(first, response)
    assert str(response).strip()
    for raw in first.raws:
        assert raw["swift_stats"]["verify_steps"] > 0 and raw["swift_profile"]["mode"] in ("swift", "plain")
    profiles = {r.step_key: r for r in smol.profiles.list()}
    assert set(keys) <= set(profiles)  # one profile per kind of call
    calls_before = {k: profiles[k].calls for k in keys}

    with rag.recording() as again:
        engine.query(QUESTION)
    assert [r["step_key"] for r in again.raws] == keys  # the rerun uses the same steps
    after = {r.step_key: r for r in smol.profiles.list()}
    assert {k: after[k].calls for k in keys} == {k: calls_before[k] + 1 for k in keys}  # ...and their profiles
