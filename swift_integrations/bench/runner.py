"""Running ``swift-bench``: load the engine, warm up, time every method over every class.

:func:`run_benchmark` runs the phases, each over the prompts of every class:

* an untimed warm-up of every code path (and, on a GPU, until its clocks are up);
* ``cold``: from reset profiles, every baseline and SWIFT once per prompt (the layer-set search runs
  during these SWIFT calls);
* ``warmup``: ``warmup_calls`` more SWIFT calls per class, timed and reported apart, so the
  profiles settle;
* ``warm``: ``repeats`` rounds of every baseline and SWIFT with the learned profiles.

The step key of every SWIFT call is the prompt's class, so each class learns its own skip profile.
The methods of one prompt run back to back (in an order rotated from prompt to prompt), so machine
noise hits them alike; speed-ups are ratios of runs of the same prompt in the same round
(:func:`swift_integrations.bench.summary.summarize`). The benchmark uses its own temporary profile
store (:func:`load_engine`): it never reads or resets the user's profiles.

``torch`` is imported inside the functions that use it: ``swift-accel`` imports the benchmark's
command at start-up and must not pay for it.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Literal

from swift_integrations.bench.measure import Bench
from swift_integrations.bench.methods import METHODS, PROMPT_LOOKUP_TOKENS
from swift_integrations.bench.prompt_sets import BenchPrompt
from swift_integrations.bench.summary import memory_by_method, summarize

if TYPE_CHECKING:  # pragma: no cover
    from swift_engine.config import SwiftConfig
    from swift_engine.engine import SwiftEngine

DEFAULT_MAX_NEW_TOKENS = 96
#: Minimum untimed warm-up on a GPU (clock ramp-up).
WARMUP_SECONDS_GPU = 5.0


def bench_config(cpu_kernels: Literal["auto", "packed", "onednn", "torch"], context_drafts: bool) -> SwiftConfig:
    """The engine configuration the benchmark measures (``--kernels``, ``--no-context-drafts``)."""
    from swift_engine.config import SwiftConfig

    # One call's decode is measured here, and every phase repeats the same prompts: the prefix cache
    # would skip their prefill and the draft memory would copy the cold phase's replies, which
    # measures the repetition. Those two are measured on held-out tasks by --pipeline.
    return SwiftConfig(cpu_kernels=cpu_kernels, context_drafts=context_drafts, prefix_cache=False, draft_memory=0)


def load_engine(model: str | None, device: str, dtype: str, profile_dir: str, config: Any = None) -> SwiftEngine:
    """The engine to benchmark, on the run's scratch profile store (the user's profiles stay untouched)."""
    from swift_engine.engine import SwiftEngine
    from swift_engine.store.profile_store import ProfileStore

    return SwiftEngine.from_pretrained(
        model, device=device, dtype=dtype, config=config, profile_store=ProfileStore(profile_dir)
    )


def run_benchmark(
    engine: Any,
    prompts: Sequence[BenchPrompt],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    repeats: int = 1,
    warmup_calls: int = 3,
    hf_lookup: bool = True,
    progress: bool | None = None,
    llama_cpp: Any = None,
) -> dict[str, Any]:
    """Run every method over ``prompts`` and return the full result (what ``--json`` writes).

    This resets ``engine.profiles`` (all step keys of the model) before the cold pass: give it an
    engine with a scratch :class:`~swift_engine.store.profile_store.ProfileStore`, as
    :func:`swift_integrations.bench.command.main` does.
    """
    from tqdm.auto import tqdm

    if not prompts:
        raise ValueError("no prompts to benchmark")
    if repeats < 1 or warmup_calls < 0 or max_new_tokens < 1:
        raise ValueError("repeats and max_new_tokens must be >= 1, warmup_calls >= 0")
    bench = Bench(engine, max_new_tokens, llama_cpp)
    classes = list(dict.fromkeys(p.cls for p in prompts))
    baselines = ["hf"] + (["hf_lookup"] if hf_lookup else []) + (["llama_cpp"] if llama_cpp else []) + ["plain"]
    methods = [m for m in METHODS if (m != "hf_lookup" or hf_lookup) and (m != "llama_cpp" or llama_cpp)]
    t_start = time.perf_counter()

    for p in prompts:
        bench.ids[p.id] = engine.encode_prompt(p.messages)
    bench.snapshot_memory("loaded")

    n_calls = len(prompts) * (len(baselines) + 1) * (1 + repeats) + len(classes) * warmup_calls
    bar = tqdm(total=n_calls, desc="swift-bench", unit="call", disable=(None if progress is None else not progress))

    costs, setup_s = _warm_up(bench, bench.ids[prompts[0].id], baselines)
    bench.snapshot_memory("setup")
    _cold_pass(bench, prompts, baselines, bar)
    bench.snapshot_memory("cold")
    learned = _warmup_calls(bench, prompts, classes, warmup_calls, bar)
    bench.snapshot_memory("warmup")
    _warm_rounds(bench, prompts, baselines, repeats, bar)
    bench.snapshot_memory("warm")
    bar.close()
    bench.check_exactness()

    final = {cls: _profile_summary(engine, cls) for cls in classes}
    result = summarize(bench, prompts, classes, methods, baselines, learned, final)
    result["meta"] = bench_meta(engine, costs, max_new_tokens, repeats, warmup_calls, hf_lookup, setup_s)
    result["meta"]["total_time_s"] = time.perf_counter() - t_start
    result["memory"] = {"phases": bench.memory, "by_method": memory_by_method(bench.runs, methods)}
    result["runs"] = [asdict(r) for r in bench.runs]
    return result


def _warm_up(bench: Bench, first: list[int], baselines: list[str]) -> tuple[Any, float]:
    """Untimed warm-up of every code path on the first prompt; the engine's costs and the seconds it took.

    It covers lazy initialisations, the allocator, and the engine's one-time cost measurement, so that
    none of it lands in the first timed call. A GPU also needs a few seconds of load before its clocks
    are up: without that the first timed prompt runs ~5x slower.
    """
    engine = bench.engine
    t = time.perf_counter()
    costs = engine.costs
    deadline = t + (WARMUP_SECONDS_GPU if bench.cuda else 0.0)
    while True:
        for m in baselines:
            if m == "plain":
                bench.generate_engine(first, "swift-bench-warmup", False, max_new_tokens=8)
            elif m == "llama_cpp":
                bench.generate_llama_cpp(first, max_new_tokens=8)
            else:
                bench.generate_hf(first, m, max_new_tokens=8)
        bench.generate_engine(first, "swift-bench-warmup", None, max_new_tokens=8)
        if time.perf_counter() >= deadline:
            break
    return costs, time.perf_counter() - t


def _cold_pass(bench: Bench, prompts: Sequence[BenchPrompt], baselines: list[str], bar: Any) -> None:
    """Cold: fresh profiles, first pass over each class's prompts."""
    bench.engine.profiles.reset()
    for i, p in enumerate(prompts):
        bar.set_postfix_str(f"cold {p.id}")
        for m in _rotate(baselines + ["swift_cold"], i):
            bench.measure(p, m, "cold", 0)
            bar.update()


def _warmup_calls(
    bench: Bench, prompts: Sequence[BenchPrompt], classes: list[str], warmup_calls: int, bar: Any
) -> dict[str, Any]:
    """Warm-up: more SWIFT calls per class (timed, reported separately) so the profiles settle.

    Returns each class's profile summary after them.
    """
    for cls in classes:
        of_class = [p for p in prompts if p.cls == cls]
        for j in range(warmup_calls):
            p = of_class[j % len(of_class)]
            bar.set_postfix_str(f"warm-up {cls}")
            bench.measure(p, "swift_warmup", "warmup", j)
            bar.update()
    return {cls: _profile_summary(bench.engine, cls) for cls in classes}


def _warm_rounds(bench: Bench, prompts: Sequence[BenchPrompt], baselines: list[str], repeats: int, bar: Any) -> None:
    """Warm: the learned profiles, timed again against fresh baseline runs."""
    for r in range(repeats):
        for i, p in enumerate(prompts):
            bar.set_postfix_str(f"warm {p.id} ({r + 1}/{repeats})")
            for m in _rotate(baselines + ["swift_warm"], i + r + 1):
                bench.measure(p, m, "warm", r)
                bar.update()


def run_constrained(engine: Any, max_new_tokens: int, progress: bool, quick: bool = False) -> dict[str, Any]:
    """``--constrained``: the structured-output cases (:mod:`swift_integrations.bench.constrained`); with
    ``quick``, the first case of each kind (a JSON reply, a forced tool call)."""
    from tqdm.auto import tqdm

    from swift_integrations.bench.constrained import load_cases, run_constrained_benchmark

    cases = load_cases()
    if quick:
        cases = [case for i, case in enumerate(cases) if case.kind not in {c.kind for c in cases[:i]}]
    with tqdm(total=2 * len(cases), desc="swift-bench constrained", unit="case", disable=not progress) as bar:
        return run_constrained_benchmark(Bench(engine, max_new_tokens), cases, max_new_tokens, progress=bar)


def _rotate(seq: Sequence[str], k: int) -> list[str]:
    """``seq`` rotated left by ``k``: each prompt runs the methods in another order."""
    k %= len(seq)
    return list(seq[k:]) + list(seq[:k])


def _profile_summary(engine: Any, cls: str) -> dict[str, Any] | None:
    """The profile ``cls`` has learned so far: its mode, skip set, scores, and the layer-skip ceiling."""
    record = engine.profiles.get(cls)
    if record is None:
        return None
    n = engine.runner.num_layers
    skipped = len(record.skip.attention) + len(record.skip.mlp)
    speedup = record.expected_speedup
    ceiling = skip_ceiling(engine, record.observations)
    return {
        "mode": "plain" if record.plain or speedup is None or speedup < 1.0 else "swift",
        "skip_attention": list(record.skip.attention),
        "skip_mlp": list(record.skip.mlp),
        "skip_ratio": skipped / (2 * n) if n else None,
        "score": record.score,
        "expected_speedup": speedup,
        "iterations": record.iterations,
        "converged": record.converged,
        "calls": record.calls,
        "tokens_seen": record.tokens_seen,
        "skip_ceiling": ceiling["speedup"] if ceiling else None,
        "skip_ceiling_at": ceiling,
    }


def skip_ceiling(engine: Any, observations: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The best speed-up layer skipping can give for this step on this hardware (the ceiling).

    Every skip set the search scored, re-evaluated with the engine's costs as they stand after
    the run (measured at start-up, corrected by the verification passes seen since): the expected
    speed-up over plain decoding of drafting with that set at its measured match score, at the
    best draft length. A ceiling below 1.0 means no set the search found can beat plain decoding
    here, and the step's best policy is plain decoding (plus context drafts).
    """
    if not observations:
        return None
    n = engine.runner.num_layers
    costs, max_draft = engine.costs, engine.config.max_draft_len
    best: dict[str, Any] | None = None
    for obs in observations:
        k = len(obs.get("attention", [])) + len(obs.get("mlp", []))
        sp, length = costs.expected_speedup(float(obs["score"]), k / (2 * n), max_draft)
        if best is None or sp > best["speedup"]:
            best = {"speedup": sp, "score": float(obs["score"]), "skip_ratio": k / (2 * n), "draft_len": length}
    return best


def bench_meta(
    engine: Any, costs: Any, max_new_tokens: int, repeats: int, warmup_calls: int, hf_lookup: bool, setup_s: float
) -> dict:
    """The ``meta`` of a result: model, device, precision, kernels, versions and the run's settings."""
    import torch
    import transformers

    from swift_engine.kernels.machine import cpu_name

    device = engine.runner.device
    choice = engine.kernel_choice  # auto's kernels, measured on this machine (before "kernels" is read)
    meta = {
        "model": engine.model_name,
        "fingerprint": engine.fingerprint,
        "num_layers": engine.runner.num_layers,
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()),
        "dtype": engine.runner.precision,
        "row_invariant": engine.runner.row_invariant,
        # the most rows a verification pass may have with row-invariant kernels (0: no cap)
        "max_verify_rows": engine.runner.max_rows,
        "kernels": engine.runner.kernels,
        "kernel_timings_ms": choice.timings_ms if choice is not None else None,
        "kernel_memory_bytes": engine.runner.packed_bytes,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "max_new_tokens": max_new_tokens,
        "repeats": repeats,
        "warmup_calls": warmup_calls,
        "hf_lookup": hf_lookup,
        "prompt_lookup_num_tokens": PROMPT_LOOKUP_TOKENS,
        "engine_config": engine.config.model_dump(mode="json"),
        "costs": costs.to_dict() if hasattr(costs, "to_dict") else None,
        "setup_time_s": setup_s,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return meta
