"""``swift-bench --passes``: what a pass of k rows costs against a one-token step, against the memory limit.

Why: speculative decoding pays only while verifying k drafted tokens costs about one step. This
measures, per precision and per kernel set (swift's AMX kernels and PyTorch's, ``cpu_kernels="auto"``
and ``"torch"``), on this machine and in one run:

* the one-token step, and passes of k = 2..32 rows (a verification chain after a cached context) as
  multiples of it -- the engine's own synthetic passes (:func:`swift_engine.kernels.costs.synthetic_passes`);
* the bytes a step reads (every weight once; one row of the input embedding), the machine's read
  bandwidth (a buffer larger than the last-level cache, summed), and the step's share of the
  ceiling those two give (bytes / bandwidth).

The KV cache's reads are left out of the bytes (small at this context: 128 tokens).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

ROWS = (2, 4, 8, 16, 32)
#: tokens of the measured prompt block (the engine's default ``prefill_block``)
PROMPT_ROWS = 128
CONTEXT = 128


def _best(fn: Callable[[], object], reps: int) -> float:
    """Seconds of ``fn``: the lower quartile of ``reps`` runs after two warm-ups (robust to a busy machine)."""
    return _best_interleaved({"": fn}, reps)[""]


def read_bandwidth(gib: float = 2.0, reps: int = 5) -> float:
    """Bytes per second this machine reads with the current torch threads (a ``gib`` GiB buffer, summed)."""
    import torch

    buffer = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    seconds = _best(lambda: buffer.sum(), reps)
    return buffer.numel() * 4 / seconds


def step_bytes(model: Any) -> int:
    """Bytes a one-token step reads from the weights: every parameter once, one row of the input embedding."""
    embedding = model.get_input_embeddings().weight
    total = 0
    seen: set[int] = set()
    for param in model.parameters():
        if param.data_ptr() in seen:
            continue
        seen.add(param.data_ptr())
        if param is embedding:
            total += param[0].numel() * param.element_size()
        else:
            total += param.numel() * param.element_size()
    return total


def _best_interleaved(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Seconds of each of ``fns``: the lower quartile of ``reps`` rounds, each round running every one once
    (after two warm-up rounds). Round by round, so that a machine whose speed drifts over seconds (a
    shared VM: 20-50% within minutes) slows every shape alike and their ratios hold."""
    for _ in range(2):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: sorted(ts)[len(ts) // 4] for name, ts in times.items()}


def measure_passes(engine: Any, reps: int = 15) -> dict[str, Any]:
    """The step and the k-row passes of ``engine`` (ms; ratios to the step) and the bytes its step reads."""
    from swift_engine.kernels.costs import synthetic_passes

    runner = engine.runner
    context = min(CONTEXT, (runner.context_length or 4096) // 2)  # a small model's window may be short
    passes = synthetic_passes(runner, context, max(*ROWS, PROMPT_ROWS))
    seconds = _best_interleaved({str(k): passes(k) for k in (1, *ROWS)}, reps)
    step = seconds["1"]
    return {
        "precision": runner.precision,
        "kernels": runner.kernels,
        "step_ms": 1e3 * step,
        "rows": {str(k): seconds[str(k)] / step for k in ROWS},
        # a prompt block as prefill runs it (no tree, no head), per token
        "prompt_ms_per_token": 1e3 * _best(passes(PROMPT_ROWS, tree=False), max(3, reps // 3)) / PROMPT_ROWS,
        "step_bytes": step_bytes(engine.model),
        "context": context,
    }


def run_passes(model: str | None, dtypes: Sequence[str], kernel_sets: Sequence[str], load: Callable[..., Any]) -> dict:
    """Measure every (dtype, kernel set), one engine at a time; with the bandwidth measured once, first."""
    import gc

    import torch

    bandwidth = read_bandwidth()
    rows = []
    for dtype in dtypes:
        for kernels in kernel_sets:
            engine = load(model, dtype, kernels)
            row = measure_passes(engine)
            row.update(dtype=dtype, cpu_kernels=kernels)
            row["ceiling_ms"] = 1e3 * row["step_bytes"] / bandwidth
            row["ceiling_share"] = row["ceiling_ms"] / row["step_ms"]
            rows.append(row)
            del engine
            gc.collect()
    return {
        "meta": {"threads": torch.get_num_threads(), "torch": torch.__version__, "context": CONTEXT},
        "read_bandwidth_gb_s": bandwidth / 1e9,
        "passes": rows,
    }


def passes_markdown(result: dict[str, Any]) -> str:
    """The result as a markdown table (one row per precision and kernel set)."""
    head = (
        "| dtype | kernels | step ms | MB read / step | share of bandwidth ceiling | "
        + " | ".join(f"k={k}" for k in ROWS)
        + f" | prompt ms/token ({PROMPT_ROWS}-token block)"
    )
    lines = [
        f"Read bandwidth: {result['read_bandwidth_gb_s']:.1f} GB/s ({result['meta']['threads']} threads); "
        f"passes after a {result['meta']['context']}-token context (half the model's window where that is "
        "shorter); k rows as multiples of the step.",
        "",
        head + " |",
        "|" + "---|" * (6 + len(ROWS)),
    ]
    for row in result["passes"]:
        ratios = " | ".join(f"{row['rows'][str(k)]:.2f}" for k in ROWS)
        lines.append(
            f"| {row['dtype']} | {row['kernels']} | {row['step_ms']:.2f} | {row['step_bytes'] / 1e6:.0f} | "
            f"{100 * row['ceiling_share']:.0f}% | {ratios} | {row.get('prompt_ms_per_token', float('nan')):.3f} |"
        )
    return "\n".join(lines) + "\n"
