"""From the runs of ``swift-bench`` to its result: medians per prompt, per class and overall.

:func:`summarize` turns a :class:`~swift_integrations.bench.measure.Bench`'s runs into the result
dict that ``--json`` writes and the report renders: per-method tokens/s, SWIFT's speed-ups paired
with the same round's baseline run (so that machine noise hits both alike), exactness, SWIFT's
acceptance, the learning curve of each class and how many tokens the search needed
(:func:`tokens_to_fraction`), per-request timings and memory. Only numbers are computed here; the
tables are :mod:`swift_integrations.bench.report`'s.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from swift_integrations.bench.measure import Bench, Run
from swift_integrations.bench.methods import OWN_METHODS, SWIFT_METHODS
from swift_integrations.bench.prompt_sets import BenchPrompt

logger = logging.getLogger(__name__)

#: Fraction of the final expected speed-up that "tokens to 90%" measures.
CONVERGENCE_FRACTION = 0.9


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


def _engine_stats(run: Run) -> dict[str, Any]:
    """The engine's statistics of one of its own runs (hf runs have none)."""
    assert run.stats is not None, f"{run.method} run without engine statistics"
    return run.stats


def summarize(
    bench: Bench,
    prompts: Sequence[BenchPrompt],
    classes: list[str],
    methods: list[str],
    baselines: list[str],
    learned: dict[str, Any],
    final: dict[str, Any],
) -> dict[str, Any]:
    """The result of a run, less its ``meta``, ``memory`` and ``runs`` (:func:`run_benchmark` adds those).

    ``learned`` and ``final`` are each class's profile summary after the warm-up calls and at the end.
    """
    runs = bench.runs
    per_prompt = [_prompt_row(bench, p, methods, baselines) for p in prompts]
    per_class = [_class_row(runs, cls, per_prompt, methods, learned, final) for cls in classes]
    overall = {
        "tokens_per_s": {m: _median(r["tokens_per_s"][m] for r in per_prompt) for m in methods},
        "speedup": {k: _median(r["speedup"][k] for r in per_prompt) for k in per_prompt[0]["speedup"]},
    }
    warmup_runs = _select(runs, method="swift_warmup")
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
        "exactness": _exactness(bench),
        "reference": {
            p.id: {"token_ids": bench.reference.get(p.id), "text": _decode(bench.engine, bench.reference.get(p.id))}
            for p in prompts
        },
    }


def _select(
    runs: Sequence[Run],
    prompt_id: str | None = None,
    method: str | None = None,
    phase: str | None = None,
    rnd: int | None = None,
) -> list[Run]:
    """The runs matching every given field, in execution order."""
    return [
        r
        for r in runs
        if (prompt_id is None or r.prompt_id == prompt_id)
        and (method is None or r.method == method)
        and (phase is None or r.phase == phase)
        and (rnd is None or r.round == rnd)
    ]


def _prompt_row(bench: Bench, p: BenchPrompt, methods: list[str], baselines: list[str]) -> dict[str, Any]:
    """One prompt: each method's median tokens/s and exactness, SWIFT's paired speed-ups and statistics."""
    runs = bench.runs
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
        rs = _select(runs, p.id, m)
        row["tokens_per_s"][m] = _median(r.tokens_per_s for r in rs)
        row["exact"][m] = all(r.exact is True for r in rs) if rs else None
        bad = [r.first_mismatch for r in rs if r.exact is False and r.first_mismatch is not None]
        row["first_mismatch"][m] = min(bad) if bad else None
    for sm, phase in (("swift_cold", "cold"), ("swift_warm", "warm")):
        for b in baselines:
            ratios = []
            for s in _select(runs, p.id, sm, phase):
                base = _select(runs, p.id, b, phase, s.round)
                if base and base[0].tokens_per_s > 0:
                    ratios.append(s.tokens_per_s / base[0].tokens_per_s)
            row["speedup"][f"{sm}_vs_{b}"] = _median(ratios)
    for sm in SWIFT_METHODS:
        rs = _select(runs, p.id, sm)
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
    return row


def _class_row(
    runs: Sequence[Run],
    cls: str,
    per_prompt: list[dict[str, Any]],
    methods: list[str],
    learned: dict[str, Any],
    final: dict[str, Any],
) -> dict[str, Any]:
    """One class: medians over its prompts, its learning curve, timings, profile and layer-skip ceiling."""
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
    crow["timing"] = {m: _timing(_select(runs, method=m), cls) for m in methods}
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
    return crow


def _exactness(bench: Bench) -> dict[str, Any]:
    """Whether each group of methods reproduced the reference, and every mismatch."""
    runs = bench.runs
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
        "swift_exact": all(r.exact is True for r in runs if r.method in (*SWIFT_METHODS, "swift_warmup")),
        "all_own_exact": own_exact,
        "hf_lookup_exact": all(r.exact is True for r in runs if r.method == "hf_lookup"),
        "llama_cpp_exact": all(r.exact is True for r in runs if r.method == "llama_cpp"),
        "mismatches": mismatches,
        "reference": bench.reference_method,
        "inexact": list(bench.inexact),
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


def memory_by_method(runs: Sequence[Run], methods: Sequence[str]) -> dict[str, Any]:
    out = {}
    for m in (*methods, "swift_warmup"):
        rs = [r for r in runs if r.method == m]
        kv = [r.kv_cache_bytes for r in rs if r.kv_cache_bytes is not None]
        peak = [r.cuda_peak_bytes for r in rs if r.cuda_peak_bytes is not None]
        out[m] = {"max_kv_cache_bytes": max(kv) if kv else None, "cuda_peak_bytes": max(peak) if peak else None}
    return out
