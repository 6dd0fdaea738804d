"""Memory under churn (``swift-bench --soak``): does the server's memory level off?

One server process, started as users start it (``python -m swift_integrations.serve``, with a
scratch profile store), gets ``requests`` chat requests from ``concurrency`` clients. Every
request brings something new to keep: its own system prompt (a new prefix for the prefix cache)
and its own step key (a new profile, a new per-step draft memory); a third are streamed and read
to the end, a third are streamed and dropped after the first event (a client that disconnects).
The server's resident memory (``/proc/<pid>/status``) is read after every ``every`` requests.

The verdict is the growth over the last half of the run: a server whose caches are bounded
levels off (under 5%); one that keeps something per request grows in proportion. This is a
benchmark, not a timed test: the figures go to ``docs/bench`` with the machine that ran them.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from swift_integrations.bench.serve import KEY, Server, publish, question

logger = logging.getLogger(__name__)

__all__ = ["LEVEL_OFF_GROWTH", "main", "run_soak"]

#: The growth over the last half of the requests under which memory has levelled off.
LEVEL_OFF_GROWTH = 0.05


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _one(url: str, index: int, max_tokens: int) -> str:
    """Request ``index``: its own system prompt and step key; plain, streamed, or streamed and dropped."""
    import httpx

    body: dict[str, Any] = {
        "messages": [
            {"role": "system", "content": f"You are assistant number {index}. Answer in one short sentence."},
            {"role": "user", "content": question(index)},
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
        "metadata": {"swift_step": f"soak-{index}"},
    }
    headers = {"Authorization": f"Bearer {KEY}"}
    kind = ("plain", "stream", "disconnect")[index % 3]
    if kind == "plain":
        resp = httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=600)
        return kind if resp.status_code == 200 else f"HTTP {resp.status_code}"
    with httpx.stream(
        "POST", url + "/v1/chat/completions", json={**body, "stream": True}, headers=headers, timeout=600
    ) as resp:
        if resp.status_code != 200:
            return f"HTTP {resp.status_code}"
        for line in resp.iter_lines():
            if line.startswith("data: ") and kind == "disconnect":
                return kind  # leaving the block closes the connection mid-stream
    return kind


def run_soak(
    model: str | None = None, requests: int = 1000, every: int = 100, max_tokens: int = 8, concurrency: int = 2
) -> dict[str, Any]:
    """Run the soak and return its result: RSS after each ``every`` requests, the verdict, the errors."""
    from tqdm.auto import tqdm

    from swift_engine.kernels.machine import cpu_name

    if requests < 2 * every:
        raise ValueError("requests must be at least twice 'every' (the verdict compares the last half)")
    flags = ["--max-queue", str(2 * concurrency)] + (["--model", model] if model else [])
    rows: list[dict[str, Any]] = []
    errors: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="swift-soak-") as scratch:
        env = {"SWIFT_PROFILE_DIR": str(Path(scratch) / "profiles")}  # the server's store, not the user's
        with Server(flags, Path(scratch) / "server.log", startup_timeout=600, env=env) as server:
            rows.append({"requests": 0, "rss_bytes": _rss_bytes(server.proc.pid)})
            started = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool, tqdm(total=requests, desc="soak", unit="req") as bar:
                for start in range(0, requests, every):
                    batch = range(start, min(start + every, requests))
                    for outcome in pool.map(lambda i: _one(server.url, i, max_tokens), batch):
                        if outcome.startswith("HTTP"):
                            errors[outcome] = errors.get(outcome, 0) + 1
                        bar.update()
                    rows.append({"requests": batch[-1] + 1, "rss_bytes": _rss_bytes(server.proc.pid)})
            seconds = time.perf_counter() - started
    half = next(r for r in rows if r["requests"] >= requests // 2)
    growth = rows[-1]["rss_bytes"] / half["rss_bytes"] - 1.0
    return {
        "rows": rows,
        "growth_last_half": growth,
        "levelled_off": growth < LEVEL_OFF_GROWTH,
        "errors": errors,
        "seconds": seconds,
        "settings": {"requests": requests, "every": every, "max_tokens": max_tokens, "concurrency": concurrency},
        "machine": {"cpu": cpu_name(), "cpus": os.cpu_count()},
        "command": "swift-bench --soak"
        + (f" --soak-requests {requests}" if requests != 1000 else "")
        + (f" --max-new-tokens {max_tokens}" if max_tokens != 8 else "")
        + (f" --model {model}" if model else ""),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def render_markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"Soak: {s['requests']} requests ({s['concurrency']} clients, {s['max_tokens']} tokens each; each with its own "
        "system prompt and step key; a third streamed, a third dropped mid-stream), "
        f"{result['machine']['cpu']}, {result['machine']['cpus']} CPUs, {result['seconds']:.0f} s. "
        f"Command: `{result['command']}`.",
        "",
        "| requests | server RSS (MiB) |",
        "|---:|---:|",
    ]
    lines += [f"| {r['requests']} | {r['rss_bytes'] / 2**20:.0f} |" for r in result["rows"]]
    verdict = "levelled off" if result["levelled_off"] else "still growing"
    lines += [
        "",
        f"Growth over the last half: {100 * result['growth_last_half']:+.1f}% ({verdict}; "
        f"under {100 * LEVEL_OFF_GROWTH:.0f}% counts as levelled off). Errors: {result['errors'] or 'none'}.",
        "",
    ]
    return "\n".join(lines)


def main(args: Any) -> int:
    """``swift-bench --soak``: run, print and write the table; status 1 unless memory levelled off without errors."""
    result = run_soak(args.model, requests=args.requests, max_tokens=args.max_new_tokens)
    publish(result, render_markdown(result), args.json, args.markdown)
    return 0 if result["levelled_off"] and not result["errors"] else 1
