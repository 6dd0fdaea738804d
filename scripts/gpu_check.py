"""A prepared check of the CUDA path: device placement, dtypes, exactness and the cost model on a GPU.

The embedded model's weights are too large to ship to the lent GPU machine, so this uses randomly
initialised models: tiny ones of every supported architecture (fp32: SWIFT greedy must equal
transformers greedy; bf16: reported), a grammar-constrained run with the real SmolLM2 tokenizer,
and a ~0.5B random Llama for the measured costs of draft and verification passes.

Usage: python scripts/gpu_check.py [--tokenizer DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swift_engine import SwiftConfig, SwiftEngine  # noqa: E402
from tests.conftest import TINY_ARCHS, CharTokenizer, tiny_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    out: dict = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0), "archs": {}}
    print(out, flush=True)
    cfg = SwiftConfig(skip_ratio=0.25, search={"enabled": False})
    prompts = [[3, 14, 15, 9, 26, 5, 35], list(range(40, 70)), [7] * 12]
    for arch in TINY_ARCHS:
        row = {}
        for dtype in (torch.float32, torch.bfloat16):
            model = tiny_model(arch).to(dev, dtype)
            eng = SwiftEngine(model, CharTokenizer(), cfg)
            assert eng.runner.device.type == "cuda" and eng.runner.dtype == dtype
            same, acc = 0, 0
            for p in prompts:
                ref = model.generate(
                    torch.tensor([p], device=dev), max_new_tokens=40, min_new_tokens=40, do_sample=False
                )[0, len(p) :].tolist()
                r = eng.generate(p, max_new_tokens=40)
                same += int(r.token_ids == ref)
                acc += r.stats.accepted_drafted_tokens
            row[str(dtype).split(".")[-1]] = {"identical": f"{same}/{len(prompts)}", "accepted": acc}
        out["archs"][arch] = row
        print(arch, row, flush=True)

    if args.tokenizer:
        from transformers import AutoTokenizer

        from swift_engine.decoding.constraints import JsonSchemaConstraint

        tok = AutoTokenizer.from_pretrained(args.tokenizer)
        model = tiny_model("llama", vocab=len(tok), scale=1.0).to(dev)
        eng = SwiftEngine(model, tok, cfg)
        schema = {
            "type": "object",
            "properties": {"n": {"type": "integer"}, "s": {"type": "string", "maxLength": 8}},
            "required": ["n", "s"],
        }
        r = eng.generate(
            [{"role": "user", "content": "json please"}], max_new_tokens=48, constraint=JsonSchemaConstraint(schema)
        )
        try:
            ok = isinstance(json.loads(r.text), dict)
        except Exception:
            ok = False
        out["constrained_json_on_cuda"] = {"text": r.text, "parses": ok, "finish": r.finish_reason}
        print(out["constrained_json_on_cuda"], flush=True)

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    big = (
        LlamaForCausalLM(
            LlamaConfig(
                vocab_size=32000,
                hidden_size=1536,
                intermediate_size=4096,
                num_hidden_layers=16,
                num_attention_heads=12,
                num_key_value_heads=4,
                max_position_embeddings=4096,
            )
        )
        .to(dev, torch.bfloat16)
        .eval()
    )
    eng = SwiftEngine(big, CharTokenizer(), SwiftConfig(search={"enabled": False}))
    t = time.perf_counter()
    costs = eng.costs
    out["costs_bf16_0.5B"] = {
        k: {str(a): round(b * 1e3, 3) for a, b in v.items()} if isinstance(v, dict) else round(v * 1e3, 3)
        for k, v in costs.to_dict().items()
    }
    out["costs_bf16_0.5B"]["unit"] = "ms"
    out["verify32_over_verify1"] = round(costs.verify(32) / costs.verify(1), 3)
    print(
        out["costs_bf16_0.5B"],
        "verify 32 / verify 1 =",
        out["verify32_over_verify1"],
        f"({time.perf_counter() - t:.1f}s)",
        flush=True,
    )
    p = list(range(100, 400))
    for mode in ("plain", "swift"):
        r = eng.generate(p, max_new_tokens=64, speculative=(mode == "swift"))
        out[f"big_{mode}_tok_s"] = round(r.stats.tokens_per_s, 1)
    print(
        "random 0.5B bf16 tok/s:",
        out["big_plain_tok_s"],
        "(plain)",
        out["big_swift_tok_s"],
        "(swift; random weights: acceptance is meaningless)",
        flush=True,
    )
    out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
