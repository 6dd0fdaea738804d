"""``swift-bench --batch``: calls in flight at once, with the engine's continuous batching and without.

What it answers (issue #33): how much a LangChain ``batch``, a RAG map step or a server under load
gains when concurrent calls share the model's passes (``swift_engine/batching``), and that each output
stays exactly what the call gives alone. Measured honestly (docs/bench/README): the step profiles
and draft memory are warmed on *other* prompts of each class (the first of each class of the packaged
set), and every configuration starts from its own copy of that warm store, so no run replays an
answer another run produced. Timed: the other prompts (8 with the packaged set), as

* ``sequential``: one call after another (SWIFT, step key = the prompt's class): the baseline;
* ``threads, batching on``/``off``: all at once from ``c`` threads (``c`` = 2, 4, 8), the engine's
  default (``batch_rows=16``) against ``batch_rows=0`` (calls take turns on the model, as before);
* ``LangChain batch``: ``SwiftChatModel.batch(..., max_concurrency=8)`` against a loop of ``invoke``.

Each row reports wall time, requests/s, p50/p95 latency, the ratio to ``sequential``, and how many
outputs differ from the sequential run's (greedy: must be 0).
"""

from __future__ import annotations

import concurrent.futures
import functools
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONCURRENCY = (2, 4, 8)


def _timed(jobs: list[Callable[[], Any]], workers: int) -> tuple[float, list[float], list[Any]]:
    """Wall seconds, per-job latencies and results of ``jobs`` run by ``workers`` threads."""
    latencies: list[float] = [0.0] * len(jobs)

    def run(i: int) -> Any:
        start = time.perf_counter()
        out = jobs[i]()
        latencies[i] = time.perf_counter() - start
        return out

    start = time.perf_counter()
    if workers == 1:
        results = [run(i) for i in range(len(jobs))]
    else:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(run, range(len(jobs))))
    return time.perf_counter() - start, latencies, results


def _row(name: str, wall: float, latencies: list[float], differ: int, base: float | None) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "name": name,
        "wall_s": wall,
        "requests_per_s": len(latencies) / wall,
        "p50_s": statistics.median(ordered),
        "p95_s": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "vs_sequential": (base / wall) if base else 1.0,
        "outputs_differing": differ,
    }


def run_batch_bench(engine: Any, prompts: list[Any], max_new_tokens: int) -> dict[str, Any]:
    """The table above for ``engine`` (loaded by the caller) and the packaged-style ``prompts``."""
    from swift_engine import SwiftEngine
    from swift_integrations import SwiftChatModel

    warm_set = {p.cls: p for p in reversed(prompts)}  # the first prompt of each class
    timed = [p for p in prompts if warm_set.get(p.cls) is not p]
    with tempfile.TemporaryDirectory(prefix="swift-bench-batch-") as root:
        warm = Path(root) / "warm"
        warm_engine = SwiftEngine(engine.model, engine.tokenizer, engine.config, profile_store=warm)
        for p in warm_set.values():
            for _ in range(2):
                warm_engine.generate(p.messages, max_new_tokens=max_new_tokens, step_key=p.cls)

        def fresh(name: str, **config: Any) -> SwiftEngine:
            store = Path(root) / name
            shutil.copytree(warm, store)
            cfg = engine.config.model_copy(update=config) if config else engine.config
            return SwiftEngine(engine.model, engine.tokenizer, cfg, profile_store=store, model_name=engine.model_name)

        def call(e: SwiftEngine, p: Any) -> Any:
            return e.generate(p.messages, max_new_tokens=max_new_tokens, step_key=p.cls)

        def jobs(e: SwiftEngine) -> list[Callable[[], Any]]:
            return [functools.partial(call, e, p) for p in timed]

        rows = []
        wall, lat, reference = _timed(jobs(fresh("sequential")), 1)
        expected = [r.token_ids for r in reference]
        rows.append(_row("sequential (SWIFT, one call at a time)", wall, lat, 0, None))
        base = wall
        for workers in CONCURRENCY:
            for batching in (True, False):
                e = fresh(f"c{workers}-{batching}", **({} if batching else {"batch_rows": 0}))
                wall, lat, out = _timed(jobs(e), workers)
                differ = sum(r.token_ids != t for r, t in zip(out, expected, strict=True))
                name = f"{workers} threads, batching {'on' if batching else 'off (calls take turns)'}"
                rows.append(_row(name, wall, lat, differ, base))
        # LangChain: batch against a loop of invoke, each over its own copy of the warm store
        inputs = [p.messages for p in timed]
        loop_llm = SwiftChatModel(engine=fresh("lc-loop"), max_tokens=max_new_tokens)
        wall, lat, loop_out = _timed([functools.partial(loop_llm.invoke, m) for m in inputs], 1)
        rows.append(_row("LangChain: invoke in a loop", wall, lat, 0, base))
        loop_wall = wall
        batch_llm = SwiftChatModel(engine=fresh("lc-batch"), max_tokens=max_new_tokens)
        start = time.perf_counter()
        batch_out = batch_llm.batch(inputs, config={"max_concurrency": len(inputs)})
        wall = time.perf_counter() - start
        differ = sum(a.content != b.content for a, b in zip(loop_out, batch_out, strict=True))
        row = _row("LangChain: batch(max_concurrency=8)", wall, [wall] * len(inputs), differ, base)
        row["vs_invoke_loop"] = loop_wall / wall
        rows.append(row)
    return {
        "meta": {
            "model": engine.model_name,
            "precision": engine.runner.precision,
            "kernels": engine.runner.kernels,
            "max_new_tokens": max_new_tokens,
            "timed_prompts": [p.id for p in timed],
            "warm_prompts": [p.id for p in warm_set.values()],
        },
        "rows": rows,
    }


def batch_markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"{meta['model']} at {meta['precision']} ({meta['kernels']}), {len(meta['timed_prompts'])} held-out prompts, "
        f"{meta['max_new_tokens']} new tokens each; profiles warmed on {', '.join(meta['warm_prompts'])}.",
        "",
        "| run | wall s | requests/s | p50 s | p95 s | x sequential | outputs differing |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['name']} | {row['wall_s']:.2f} | {row['requests_per_s']:.2f} | {row['p50_s']:.2f} | "
            f"{row['p95_s']:.2f} | {row['vs_sequential']:.2f} | {row['outputs_differing']} |"
        )
    return "\n".join(lines) + "\n"
