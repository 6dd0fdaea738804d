"""Where the time of a SWIFT generation goes: model passes vs the Python around them.

Runs one prompt per benchmark class on the embedded model (or ``--model``), first to warm the step's
profile, then under ``cProfile``, and prints, per class, the share of wall time spent in the full
model's verification passes, the layer-skipped draft passes, the output head, the search, and
everything else (tree building, masks, n-gram lookup, bookkeeping). ``--json`` writes it.

    .venv/bin/python scripts/profile_decode.py [--model PATH] [--max-new-tokens 48] [--json out.json]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from swift_engine.engine import SwiftEngine
    from swift_engine.tools.bench import load_prompts

    with tempfile.TemporaryDirectory() as d:
        engine = SwiftEngine.from_pretrained(args.model, device="cpu", dtype="float32", profile_store=d)
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
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
