"""``swift-bench``: SWIFT against plain decoding, on one model, in one process.

Every prompt is decoded greedily by five methods:

* ``hf``: ``transformers``' ``model.generate(do_sample=False)`` on the same token ids;
* ``hf_lookup``: ``transformers``' prompt-lookup decoding (``prompt_lookup_num_tokens=10``);
* ``plain``: the engine's own loop with ``speculative=False`` (same code path, no drafting);
* ``swift_cold``: SWIFT on the first pass over a class's prompts, from a reset profile (the layer-set
  search runs during these calls);
* ``swift_warm``: SWIFT after ``--warmup-calls`` more calls per class have refined the profile.

The step key of every SWIFT call is the prompt's class, so each class learns its own skip profile.
The methods of one prompt run back to back (in an order rotated from prompt to prompt), so machine
noise hits them alike; speed-ups are ratios of runs of the same prompt in the same round. Every
method's token ids are compared with ``hf``'s: greedy SWIFT must reproduce them exactly.

The benchmark uses its own temporary profile store: it never reads or resets the user's profiles.

The command line is the typer command :func:`bench`, run both by ``swift-bench`` and by
``swift-accel bench``. ``torch`` is imported inside the functions that use it: ``swift-accel`` registers
the command at start-up, and ``swift-accel --help`` or ``swift-accel profiles list`` must not pay for torch.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, TextIO

import typer
from typer.core import TyperCommand

if TYPE_CHECKING:  # pragma: no cover
    from swift_engine.engine import SwiftEngine

logger = logging.getLogger(__name__)

#: Every method, in report order.
METHODS = ("hf", "hf_lookup", "llama_cpp", "plain", "swift_cold", "swift_warm")
#: What SWIFT's speed-ups are reported against.
BASELINES = ("hf", "plain", "hf_lookup", "llama_cpp")
#: Baselines whose tokens may differ from hf's without it being this engine's fault: transformers'
#: prompt lookup (its own numerics) and llama.cpp (the GGUF file's own precision).
INEXACT_BASELINES = ("hf_lookup", "llama_cpp")
SWIFT_METHODS = ("swift_cold", "swift_warm")
#: Methods whose output must equal ``hf``'s (ours); a mismatch of ``hf_lookup`` is only a warning.
OWN_METHODS = ("plain", "swift_cold", "swift_warm")
DEFAULT_CLASSES = ("summarization", "context_qa", "code", "chat")
PROMPT_LOOKUP_TOKENS = 10
DEFAULT_MAX_NEW_TOKENS = 96
QUICK_MAX_NEW_TOKENS = 32
#: Fraction of the final expected speed-up that "tokens to 90%" measures.
CONVERGENCE_FRACTION = 0.9
#: Minimum untimed warm-up on a GPU (clock ramp-up).
WARMUP_SECONDS_GPU = 5.0
#: Exit status of ``main`` when our output differs from ``hf``'s.
EXIT_MISMATCH = 2


# ------------------------------------------------------------------------------------------------
# Prompts
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchPrompt:
    id: str
    cls: str
    messages: list[dict[str, str]]


def load_prompts(
    path: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
    per_class: int | None = None,
) -> list[BenchPrompt]:
    """The benchmark prompts (default: the packaged set), grouped by class in the requested order."""
    if path is None:
        text = resources.files("swift_integrations.bench").joinpath("prompts/bench_prompts.json").read_text("utf-8")
        source = "the packaged prompt set"
    else:
        text = Path(path).read_text("utf-8")
        source = str(path)
    data = json.loads(text)
    items = data["prompts"] if isinstance(data, dict) else data
    prompts: list[BenchPrompt] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        try:
            pid, cls, messages = str(item["id"]), str(item["class"]), item["messages"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"prompt #{i} of {source} needs 'id', 'class' and 'messages'") from exc
        if pid in seen:
            raise ValueError(f"duplicate prompt id {pid!r} in {source}")
        if not messages or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise ValueError(f"prompt {pid!r} of {source}: 'messages' must be a list of {{role, content}} dicts")
        seen.add(pid)
        prompts.append(BenchPrompt(pid, cls, list(messages)))
    available = list(dict.fromkeys(p.cls for p in prompts))
    wanted = list(classes) if classes else available
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise ValueError(f"unknown prompt class(es) {unknown}; {source} has {available}")
    out: list[BenchPrompt] = []
    for cls in wanted:
        of_class = [p for p in prompts if p.cls == cls]
        out.extend(of_class[:per_class] if per_class else of_class)
    return out


# ------------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One timed (or warm-up) generation."""

    phase: str  # "cold" | "warmup" | "warm"
    round: int
    prompt_id: str
    cls: str
    method: str
    new_tokens: int
    wall_time_s: float
    tokens_per_s: float
    #: Token ids equal to ``hf``'s reference for this prompt.
    exact: bool | None = None
    #: Index of the first differing token (``None`` when exact).
    first_mismatch: int | None = None
    #: Bytes held by the KV cache at the end of the generation (allocated buffers).
    kv_cache_bytes: int | None = None
    #: ``torch.cuda.max_memory_allocated`` during this generation (CUDA only).
    cuda_peak_bytes: int | None = None
    #: The engine's :class:`GenerationStats` (engine methods only).
    stats: dict[str, Any] | None = None
    #: Per-iteration expected speed-ups the search scored during this call (SWIFT only).
    search_speedups: list[float] | None = None
    #: Whether the step's profile counted as converged after this call (SWIFT only).
    profile_converged: bool | None = None
    #: Output token ids, kept only when they differ from the reference.
    token_ids: list[int] | None = None


def _first_mismatch(a: Sequence[int], b: Sequence[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _max_rss_bytes() -> int | None:
    """Peak resident set size of this process so far."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024  # bytes on macOS, KiB elsewhere


def _hf_cache_bytes(cache: Any) -> int | None:
    """Bytes of a transformers cache's keys and values (``None`` if its layout is unknown)."""
    import torch

    try:
        total = 0
        for layer in cache.layers:
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        return total
    except Exception:  # noqa: BLE001 - best effort: an unknown cache layout just reports nothing
        return None


class Bench:
    """Runs the methods on one engine and keeps every measurement."""

    def __init__(self, engine: Any, max_new_tokens: int, llama_cpp: Any = None) -> None:
        from transformers import GenerationConfig

        self.engine = engine
        #: a :class:`~swift_integrations.bench.llama_cpp_baseline.LlamaCppBaseline`, when that baseline runs
        self.llama_cpp = llama_cpp
        self.max_new_tokens = max_new_tokens
        self.device = engine.runner.device
        self.cuda = self.device.type == "cuda"
        tok = engine.tokenizer
        pad = getattr(tok, "pad_token_id", None)
        eos = sorted(engine.eos_ids)
        if pad is None:
            pad = eos[0] if eos else 0
        # A clean greedy config. generate() fills the fields we leave unset (None) from the model's own
        # generation_config, which may carry logits processors the engine does not apply: set the
        # ones that change greedy output to their neutral values, so that outputs stay comparable.
        common = dict(
            do_sample=False,
            num_beams=1,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            min_new_tokens=0,  # takes precedence over an inherited min_length
            suppress_tokens=[],
            begin_suppress_tokens=[],
            max_new_tokens=max_new_tokens,
            eos_token_id=eos or None,
            pad_token_id=pad,
            return_dict_in_generate=True,
            use_cache=True,
        )
        self._gen_configs = {
            "hf": GenerationConfig(**common),
            "hf_lookup": GenerationConfig(prompt_lookup_num_tokens=PROMPT_LOOKUP_TOKENS, **common),
        }
        self.ids: dict[str, list[int]] = {}
        #: whose tokens the others must reproduce: ``hf`` in float32; below it, the engine's own plain
        #: loop, the promise at that precision (transformers' fused kernels round differently there)
        self.reference_method = "hf" if engine.runner.precision == "float32" else "plain"
        self.reference: dict[str, list[int]] = {}
        self.runs: list[Run] = []
        self.memory: list[dict[str, Any]] = []
        self._snapshot_at = 0

    # -- primitives ----------------------------------------------------------------------------
    def _sync(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def _reset_peak(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def _peak(self) -> int | None:
        import torch

        return int(torch.cuda.max_memory_allocated(self.device)) if self.cuda else None

    def generate_hf(
        self, ids: list[int], method: str, max_new_tokens: int | None = None, logits_processor: list[Any] | None = None
    ) -> tuple[list[int], float, int | None]:
        import torch

        cfg = self._gen_configs[method]
        if max_new_tokens is not None and max_new_tokens != cfg.max_new_tokens:
            cfg = copy.deepcopy(cfg)
            cfg.max_new_tokens = max_new_tokens
        x = torch.tensor([ids], device=self.device)
        mask = torch.ones_like(x)
        self._sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.engine.model.generate(
                input_ids=x, attention_mask=mask, generation_config=cfg, logits_processor=logits_processor
            )
        self._sync()
        wall = time.perf_counter() - t0
        new = out.sequences[0, len(ids) :].tolist()
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = out.get("past_key_values") if hasattr(out, "get") else None
        return new, wall, _hf_cache_bytes(cache) if cache is not None else None

    def generate_engine(
        self, ids: list[int], step_key: str, speculative: bool | None, max_new_tokens: int | None = None
    ) -> tuple[Any, float, int | None]:
        """One engine generation: its result, wall time, and the bytes its KV cache held.

        The cache size is the engine's own ``stats.kv_cache_bytes`` (its pre-allocated buffers);
        0 means the call ended before a decode step reported it, shown as unknown (``None``) like a
        transformers cache of unknown layout, rather than as an empty cache.
        """
        self._sync()
        t0 = time.perf_counter()
        result = self.engine.generate(
            ids,
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            temperature=0.0,
            step_key=step_key,
            speculative=speculative,
        )
        self._sync()
        wall = time.perf_counter() - t0
        return result, wall, result.stats.kv_cache_bytes or None

    def generate_llama_cpp(self, ids: list[int], max_new_tokens: int | None = None) -> tuple[list[int], float, dict]:
        """llama.cpp on the same GGUF and prompt tokens: tokens, seconds (inside its process), prefill/decode split."""
        reply = self.llama_cpp.generate(ids, max_new_tokens or self.max_new_tokens, sorted(self.engine.eos_ids))
        stats = {
            "prompt_tokens": len(ids),
            "new_tokens": len(reply.tokens),
            "prefill_time_s": reply.prefill_s,
            "decode_time_s": reply.decode_s,
            "max_rss_bytes": reply.max_rss_bytes,
        }
        return reply.tokens, reply.wall_s, stats

    def measure(self, prompt: BenchPrompt, method: str, phase: str, rnd: int) -> Run:
        """One timed generation of ``prompt`` with ``method`` (exactness is checked at the end)."""
        ids = self.ids[prompt.id]
        self._reset_peak()
        stats = None
        speedups = None
        converged = None
        if method in ("hf", "hf_lookup"):
            tokens, wall, kv = self.generate_hf(ids, method)
        elif method == "llama_cpp":
            tokens, wall, stats = self.generate_llama_cpp(ids)
            kv = None
        else:
            speculative = False if method == "plain" else None
            result, wall, kv = self.generate_engine(ids, prompt.cls, speculative)
            tokens, stats = result.token_ids, result.stats.model_dump()
            if speculative is None:
                speedups, converged = self._search_history(prompt.cls, result.stats.search_iterations)
        peak = self._peak()
        if method == self.reference_method and prompt.id not in self.reference:
            self.reference[prompt.id] = tokens
        run = Run(
            phase=phase,
            round=rnd,
            prompt_id=prompt.id,
            cls=prompt.cls,
            method=method,
            new_tokens=len(tokens),
            wall_time_s=wall,
            tokens_per_s=len(tokens) / wall if wall > 0 else 0.0,
            kv_cache_bytes=kv,
            cuda_peak_bytes=peak,
            stats=stats,
            search_speedups=speedups,
            profile_converged=converged,
            token_ids=tokens,
        )
        self.runs.append(run)
        return run

    @property
    def inexact(self) -> tuple[str, ...]:
        """Methods allowed to differ from the reference (a warning, not a failure)."""
        return INEXACT_BASELINES if self.reference_method == "hf" else (*INEXACT_BASELINES, "hf")

    def check_exactness(self) -> None:
        """Compare every run with the first ``hf`` run of its prompt; keep the ids of mismatches only."""
        for run in self.runs:
            ref = self.reference.get(run.prompt_id)
            tokens = run.token_ids or []
            if ref is not None:
                run.first_mismatch = _first_mismatch(tokens, ref)
                run.exact = run.first_mismatch is None
            if run.exact is False:
                log = logger.warning if run.method in self.inexact else logger.error
                log(
                    "MISMATCH: %s on prompt %r (%s phase, round %d) differs from %s at token %d (%d vs %d tokens)",
                    run.method,
                    run.prompt_id,
                    run.phase,
                    run.round,
                    self.reference_method,
                    run.first_mismatch,
                    len(tokens),
                    len(ref or ()),
                )
            else:
                run.token_ids = None

    def _search_history(self, step_key: str, iterations: int) -> tuple[list[float] | None, bool | None]:
        """Expected speed-ups of the candidates the search scored in the last call, and convergence.

        Read from the step's profile record, whose observations are appended one per iteration.
        """
        record = self.engine.profiles.get(step_key)
        if record is None:
            return None, None
        if iterations <= 0:
            return [], record.converged
        obs = record.observations[-iterations:]
        if len(obs) < iterations:  # the record keeps a bounded history
            return None, record.converged
        return [float(o.get("speedup", 0.0)) for o in obs], record.converged

    def snapshot_memory(self, phase: str) -> None:
        """Peak memory so far (RSS) and, on CUDA, the largest per-call peak since the last snapshot.

        The engine resets CUDA's peak counter at the start of every call, so a phase's CUDA peak is
        the maximum of its calls' peaks (the first snapshot reports the memory allocated after loading).
        """
        import torch

        entry: dict[str, Any] = {"phase": phase, "max_rss_bytes": _max_rss_bytes()}
        if self.cuda:
            peaks = [r.cuda_peak_bytes for r in self.runs[self._snapshot_at :] if r.cuda_peak_bytes is not None]
            peaks.append(int(torch.cuda.max_memory_allocated(self.device)))
            entry["cuda_max_allocated_bytes"] = max(peaks)
        self._snapshot_at = len(self.runs)
        self.memory.append(entry)


# ------------------------------------------------------------------------------------------------
# The benchmark
# ------------------------------------------------------------------------------------------------


def _engine_stats(run: Run) -> dict[str, Any]:
    """The engine's statistics of one of its own runs (hf runs have none)."""
    assert run.stats is not None, f"{run.method} run without engine statistics"
    return run.stats


def _rotate(seq: Sequence[str], k: int) -> list[str]:
    k %= len(seq)
    return list(seq[k:]) + list(seq[:k])


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
    engine with a scratch :class:`~swift_engine.store.profile_store.ProfileStore`, as :func:`main` does.
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

    # Untimed warm-up of every code path (lazy initialisations, allocator), and the engine's one-time
    # cost measurement, so that none of it lands in the first timed call. A GPU also needs a few
    # seconds of load before its clocks are up: without that the first timed prompt runs ~5x slower.
    t = time.perf_counter()
    costs = engine.costs
    first = bench.ids[prompts[0].id]
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
    setup_s = time.perf_counter() - t
    bench.snapshot_memory("setup")

    # Cold: fresh profiles, first pass over each class's prompts.
    engine.profiles.reset()
    for i, p in enumerate(prompts):
        bar.set_postfix_str(f"cold {p.id}")
        for m in _rotate(baselines + ["swift_cold"], i):
            bench.measure(p, m, "cold", 0)
            bar.update()
    bench.snapshot_memory("cold")

    # Warm-up: more SWIFT calls per class (timed, reported separately) so the profiles settle.
    for cls in classes:
        of_class = [p for p in prompts if p.cls == cls]
        for j in range(warmup_calls):
            p = of_class[j % len(of_class)]
            bar.set_postfix_str(f"warm-up {cls}")
            bench.measure(p, "swift_warmup", "warmup", j)
            bar.update()
    learned = {cls: _profile_summary(engine, cls) for cls in classes}
    bench.snapshot_memory("warmup")

    # Warm: the learned profiles, timed again against fresh baseline runs.
    for r in range(repeats):
        for i, p in enumerate(prompts):
            bar.set_postfix_str(f"warm {p.id} ({r + 1}/{repeats})")
            for m in _rotate(baselines + ["swift_warm"], i + r + 1):
                bench.measure(p, m, "warm", r)
                bar.update()
    bench.snapshot_memory("warm")
    bar.close()
    bench.check_exactness()

    final = {cls: _profile_summary(engine, cls) for cls in classes}
    result = _summarize(bench, prompts, classes, methods, baselines, learned, final)
    result["meta"] = _meta(engine, costs, max_new_tokens, repeats, warmup_calls, hf_lookup, setup_s)
    result["meta"]["total_time_s"] = time.perf_counter() - t_start
    result["memory"] = {"phases": bench.memory, "by_method": _memory_by_method(bench.runs, methods)}
    result["runs"] = [asdict(r) for r in bench.runs]
    return result


def _profile_summary(engine: Any, cls: str) -> dict[str, Any] | None:
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


def _ceiling_reached(crow: dict[str, Any]) -> dict[str, Any]:
    """The layer-skip ceiling of a class and how much of it the warm state reached.

    The target is the better of layer skipping's ceiling and plain decoding (1.0): where skipping
    cannot pay, decoding plainly *is* the optimum. Reached = warm speed-up over the engine's own
    plain loop (same kernels, so the ratio isolates drafting) divided by that target.
    """
    ceiling = (crow.get("profile") or {}).get("skip_ceiling")
    warm = crow["speedup"].get("swift_warm_vs_plain")
    target = max(1.0, ceiling) if ceiling is not None else 1.0
    return {
        "skip_ceiling": ceiling,
        "target": target,
        "warm_vs_plain": warm,
        "reached": warm / target if warm is not None else None,
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


# ------------------------------------------------------------------------------------------------
# Summaries
# ------------------------------------------------------------------------------------------------


def _median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def tokens_to_fraction(calls: Sequence[dict[str, Any]], fraction: float = CONVERGENCE_FRACTION) -> dict[str, Any]:
    """How many generated tokens the search needed to reach ``fraction`` of its final expected speed-up.

    ``calls`` are a class's SWIFT calls in order (cold pass, warm-up, warm rounds), each with ``new_tokens``,
    ``expected_speedup`` (after the call), ``search_iterations``, ``mean_accepted_per_step`` and
    ``search_speedups`` (the expected speed-up of each scored candidate, in order).

    * ``tokens_call_bound``: tokens generated up to the end of the first call whose expected
      speed-up reached the target (exact, but only at call granularity: an upper bound);
    * ``tokens``: an estimate at search-iteration granularity. The engine does not report when
      each iteration ran, only how many ran in a call. The search scores at most one candidate
      before a verify step, so iteration ``j`` of a call whose search converged during it is placed
      after ``1 + j * mean_accepted_per_step`` tokens (back to back from the start); otherwise the
      search was throttled (its time budget per call) and its ``k`` iterations are spread evenly
      over the call's ``verify_steps``.
    """
    final = next((c["expected_speedup"] for c in reversed(calls) if c.get("expected_speedup") is not None), None)
    out: dict[str, Any] = {
        "fraction": fraction,
        "final_expected_speedup": final,
        "target": None,
        "tokens": None,
        "iterations": None,
        "tokens_call_bound": None,
        "calls": None,
        "learning_tokens": sum(c["new_tokens"] for c in calls),
        "learning_iterations": sum(c.get("search_iterations", 0) for c in calls),
    }
    if not final or final <= 0:
        return out
    target = fraction * final - 1e-9
    out["target"] = fraction * final
    cum = 0
    for k, c in enumerate(calls):
        cum += c["new_tokens"]
        if c.get("expected_speedup") is not None and c["expected_speedup"] >= target:
            out["tokens_call_bound"], out["calls"] = cum, k + 1
            break
    cum, best, iters, was_converged = 0, 0.0, 0, False
    for c in calls:
        speedups = c.get("search_speedups")
        converged_here = bool(c.get("converged")) and not was_converged
        was_converged = bool(c.get("converged"))
        if speedups is None:  # history not available: fall back to the call's end
            iters += c.get("search_iterations", 0)
            if (c.get("expected_speedup") or 0.0) >= target:
                out["tokens"], out["iterations"] = cum + c["new_tokens"], iters
                return out
            cum += c["new_tokens"]
            continue
        per_step = c.get("mean_accepted_per_step") or 1.0
        steps = c.get("verify_steps") or 0
        spacing = 1.0 if converged_here or not speedups or len(speedups) >= steps else steps / len(speedups)
        for j, s in enumerate(speedups):
            iters += 1
            best = max(best, s)
            if best >= target:
                out["tokens"] = cum + min(c["new_tokens"], 1 + round(j * spacing * per_step))
                out["iterations"] = iters
                return out
        cum += c["new_tokens"]
    return out


def _summarize(
    bench: Bench,
    prompts: Sequence[BenchPrompt],
    classes: list[str],
    methods: list[str],
    baselines: list[str],
    learned: dict[str, Any],
    final: dict[str, Any],
) -> dict[str, Any]:
    runs = bench.runs

    def select(
        prompt_id: str | None = None, method: str | None = None, phase: str | None = None, rnd: int | None = None
    ) -> list[Run]:
        return [
            r
            for r in runs
            if (prompt_id is None or r.prompt_id == prompt_id)
            and (method is None or r.method == method)
            and (phase is None or r.phase == phase)
            and (rnd is None or r.round == rnd)
        ]

    per_prompt: list[dict[str, Any]] = []
    for p in prompts:
        row: dict[str, Any] = {
            "prompt_id": p.id,
            "class": p.cls,
            "prompt_tokens": len(bench.ids[p.id]),
            "new_tokens": len(bench.reference.get(p.id, ())),
            "tokens_per_s": {},
            "speedup": {},
            "exact": {},
            "first_mismatch": {},
        }
        for m in methods:
            rs = select(p.id, m)
            row["tokens_per_s"][m] = _median(r.tokens_per_s for r in rs)
            row["exact"][m] = all(r.exact is True for r in rs) if rs else None
            bad = [r.first_mismatch for r in rs if r.exact is False and r.first_mismatch is not None]
            row["first_mismatch"][m] = min(bad) if bad else None
        for sm, phase in (("swift_cold", "cold"), ("swift_warm", "warm")):
            for b in baselines:
                ratios = []
                for s in select(p.id, sm, phase):
                    base = select(p.id, b, phase, s.round)
                    if base and base[0].tokens_per_s > 0:
                        ratios.append(s.tokens_per_s / base[0].tokens_per_s)
                row["speedup"][f"{sm}_vs_{b}"] = _median(ratios)
        for sm in SWIFT_METHODS:
            rs = select(p.id, sm)
            engine_stats = [_engine_stats(r) for r in rs]
            row[sm] = {
                "acceptance_rate": _median(r["acceptance_rate"] for r in engine_stats),
                "mean_accepted_per_step": _median(r["mean_accepted_per_step"] for r in engine_stats),
                "search_iterations": sum(r["search_iterations"] for r in engine_stats),
                "drafted_tokens": sum(r["drafted_tokens"] for r in engine_stats),
                "accepted_drafted_tokens": sum(r["accepted_drafted_tokens"] for r in engine_stats),
                # prompt-lookup drafts merged into SWIFT's trees (engines that report them)
                "context_drafted_tokens": sum(r.get("context_drafted_tokens", 0) for r in engine_stats),
                "context_accepted_tokens": sum(r.get("context_accepted_tokens", 0) for r in engine_stats),
                "modes": sorted({r["mode"] for r in engine_stats}),
                "expected_speedup": engine_stats[-1]["expected_speedup"] if engine_stats else None,
            }
        per_prompt.append(row)

    per_class: list[dict[str, Any]] = []
    for cls in classes:
        rows = [r for r in per_prompt if r["class"] == cls]
        crow: dict[str, Any] = {
            "class": cls,
            "prompts": len(rows),
            "tokens_per_s": {m: _median(r["tokens_per_s"][m] for r in rows) for m in methods},
            "speedup": {k: _median(r["speedup"][k] for r in rows) for k in rows[0]["speedup"]},
            "exact": {m: all(r["exact"][m] is True for r in rows) for m in methods},
        }
        for sm in SWIFT_METHODS:
            accepted = sum(r[sm]["accepted_drafted_tokens"] for r in rows)
            crow[sm] = {
                "acceptance_rate": _median(r[sm]["acceptance_rate"] for r in rows),
                "mean_accepted_per_step": _median(r[sm]["mean_accepted_per_step"] for r in rows),
                "search_iterations": sum(r[sm]["search_iterations"] for r in rows),
                "modes": sorted({m for r in rows for m in r[sm]["modes"]}),
                # share of the accepted draft tokens that came from the context (prompt lookup)
                "context_share": sum(r[sm]["context_accepted_tokens"] for r in rows) / accepted if accepted else None,
            }
        learning = [
            {
                "phase": r.phase,
                "prompt_id": r.prompt_id,
                "new_tokens": r.new_tokens,
                "search_iterations": _engine_stats(r)["search_iterations"],
                "expected_speedup": _engine_stats(r)["expected_speedup"],
                "mean_accepted_per_step": _engine_stats(r)["mean_accepted_per_step"],
                "verify_steps": _engine_stats(r)["verify_steps"],
                "mode": _engine_stats(r)["mode"],
                "converged": r.profile_converged,
                "search_speedups": r.search_speedups,
            }
            for r in runs  # in execution order: cold pass, warm-up calls, warm rounds
            if r.cls == cls and r.method in (*SWIFT_METHODS, "swift_warmup")
        ]
        crow["learning_curve"] = learning
        crow["timing"] = {m: _timing(select(method=m), cls) for m in methods}
        crow["tokens_to_90"] = tokens_to_fraction(learning)
        crow["profile_after_warmup"] = learned.get(cls)
        crow["profile"] = final.get(cls)
        crow["ceiling"] = _ceiling_reached(crow)
        warm_iters = crow["swift_warm"]["search_iterations"]
        crow["warm_search_ran"] = warm_iters > 0
        if warm_iters:
            logger.warning(
                "class %r: the search still ran %d iterations during the warm phase (profile not converged); "
                "raise --warmup-calls for a pure warm-state measurement",
                cls,
                warm_iters,
            )
        per_class.append(crow)

    overall = {
        "tokens_per_s": {m: _median(r["tokens_per_s"][m] for r in per_prompt) for m in methods},
        "speedup": {k: _median(r["speedup"][k] for r in per_prompt) for k in per_prompt[0]["speedup"]},
    }
    warmup_runs = select(method="swift_warmup")
    mismatches = [
        {
            "prompt_id": r.prompt_id,
            "method": r.method,
            "phase": r.phase,
            "round": r.round,
            "first_mismatch": r.first_mismatch,
        }
        for r in runs
        if r.exact is False
    ]
    own = (*OWN_METHODS, "swift_warmup", *(() if "hf" in bench.inexact else ("hf",)))
    own_exact = all(r.exact is True for r in runs if r.method in own)
    return {
        "methods": methods,
        "baselines": baselines,
        "classes": classes,
        "per_prompt": per_prompt,
        "per_class": per_class,
        "overall": overall,
        "warmup": {
            "calls": len(warmup_runs),
            "tokens_per_s": _median(r.tokens_per_s for r in warmup_runs),
            "exact": all(r.exact is True for r in warmup_runs),
        },
        "exactness": {
            "swift_exact": all(r.exact is True for r in runs if r.method in (*SWIFT_METHODS, "swift_warmup")),
            "all_own_exact": own_exact,
            "hf_lookup_exact": all(r.exact is True for r in runs if r.method == "hf_lookup"),
            "llama_cpp_exact": all(r.exact is True for r in runs if r.method == "llama_cpp"),
            "mismatches": mismatches,
            "reference": bench.reference_method,
            "inexact": list(bench.inexact),
        },
        "reference": {
            p.id: {"token_ids": bench.reference.get(p.id), "text": _decode(bench.engine, bench.reference.get(p.id))}
            for p in prompts
        },
    }


def _timing(runs: Sequence[Run], cls: str) -> dict[str, float | None]:
    """Medians of one method's runs of a class: seconds per request, prefill and decode tokens/s.

    Prefill and decode are split where the method reports its prefill time (the engine's own
    methods, llama.cpp); ``transformers``' ``generate`` does not, so it has seconds only.
    """
    rs = [r for r in runs if r.cls == cls]
    prefill, decode = [], []
    for r in rs:
        st = r.stats or {}
        pre = st.get("prefill_time_s")
        if not pre or not st.get("prompt_tokens"):
            continue
        prefill.append(st["prompt_tokens"] / pre)
        dec_s = st.get("decode_time_s", r.wall_time_s - pre)
        if r.new_tokens > 1 and dec_s > 0:
            decode.append((r.new_tokens - 1) / dec_s)
    return {
        "seconds": _median(r.wall_time_s for r in rs),
        "prefill_tokens_per_s": _median(prefill),
        "decode_tokens_per_s": _median(decode),
    }


def _decode(engine: Any, ids: list[int] | None) -> str | None:
    if ids is None:
        return None
    try:
        return engine.tokenizer.decode(ids, skip_special_tokens=True)
    except Exception:  # noqa: BLE001
        return None


def _memory_by_method(runs: Sequence[Run], methods: Sequence[str]) -> dict[str, Any]:
    out = {}
    for m in (*methods, "swift_warmup"):
        rs = [r for r in runs if r.method == m]
        kv = [r.kv_cache_bytes for r in rs if r.kv_cache_bytes is not None]
        peak = [r.cuda_peak_bytes for r in rs if r.cuda_peak_bytes is not None]
        out[m] = {"max_kv_cache_bytes": max(kv) if kv else None, "cuda_peak_bytes": max(peak) if peak else None}
    return out


def _meta(
    engine: Any, costs: Any, max_new_tokens: int, repeats: int, warmup_calls: int, hf_lookup: bool, setup_s: float
) -> dict:
    import torch
    import transformers

    from swift_engine.kernels.kernel_choice import cpu_name

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


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------

_SHORT = {
    "hf": "hf",
    "hf_lookup": "lookup",
    "llama_cpp": "llama.cpp",
    "plain": "plain",
    "swift_cold": "cold",
    "swift_warm": "warm",
}


def _fmt(v: Any, spec: str = ".1f", suffix: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, (int, float)):
        return f"{v:{spec}}{suffix}"
    return str(v)


def _mib(v: int | None) -> str:
    return "-" if v is None else f"{v / 2**20:.1f} MiB"


def _inexact(result: dict[str, Any]) -> tuple[str, ...]:
    """The methods of ``result`` allowed to differ from its reference (older results: the float32 set)."""
    return tuple(result["exactness"].get("inexact", INEXACT_BASELINES))


def _exact_cell(exact: dict[str, bool | None], methods: Sequence[str], inexact: Sequence[str]) -> str:
    bad = [_SHORT[m] for m in methods if m not in inexact and exact.get(m) is False]
    differ = [_SHORT[m] for m in inexact if exact.get(m) is False]
    if not bad and not differ:
        return "yes"
    if not bad:  # only baselines that may differ (their own numerics or precision): not a failure
        return "yes (differ: " + ", ".join(differ) + ")"
    return "NO: " + ", ".join(bad + differ)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    #: indices of rows to emphasise (class medians)
    strong: set[int] = field(default_factory=set)


def build_tables(result: dict[str, Any]) -> list[Table]:
    methods = result["methods"]
    baselines = result["baselines"]
    per_class = {c["class"]: c for c in result["per_class"]}

    thr = Table(
        "Throughput (tokens/s; median; class rows are medians over prompts)",
        ["class", "prompt", "in tok", "out tok", *[_SHORT[m] for m in methods], "exact"],
    )
    spd = Table(
        "SWIFT speed-up (paired with the same round's baseline run; median)",
        ["class", "prompt", *[f"{s} / {_SHORT[b]}" for s in ("warm", "cold") for b in baselines]],
    )
    keys = [f"{s}_vs_{b}" for s in SWIFT_METHODS[::-1] for b in baselines]
    for cls in result["classes"]:
        for row in (r for r in result["per_prompt"] if r["class"] == cls):
            thr.rows.append(
                [
                    cls,
                    row["prompt_id"],
                    str(row["prompt_tokens"]),
                    str(row["new_tokens"]),
                    *[_fmt(row["tokens_per_s"][m]) for m in methods],
                    _exact_cell(row["exact"], methods, _inexact(result)),
                ]
            )
            spd.rows.append([cls, row["prompt_id"], *[_fmt(row["speedup"][k], ".2f", "x") for k in keys]])
        c = per_class[cls]
        thr.strong.add(len(thr.rows))
        thr.rows.append(
            [
                cls,
                "median",
                "",
                "",
                *[_fmt(c["tokens_per_s"][m]) for m in methods],
                _exact_cell(c["exact"], methods, _inexact(result)),
            ]
        )
        spd.strong.add(len(spd.rows))
        spd.rows.append([cls, "median", *[_fmt(c["speedup"][k], ".2f", "x") for k in keys]])
    if len(result["classes"]) > 1:
        o = result["overall"]
        thr.strong.add(len(thr.rows))
        thr.rows.append(["all", "median", "", "", *[_fmt(o["tokens_per_s"][m]) for m in methods], ""])
        spd.strong.add(len(spd.rows))
        spd.rows.append(["all", "median", *[_fmt(o["speedup"][k], ".2f", "x") for k in keys]])

    sw = Table(
        "SWIFT per class (mode/skip: the layer-skip profile after the warm phase; w/c = warm/cold medians; "
        "ctx share: accepted drafts from the context; tokens to 90% of the final expected speed-up: "
        "~estimate (<= call-level bound); ceiling: best expected layer-skip speed-up of any set the search "
        "scored, from the measured costs; reached: warm vs plain / max(1, ceiling))",
        [
            "class",
            "mode",
            "skip (att/mlp)",
            "exp. x",
            "accept w/c",
            "ctx share",
            "tok/step w/c",
            "search it c/w",
            "tok to 90%",
            "ceiling",
            "reached",
            "conv.",
        ],
    )
    for cls in result["classes"]:
        c = per_class[cls]
        prof = c["profile"] or {}
        t90 = c["tokens_to_90"]
        t90_cell = "-" if t90["tokens"] is None else f"~{t90['tokens']}"
        if t90["tokens_call_bound"] is not None:
            t90_cell += f" (<={t90['tokens_call_bound']})"
        w, cc = c["swift_warm"], c["swift_cold"]
        ran = "/".join(w["modes"])
        sw.rows.append(
            [
                cls,
                prof.get("mode", "-") + ("" if w["modes"] in ([], [prof.get("mode")]) else f" (ran {ran})"),
                f"{_fmt(prof['skip_ratio'], '.2f')} ({len(prof['skip_attention'])}/{len(prof['skip_mlp'])})"
                if prof
                else "-",
                _fmt(prof.get("expected_speedup"), ".2f", "x"),
                f"{_fmt(w['acceptance_rate'], '.2f')} / {_fmt(cc['acceptance_rate'], '.2f')}",
                _fmt(w["context_share"], ".2f"),
                f"{_fmt(w['mean_accepted_per_step'], '.2f')} / {_fmt(cc['mean_accepted_per_step'], '.2f')}",
                f"{cc['search_iterations']} / {w['search_iterations']}",
                t90_cell,
                _fmt(c["ceiling"]["skip_ceiling"], ".2f", "x"),
                _fmt(None if c["ceiling"]["reached"] is None else 100 * c["ceiling"]["reached"], ".0f", "%"),
                ("yes" if prof.get("converged") else "no") if prof else "-",
            ]
        )

    per_request = Table(
        "Per request (medians of each class's runs): seconds end to end / prefill tok/s / decode tok/s "
        "(prefill and decode where the method reports its prefill time)",
        ["class", "what", *[_SHORT[m] for m in methods]],
    )
    for cls in result["classes"]:
        timing = per_class[cls].get("timing") or {}
        for what, key, spec in (
            ("seconds", "seconds", ".2f"),
            ("prefill tok/s", "prefill_tokens_per_s", ".0f"),
            ("decode tok/s", "decode_tokens_per_s", ".1f"),
        ):
            per_request.rows.append([cls, what, *[_fmt((timing.get(m) or {}).get(key), spec) for m in methods]])
        per_request.strong.add(len(per_request.rows) - 1)

    mem = Table("Memory", ["what", "max RSS", "CUDA peak", "KV cache"])
    for ph in result["memory"]["phases"]:
        mem.rows.append(
            [f"after {ph['phase']}", _mib(ph["max_rss_bytes"]), _mib(ph.get("cuda_max_allocated_bytes")), ""]
        )
    for m, v in result["memory"]["by_method"].items():
        if v["max_kv_cache_bytes"] is None and v["cuda_peak_bytes"] is None:
            continue
        mem.rows.append([m, "", _mib(v["cuda_peak_bytes"]), _mib(v["max_kv_cache_bytes"])])
    if m_bytes := result["meta"].get("kernel_memory_bytes"):
        mem.rows.append([f"of which packed weight copy ({result['meta'].get('kernels')})", _mib(m_bytes), "", ""])
    llama_rss = [
        (r.get("stats") or {}).get("max_rss_bytes") for r in result.get("runs", ()) if r.get("method") == "llama_cpp"
    ]
    if any(llama_rss):
        mem.rows.append(["llama.cpp process", _mib(max(x for x in llama_rss if x)), "", ""])
    return [thr, spd, sw, per_request, mem]


def _headline(result: dict[str, Any]) -> str:
    m = result["meta"]
    return (
        f"swift-bench: {m['model']} on {m['device']} ({m['device_name']}), {m['dtype']}, "
        f"kernels {m.get('kernels', 'torch')}, "
        f"{m['torch_threads']} threads; greedy, max_new_tokens={m['max_new_tokens']}, repeats={m['repeats']}, "
        f"warmup_calls={m['warmup_calls']}; {m['total_time_s']:.0f} s"
    )


_FAILURE = "!!! EXACTNESS FAILURE: greedy output differs from hf's (see MISMATCH lines) !!!"


def _exactness_lines(result: dict[str, Any]) -> list[tuple[str, str]]:
    """``(line, level)`` pairs, level ``ok``, ``error`` or ``warning``."""
    ex = result["exactness"]
    lines = []
    if ex["all_own_exact"]:
        lines.append(
            (
                "Exactness: SWIFT (cold, warm-up, warm) and plain reproduce "
                + ("hf's" if ex.get("reference", "hf") == "hf" else "the engine's plain loop's (at this precision)")
                + " greedy tokens on every prompt.",
                "ok",
            )
        )
    else:
        lines.append((_FAILURE, "error"))
    for mm in ex["mismatches"]:
        lines.append(
            (
                f"  MISMATCH {mm['method']} on {mm['prompt_id']} ({mm['phase']} round {mm['round']}): "
                f"first differing token at {mm['first_mismatch']}",
                "warning" if mm["method"] in _inexact(result) else "error",
            )
        )
    if not ex["hf_lookup_exact"] and "hf_lookup" in result["methods"]:
        lines.append(("  (hf_lookup differing from hf is transformers' own numerics, not this engine's.)", "warning"))
    if not ex.get("llama_cpp_exact", True) and "llama_cpp" in result["methods"]:
        lines.append(("  (llama.cpp differing from hf is the GGUF file's precision, not this engine's.)", "warning"))
    return lines


def render_text(result: dict[str, Any]) -> str:
    """The report as plain aligned text."""
    out = [_headline(result), ""]
    if not result["exactness"]["all_own_exact"]:
        out += [_FAILURE, ""]
    for t in build_tables(result):
        widths = [max(len(c), *(len(r[i]) for r in t.rows)) if t.rows else len(c) for i, c in enumerate(t.columns)]
        out.append(t.title)
        out.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(t.columns, widths))))
        out.append("  ".join("-" * w for w in widths))
        for k, r in enumerate(t.rows):
            line = "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
            out.append(line + ("  *" if k in t.strong else ""))
        out.append("")
    out.extend(line for line, _ in _exactness_lines(result))
    return "\n".join(out)


def print_report(result: dict[str, Any], file: TextIO | None = None) -> None:
    """Print the report (with ``rich`` when it is installed)."""
    file = file or sys.stdout
    try:
        from rich.console import Console
        from rich.table import Table as RichTable
    except ImportError:
        print(render_text(result), file=file)
        return
    console = Console(file=file, width=max(160, Console(file=file).width))
    console.print(_headline(result), highlight=False)
    if not result["exactness"]["all_own_exact"]:
        console.print(_FAILURE, style="bold red", highlight=False)
    for t in build_tables(result):
        rt = RichTable(title=t.title, title_justify="left", show_lines=False)
        for i, c in enumerate(t.columns):
            rt.add_column(c, justify="left" if i < 2 else "right")
        for k, r in enumerate(t.rows):
            style = "bold" if k in t.strong else None
            cells = [f"[red]{v}[/red]" if v.startswith("NO") else v for v in r]
            rt.add_row(*cells, style=style, end_section=k in t.strong)
        console.print(rt)
    styles = {"ok": "green", "error": "bold red", "warning": "yellow"}
    for line, level in _exactness_lines(result):
        console.print(line, style=styles[level], highlight=False)


def render_markdown(result: dict[str, Any]) -> str:
    """Per-class medians as a markdown table for the README."""
    methods, baselines = result["methods"], result["baselines"]
    m = result["meta"]
    head = [
        "class",
        *[f"{_SHORT[x]} tok/s" for x in methods],
        *[f"warm vs {_SHORT[b]}" for b in baselines],
        *[f"cold vs {_SHORT[b]}" for b in baselines],
        "mode",
        "skip ratio",
        "accept",
        "tok/step",
        "tokens to 90%",
        "skip ceiling",
        "of ceiling",
        "exact",
    ]
    lines = [
        f"*{m['model']}, {m['device']} ({m['device_name']}), {m['dtype']}, swift kernels {m.get('kernels', 'torch')}, "
        f"{'' if m.get('engine_config', {}).get('context_drafts', True) else 'layer-skip drafts only, '}greedy, "
        f"{m['max_new_tokens']} new tokens, median over prompts; `swift-bench` {time.strftime('%Y-%m-%d')}*",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for c in result["per_class"]:
        prof = c["profile"] or {}
        t90 = c["tokens_to_90"]["tokens"]
        cells = [
            c["class"],
            *[_fmt(c["tokens_per_s"][x]) for x in methods],
            *[_fmt(c["speedup"][f"swift_warm_vs_{b}"], ".2f", "x") for b in baselines],
            *[_fmt(c["speedup"][f"swift_cold_vs_{b}"], ".2f", "x") for b in baselines],
            prof.get("mode", "-"),
            _fmt(prof.get("skip_ratio"), ".2f"),
            _fmt(c["swift_warm"]["acceptance_rate"], ".2f"),
            _fmt(c["swift_warm"]["mean_accepted_per_step"], ".2f"),
            "-" if t90 is None else f"~{t90}",
            _fmt(c["ceiling"]["skip_ceiling"], ".2f", "x"),
            _fmt(None if c["ceiling"]["reached"] is None else 100 * c["ceiling"]["reached"], ".0f", "%"),
            "yes" if all(c["exact"][x] for x in methods if x not in _inexact(result)) else "**NO**",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if len(result["per_class"]) > 1:
        o = result["overall"]
        cells = [
            "**all**",
            *[_fmt(o["tokens_per_s"][x]) for x in methods],
            *[_fmt(o["speedup"][f"swift_warm_vs_{b}"], ".2f", "x") for b in baselines],
            *[_fmt(o["speedup"][f"swift_cold_vs_{b}"], ".2f", "x") for b in baselines],
            *([""] * 7),
            "yes" if result["exactness"]["all_own_exact"] else "**NO**",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# CLI: one typer command, run by ``swift-bench`` (``app`` below) and ``swift-accel bench`` (tools/cli.py)
# ------------------------------------------------------------------------------------------------

#: Where :class:`BenchCommand` leaves the raw arguments, in the click context's shared ``meta``.
_ARGV_KEY = "swift_integrations.bench.command.argv"


class BenchCommand(TyperCommand):
    """The benchmark's click command; it keeps the raw arguments it parses (``meta.argv`` of the result).

    Click hands the command only the parsed values, but the JSON records the command line as
    typed, so that a result can be rerun as it was made, whether it came from ``swift-bench``,
    ``swift-accel bench`` or :func:`main`.
    """

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]  # click's Context
        ctx.meta[_ARGV_KEY] = list(args)
        rest = super().parse_args(ctx, args)
        # words after the options only continue a space-separated --classes list; checked here, while
        # parsing, so that a stray word is a usage error (status 2) wherever the command runs
        extra = ctx.params.get("more_classes")
        if extra and not ctx.params.get("classes"):
            ctx.fail(f"Got unexpected extra argument{'s' if len(extra) > 1 else ''} ({' '.join(extra)})")
        return rest

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:  # type: ignore[override]  # click's Context
        # click lists hidden arguments in the usage line too; the rest of --classes is no usage of its own
        return [self.options_metavar or "[OPTIONS]"] + [
            piece for p in self.get_params(ctx) if not getattr(p, "hidden", False) for piece in p.get_usage_pieces(ctx)
        ]


class Kernels(str, Enum):
    """``--kernels``: the values of :attr:`~swift_engine.config.SwiftConfig.cpu_kernels`."""

    auto = "auto"
    packed = "packed"
    onednn = "onednn"
    torch = "torch"


def _chosen(value: str | None, known: Sequence[str], what: str) -> list[str] | None:
    """The comma-separated names in ``value`` (default: all ``known``); ``None`` after logging unknown ones."""
    names = [n.strip() for n in (value or ",".join(known)).split(",") if n.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown:
        logging.getLogger("swift-bench").error("unknown %s %s (known: %s)", what, ", ".join(unknown), ", ".join(known))
        return None
    return names


def _pipeline_bench(
    model: str | None,
    pipelines: str | None,
    max_new_tokens: int | None,
    quick: bool,
    json_path: str | None,
    markdown: str | None,
    llama: Any = None,
    dtype: str = "auto",
) -> int:
    """``--pipeline``: the pipelines' benchmark (swift_integrations.bench.pipeline; needs the dev extras)."""
    import importlib
    import types

    try:  # the adapters' package (not the core's): imported by name, so the core's type check stays in the core
        pipeline_bench: Any = importlib.import_module("swift_integrations.bench.pipeline")
    except ImportError as exc:  # langchain-huggingface, langgraph, llama-index: the dev extras
        logging.getLogger("swift-bench").error("--pipeline needs the dev extras (pip install -e '.[dev]'): %s", exc)
        return 1
    names = _chosen(pipelines, pipeline_bench.PIPELINES, "pipeline")
    if names is None:
        return 1
    args = types.SimpleNamespace(
        model=model,
        pipelines=names,
        methods=list(pipeline_bench.METHODS),
        max_new_tokens=max_new_tokens or (32 if quick else 64),
        quick=quick,
        json=json_path,
        markdown=None if markdown in (None, "-") else markdown,
        llama=llama,
        dtype=dtype,
    )
    return pipeline_bench.main(args)


def _serve_bench(
    model: str | None,
    deployments: str | None,
    replicas: int,
    max_new_tokens: int | None,
    quick: bool,
    json_path: str | None,
    markdown: str | None,
) -> int:
    """``--serve``: the HTTP load benchmark (swift_integrations.bench.serve; needs the ray extra)."""
    import importlib
    import types

    try:
        serve_bench: Any = importlib.import_module("swift_integrations.bench.serve")
    except ImportError as exc:
        logging.getLogger("swift-bench").error("--serve needs the ray extra (pip install -e '.[ray]'): %s", exc)
        return 1
    names = _chosen(deployments, serve_bench.DEPLOYMENTS, "deployment")
    if names is None:
        return 1
    args = types.SimpleNamespace(
        model=model,
        deployments=names,
        replicas=replicas,
        max_new_tokens=max_new_tokens or (24 if quick else 48),
        quick=quick,
        json=json_path,
        markdown=None if markdown in (None, "-") else markdown,
    )
    return serve_bench.main(args)


def bench(
    ctx: typer.Context,
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model",
            help="Model folder, .gguf file or hub id (downloaded when not cached, unless HF_HUB_OFFLINE=1; "
            "default: embedded SmolLM2-135M).",
            show_default=False,
        ),
    ] = None,
    classes: Annotated[
        Optional[list[str]],
        typer.Option(
            "--classes",
            help=f"Prompt classes to run, space- or comma-separated (default: all: {', '.join(DEFAULT_CLASSES)}).",
            show_default=False,
        ),
    ] = None,
    more_classes: Annotated[
        Optional[list[str]],
        # the rest of a space-separated --classes list (click options take one value each)
        typer.Argument(hidden=True, show_default=False),
    ] = None,
    max_new_tokens: Annotated[
        Optional[int],
        typer.Option(
            "--max-new-tokens",
            help=f"Tokens per generation (default {DEFAULT_MAX_NEW_TOKENS}; {QUICK_MAX_NEW_TOKENS} with --quick).",
            show_default=False,
        ),
    ] = None,
    prompts_file: Annotated[
        Optional[str],
        typer.Option("--prompts-file", help="JSON prompt set (default: the packaged one).", show_default=False),
    ] = None,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed rounds of the warm phase.")] = 1,
    warmup_calls: Annotated[
        Optional[int],
        typer.Option(
            "--warmup-calls",
            help="Extra SWIFT calls per class between the cold and warm phases (default 3; 1 with --quick).",
            show_default=False,
        ),
    ] = None,
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype",
            help="auto, float32, bfloat16, float16, int8 or int4 (weight-only linears, bfloat16 activations; CPU).",
        ),
    ] = "auto",
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    no_hf_lookup: Annotated[
        bool, typer.Option("--no-hf-lookup", help="Skip transformers' prompt-lookup baseline.")
    ] = False,
    quick: Annotated[
        bool,
        typer.Option("--quick", help=f"Smoke test: 1 prompt per class, {QUICK_MAX_NEW_TOKENS} tokens, 1 warm-up call."),
    ] = False,
    json_path: Annotated[
        Optional[str],
        typer.Option("--json", metavar="PATH", help="Write every measurement and summary as JSON.", show_default=False),
    ] = None,
    markdown: Annotated[
        Optional[str],
        typer.Option(
            "--markdown",
            metavar="PATH",
            help="Write the per-class table as markdown ('-': print it).",
            show_default=False,
        ),
    ] = None,
    constrained: Annotated[
        bool,
        typer.Option(
            "--constrained",
            help="Also run the structured-output cases (JSON schemas, forced tool calls): parse rates with and "
            "without a grammar, SWIFT+grammar against transformers+grammar.",
        ),
    ] = False,
    constrained_only: Annotated[
        bool, typer.Option("--constrained-only", help="Run only the structured-output cases.")
    ] = False,
    constrained_max_new_tokens: Annotated[
        int, typer.Option("--constrained-max-new-tokens", help="Token budget of a structured reply.")
    ] = 96,
    kernels: Annotated[
        Kernels,
        typer.Option("--kernels", help="Dense kernels of the engine's passes on CPU (SwiftConfig.cpu_kernels)."),
    ] = Kernels.auto,
    no_context_drafts: Annotated[
        bool,
        typer.Option(
            "--no-context-drafts",
            help="Layer-skip drafts only (the paper's algorithm alone): measures layer skipping against its ceiling.",
        ),
    ] = False,
    baseline: Annotated[
        Optional[list[str]],
        typer.Option(
            "--baseline",
            help="Extra baseline: 'llama.cpp' (llama-cpp-python on the same GGUF file and prompt tokens, in its own "
            "environment; build it with ../shared/tools/get-llama-cpp.sh).",
            show_default=False,
        ),
    ] = None,
    llama_cpp_python: Annotated[
        Optional[str],
        typer.Option(
            "--llama-cpp-python",
            help="Python of the llama-cpp-python environment (default: $SWIFT_LLAMA_CPP_PYTHON, else "
            "~/.cache/swift-llama-cpp/venv/bin/python).",
            show_default=False,
        ),
    ] = None,
    gguf: Annotated[
        Optional[str],
        typer.Option(
            "--gguf",
            help="GGUF file llama.cpp runs (default: the one --model names, or the embedded model's).",
            show_default=False,
        ),
    ] = None,
    pipeline: Annotated[
        bool,
        typer.Option(
            "--pipeline",
            help="Benchmark whole pipelines instead (a LangGraph agent with tools, an LCEL RAG chain, a LlamaIndex "
            "refine engine) against ChatHuggingFace, the plain loop and SWIFT without prefix cache and draft memory.",
        ),
    ] = False,
    pipelines: Annotated[
        Optional[str],
        typer.Option(
            "--pipelines", help="With --pipeline: which, comma-separated (agent,rag,refine).", show_default=False
        ),
    ] = None,
    serve: Annotated[
        bool,
        typer.Option(
            "--serve",
            help="Load-test the HTTP server instead: one process and Ray Serve replicas, at concurrency 1, 4 and 16 "
            "(requests/s, p50/p95 latency, time to first token, errors, outputs against the single process).",
        ),
    ] = False,
    deployments: Annotated[
        Optional[str],
        typer.Option("--deployments", help="With --serve: which, comma-separated (single,ray).", show_default=False),
    ] = None,
    replicas: Annotated[int, typer.Option("--replicas", min=1, help="With --serve: Ray Serve replicas.")] = 2,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log the engine's progress.")] = False,
) -> None:
    """Benchmark SWIFT against transformers' generate, prompt lookup and plain decoding, cold and warm.

    Exit status 2 when greedy SWIFT or the plain loop does not reproduce transformers' tokens exactly.

    swift-accel bench and swift-bench are the same command.
    \f
    The help shows the paragraphs above as typed (rich markup keeps line breaks): keep each on one line.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
        )
    if serve:
        raise typer.Exit(_serve_bench(model, deployments, replicas, max_new_tokens, quick, json_path, markdown))
    if pipeline:
        with contextlib.ExitStack() as stack:
            llama = None
            if baseline:
                if set(baseline) - {"llama.cpp"}:
                    logging.getLogger("swift-bench").error("unknown --baseline (known: llama.cpp)")
                    raise typer.Exit(1)
                try:
                    llama = stack.enter_context(_llama_cpp_baseline(llama_cpp_python, gguf, model))
                except (OSError, RuntimeError) as exc:
                    logging.getLogger("swift-bench").error("%s", exc)
                    raise typer.Exit(1) from None
            raise typer.Exit(
                _pipeline_bench(model, pipelines, max_new_tokens, quick, json_path, markdown, llama, dtype)
            )
    wanted = [c for item in [*(classes or []), *(more_classes or [])] for c in item.split(",") if c.strip()] or None
    max_new = max_new_tokens or (QUICK_MAX_NEW_TOKENS if quick else DEFAULT_MAX_NEW_TOKENS)
    warmup = warmup_calls if warmup_calls is not None else (1 if quick else 3)
    try:
        prompts = load_prompts(prompts_file, wanted, per_class=1 if quick else None)
    except (OSError, ValueError) as exc:
        logging.getLogger("swift-bench").error("%s", exc)
        raise typer.Exit(1) from None
    unknown = sorted(set(baseline or ()) - {"llama.cpp"})
    if unknown:
        logging.getLogger("swift-bench").error("unknown --baseline %s (known: llama.cpp)", ", ".join(unknown))
        raise typer.Exit(1)
    with contextlib.ExitStack() as stack:
        profile_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="swift-bench-profiles-"))
        from swift_engine.config import SwiftConfig

        # One call's decode is measured here, and every phase repeats the same prompts: the prefix cache
        # would skip their prefill and the draft memory would copy the cold phase's replies, which
        # measures the repetition. Those two are measured on held-out tasks by --pipeline.
        config = SwiftConfig(
            cpu_kernels=kernels.value, context_drafts=not no_context_drafts, prefix_cache=False, draft_memory=0
        )
        engine = _load_engine(model, device, dtype, profile_dir, config)
        llama = None
        if baseline and not constrained_only:
            try:
                llama = stack.enter_context(_llama_cpp_baseline(llama_cpp_python, gguf, model))
            except (OSError, RuntimeError) as exc:
                logging.getLogger("swift-bench").error("%s", exc)
                raise typer.Exit(1) from None
        if constrained_only:
            result = {"meta": _meta(engine, engine.costs, max_new, 0, 0, False, 0.0)}
        else:
            result = run_benchmark(
                engine,
                prompts,
                max_new_tokens=max_new,
                repeats=repeats,
                warmup_calls=warmup,
                hf_lookup=not no_hf_lookup,
                progress=False if no_progress else None,
                llama_cpp=llama,
            )
            if llama is not None:
                result["meta"]["llama_cpp"] = {"version": llama.version, "gguf": llama.gguf, "threads": llama.threads}
        if constrained or constrained_only:
            result["constrained"] = _run_constrained(engine, constrained_max_new_tokens, not no_progress)
    result["meta"]["argv"] = list(ctx.meta.get(_ARGV_KEY, sys.argv[1:]))
    if "overall" in result:
        print_report(result)
    if "constrained" in result:
        from swift_integrations.bench.constrained import render_constrained_markdown

        print("\nStructured output (grammar-constrained):\n" + render_constrained_markdown(result["constrained"]))
    if markdown:
        md = render_markdown(result) if "overall" in result else ""
        if "constrained" in result:
            from swift_integrations.bench.constrained import render_constrained_markdown

            md += "\n" + render_constrained_markdown(result["constrained"])
        if markdown == "-":
            print("\n" + md)
        else:
            Path(markdown).write_text(md, "utf-8")
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, default=str) + "\n", "utf-8")
    exact = result.get("exactness", {}).get("all_own_exact", True)
    if "constrained" in result:
        exact = exact and result["constrained"]["summary"]["all"]["exact"]
    if not exact:
        raise typer.Exit(EXIT_MISMATCH)


#: ``swift-bench``: an app whose single command is :func:`bench` (``swift-accel bench`` registers the same one).
app = typer.Typer(
    name="swift-bench",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command(cls=BenchCommand)(bench)


def _llama_cpp_baseline(python: str | None, gguf: str | None, model: str | None) -> Any:
    """The llama.cpp worker for ``--baseline llama.cpp``, on the GGUF the engine's weights came from."""
    import torch

    from swift_engine.loading.catalog import embedded_model_path
    from swift_integrations.bench.llama_cpp_baseline import LlamaCppBaseline, default_llama_cpp_python

    python = python or default_llama_cpp_python()
    if python is None:
        raise RuntimeError(
            "--baseline llama.cpp needs llama-cpp-python in its own environment: run ../shared/tools/get-llama-cpp.sh "
            "and pass the python it prints with --llama-cpp-python (or $SWIFT_LLAMA_CPP_PYTHON)"
        )
    if gguf is None:
        if model is None:
            gguf = str(embedded_model_path())
        elif model.endswith(".gguf"):
            gguf = model
        else:
            raise RuntimeError("--baseline llama.cpp: pass the model's GGUF file with --gguf")
    return LlamaCppBaseline(python, gguf, threads=torch.get_num_threads())


def _load_engine(model: str | None, device: str, dtype: str, profile_dir: str, config: Any = None) -> "SwiftEngine":
    """The engine to benchmark, on the run's scratch profile store (the user's profiles stay untouched)."""
    from swift_engine.engine import SwiftEngine
    from swift_engine.store.profile_store import ProfileStore

    return SwiftEngine.from_pretrained(
        model, device=device, dtype=dtype, config=config, profile_store=ProfileStore(profile_dir)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``swift-bench`` with ``argv`` (default ``sys.argv[1:]``) and return its exit status.

    0 when every own method reproduced ``hf``'s greedy tokens, :data:`EXIT_MISMATCH` when one did
    not, 1 when the prompt set cannot be read, 2 for a usage error (click's status, as argparse's
    was). Other errors, a model that cannot be loaded say, propagate as exceptions.
    """
    try:
        app(args=list(argv) if argv is not None else None, prog_name="swift-bench")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def _run_constrained(engine: Any, max_new_tokens: int, progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from swift_integrations.bench.constrained import load_cases, run_constrained_benchmark

    cases = load_cases()
    with tqdm(total=2 * len(cases), desc="swift-bench constrained", unit="case", disable=not progress) as bar:
        return run_constrained_benchmark(Bench(engine, max_new_tokens), cases, max_new_tokens, progress=bar)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
