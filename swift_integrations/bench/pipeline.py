"""Pipelines end to end: an agent, a RAG chain and a refine query engine, against what users run today.

``swift-bench --pipeline`` runs three pipelines as people build them, each with every method on
the same model object and the same prompts:

* **agent**: a LangGraph ``StateGraph`` agent with three tools (calculator, weather, currency)
  in the Hermes ``<tool_call>`` format Qwen2.5 and SmolLM2 are trained on, several turns per task;
* **rag**: an LCEL chain (retriever | prompt | model | parser) with a fixed instruction prompt;
* **refine**: a LlamaIndex ``RetrieverQueryEngine`` (BM25 retriever, ``response_mode="refine"``).

Methods: ``hf`` (LangChain ``ChatHuggingFace(llm=HuggingFacePipeline(...))``; for LlamaIndex a
``CustomLLM`` over the same ``transformers`` pipeline: what users run today), ``plain`` (the
engine's own loop without drafts: the exactness reference), ``swift_off`` (SWIFT with the prefix
cache and the draft memory off) and ``swift`` (everything on); ``llama_cpp`` (where installed)
replays the same prompts through llama.cpp on the GGUF file, with its own prompt cache.

Every method first runs a few warm-up tasks (other questions than the measured ones, so the
draft memory can't just replay measured answers; the skip profiles converge there), then the
measured ones. Greedy decoding throughout: every SWIFT call's tokens are compared with ``plain``.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["METHODS", "PIPELINES", "run_pipelines"]

PIPELINES = ("agent", "rag", "refine")
METHODS = ("hf", "plain", "swift_off", "swift")

# ---------------------------------------------------------------------------------------- data

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate an arithmetic expression with + - * / and parentheses.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string", "description": "e.g. (3 + 4) * 2"}},
                "required": ["expression"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city: temperature in Celsius and conditions.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "City name, e.g. Paris"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "convert_currency",
            "description": "Convert an amount between EUR, USD, GBP and JPY at today's rate.",
            "parameters": {
                "type": "object",
                "properties": {
                    "amount": {"type": "number"},
                    "source": {"type": "string", "description": "EUR, USD, GBP or JPY"},
                    "target": {"type": "string", "description": "EUR, USD, GBP or JPY"},
                },
                "required": ["amount", "source", "target"],
            },
        },
    },
]
_WEATHER = {"paris": (14, "light rain"), "tokyo": (21, "sunny"), "cairo": (31, "clear"), "oslo": (3, "snow")}
_EUR = {"EUR": 1.0, "USD": 1.08, "GBP": 0.85, "JPY": 162.0}

AGENT_WARMUP = ["What is 12 * 7 + 5?", "What's the weather like in Oslo?", "Convert 40 USD to EUR."]
AGENT_TASKS = [
    "What is (17 + 26) * 3?",
    "What's the weather in Tokyo right now?",
    "How many yen are 250 euros?",
    "Is it warmer in Cairo or in Paris? Check both.",
    "What is 1250 / 25 - 7?",
    "Convert 99 GBP to USD.",
]

DOCS = [
    "The Atlas 3 e-bike has a 500 Wh battery that charges fully in 4.5 hours with the standard charger.",
    "Atlas 3 range: up to 110 km in eco mode, 70 km in tour mode and 45 km in turbo mode on flat roads.",
    "The Atlas 3 frame is aluminium, weighs 23.4 kg with the battery, and carries riders up to 130 kg.",
    "Warranty: 5 years on the frame, 2 years on the motor and the battery, 1 year on wear parts.",
    "The motor is a 250 W mid-drive with 85 Nm of torque; assistance stops at 25 km/h as the law requires.",
    "Service: a free first inspection after 300 km, then every 2000 km or once a year, whichever is first.",
    "The display shows speed, range, assistance level and battery charge; it connects to the phone app.",
    "Lights: a 70 lux front light and a rear light with brake function, both powered by the main battery.",
    "The battery can be removed with the key and charged off the bike; a spare battery costs 649 euros.",
    "Tyres are 27.5 x 2.4 inch with puncture protection; recommended pressure is 2.0 to 3.0 bar.",
    "Returns: 30 days for unused bikes in original packaging; the buyer pays the return shipping.",
    "The Atlas 3 costs 3299 euros; the Atlas 3 Plus with a 750 Wh battery costs 3799 euros.",
]
RAG_WARMUP = ["How heavy is the bike?", "What does the display show?", "How much is a spare battery?"]
RAG_QUESTIONS = [
    "How long does the battery take to charge?",
    "How far can I ride in eco mode?",
    "How long is the warranty on the motor?",
    "When is the first service?",
    "What is the maximum rider weight?",
    "What tyre pressure should I use?",
    "How much does the Atlas 3 Plus cost?",
    "Can I return a bike I have ridden?",
]
REFINE_WARMUP = ["What lights does the bike have?", "What is the torque of the motor?"]
REFINE_QUESTIONS = [
    "Summarize what the battery offers: capacity, charging and range.",
    "What does the warranty cover and for how long?",
    "What maintenance does the bike need?",
    "What are the prices of the models and of a spare battery?",
]

RAG_INSTRUCTIONS = (
    "You are the support assistant of an e-bike shop. Answer the customer's question using only the "
    "context below, which comes from the product manual. Give the exact figures from the context, with "
    "their units. Answer in one or two short sentences, in plain text, without lists or headings. If the "
    "context does not contain the answer, say that the manual does not say, and suggest contacting the "
    "shop. Never invent specifications, prices or policies that are not in the context. Be friendly and "
    "direct; do not repeat the question, do not greet the customer, and do not mention that you were "
    "given a context. Prices are in euros. When the customer asks about safety, such as brakes, lights "
    "or the battery, add that the shop's workshop can check the bike for free. When the customer asks "
    "about buying or returning a bike, mention that the shop is open Monday to Saturday."
)


def _tool_system_prompt() -> str:
    """The tool instructions Qwen2.5's chat template writes for ``tools=`` (Hermes format), as plain text."""
    lines = "\n".join(json.dumps(t, separators=(", ", ": ")) for t in TOOLS)
    return (
        "You are a helpful assistant that answers with the help of tools.\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{lines}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>\n\n'
        "When the tool results answer the question, reply to the user in one short sentence."
    )


def _run_tool(name: str, args: dict[str, Any]) -> str:
    try:
        if name == "calculator":
            expr = str(args.get("expression", ""))
            if not re.fullmatch(r"[\d\s.+\-*/()]+", expr):
                return "error: only numbers, + - * / and parentheses"
            return str(round(eval(expr, {"__builtins__": {}}, {}), 4))  # noqa: S307 - digits and operators only
        if name == "get_weather":
            temp, cond = _WEATHER.get(str(args.get("city", "")).strip().lower(), (None, None))
            return json.dumps({"city": args.get("city"), "temperature_c": temp, "conditions": cond})
        if name == "convert_currency":
            src, dst = str(args.get("source", "")).upper(), str(args.get("target", "")).upper()
            amount = float(args.get("amount", 0))
            if src not in _EUR or dst not in _EUR:
                return "error: unknown currency"
            return f"{round(amount / _EUR[src] * _EUR[dst], 2)} {dst}"
    except (TypeError, ValueError, ZeroDivisionError, SyntaxError) as exc:
        return f"error: {exc}"
    return f"error: no tool named {name}"


_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)


def _tool_calls(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Calls in a reply: ``<tool_call>`` blocks, else bare ``{"name", "arguments"}`` objects.

    Bare objects because Qwen2.5's ``<tool_call>`` is a special token of its GGUF tokenizer, which
    decoding drops from the text (for every method alike).
    """
    bodies = [m.group(1) for m in _CALL.finditer(text)]
    if not bodies:
        decoder, i = json.JSONDecoder(), text.find("{")
        while i >= 0:
            try:
                obj, end = decoder.raw_decode(text, i)
            except ValueError:
                i = text.find("{", i + 1)
                continue
            if isinstance(obj, dict) and "name" in obj and "arguments" in obj:
                bodies.append(json.dumps(obj))
            i = text.find("{", end)
    calls = []
    for body in bodies:
        try:
            obj = json.loads(body)
            calls.append((str(obj.get("name")), dict(obj.get("arguments") or {})))
        except (ValueError, TypeError, AttributeError):
            continue
    return calls


def _stems(text: str) -> set[str]:
    return {w[:4] for w in re.findall(r"[a-z0-9.]+", text.lower()) if len(w) >= 4}


def _retrieve(question: str, k: int = 2) -> list[str]:
    """A small lexical retriever (shared word stems weighted by rarity), so the benchmark needs no embedding model."""
    import math

    stems = [_stems(d) for d in DOCS]
    idf = {w: math.log(len(DOCS) / sum(w in s for s in stems)) for s in stems for w in s}
    q = _stems(question)
    ranked = sorted(range(len(DOCS)), key=lambda i: -sum(idf[w] for w in q & stems[i]))
    return [DOCS[i] for i in ranked[:k]]


# ---------------------------------------------------------------------------------------- pipelines


def _agent(chat: Any, tasks: Sequence[str], max_turns: int = 3) -> list[str]:
    """A LangGraph agent: model node, tool node, loop until the model answers without a call."""
    from typing import Annotated, TypedDict

    from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, SystemMessage
    from langgraph.graph import END, START, StateGraph
    from langgraph.graph.message import add_messages

    # the functional form: its annotations are objects, not strings to resolve in this function's scope
    State = TypedDict("State", {"messages": Annotated[list[AnyMessage], add_messages], "turns": int})  # noqa: UP013

    def model(state: Any) -> dict[str, Any]:
        reply = chat.invoke(state["messages"])
        return {"messages": [AIMessage(content=reply.content)], "turns": state["turns"] + 1}

    def tools(state: Any) -> dict[str, Any]:
        calls = _tool_calls(str(state["messages"][-1].content))
        results = "\n".join(
            f"<tool_response>\n{json.dumps({'name': n, 'content': _run_tool(n, a)})}\n</tool_response>"
            for n, a in calls
        )
        return {"messages": [HumanMessage(content=results)]}

    def route(state: Any) -> str:
        last = str(state["messages"][-1].content)
        return "tools" if _tool_calls(last) and state["turns"] < max_turns else END

    graph = StateGraph(State)
    graph.add_node("model", model)
    graph.add_node("tools", tools)
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", route, {"tools": "tools", END: END})
    graph.add_edge("tools", "model")
    app = graph.compile()
    system = SystemMessage(_tool_system_prompt())
    answers = []
    for task in tasks:
        out = app.invoke({"messages": [system, HumanMessage(task)], "turns": 0})
        answers.append(str(out["messages"][-1].content))
    return answers


def _rag(chat: Any, questions: Sequence[str]) -> list[str]:
    """An LCEL chain: retriever | prompt | model | parser, with a fixed instruction prompt."""
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnableLambda, RunnablePassthrough

    prompt = ChatPromptTemplate.from_messages(
        [("system", RAG_INSTRUCTIONS), ("human", "Context:\n{context}\n\nQuestion: {question}")]
    )
    retriever: RunnableLambda[str, str] = RunnableLambda(lambda q: "\n".join(f"- {d}" for d in _retrieve(q)))
    chain = {"context": retriever, "question": RunnablePassthrough()} | prompt | chat | StrOutputParser()
    return [chain.invoke(q) for q in questions]


def _refine(llm: Any, questions: Sequence[str]) -> list[str]:
    """A LlamaIndex query engine over the manual: BM25 retriever, refine synthesizer (one call per chunk)."""
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.response_synthesizers import ResponseMode, get_response_synthesizer
    from llama_index.core.schema import TextNode
    from llama_index.retrievers.bm25 import BM25Retriever

    nodes = [TextNode(text=d, id_=f"doc-{i}") for i, d in enumerate(DOCS)]
    retriever = BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=3)
    synth = get_response_synthesizer(llm=llm, response_mode=ResponseMode.REFINE)
    engine = RetrieverQueryEngine(retriever=retriever, response_synthesizer=synth)
    return [str(engine.query(q)) for q in questions]


# ---------------------------------------------------------------------------------------- methods


@dataclass
class CallLog:
    """What one method's calls did: per call, the engine's result (SWIFT methods) or the time and text (hf)."""

    results: list[Any] = field(default_factory=list)
    hf_calls: list[dict[str, Any]] = field(default_factory=list)

    def clear(self) -> None:
        self.results.clear()
        self.hf_calls.clear()


def _hf_models(model: Any, tokenizer: Any, max_new_tokens: int, log: CallLog) -> tuple[Any, Any]:
    """``ChatHuggingFace(llm=HuggingFacePipeline(...))`` and a LlamaIndex ``CustomLLM`` on the same pipeline."""
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline
    from llama_index.core.base.llms.types import (
        ChatMessage,
        ChatResponse,
        CompletionResponse,
        CompletionResponseGen,
        LLMMetadata,
        MessageRole,
    )
    from llama_index.core.llms import CustomLLM
    from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
    from transformers import pipeline

    from swift_engine.model.llama_family import transformers_model

    # as HuggingFacePipeline.from_model_id(pipeline_kwargs=...) builds it: the settings live in the pipeline
    # (HuggingFacePipeline._generate reads only per-call pipeline_kwargs, not the instance's)
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False, "return_full_text": False}
    # transformers' own class (the engine loads its conversion cache into its own: model/llama_family.py)
    pipe = pipeline("text-generation", model=transformers_model(model), tokenizer=tokenizer, **kwargs)
    llm = HuggingFacePipeline(pipeline=pipe, model_id=str(model.config._name_or_path))

    class Timer(BaseCallbackHandler):
        def __init__(self) -> None:
            self.t0: dict[Any, float] = {}

        def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: Any, **kw: Any) -> None:
            self.t0[run_id] = time.perf_counter()

        def on_llm_end(self, response: Any, *, run_id: Any, **kw: Any) -> None:
            if run_id in self.t0:
                text = response.generations[0][0].text
                n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
                log.hf_calls.append({"seconds": time.perf_counter() - self.t0.pop(run_id), "tokens": n, "text": text})

    chat = ChatHuggingFace(llm=llm, tokenizer=tokenizer, callbacks=[Timer()])

    class HFPipelineLLM(CustomLLM):
        """What a LlamaIndex user runs on a local ``transformers`` model: the chat template, then ``generate``."""

        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata(is_chat_model=True, num_output=max_new_tokens, model_name="hf")

        def _generate(self, messages: list[dict[str, str]]) -> str:
            t0 = time.perf_counter()
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            text = pipe(prompt)[0]["generated_text"]
            n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            log.hf_calls.append({"seconds": time.perf_counter() - t0, "tokens": n, "text": text})
            return str(text)

        @llm_chat_callback()
        def chat(self, messages: Sequence[ChatMessage], **kw: Any) -> ChatResponse:
            text = self._generate([{"role": m.role.value, "content": m.content or ""} for m in messages])
            return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text))

        @llm_completion_callback()
        def complete(self, prompt: str, formatted: bool = False, **kw: Any) -> CompletionResponse:
            return CompletionResponse(text=self._generate([{"role": "user", "content": prompt}]))

        @llm_completion_callback()
        def stream_complete(self, prompt: str, formatted: bool = False, **kw: Any) -> CompletionResponseGen:
            yield self.complete(prompt)

    return chat, HFPipelineLLM()


def _swift_models(engine: Any, max_new_tokens: int) -> tuple[Any, Any]:
    from swift_integrations.langchain.chat_models import SwiftChatModel
    from swift_integrations.llamaindex.llm import SwiftLlamaIndexLLM

    chat = SwiftChatModel(engine=engine, max_tokens=max_new_tokens)
    llm = SwiftLlamaIndexLLM(engine=engine, max_tokens=max_new_tokens)
    return chat, llm


def _method_engine(model: Any, tokenizer: Any, method: str, store: Path) -> Any:
    from swift_engine import SwiftConfig, SwiftEngine

    if method == "swift":
        config = SwiftConfig()
    elif method == "swift_off":
        config = SwiftConfig(prefix_cache=False, draft_memory=0)
    else:  # plain: the engine's own loop without drafts, nothing kept between calls
        config = SwiftConfig(speculative=False, prefix_cache=False, draft_memory=0)
    return SwiftEngine(model, tokenizer, config, profile_store=store / method)


def _recording(encode: Callable[[Any], list[int]], into: list[Any]) -> Callable[[Any], list[int]]:
    """``engine.encode_prompt`` that also keeps each prompt's token ids (for the llama.cpp replay)."""

    def encode_prompt(prompt: Any) -> list[int]:
        ids = encode(prompt)
        into.append(list(ids))
        return ids

    return encode_prompt


def _replay(llama: Any, prompts: list[Any], max_new_tokens: int, eos: list[int]) -> dict[str, Any]:
    """llama.cpp on the same prompts: warm-up ones untimed, then the measured ones, keeping shared prefixes."""
    split = prompts.index(None)
    for ids in prompts[:split]:
        llama.generate(ids, max_new_tokens, eos, reuse_prefix=True)
    replies = [llama.generate(ids, max_new_tokens, eos, reuse_prefix=True) for ids in prompts[split + 1 :]]
    seconds = sum(r.wall_s for r in replies)
    tokens = sum(len(r.tokens) for r in replies)
    return {
        "seconds": seconds,
        "calls": len(replies),
        "new_tokens": tokens,
        "prompt_tokens": sum(len(p) for p in prompts[split + 1 :]),
        "cached_prompt_tokens": sum(r.reused_tokens for r in replies),
        "prefill_s": [round(r.prefill_s, 4) for r in replies],
        "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
        "note": "model time inside llama.cpp only (no framework), the file's own precision: its tokens may differ",
    }


def _summarize(method: str, seconds: float, log: CallLog) -> dict[str, Any]:
    """Per pipeline and method: wall time, tokens/s, prefill and TTFT per call, accepted tokens by source."""
    row: dict[str, Any] = {"seconds": seconds}
    if method == "hf":
        tokens = sum(c["tokens"] for c in log.hf_calls)
        row.update(calls=len(log.hf_calls), new_tokens=tokens)
    else:
        stats = [r.stats for r in log.results]
        tokens = sum(s.new_tokens for s in stats)
        steps = sum(s.verify_steps for s in stats) or 1
        skip_accepted = sum(
            max(0, s.accepted_drafted_tokens - s.context_accepted_tokens - s.memory_accepted_tokens) for s in stats
        )
        row.update(
            calls=len(stats),
            new_tokens=tokens,
            prompt_tokens=sum(s.prompt_tokens for s in stats),
            cached_prompt_tokens=sum(s.cached_prompt_tokens for s in stats),
            # the first token comes out of the prefill: its time is the call's time to first token
            prefill_s=[round(s.prefill_time_s, 4) for s in stats],
            tokens_per_step=(tokens - len(stats)) / steps + 1.0 if stats else 0.0,
            accepted_per_step={
                "layer_skip": skip_accepted / steps,
                "context": sum(s.context_accepted_tokens for s in stats) / steps,
                "memory": sum(s.memory_accepted_tokens for s in stats) / steps,
            },
        )
    row["tokens_per_s"] = tokens / seconds if seconds > 0 else 0.0
    return row


def run_pipelines(
    model_id: str | None = None,
    *,
    pipelines: Sequence[str] = PIPELINES,
    methods: Sequence[str] = METHODS,
    max_new_tokens: int = 64,
    quick: bool = False,
    progress: Callable[[str], None] | None = None,
    llama: Any = None,
    dtype: str = "auto",
) -> dict[str, Any]:
    """Run every pipeline with every method; the result is what ``--json`` writes and the tables read.

    ``llama``: a :class:`~swift_integrations.bench.llama_cpp_baseline.LlamaCppBaseline` on the model's GGUF
    file; it replays the ``plain`` method's prompts (warm-up, then measured, keeping the shared prefix
    like llama.cpp's server with ``cache_prompt``), so it needs ``plain`` among the methods.

    ``dtype``: the engine methods' precision (``"int8"``, ``"bfloat16"``...; ``auto``: the file's
    precision on CPU, int4 for a 4-bit GGUF). ``hf`` always runs float32 ``transformers``: what users run today.
    """
    import os
    import platform

    import torch
    import transformers

    from swift_engine.kernels.machine import cpu_name
    from swift_engine.loading import auto_precision, is_auto_dtype, load_model, precision_name

    say = progress or (lambda msg: logger.info("%s", msg))
    loaded = load_model(model_id, device="cpu", dtype="float32")
    model, tokenizer = loaded.model, loaded.tokenizer
    if is_auto_dtype(dtype):  # the file's precision (a 4-bit GGUF: int4)
        precision = auto_precision(model_id).precision
        dtype = precision
    else:
        precision = precision_name(dtype, torch.device("cpu"))
    # the engine methods' own copy at their precision (the same object as hf's in float32)
    engine_model = model if precision == "float32" else load_model(model_id, device="cpu", dtype=dtype).model
    work = {
        "agent": (AGENT_WARMUP[:1] if quick else AGENT_WARMUP, AGENT_TASKS[:2] if quick else AGENT_TASKS),
        "rag": (RAG_WARMUP[:1] if quick else RAG_WARMUP, RAG_QUESTIONS[:2] if quick else RAG_QUESTIONS),
        "refine": (REFINE_WARMUP[:1] if quick else REFINE_WARMUP, REFINE_QUESTIONS[:1] if quick else REFINE_QUESTIONS),
    }
    result: dict[str, Any] = {
        "meta": {
            "model": loaded.model_name,
            "source": loaded.source,
            "cpu": cpu_name(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "max_new_tokens": max_new_tokens,
            "precision": precision,
            "quick": quick,
            "date": time.strftime("%Y-%m-%d"),
        },
        "pipelines": {},
    }
    with tempfile.TemporaryDirectory(prefix="swift-pipeline-bench-") as tmp:
        store = Path(tmp)
        for name in pipelines:
            warmup, measured = work[name]
            rows: dict[str, Any] = {}
            answers: dict[str, list[str]] = {}
            tokens: dict[str, list[list[int]]] = {}
            prompts: list[list[int] | None] = []  # the plain method's, for the llama.cpp replay
            eos: list[int] = []  # and its engine's end-of-sequence ids
            for method in methods:
                log = CallLog()
                engine = None
                if method == "hf":
                    chat, llm = _hf_models(model, tokenizer, max_new_tokens, log)
                else:
                    engine = _method_engine(engine_model, tokenizer, method, store)
                    engine.add_result_listener(log.results.append)
                    chat, llm = _swift_models(engine, max_new_tokens)
                    if method == "plain":
                        engine.encode_prompt = _recording(engine.encode_prompt, prompts)
                        eos = sorted(engine.eos_ids)
                run = {"agent": lambda ts: _agent(chat, ts), "rag": lambda ts: _rag(chat, ts)}.get(
                    name, lambda ts: _refine(llm, ts)
                )
                say(f"{name}: {method} warm-up ({len(warmup)} tasks)")
                run(warmup)
                log.clear()
                if method == "plain":
                    prompts.append(None)  # the measured calls' prompts follow
                say(f"{name}: {method} measured ({len(measured)} tasks)")
                t0 = time.perf_counter()
                answers[method] = run(measured)
                seconds = time.perf_counter() - t0
                rows[method] = _summarize(method, seconds, log)
                if engine is not None:
                    tokens[method] = [list(r.token_ids) for r in log.results]
                    engine.remove_result_listener(log.results.append)
                say(f"{name}: {method} {seconds:.1f}s")
            if llama is not None and "plain" in tokens:
                split = prompts.index(None)
                say(f"{name}: llama.cpp replays the plain method's {split} + {len(prompts) - split - 1} prompts")
                rows["llama_cpp"] = _replay(llama, prompts, max_new_tokens, eos)
            exact = {m: tokens[m] == tokens["plain"] for m in tokens if m != "plain" and "plain" in tokens}
            result["pipelines"][name] = {
                "tasks": list(measured),
                "methods": rows,
                "answers": answers,
                "exact_vs_plain": exact,
                "hf_same_answers": (answers.get("hf") == answers.get("plain")) if "hf" in answers else None,
            }
    return result


# ---------------------------------------------------------------------------------------- report


def render_markdown(result: dict[str, Any]) -> str:
    """The README's pipeline table: seconds, speed-ups, prefix reuse, accepted tokens per step by source."""
    m = result["meta"]
    lines = [
        f"*{m['model']}, {m['cpu']}, {m['threads']} threads, torch {m['torch']}, transformers {m['transformers']}, "
        f"greedy, max {m['max_new_tokens']} new tokens per call, {m['date']}; hf in float32, "
        f"the engine's methods in {m.get('precision', 'float32')}*",
        "",
        "| pipeline | method | seconds | vs hf | tokens/s | calls | prompt tokens cached | mean prefill s "
        "| accepted/step (skip · context · memory) | exact vs plain |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in result["pipelines"].items():
        hf = p["methods"].get("hf", {}).get("seconds")
        for method, row in p["methods"].items():
            ratio = f"{hf / row['seconds']:.2f}×" if hf and row["seconds"] else ""
            cached = ""
            prefill = ""
            acc = ""
            if "prompt_tokens" in row:
                cached = f"{row['cached_prompt_tokens']} / {row['prompt_tokens']}"
                prefill = f"{sum(row['prefill_s']) / max(1, len(row['prefill_s'])):.3f}"
            if "accepted_per_step" in row:
                a = row["accepted_per_step"]
                acc = f"{a['layer_skip']:.2f} · {a['context']:.2f} · {a['memory']:.2f}"
            exact = p["exact_vs_plain"].get(method)
            mark = "reference" if method == "plain" else ("" if exact is None else ("yes" if exact else "**no**"))
            if method == "hf" and p.get("hf_same_answers") is not None:
                mark = "same answers" if p["hf_same_answers"] else "answers differ"
            if method == "llama_cpp":
                mark = "own precision (replay)"
            lines.append(
                f"| {name} | {method} | {row['seconds']:.1f} | {ratio} | {row['tokens_per_s']:.1f} | {row['calls']} "
                f"| {cached} | {prefill} | {acc} | {mark} |"
            )
    return "\n".join(lines) + "\n"


def main(args: Any) -> int:
    """``swift-bench --pipeline``: run, print the table, write ``--json`` / ``--markdown`` when asked."""
    result = run_pipelines(
        args.model,
        pipelines=args.pipelines,
        methods=args.methods,
        max_new_tokens=args.max_new_tokens,
        quick=args.quick,
        progress=lambda msg: logger.warning("%s", msg),
        llama=getattr(args, "llama", None),
        dtype=getattr(args, "dtype", "auto"),
    )
    table = render_markdown(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table)
    import sys

    sys.stdout.write(table)
    bad = [n for n, p in result["pipelines"].items() if not all(p["exact_vs_plain"].values())]
    return 1 if bad else 0
