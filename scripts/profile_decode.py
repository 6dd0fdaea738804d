"""Where the time of a SWIFT generation goes: model passes vs the Python around them.

Runs one prompt per benchmark class on the embedded model (or ``--model``), first to warm the step's
profile, then under ``cProfile``, and prints, per class, the share of wall time spent in the full
model's verification passes, the layer-skipped draft passes, the output head, the search, and
everything else (tree building, masks, n-gram lookup, bookkeeping). ``--json`` writes it.

``--ops N`` then profiles plain one-token steps (decoder and head, 100 tokens of context) with
``torch.profiler`` and prints the N PyTorch ops that take the most time and how many ops a step
runs: at 135M parameters the step is mostly per-op overhead, and this is the table that says where.

    .venv/bin/python scripts/profile_decode.py [--model PATH] [--dtype int4] [--max-new-tokens 48]
        [--ops 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import tempfile
from pathlib import Path

#: (label, file suffix, function name) of the functions whose cumulative time is reported
BUCKETS = [
    ("verify (full model over the tree)", "verification.py", "verify_tree"),
    ("draft (layer-skipped chain)", "drafters/layer_skip.py", "draft_chain"),
    ("layer-set search", "search.py", "_iterate"),
    ("tree building", "tree.py", "build_tree"),
    ("context drafts", "drafters/context.py", "best"),
    ("text / stop strings", "stopping.py", "push"),
]


def profile_one(engine, messages, key: str, max_new_tokens: int) -> dict:
    engine.generate(messages, max_new_tokens=max_new_tokens, step_key=key)  # warm: the profile converges
    engine.generate(messages, max_new_tokens=max_new_tokens, step_key=key)
    prof = cProfile.Profile()
    prof.enable()
    res = engine.generate(messages, max_new_tokens=max_new_tokens, step_key=key)
    prof.disable()
    st = pstats.Stats(prof)
    total = res.stats.wall_time_s
    out = {
        "wall_s": total,
        "new_tokens": res.stats.new_tokens,
        "verify_steps": res.stats.verify_steps,
        "tokens_per_step": res.stats.mean_accepted_per_step,
        "mode": res.stats.mode,
        "prefill_s": res.stats.prefill_time_s,
        "shares": {},
    }
    for label, suffix, name in BUCKETS:
        cum = sum(v[3] for (f, _, fn), v in st.stats.items() if f.endswith(suffix) and fn == name)
        out["shares"][label] = cum / total
    out["shares"]["prefill"] = res.stats.prefill_time_s / total
    forward = sum(v[3] for (f, _, fn), v in st.stats.items() if f.endswith("runner.py") and fn in ("hidden",))
    head = sum(v[3] for (f, _, fn), v in st.stats.items() if f.endswith("runner.py") and fn == "logits")
    out["shares"]["all model passes (decoder layers)"] = forward / total
    out["shares"]["output head (full vocabulary)"] = head / total
    out["shares"]["everything else (Python, masks, sampling)"] = max(0.0, 1 - (forward + head) / total)
    return out


def profile_ops(engine, top: int, steps: int = 20) -> dict:
    """The ``top`` PyTorch ops of plain one-token steps by self CPU time, and the ops and ms per step."""
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    runner = engine.runner
    context = 100
    cache = runner.new_cache()
    runner.hidden(cache, torch.arange(100, 100 + context) % runner.vocab_size, torch.arange(context))

    def step(k: int) -> None:
        runner.logits(runner.hidden(cache, torch.tensor([5]), torch.tensor([context + k])))

    for k in range(5):  # warm up
        step(k)
    cache.truncate(context)
    t0 = time.perf_counter()
    for k in range(steps):
        step(k)
    ms = (time.perf_counter() - t0) / steps * 1e3
    cache.truncate(context)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for k in range(steps):
            step(k)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return {
        "step_ms": ms,
        "kernels": runner.kernels,
        "ops_per_step": sum(e.count for e in events) / steps,
        "top": [
            {"op": e.key, "calls_per_step": e.count / steps, "self_ms_per_step": e.self_cpu_time_total / steps / 1e3}
            for e in events[:top]
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtype", default="float32", help="float32, bfloat16, int8 or int4")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--ops", type=int, default=0, help="also list the top N ops of a one-token step")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from swift_engine.engine import SwiftEngine
    from swift_integrations.bench.prompt_sets import load_prompts

    with tempfile.TemporaryDirectory() as d:
        engine = SwiftEngine.from_pretrained(args.model, device="cpu", dtype=args.dtype, profile_store=d)
        report = {}
        for p in load_prompts(per_class=1):
            report[p.cls] = profile_one(engine, p.messages, p.cls, args.max_new_tokens)
            r = report[p.cls]
            print(
                f"\n{p.cls}: {r['new_tokens']} tokens in {r['wall_s']:.2f}s, "
                f"{r['tokens_per_step']:.2f} tokens/step, mode {r['mode']}"
            )
            for label, share in r["shares"].items():
                print(f"  {share:6.1%}  {label}")
        if args.ops:
            ops = report["ops"] = profile_ops(engine, args.ops)
            print(
                f"\none-token step ({args.dtype}, kernels {ops['kernels']}): {ops['step_ms']:.1f} ms, "
                f"{ops['ops_per_step']:.0f} PyTorch op calls with nested ones (self CPU ms, calls a step):"
            )
            for row in ops["top"]:
                print(f"  {row['self_ms_per_step']:6.2f} ms  {row['calls_per_step']:6.0f}x  {row['op']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
