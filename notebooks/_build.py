"""Generate the notebooks of this folder (the ``.ipynb`` files are the deliverable; this is their source).

Each notebook is a list of markdown / code cells below, written without outputs and with stable
cell ids, so a rebuild only changes what was edited here. After editing, run::

    python notebooks/_build.py            # rewrite every notebook
    python notebooks/_build.py 02 05      # only the notebooks whose names start with these prefixes

and check that they still run: ``pytest tests/test_notebooks.py -m slow``.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def md(text: str) -> tuple[str, str]:
    return ("markdown", textwrap.dedent(text).strip("\n"))


def code(*parts: str) -> tuple[str, str]:
    """A code cell from pieces, each dedented on its own (so shared snippets can be spliced in)."""
    return ("code", "\n\n".join(textwrap.dedent(p).strip("\n") for p in parts))


#: Where the repository root is, from a kernel started in notebooks/ or in the root.
FIND_ROOT = """\
ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "examples" / "llamaindex_rag.py").is_file())"""


def scratch_profiles(prefix: str) -> str:
    """The first lines of a notebook: a throw-away profile store (your learned profiles stay untouched)."""
    return f"""\
import os
import tempfile

# A scratch profile store for this notebook: nothing here reads or changes your learned profiles.
os.environ["SWIFT_PROFILE_DIR"] = tempfile.mkdtemp(prefix="swift-{prefix}-")"""


# ================================================================================== 01 quickstart

QUICKSTART = [
    md(
        """
        # 01 · Quickstart

        SWIFT makes a model draft for itself by skipping some of its own attention and MLP sublayers; the
        full model then checks the whole draft in one forward pass and keeps the longest correct prefix.
        Greedy output is **token for token** the output of plain decoding: only the number of full-model
        passes changes.

        This notebook loads the embedded SmolLM2-135M-Instruct (nothing is downloaded), decodes one prompt
        plainly and with SWIFT, checks that the texts are identical and measures the speed-up; then does
        the same through LangChain's `SwiftChatModel`.
        """
    ),
    code(
        scratch_profiles("quickstart")
        + """

from swift_engine import SwiftEngine

engine = SwiftEngine.from_pretrained()  # None = the embedded SmolLM2-135M-Instruct
print(f"{engine.model_name}: {engine.runner.num_layers} layers on {engine.runner.device} ({engine.runner.dtype})")"""
    ),
    md(
        """
        **Plain vs SWIFT on the same prompt.** Which sublayers to skip is learned on the fly, per *step key*:
        the first calls of a step run the layer-set search (and are slower); later calls reuse the profile.
        So the step is warmed up first, then plain and SWIFT decoding are timed back to back (best of two
        each, to dampen machine noise). A summary copies spans of its input, which SWIFT also drafts from
        the context for free. When the search finds that no skip set pays off on this hardware (common for
        a 135M model on a CPU), the step's mode is `plain`: it then drafts only what it can copy from the
        context. Either way the output does not change.
        """
    ),
    code(
        """
        PROMPT = [{"role": "user", "content": (
            "Summarize in two sentences: The heapq module provides an implementation of the heap queue "
            "algorithm, also known as the priority queue algorithm. Heaps are binary trees for which every "
            "parent node has a value less than or equal to any of its children. heappush pushes an item onto "
            "the heap and heappop pops the smallest item off the heap, both in logarithmic time."
        )}]
        N = 48  # new tokens per call
        STEP = "quickstart"

        # Warm-up: the search learns this step's skip profile (a few calls, until it stops searching)
        for warmup in range(1, 7):
            r = engine.generate(PROMPT, max_new_tokens=N, step_key=STEP)
            if not r.stats.search_ran:
                break
        print(f"{warmup} warm-up calls; the search {'is still running' if r.stats.search_ran else 'has settled'}\\n")

        def best_of(n, **kw):
            runs = [engine.generate(PROMPT, max_new_tokens=N, step_key=STEP, **kw) for _ in range(n)]
            return max(runs, key=lambda r: r.stats.tokens_per_s)

        plain = best_of(2, speculative=False)
        swift = best_of(2)
        assert swift.text == plain.text and swift.token_ids == plain.token_ids  # exactly the same output

        p, s = plain.stats, swift.stats
        print(swift.text, "\\n")
        rows = [
            ("tokens/s", f"{p.tokens_per_s:.1f}", f"{s.tokens_per_s:.1f}"),
            ("new tokens", p.new_tokens, s.new_tokens),
            ("full-model passes", p.verify_steps, s.verify_steps),
            ("tokens per pass", f"{p.mean_accepted_per_step:.2f}", f"{s.mean_accepted_per_step:.2f}"),
            ("draft acceptance", "-", f"{s.acceptance_rate:.2f}"),
            ("accepted from context", "-", s.context_accepted_tokens),
            ("mode", p.mode, s.mode),
        ]
        print(f"{'':24}{'plain':>10}{'SWIFT':>12}")
        for name, a, b in rows:
            print(f"{name:24}{a!s:>10}{b!s:>12}")
        print(f"\\nskipped sublayers: attention {s.skip_attention}, MLP {s.skip_mlp}")
        print(f"same text: yes   measured speed-up: {s.tokens_per_s / p.tokens_per_s:.2f}x   "
              f"(the search's estimate for its best skip set: {s.expected_speedup or 0:.2f}x)")
        """
    ),
    md(
        """
        **The same through LangChain.** `SwiftChatModel` is a `BaseChatModel`; `engine=` reuses the engine
        above (without it, every wrapper of one model shares a lazily loaded engine). The reply carries the
        SWIFT statistics in `response_metadata`.
        """
    ),
    code(
        """
        from swift_integrations import SwiftChatModel

        llm = SwiftChatModel(engine=engine, max_tokens=N)
        msg = llm.invoke(PROMPT[0]["content"], step_key=STEP)
        assert msg.content == swift.text  # same prompt, same greedy answer

        meta = msg.response_metadata
        print(msg.content, "\\n")
        for key in ("step_key", "acceptance_rate", "mean_accepted_per_step", "swift_profile"):
            print(f"{key:24}{meta[key]}")
        print(f"{'tokens/s':24}{meta['swift_stats']['tokens_per_s']:.1f}")
        print(f"{'usage':24}{msg.usage_metadata}")
        """
    ),
    code(
        """
        # The learned profile of the step, as stored on disk (in this notebook's scratch store)
        for rec in engine.profiles.list():
            print(f"{rec.step_key!r}: calls={rec.calls} search iterations={rec.iterations} "
                  f"skip attention={rec.skip.attention} mlp={rec.skip.mlp} "
                  f"expected speed-up={rec.expected_speedup or 0:.2f}x")
        """
    ),
]


# ================================================================================= 02 chains

CHAINS = [
    md(
        """
        # 02 · Chains and per-step profiles

        A three-step LCEL chain: **summarize → extract keywords → answer**. Each step's `run_name` becomes
        its SWIFT *step key* (`run:summarize`, ...), so each step learns its own skip profile: a summary,
        a keyword list and an answer do not tolerate skipping the same sublayers.

        The chain runs on four inputs. After each run, every step's prompt is decoded again plainly, so each
        call's speed-up is measured against plain decoding of the very same prompt (and its text checked to
        be identical). The cold calls pay for the layer-set search; the curve shows them warming up.
        (The embedded model is tiny, 135M parameters: its answers are plain, the mechanics are the point.)
        """
    ),
    code(
        scratch_profiles("chains")
        + """

import matplotlib.pyplot as plt
import numpy as np
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough

from swift_integrations import SwiftChatModel

MAX_TOKENS = 32
llm = SwiftChatModel(max_tokens=MAX_TOKENS)  # the embedded model, loaded on first use
engine = llm.swift_engine"""
    ),
    code(
        """
        def step(name, template):
            prompt = ChatPromptTemplate.from_messages([("human", template)])
            return (prompt | llm | StrOutputParser()).with_config(run_name=name)  # run name -> step key

        summarize = step("summarize", "Summarize this text in one sentence:\\n\\n{text}")
        keywords = step("keywords", 'What are the main keywords in: "{summary}"?')
        answer = step(
            "answer",
            "Answer the question in one sentence, using the summary and its keywords.\\n\\n"
            "Summary: {summary}\\nKeywords: {keywords}\\n\\nQuestion: {question}",
        )
        chain = (
            RunnablePassthrough.assign(summary=summarize)
            | RunnablePassthrough.assign(keywords=keywords)
            | RunnablePassthrough.assign(answer=answer)
        )

        INPUTS = [
            {"text": "The heapq module implements a priority queue on top of a plain Python list. heappush adds "
                     "an item and heappop removes the smallest one, both in logarithmic time.",
             "question": "What does heappop return?"},
            {"text": "The csv module reads and writes tabular data in comma separated values format. csv.reader "
                     "returns an iterator over the rows of a file, each row a list of strings.",
             "question": "What does csv.reader return?"},
            {"text": "functools.lru_cache wraps a function with a memoizing callable that saves up to maxsize of "
                     "the most recent calls, which saves time when a function is called with the same arguments.",
             "question": "What does lru_cache save?"},
            {"text": "The json module encodes Python objects as JSON text with json.dumps and decodes JSON text "
                     "back into Python objects with json.loads.",
             "question": "Which function decodes JSON text?"},
        ]
        """
    ),
    code(
        """
        class CallRecorder(BaseCallbackHandler):
            \"\"\"Every chat-model call of a run: the messages sent, and the SWIFT metadata of the reply.\"\"\"

            def __init__(self):
                self.calls = {}

            def on_chat_model_start(self, serialized, messages, *, run_id, **kwargs):
                self.calls[run_id] = {"messages": messages[0]}

            def on_llm_end(self, response, *, run_id, **kwargs):
                msg = response.generations[0][0].message
                self.calls[run_id].update(text=msg.content, meta=msg.response_metadata)


        ROLES = {"system": "system", "human": "user", "ai": "assistant"}
        log = []  # one row per LLM call
        for i, inputs in enumerate(INPUTS, start=1):
            rec = CallRecorder()
            out = chain.invoke(inputs, config={"callbacks": [rec]})
            print(f"--- run {i}: {inputs['question']}")
            for key in ("summary", "keywords", "answer"):
                print(f"  {key:9} {out[key].strip()!r}")
            for call in rec.calls.values():
                # the same prompt, decoded plainly: the reference for the text and the speed
                messages = [{"role": ROLES[m.type], "content": m.content} for m in call["messages"]]
                plain = engine.generate(messages, max_new_tokens=MAX_TOKENS, speculative=False)
                assert plain.text == call["text"], (plain.text, call["text"])
                stats = call["meta"]["swift_stats"]
                log.append({
                    "run": i,
                    "step": stats["step_key"],
                    "speedup": stats["tokens_per_s"] / plain.stats.tokens_per_s,
                    "tokens_per_pass": stats["mean_accepted_per_step"],
                    "acceptance": stats["acceptance_rate"],
                    "expected": stats["expected_speedup"] or 0.0,
                    "search_iterations": stats["search_iterations"],
                    "mode": stats["mode"],
                })

        print(f"\\n{'run':>3}  {'step':15}{'mode':7}{'search it':>10}{'tok/pass':>9}{'accept':>8}{'speed-up':>9}")
        for r in log:
            print(f"{r['run']:>3}  {r['step']:15}{r['mode']:7}{r['search_iterations']:>10}"
                  f"{r['tokens_per_pass']:>9.2f}{r['acceptance']:>8.2f}{r['speedup']:>8.2f}x")
        """
    ),
    md(
        """
        **One profile per step.** The profile store now holds one record per step key; the heat-map shows
        which sublayers each step's draft skips (dark = skipped).
        """
    ),
    code(
        """
        STEPS = ["run:summarize", "run:keywords", "run:answer"]
        profiles = {rec.step_key: rec for rec in engine.profiles.list()}
        assert set(STEPS) <= set(profiles), sorted(profiles)  # each step got its own profile

        n = engine.runner.num_layers
        att = np.zeros((len(STEPS), n))
        mlp = np.zeros((len(STEPS), n))
        labels = []
        for row, key in enumerate(STEPS):
            rec = profiles[key]
            att[row, rec.skip.attention] = 1
            mlp[row, rec.skip.mlp] = 1
            mode = "plain" if rec.plain or (rec.expected_speedup or 0) < 1 else "swift"  # what its calls do
            labels.append(f"{key}\\n{mode}, exp. {rec.expected_speedup or 0:.2f}x")
            print(f"{key:15} calls={rec.calls} iterations={rec.iterations} "
                  f"attention={rec.skip.attention} mlp={rec.skip.mlp}")

        fig, axes = plt.subplots(2, 1, figsize=(11, 4.2), sharex=True)
        for ax, grid, title in ((axes[0], att, "attention sublayers skipped"), (axes[1], mlp, "MLP sublayers skipped")):
            ax.imshow(grid, cmap="Blues", vmin=0, vmax=1.3, aspect="auto", interpolation="nearest")
            ax.set_yticks(range(len(STEPS)), labels, fontsize=8)
            ax.set_title(title, fontsize=10)
            ax.set_xticks(range(n), [str(i) if i % 5 == 0 else "" for i in range(n)])
            ax.set_xticks(np.arange(-0.5, n), minor=True)
            ax.set_yticks(np.arange(-0.5, len(STEPS)), minor=True)
            ax.grid(which="minor", color="white", linewidth=1)
            ax.tick_params(which="minor", length=0)
        axes[1].set_xlabel("layer")
        fig.tight_layout()
        plt.show()
        """
    ),
    md(
        """
        **Cold to warm.** Speed-up of each call against plain decoding of the same prompt, run by run. The
        first calls search (and cost more than they save: the search may take up to half of a call's time);
        as a step's profile settles the search stops, and its calls draft with the learned skip set, or
        decode plainly when no skip set pays off on this hardware. Drafts copied from the context (a step
        that repeats its input) pay off from the first call. On a busy machine the measured ratios are
        noisy; the tokens per full-model pass are not.
        """
    ),
    code(
        """
        fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 3.6))
        runs = [r["run"] for r in log if r["step"] == STEPS[0]]
        for key in STEPS:
            rows = [r for r in log if r["step"] == key]
            ax1.plot(runs, [r["speedup"] for r in rows], marker="o", label=key)
            ax2.plot(runs, [r["tokens_per_pass"] for r in rows], marker="o", label=key)
            ax3.plot(runs, [r["search_iterations"] for r in rows], marker="o", label=key)
        for ax in (ax1, ax2):
            ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        ax1.set(title="measured speed-up vs plain decoding", xlabel="chain run", ylabel="x plain tokens/s", xticks=runs)
        ax2.set(title="tokens per full-model pass", xlabel="chain run", ylabel="tokens / pass", xticks=runs)
        ax3.set(title="search iterations in the call", xlabel="chain run", ylabel="iterations", xticks=runs)
        ax1.legend(fontsize=8)
        fig.tight_layout()
        plt.show()
        """
    ),
]


# ==================================================================================== 03 RAG

RAG = [
    md(
        """
        # 03 · RAG with LangChain and LlamaIndex

        Both pipelines answer from the same corpus: the docstrings of a few standard-library modules
        (`json`, `csv`, `heapq`, `functools`), split in small chunks, retrieved with BM25 (no embedding
        model, nothing downloaded). The corpus and the LlamaIndex query engine are the builders of
        `examples/llamaindex_rag.py`.

        RAG answers copy from the retrieved context: besides its layer-skipped drafts, SWIFT drafts the
        continuations it finds in the prompt, so many accepted tokens come from the context.
        """
    ),
    code(
        scratch_profiles("rag"),
        """
        import sys
        from pathlib import Path

        import matplotlib.pyplot as plt
        """,
        FIND_ROOT,
        """
sys.path.insert(0, str(ROOT / "examples"))
import llamaindex_rag as example  # noqa: E402  (the corpus, BM25, the query engine, an LLM-call recorder)

from swift_integrations import SwiftChatModel, SwiftLlamaIndexLLM  # noqa: E402

MAX_TOKENS = 32
QUESTIONS = ["What does heapq.heappush do?", "What does csv.reader return?"]
nodes = example.build_nodes()
print(f"{len(nodes)} chunks from modules {sorted({n.metadata['module'] for n in nodes})}")
calls = []  # (framework, step key, stats) of every LLM call, for the summary at the end""",
    ),
    md(
        """
        ## LangChain

        A `BaseRetriever` over the BM25 index returns LangChain `Document`s; the chain keeps the retrieved
        documents next to the answer, so the sources can be shown. The answer step is named `rag-answer`:
        its step key is `run:rag-answer`.
        """
    ),
    code(
        """
        from typing import Any

        from langchain_core.documents import Document
        from langchain_core.prompts import ChatPromptTemplate
        from langchain_core.retrievers import BaseRetriever
        from langchain_core.runnables import RunnableParallel, RunnablePassthrough
        from llama_index.retrievers.bm25 import BM25Retriever


        class StdlibRetriever(BaseRetriever):
            \"\"\"BM25 over the stdlib docstring chunks, as LangChain documents.\"\"\"

            bm25: Any

            def _get_relevant_documents(self, query, *, run_manager):
                return [
                    Document(page_content=hit.node.get_content(), metadata={"module": hit.node.metadata["module"], "score": hit.score})
                    for hit in self.bm25.retrieve(query)
                ]


        retriever = StdlibRetriever(bm25=BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=2))
        llm = SwiftChatModel(max_tokens=MAX_TOKENS)
        prompt = ChatPromptTemplate.from_messages([
            ("system", "Answer the question in one or two sentences, using only the context."),
            ("human", "Context:\\n{context}\\n\\nQuestion: {question}"),
        ])
        answer = (prompt | llm).with_config(run_name="rag-answer")
        rag_chain = RunnableParallel(docs=retriever, question=RunnablePassthrough()) | RunnablePassthrough.assign(
            answer=(lambda d: {"context": "\\n\\n".join(doc.page_content for doc in d["docs"]), "question": d["question"]}) | answer
        )

        for q in QUESTIONS:
            out = rag_chain.invoke(q)
            msg, stats = out["answer"], out["answer"].response_metadata["swift_stats"]
            calls.append(("langchain", stats["step_key"], stats))
            print(f"Q: {q}\\nA: {msg.content.strip()}")
            for doc in out["docs"]:
                print(f"   source [{doc.metadata['module']}] score={doc.metadata['score']:.2f}: {doc.page_content[:70]!r}...")
            print(f"   step {stats['step_key']!r}: {stats['prompt_tokens']} prompt + {stats['new_tokens']} new tokens, "
                  f"{stats['tokens_per_s']:.1f} tok/s, acceptance {stats['acceptance_rate']:.2f}, "
                  f"{stats['mean_accepted_per_step']:.2f} tokens/pass, {stats['context_accepted_tokens']} accepted from the context\\n")
        """
    ),
    md(
        """
        ## LlamaIndex

        `SwiftLlamaIndexLLM` shares the engine (and the profiles) with the LangChain model. The example's
        query engine synthesizes in `refine` mode: a first answer from the best chunk (the `text_qa`
        prompt), then a refinement with the next chunk (the `refine` prompt). Each kind of call has its own
        step key, `prompt:text_qa` and `prompt:refine`.
        """
    ),
    code(
        """
        from llama_index.core import Settings

        li_llm = SwiftLlamaIndexLLM(engine=llm.swift_engine, max_tokens=MAX_TOKENS)
        Settings.llm = li_llm  # nothing falls back to a hosted default model
        query_engine = example.build_query_engine(li_llm, nodes)

        for q in QUESTIONS:
            with example.recording() as rec:
                response = query_engine.query(q)
            print(f"Q: {q}\\nA: {str(response).strip()}")
            for sn in response.source_nodes:
                print(f"   source [{sn.node.metadata['module']}] score={sn.score:.2f}: {sn.node.get_content()[:70]!r}...")
            for raw in rec.raws:
                stats = raw["swift_stats"]
                calls.append(("llamaindex", raw["step_key"], stats))
                print(f"   step {raw['step_key']!r}: {stats['prompt_tokens']} prompt + {stats['new_tokens']} new tokens, "
                      f"{stats['tokens_per_s']:.1f} tok/s, acceptance {stats['acceptance_rate']:.2f}, "
                      f"{stats['mean_accepted_per_step']:.2f} tokens/pass, {stats['context_accepted_tokens']} accepted from the context")
            print()
        """
    ),
    md(
        """
        ## Acceptance per step

        Over all the calls of each step: the share of drafted tokens the model accepted, the tokens emitted
        per full-model pass (1.0 = plain decoding), and which part of the accepted drafts came from the
        context rather than from the layer-skipped drafter.
        """
    ),
    code(
        """
        steps = list(dict.fromkeys(key for _, key, _ in calls))
        summary = []
        for key in steps:
            ss = [s for _, k, s in calls if k == key]
            drafted = sum(s["drafted_tokens"] for s in ss)
            accepted = sum(s["accepted_drafted_tokens"] for s in ss)
            ctx = sum(s["context_accepted_tokens"] for s in ss)
            summary.append((key, len(ss), accepted / drafted if drafted else 0.0,
                            sum(s["new_tokens"] for s in ss) / max(1, sum(s["verify_steps"] for s in ss)),
                            ctx / accepted if accepted else 0.0))
        print(f"{'step':18}{'calls':>6}{'acceptance':>12}{'tok/pass':>10}{'from context':>14}")
        for key, n, acc, tpp, share in summary:
            print(f"{key:18}{n:>6}{acc:>12.2f}{tpp:>10.2f}{share:>14.2f}")

        fig, ax = plt.subplots(figsize=(7, 3))
        x = range(len(summary))
        ax.bar([i - 0.2 for i in x], [s[2] for s in summary], width=0.4, label="acceptance rate")
        ax.bar([i + 0.2 for i in x], [s[4] for s in summary], width=0.4, label="accepted drafts from the context")
        ax.set_xticks(list(x), [s[0] for s in summary])
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        ax.set_title("draft acceptance per step", fontsize=10)
        fig.tight_layout()
        plt.show()
        """
    ),
]


# ================================================================================ 04 agents

AGENTS = [
    md(
        """
        # 04 · Agent tool loops: LangGraph and LlamaIndex

        Two agents run a real tool loop on the embedded 135M model: a LangGraph ReAct graph that looks up
        standard-library documentation, and a LlamaIndex `FunctionAgent` with a `multiply` tool. The first
        turn forces the tool call (a 135M model rarely calls tools unprompted; a forced call is
        grammar-constrained, so it always parses); after the tool result the model answers freely. (The
        135M model tends to answer by echoing the tool's response block; larger models answer in prose.)

        Each LangGraph node is a step (`langgraph:<node>`), and so is the LlamaIndex agent step: each gets
        its own skip profile.
        """
    ),
    code(
        scratch_profiles("agents")
        + """
import importlib
import inspect

from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from swift_integrations import SwiftChatModel, SwiftLlamaIndexLLM

llm = SwiftChatModel(max_tokens=40)
engine = llm.swift_engine"""
    ),
    md(
        """
        ## LangGraph

        The tool really looks the name up (`module.attribute`) and returns the first paragraph of its
        docstring.
        """
    ),
    code(
        """
        @tool
        def python_doc(name: str) -> str:
            \"\"\"Look up the documentation of a Python standard-library function, e.g. 'heapq.heappush'.\"\"\"
            module, _, attr = name.strip().partition(".")
            try:
                obj = importlib.import_module(module)
                for part in filter(None, attr.split(".")):
                    obj = getattr(obj, part)
            except (ImportError, AttributeError, ValueError):
                return f"No documentation found for {name!r}."
            return (inspect.getdoc(obj) or "No docstring.").split("\\n\\n")[0]


        SYSTEM = SystemMessage("You are a helpful assistant. Use the tools to answer.")


        def agent(state: MessagesState) -> dict:
            answered = any(isinstance(m, ToolMessage) for m in state["messages"])
            bound = llm.bind_tools([python_doc], tool_choice="auto" if answered else "python_doc")
            return {"messages": [bound.invoke([SYSTEM, *state["messages"]])]}


        graph = StateGraph(MessagesState)
        graph.add_node("agent", agent)  # node name -> step key "langgraph:agent"
        graph.add_node("tools", ToolNode([python_doc]))
        graph.add_edge(START, "agent")
        graph.add_conditional_edges("agent", tools_condition)
        graph.add_edge("tools", "agent")
        app = graph.compile()


        def trace(question):
            print(f"user: {question}")
            for update in app.stream({"messages": [HumanMessage(question)]}, {"recursion_limit": 6}, stream_mode="updates"):
                for node, delta in update.items():
                    for m in delta["messages"]:
                        if m.type == "tool":
                            print(f"  [{node}] tool result: {m.content!r}")
                            continue
                        st = m.response_metadata["swift_stats"]
                        what = (f"tool call {m.tool_calls[0]['name']}({m.tool_calls[0]['args']})" if m.tool_calls
                                else f"answer: {m.content.strip()!r}")
                        print(f"  [{node}] {what}\\n      step {st['step_key']!r}: {st['new_tokens']} tokens, "
                              f"{st['tokens_per_s']:.1f} tok/s, {st['mean_accepted_per_step']:.2f} tokens/pass, "
                              f"acceptance {st['acceptance_rate']:.2f}, mode {st['mode']}")


        trace("What does heapq.heappush do?")
        trace("What does json.dumps do?")
        """
    ),
    md(
        """
        ## LlamaIndex `FunctionAgent`

        The agent's event stream is the trace: each `AgentOutput` is one LLM turn (with its SWIFT statistics
        in `raw`), `ToolCallResult` the tool's answer. The first turn must call `multiply`.
        """
    ),
    code(
        """
        from llama_index.core.agent.workflow import AgentOutput, FunctionAgent, ToolCallResult
        from llama_index.core.tools import FunctionTool


        def multiply(a: int, b: int) -> int:
            \"\"\"Multiply two integers a and b and return the product.\"\"\"
            return a * b


        fn_agent = FunctionAgent(
            tools=[FunctionTool.from_defaults(multiply)],
            llm=SwiftLlamaIndexLLM(engine=engine, max_tokens=24),
            system_prompt="You are a calculator. Use the multiply tool, then state its result.",
            initial_tool_choice="multiply",  # the first turn must call the tool
        )

        handler = fn_agent.run("What is 6 times 7?", max_iterations=4)
        print("user: What is 6 times 7?")
        async for ev in handler.stream_events():  # notebooks run an event loop: top-level await works
            if isinstance(ev, ToolCallResult):
                print(f"  tool result: {ev.tool_name}({ev.tool_kwargs}) = {ev.tool_output.content}")
            elif isinstance(ev, AgentOutput):
                st = ev.raw["swift_stats"]
                calls = [c for c in ev.tool_calls if not isinstance(c, ToolCallResult)]
                what = (f"tool call {calls[0].tool_name}({calls[0].tool_kwargs})" if calls
                        else f"answer: {(ev.response.content or '').strip()!r}")
                print(f"  {what}\\n      step {ev.raw['step_key']!r}: {st['new_tokens']} tokens, "
                      f"{st['tokens_per_s']:.1f} tok/s, {st['mean_accepted_per_step']:.2f} tokens/pass, "
                      f"acceptance {st['acceptance_rate']:.2f}, mode {st['mode']}")
        result = await handler
        print(f"final: {str(result.response.content).strip()!r}")
        """
    ),
    md(
        """
        ## Per-node profiles

        One record per step: the LangGraph `agent` node and the LlamaIndex agent step learned their skip
        sets separately (the `tools` node makes no LLM call). Rerunning either agent reuses its profile.
        """
    ),
    code(
        """
        for rec in engine.profiles.list():
            mode = "plain" if rec.plain or (rec.expected_speedup or 0) < 1 else "swift"  # what its calls do
            print(f"{rec.step_key!r}\\n    calls={rec.calls} tokens={rec.tokens_seen} search iterations={rec.iterations} "
                  f"mode={mode} expected speed-up={rec.expected_speedup or 0:.2f}x\\n"
                  f"    skip attention={rec.skip.attention}\\n    skip mlp={rec.skip.mlp}")
        keys = {rec.step_key for rec in engine.profiles.list()}
        assert "langgraph:agent" in keys and any(k.startswith("span:") for k in keys), keys
        """
    ),
    md(
        """
        ## Time to first token across agent turns: the prefix cache

        Every turn of an agent sends the system prompt, the tools and the history again. The engine keeps
        the prompt's keys and values between calls (`SwiftConfig(prefix_cache=...)`, on by default) and
        prefills only what is new, in fixed blocks of 128 tokens so the output is bitwise the same. Below,
        the same five-turn conversation on two engines over the same model, one with the cache off: the
        first token of each turn comes out of the prefill, so its time is the turn's time to first token.
        """
    ),
    code(
        """
        from swift_engine import SwiftConfig, SwiftEngine

        cold = SwiftEngine(engine.model, engine.tokenizer, SwiftConfig(prefix_cache=False))
        warm = SwiftEngine(engine.model, engine.tokenizer, SwiftConfig(prefix_cache=True))
        system = ("You are the support agent of a bike shop. Tools: stock(item) -> units in stock, "
                  "price(item) -> euros, order(item, units) -> order id. Answer in one sentence. " * 4)
        rows = []
        for name, eng in (("cache off", cold), ("cache on", warm)):
            messages = [{"role": "system", "content": system}]
            for turn, question in enumerate(["Do you have helmets?", "stock: 12 helmets", "How much is one?",
                                             "price: 49 euros", "Order two, please."]):
                messages.append({"role": "user", "content": question})
                res = eng.generate(messages, max_new_tokens=12, step_key="notebook-ttft")
                messages.append({"role": "assistant", "content": res.text})
                rows.append((name, turn + 1, res.stats.prompt_tokens, res.stats.cached_prompt_tokens,
                             res.stats.prefill_time_s, res.token_ids))
        print(f"{'':10} turn  prompt  cached  time to first token")
        for name, turn, prompt, cached, ttft, _ in rows:
            print(f"{name:10} {turn:4} {prompt:7} {cached:7} {ttft * 1e3:12.0f} ms")
        off, on = rows[:5], rows[5:]
        assert [r[5] for r in off] == [r[5] for r in on]  # the same tokens, turn for turn
        assert all(r[3] > 0 for r in on[1:]), "later turns start from the cached prefix"
        """
    ),
]


# ============================================================================= 05 benchmark

BENCH = [
    md(
        """
        # 05 · Benchmark plots

        Plots of `swift-bench` results (`swift-bench --json docs/bench/<model>.json`): every
        `docs/bench/*.json` is read (one column of panels per file). When none exists yet, a tiny benchmark
        runs here first (one summarization prompt, 32 tokens), and its figures go to a temporary folder
        rather than `docs/`.

        The figures are saved as PNG under `docs/` for the README (`SWIFT_BENCH_FIGURES_DIR` overrides
        the folder, `SWIFT_BENCH_DIR` the folder of result files).
        """
    ),
    code(
        """
        import json
        import os
        import tempfile
        from pathlib import Path

        import matplotlib.pyplot as plt
        import numpy as np
        """,
        FIND_ROOT,
        """
        BENCH_DIR = Path(os.environ.get("SWIFT_BENCH_DIR") or ROOT / "docs" / "bench")
        FIG_DIR = Path(os.environ.get("SWIFT_BENCH_FIGURES_DIR") or ROOT / "docs")
        files = sorted(BENCH_DIR.glob("*.json"))
        if not files:
            from swift_integrations.bench.command import main as swift_bench

            scratch = Path(tempfile.mkdtemp(prefix="swift-bench-"))
            rc = swift_bench(["--quick", "--classes", "summarization", "--no-progress", "--json", str(scratch / "quick.json")])
            assert rc == 0, f"swift-bench exited with {rc}"
            files = [scratch / "quick.json"]
            if not os.environ.get("SWIFT_BENCH_FIGURES_DIR"):
                FIG_DIR = scratch  # a smoke run's figures do not belong in docs/
        FIG_DIR.mkdir(parents=True, exist_ok=True)

        results = {}
        for f in files:
            r = json.loads(f.read_text("utf-8"))
            m = r["meta"]
            label = f"{m['model']}\\n{m['device']} ({m['device_name']}), {m['dtype']}"
            results[label if label not in results else f"{label} [{f.stem}]"] = r
        for label, r in results.items():
            m = r["meta"]
            print(f"{label.splitlines()[0]}: {len(r['per_prompt'])} prompts in {r['classes']}, "
                  f"{m['max_new_tokens']} new tokens, warm-up calls {m['warmup_calls']}, repeats {m['repeats']}, "
                  f"all exact: {r['exactness']['all_own_exact']}")

        METHOD_LABELS = {"hf": "transformers", "hf_lookup": "prompt lookup", "llama_cpp": "llama.cpp",
                         "plain": "plain (engine)", "swift_cold": "SWIFT cold", "swift_warm": "SWIFT warm"}


        def panels(title, height=3.6):
            fig, axes = plt.subplots(1, len(results), figsize=(max(6.5, 6.5 * len(results)), height), squeeze=False)
            fig.suptitle(title, fontsize=11)
            return fig, axes[0]


        def save(fig, name):
            fig.tight_layout()
            path = FIG_DIR / name
            fig.savefig(path, dpi=120, bbox_inches="tight")
            print(f"saved {path}")
            plt.show()
        """,
    ),
    md("## Tokens/s per prompt class and method\n\nMedians over the class's prompts (warm phase for the baselines)."),
    code(
        """
        fig, axes = panels("Throughput per prompt class (median tokens/s)")
        for ax, (label, r) in zip(axes, results.items()):
            classes, methods = [c["class"] for c in r["per_class"]], r["methods"]
            width = 0.8 / len(methods)
            for j, meth in enumerate(methods):
                vals = [c["tokens_per_s"][meth] or 0.0 for c in r["per_class"]]
                ax.bar(np.arange(len(classes)) + (j - (len(methods) - 1) / 2) * width, vals, width, label=METHOD_LABELS.get(meth, meth))
            ax.set_xticks(range(len(classes)), classes)
            ax.set_ylabel("tokens/s")
            ax.set_title(label, fontsize=9)
        axes[0].legend(fontsize=8)
        save(fig, "bench_tokens_per_s.png")
        """
    ),
    md(
        "## Speed-up distribution\n\nPer prompt, SWIFT's tokens/s over a baseline's in the same round "
        "(each dot a prompt; boxes over prompts)."
    ),
    code(
        """
        fig, axes = panels("SWIFT speed-up per prompt")
        rng = np.random.default_rng(0)
        for ax, (label, r) in zip(axes, results.items()):
            keys = [f"{s}_vs_{b}" for s in ("swift_warm", "swift_cold") for b in r["baselines"]]
            data = [[p["speedup"][k] for p in r["per_prompt"] if p["speedup"].get(k) is not None] for k in keys]
            ax.boxplot(data, widths=0.5, showfliers=False, medianprops={"color": "black"})
            for c, cls in enumerate(r["classes"]):  # one dot per prompt, coloured by class
                for i, k in enumerate(keys, start=1):
                    vals = [p["speedup"][k] for p in r["per_prompt"] if p["class"] == cls and p["speedup"].get(k) is not None]
                    ax.scatter(i + rng.uniform(-0.15, 0.15, len(vals)), vals, s=16, alpha=0.8, zorder=3,
                               color=f"C{c}", label=cls if i == 1 else None)
            ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
            ax.legend(fontsize=8)
            ax.set_xticks(range(1, len(keys) + 1),
                          [k.replace("swift_", "").replace("_vs_", "\\nvs ").replace("hf_lookup", "lookup").replace("llama_cpp", "llama.cpp") for k in keys], fontsize=8)
            ax.set_ylabel("speed-up (x)")
            ax.set_title(label, fontsize=9)
        save(fig, "bench_speedup.png")
        """
    ),
    md(
        "## Accepted tokens per step\n\nTokens emitted per full-model pass (1 = plain decoding). The results "
        "hold per-call means; a histogram over individual steps is drawn instead when the runs record them "
        "(`accepted_per_step`)."
    ),
    code(
        """
        fig, axes = panels("Tokens per full-model pass (SWIFT calls)")
        for ax, (label, r) in zip(axes, results.items()):
            swift_runs = [x for x in r["runs"] if x["method"] in ("swift_cold", "swift_warm") and x["stats"]]
            per_step = {m: [v for x in swift_runs if x["method"] == m for v in (x["stats"].get("accepted_per_step") or [])]
                        for m in ("swift_cold", "swift_warm")}
            if any(per_step.values()):
                data, what = per_step, "accepted tokens in one step"
            else:
                data = {m: [x["stats"]["mean_accepted_per_step"] for x in swift_runs if x["method"] == m]
                        for m in ("swift_cold", "swift_warm")}
                what = "mean tokens per pass, per prompt"
            vals = [v for vs in data.values() for v in vs] or [1.0]
            bins = np.arange(np.floor(min(vals) * 4) / 4, max(vals) + 0.5, 0.25)
            ax.hist(list(data.values()), bins=bins, label=[f"{METHOD_LABELS[m]} (n={len(vs)})" for m, vs in data.items()])
            ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
            ax.set_xlabel(what)
            ax.set_ylabel("count")
            ax.set_title(label, fontsize=9)
            ax.legend(fontsize=8)
        save(fig, "bench_accepted.png")
        """
    ),
    md(
        "## Skip ratio chosen per step key\n\nThe step key of every benchmark call is its prompt class. "
        "The learned profile after the warm phase: the share of the 2 × layers sublayers the draft skips "
        "(attention and MLP stacked), its mode and the search's expected speed-up."
    ),
    code(
        """
        fig, axes = panels("Learned skip profile per step key")
        for ax, (label, r) in zip(axes, results.items()):
            n = r["meta"]["num_layers"]
            rows = [(c["class"], c["profile"]) for c in r["per_class"] if c["profile"]]
            att = [len(p["skip_attention"]) / (2 * n) for _, p in rows]
            mlp = [len(p["skip_mlp"]) / (2 * n) for _, p in rows]
            x = np.arange(len(rows))
            ax.bar(x, att, 0.6, label="attention")
            ax.bar(x, mlp, 0.6, bottom=att, label="MLP")
            for i, (_, p) in enumerate(rows):
                ax.text(i, att[i] + mlp[i] + 0.01, f"{p['mode']}\\n{p['expected_speedup'] or 0:.2f}x", ha="center", va="bottom", fontsize=8)
            ax.set_xticks(x, [c for c, _ in rows])
            ax.set_ylim(0, max([a + b for a, b in zip(att, mlp)] + [0.1]) * 1.35)
            ax.set_ylabel(f"skip ratio (of {2 * n} sublayers)")
            ax.set_title(label, fontsize=9)
            ax.legend(fontsize=8, loc="upper left")
        save(fig, "bench_skip_ratio.png")
        """
    ),
    md("## The README table"),
    code(
        """
        from swift_integrations.bench.report import render_markdown

        for r in results.values():
            print(render_markdown(r))
        """
    ),
]


NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_chains_and_profiles.ipynb": CHAINS,
    "03_rag.ipynb": RAG,
    "04_agent_tool_loop.ipynb": AGENTS,
    "05_benchmark.ipynb": BENCH,
}


def build(name: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    stem = name.split("_")[0]
    for i, (kind, source) in enumerate(cells):
        cell = new_markdown_cell(source) if kind == "markdown" else new_code_cell(source)
        cell.id = f"nb{stem}-{i:02d}"  # stable ids: rebuilding does not churn the files
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main(prefixes: list[str]) -> None:
    for name, cells in NOTEBOOKS.items():
        if prefixes and not any(name.startswith(p) for p in prefixes):
            continue
        path = HERE / name
        nbformat.write(build(name, cells), path)
        print(f"wrote {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main(sys.argv[1:])
