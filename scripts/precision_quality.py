"""What each precision costs in quality: perplexity of a held-in text at float32, bfloat16, int8 and int4.

The text is the benchmark's own prompt set (``swift_integrations/bench/prompts/bench_prompts.json``: a
summarization source, a context, code, chat), rendered through the model's chat template, so it
is fixed in the repository and the same for every model. Perplexity is that of the model's own
next-token predictions over it (``transformers`` forward, windows of 512 tokens, stride 256);
the number that matters is each precision's change against float32 on the same model.

    .venv/bin/python scripts/precision_quality.py [--model PATH] [--json out.json] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from pathlib import Path

import torch

PRECISIONS = ("float32", "bfloat16", "int8", "int4")


def held_in_text(tokenizer) -> list[int]:
    prompts = json.loads(Path("swift_integrations/bench/prompts/bench_prompts.json").read_text())["prompts"]
    ids: list[int] = []
    for p in prompts:
        ids += list(tokenizer.apply_chat_template(p["messages"], tokenize=True, return_dict=True)["input_ids"])
    return ids


@torch.inference_mode()
def perplexity(model, ids: list[int], window: int = 512, stride: int = 256) -> float:
    """Sliding-window perplexity: every token scored once, with up to ``window - stride`` tokens of context."""
    nll, count, prev_end = 0.0, 0, 0
    for start in range(0, len(ids), stride):
        end = min(start + window, len(ids))
        x = torch.tensor([ids[start:end]])
        logits = model(x).logits[0].float()
        targets = x[0, 1:]
        losses = torch.nn.functional.cross_entropy(logits[:-1], targets, reduction="none")
        new = end - max(prev_end, start + 1)  # score only tokens no earlier window scored
        nll += float(losses[-new:].sum()) if new > 0 else 0.0
        count += max(new, 0)
        prev_end = end
        if end == len(ids):
            break
    return math.exp(nll / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder or .gguf (default: the embedded SmolLM2)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    from swift_engine.kernels.native_build import kernels_label, native_status
    from swift_engine.kernels.quantize import native_products
    from swift_engine.loading.load import load_model

    rows = []
    ref = None
    for precision in PRECISIONS:
        t0 = time.perf_counter()
        loaded = load_model(args.model, device="cpu", dtype=precision)
        ids = held_in_text(loaded.tokenizer)
        tensors = [*loaded.model.parameters(), *loaded.model.buffers()]
        weight_bytes = sum(t.numel() * t.element_size() for t in tensors)
        # int4 and int8 on PyTorch's kernels, and on swift's where they load here (what an engine runs:
        # on a CPU without AMX its int4 products round their inputs to int8, as llama.cpp's do)
        runs = [(precision, contextlib.nullcontext)]
        if precision in ("int4", "int8") and native_status().loaded:
            runs.append((f"{precision}, {kernels_label()}", native_products))
        for label, context in runs:
            with context():
                ppl = perplexity(loaded.model, ids)
            ref = ppl if ref is None else ref
            rows.append(
                {
                    "model": loaded.model_name,
                    "precision": label,
                    "tokens": len(ids),
                    "perplexity": round(ppl, 4),
                    "vs_float32": round(ppl / ref - 1.0, 4),
                    # what the model holds in memory at this precision (tensors; a tied head counts once)
                    "weight_mb": round(weight_bytes / 2**20, 1),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
            print(json.dumps(rows[-1]))
        del loaded
    if args.json:
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    if args.markdown:
        lines = [
            "| model | precision | tokens | perplexity | vs float32 | weights MiB |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for r in rows:
            cells = [
                r["model"],
                r["precision"],
                str(r["tokens"]),
                f"{r['perplexity']:.3f}",
                f"{100 * r['vs_float32']:+.2f}%",
                f"{r['weight_mb']:.0f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        Path(args.markdown).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
