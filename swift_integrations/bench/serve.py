"""Load benchmark of the HTTP server: one process against Ray Serve replicas (``swift-bench --serve``).

Each deployment is started the way a user starts it (``python -m swift_integrations.serve``, with
``--ray --replicas N`` for the replicas) in its own process group on a free port, and warmed up
(cost measurement, kernel choice, a few calls per step so each step's search has run). Then a
closed-loop client loads it at each concurrency level: ``concurrency`` workers send streamed chat
requests back to back until the level's requests are done. Per level: requests/s, output
tokens/s, latency and time-to-first-token p50/p95, errors, and outputs that differ from the
single-process server's greedy answer to the same prompt (the reference is taken sequentially on
the single process after its warm-up, before its levels run).

Every request asks a question of its own (:func:`question`: 96 distinct ones from templates and
subjects), so no request replays an answer the step's draft memory kept from an earlier one: the
warm-up, each level and the reference take separate questions, and the reference (the same
questions, one at a time) is taken after the levels. Requests cycle through pipeline steps
(``metadata.swift_step``), so every step key is searched and shared across replicas as in a real
pipeline. On a machine with fewer cores than replicas x threads, replicas contend for the CPU: the
table says how many cores there were.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["DEPLOYMENTS", "main", "run_serve_bench"]

#: the single process with continuous batching (the default), the same with it off (``--batch-rows 0``:
#: requests take turns on the model), and Ray Serve replicas (each batching its own requests)
DEPLOYMENTS = ("single", "unbatched", "ray")
LEVELS = (1, 4, 16)
KEY = "bench-key"
TEMPLATES = [
    "Name three {} and one fact about each.",
    "Explain in two sentences why people find {} interesting.",
    "Write a haiku about {}.",
    "Give two tips for someone who wants to learn about {}.",
    "Describe {} to a child in three sentences.",
    "List five {}, one per line.",
    "Write one short paragraph comparing two {}.",
    "What is a common misconception about {}? Answer briefly.",
]
SUBJECTS = [
    "rivers", "birds", "programming languages", "board games", "musical instruments", "vegetables",
    "planets", "bridges", "clouds", "sports", "spices", "trees",
]  # fmt: skip
STEPS = ["answer", "summarize", "plan", "explain"]
#: questions the warm-up takes (its rounds' first indices); the levels take the next ones
WARM_QUESTIONS = len(TEMPLATES)


def question(index: int) -> str:
    """Request ``index``'s question: distinct for the first ``len(TEMPLATES) * len(SUBJECTS)`` (96)."""
    template = TEMPLATES[index % len(TEMPLATES)]
    return template.format(SUBJECTS[(index // len(TEMPLATES)) % len(SUBJECTS)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``python -m swift_integrations.serve`` in its own process group, stopped (all of it) on exit."""

    def __init__(
        self, flags: Sequence[str], log_path: Path, startup_timeout: float, env: dict[str, str] | None = None
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **(env or {}), "SWIFT_API_KEY": KEY}
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(
            # requests name the model "swift" (a server answers only the names it serves)
            [sys.executable, "-m", "swift_integrations.serve", "--port", str(self.port), *flags]
            + ([] if "--served-model-name" in flags else ["--served-model-name", "swift"]),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self._startup_timeout = startup_timeout
        self._log_path = log_path

    def __enter__(self) -> Server:
        import httpx

        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}); see {self._log_path}")
            try:
                if httpx.get(self.url + "/v1/models", headers=_auth(), timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.__exit__()
        raise RuntimeError(f"the server did not answer within {self._startup_timeout:.0f} s; see {self._log_path}")

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # serve.run and uvicorn shut down on SIGINT
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def one_request(url: str, index: int, max_tokens: int, timeout: float = 600) -> dict[str, Any]:
    """One streamed chat request: latency, time to first token, tokens, text (or the error)."""
    import httpx

    body = {
        "model": "swift",
        "messages": [{"role": "user", "content": question(index)}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "metadata": {"swift_step": STEPS[index % len(STEPS)]},
    }
    started = time.perf_counter()
    first = None
    parts: list[str] = []
    tokens = 0
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=_auth(), timeout=timeout) as resp:
            if resp.status_code != 200:
                return {"index": index, "error": f"HTTP {resp.status_code}: {resp.read().decode()[:200]}"}
            for line in resp.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return {"index": index, "error": event["error"].get("message", "error event")}
                for choice in event.get("choices", []):
                    text = choice.get("delta", {}).get("content") or ""
                    if text:
                        first = first if first is not None else time.perf_counter()
                        parts.append(text)
                if event.get("usage"):
                    tokens = int(event["usage"]["completion_tokens"])
    except httpx.HTTPError as exc:
        return {"index": index, "error": f"{type(exc).__name__}: {exc}"}
    end = time.perf_counter()
    return {
        "index": index,
        "latency_s": end - started,
        "ttft_s": (first if first is not None else end) - started,
        "tokens": tokens,
        "text": "".join(parts),
    }


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run_level(
    url: str, concurrency: int, requests: int, max_tokens: int, reference: dict[int, str], first: int = 0
) -> dict[str, Any]:
    """``requests`` requests (questions ``first``, ``first + 1``, ...) by ``concurrency`` closed-loop
    workers; the level's figures, and its outputs (``outputs``: text by question index), compared with
    ``reference`` where it has the question (see :func:`count_mismatches` for a reference taken later)."""
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda i: one_request(url, i, max_tokens), range(first, first + requests)))
    wall = time.perf_counter() - started
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    mismatched = [r["index"] for r in ok if r["text"] != reference.get(r["index"], r["text"])]
    latencies = [r["latency_s"] for r in ok]
    ttfts = [r["ttft_s"] for r in ok]
    return {
        "concurrency": concurrency,
        "requests": requests,
        "errors": len(errors),
        "error_samples": errors[:3],
        "mismatched": len(mismatched),
        "wall_s": wall,
        "requests_per_s": len(ok) / wall,
        "output_tokens_per_s": sum(r["tokens"] for r in ok) / wall,
        "latency_p50_s": _pct(latencies, 50),
        "latency_p95_s": _pct(latencies, 95),
        "ttft_p50_s": _pct(ttfts, 50),
        "ttft_p95_s": _pct(ttfts, 95),
        "outputs": {str(r["index"]): r["text"] for r in ok},
    }


def count_mismatches(level: dict[str, Any], reference: dict[int, str]) -> None:
    """Set ``level["mismatched"]``: its outputs that differ from ``reference``'s for the same question."""
    outputs = level.get("outputs", {})
    level["mismatched"] = sum(text != reference.get(int(i), text) for i, text in outputs.items())


def run_serve_bench(
    model: str | None,
    *,
    deployments: Sequence[str] = DEPLOYMENTS,
    levels: Sequence[int] = LEVELS,
    replicas: int = 2,
    max_tokens: int = 48,
    quick: bool = False,
    progress: Any = logger.warning,
) -> dict[str, Any]:
    """Start each deployment, warm it up, run every level; the results document."""
    import platform

    import torch

    from swift_engine.kernels.machine import cpu_name

    work = Path(tempfile.mkdtemp(prefix="swift-serve-bench-"))
    model_flags = ["--model", model] if model else []
    cores = os.cpu_count() or 1
    replica_cpus = max(1, cores // replicas)
    flags = {
        "single": [*model_flags, "--profile-dir", str(work / "single-profiles"), "--max-queue", "32"],
        "unbatched": [
            *model_flags,
            "--profile-dir",
            str(work / "unbatched-profiles"),
            "--max-queue",
            "32",
            "--batch-rows",
            "0",
        ],
        "ray": [
            *model_flags,
            "--ray",
            "--replicas",
            str(replicas),
            "--replica-cpus",
            str(replica_cpus),
            "--profile-dir",
            str(work / "ray-profiles"),
            "--max-queue",
            "32",
        ],
    }
    result: dict[str, Any] = {
        "machine": {
            "cpu": cpu_name(),
            "cpu_count": cores,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "model": model or "embedded SmolLM2-135M-Instruct",
        },
        "settings": {"max_tokens": max_tokens, "replicas": replicas, "replica_cpus": replica_cpus, "quick": quick},
        "command": "swift-bench --serve" + (f" --model {model}" if model else "") + (" --quick" if quick else ""),
        "deployments": {},
    }
    reference: dict[int, str] = {}
    plan = []  # (concurrency, requests, first question): each level its own questions, after the warm-up's
    first = WARM_QUESTIONS
    for c in levels:
        n = max(2 * c, 4 if quick else 16)  # 16 at low concurrency: a steadier baseline on a drifting VM
        plan.append((c, n, first))
        first += n
    for name in deployments:
        progress(f"starting the {name} deployment")
        with Server(flags[name], work / f"{name}.log", startup_timeout=600) as server:
            # warm-up: cost measurement, kernel choice and each step's search (a few calls per step, on
            # questions no level asks), so the levels measure serving rather than the optimization phase
            rounds = 2 if quick else 3
            with ThreadPoolExecutor(4) as pool:
                warm = list(
                    pool.map(
                        lambda i: one_request(server.url, i % WARM_QUESTIONS, max_tokens),
                        range(rounds * WARM_QUESTIONS),
                    )
                )
            out: dict[str, Any] = {"flags": flags[name], "warmup_errors": sum("error" in r for r in warm), "levels": []}
            for c, n, start in plan:
                progress(f"{name}: concurrency {c}, {n} requests")
                out["levels"].append(run_level(server.url, c, n, max_tokens, reference, start))
            if name == "single" or not reference:
                # the reference: the levels' questions one at a time on this process, after its levels (so no
                # level could replay its answers); the single process's when it runs
                progress(f"{name}: the reference, {first - WARM_QUESTIONS} requests one at a time")
                sequential = [one_request(server.url, i, max_tokens) for i in range(WARM_QUESTIONS, first)]
                reference = {r["index"]: r["text"] for r in sequential if "error" not in r}
            result["deployments"][name] = out
    for dep in result["deployments"].values():
        for level in dep["levels"]:
            count_mismatches(level, reference)
    return result


def render_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"Command: `{result['command']}`. Machine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']}; "
        f"model {m['model']}; {result['settings']['max_tokens']} new tokens per request (greedy, streamed); "
        f"Ray: {result['settings']['replicas']} replicas x {result['settings']['replica_cpus']} CPU.",
        "",
        "| deployment | concurrency | requests | errors | mismatched | req/s | tok/s | p50 s | p95 s "
        "| TTFT p50 s | TTFT p95 s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    for name, dep in result["deployments"].items():
        for lv in dep["levels"]:
            lines.append(
                f"| {name} | {lv['concurrency']} | {lv['requests']} | {lv['errors']} | {lv['mismatched']} | "
                f"{f(lv['requests_per_s'])} | {lv['output_tokens_per_s']:.1f} | {f(lv['latency_p50_s'])} | "
                f"{f(lv['latency_p95_s'])} | {f(lv['ttft_p50_s'])} | {f(lv['ttft_p95_s'])} |"
            )
    return "\n".join(lines) + "\n"


def publish(result: dict[str, Any], table: str, json_path: str | None, markdown_path: str | None) -> None:
    """Print ``table``; write ``result`` to ``--json`` and ``table`` to ``--markdown`` where asked."""
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1) + "\n")
    if markdown_path:
        Path(markdown_path).write_text(table)
    sys.stdout.write(table)


def main(args: Any) -> int:
    """``swift-bench --serve``: run, print the table, write ``--json`` / ``--markdown`` when asked.

    Exit status 1 when any request failed or any output differed from the single process's.
    """
    result = run_serve_bench(
        args.model,
        deployments=args.deployments,
        max_tokens=args.max_new_tokens,
        quick=args.quick,
        replicas=args.replicas,
    )
    publish(result, render_markdown(result), args.json, args.markdown)
    bad = [lv for dep in result["deployments"].values() for lv in dep["levels"] if lv["errors"] or lv["mismatched"]]
    return 1 if bad else 0
