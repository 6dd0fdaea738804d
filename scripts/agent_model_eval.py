"""Which installable model can run a prebuilt agent? Tool-call rate and final-answer quality, measured.

Runs LangChain's ``create_agent`` (auto tool choice, nothing forced) with three tools over a small
task set, on each model of the catalog (``swift_engine.loading.catalog``), and reports per model:
how often it called the right tool with the right arguments, and how often its final message was an
answer containing the expected fact (not prose without it, not a call written as text). For the
agent model it also runs ``tool_followup="model"`` (the model decides after tool results), which
shows why the catalog asks it for the answer instead.

    .venv/bin/python scripts/agent_model_eval.py [--models smollm2-135m,qwen2.5-coder-0.5b] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, ToolMessage

from swift_integrations import SwiftChatModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' tools, from a checkout
from tests.agent_tools import get_weather, multiply, word_count  # noqa: E402

#: (question, expected tool, expected arguments, a fact the final answer must contain)
TASKS = [
    ("What is the weather in Paris?", "get_weather", {"city": "Paris"}, "18"),
    ("What is 12 times 34?", "multiply", {"a": 12, "b": 34}, "408"),
    ("Use the tool to compute 7 times 6.", "multiply", {"a": 7, "b": 6}, "42"),
    ("How is the weather in Tokyo right now?", "get_weather", {"city": "Tokyo"}, "sunny"),
    ("How many words are in the text 'the quick brown fox jumps'?", "word_count", None, "5"),
    ("Multiply 25 by 4.", "multiply", {"a": 25, "b": 4}, "100"),
]


def run(model: str, followup: str) -> dict:
    llm = SwiftChatModel(model=model, max_tokens=96, tool_followup=followup)
    agent = create_agent(llm, [get_weather, multiply, word_count])
    rows = []
    start = time.perf_counter()
    for question, tool_name, args, fact in TASKS:
        out = agent.invoke({"messages": [("user", question)]}, {"recursion_limit": 8})
        calls = [tc for m in out["messages"] if isinstance(m, AIMessage) for tc in m.tool_calls]
        first = calls[0] if calls else None
        right_call = first is not None and first["name"] == tool_name and (args is None or first["args"] == args)
        final = out["messages"][-1]
        text = final.text if isinstance(final, AIMessage) else ""
        answered = bool(text) and not final.tool_calls and fact.lower() in text.lower() and '"name"' not in text
        rows.append(
            {
                "question": question,
                "called": first["name"] if first else None,
                "args": first["args"] if first else None,
                "right_call": right_call,
                "tool_results": sum(isinstance(m, ToolMessage) for m in out["messages"]),
                "final": text[:200],
                "answered": answered,
            }
        )
    n = len(rows)
    return {
        "model": model,
        "tool_followup": followup,
        "tool_call_rate": sum(r["right_call"] for r in rows) / n,
        "answer_rate": sum(r["answered"] for r in rows) / n,
        "seconds": round(time.perf_counter() - start, 1),
        "tasks": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m,qwen2.5-coder-0.5b")
    ap.add_argument("--json", default=None, help="also write the results here")
    opts = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = []
    for model in opts.models.split(","):
        for followup in ("auto", "model") if model == "qwen2.5-coder-0.5b" else ("auto",):
            res = run(model, followup)
            results.append(res)
            print(
                f"{model:22s} tool_followup={followup:6s} right tool call {res['tool_call_rate']:.0%}  "
                f"answered {res['answer_rate']:.0%}  ({res['seconds']} s)"
            )
            for r in res["tasks"]:
                print(f"    {r['question'][:44]:44s} call={r['called']} {r['args']}  final={r['final'][:70]!r}")
    if opts.json:
        with open(opts.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
