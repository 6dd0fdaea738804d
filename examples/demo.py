"""The main job: a SWIFT-accelerated LangChain chain on the embedded model, with its speed-up.

A two-step pipeline over a given document — answer a question from it, then summarize it — built
as LCEL chains around one ``SwiftChatModel``. Each step gets its own skip profile (step keys come
from the chains' run names). Every step runs twice (cold: the profile is learned; warm: reused)
and plain ``transformers`` greedy decoding of the same prompt is timed in the same process, so the
speed-up printed is measured here, now, on this machine; so is the engine's own loop without drafts,
which separates what the CPU kernels give (see ``swift_engine/kernels/cpu_kernels.py``) from what drafting gives.

Run: ``make demo`` (or ``.venv/bin/python examples/demo.py``).
"""

from __future__ import annotations

import logging
import time

import torch
from langchain_core.prompts import ChatPromptTemplate

from swift_engine import SwiftConfig
from swift_engine.loading import auto_precision
from swift_engine.model.llama_family import transformers_model
from swift_integrations import SwiftChatModel

DOCUMENT = """\
The James Webb Space Telescope (JWST) is a space telescope designed to conduct infrared astronomy. \
It was launched on 25 December 2021 on an Ariane 5 rocket from Kourou, French Guiana, and arrived at \
the Sun-Earth L2 Lagrange point in January 2022. Its primary mirror consists of 18 hexagonal mirror \
segments made of gold-plated beryllium, which combined create a 6.5-metre-diameter mirror, compared \
with Hubble's 2.4 metres. The telescope is kept extremely cold, below 50 K, by a five-layer sunshield \
the size of a tennis court. JWST's high resolution and sensitivity allow it to view objects too old, \
distant, or faint for the Hubble Space Telescope, such as the first stars and the formation of the \
first galaxies. The telescope is an international collaboration between NASA, the European Space \
Agency and the Canadian Space Agency."""

QUESTION = "What is the JWST's primary mirror made of, and how large is it compared with Hubble's?"
MAX_TOKENS = 96


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    # Each step runs the same prompt twice: the prefix cache would skip the warm call's prefill and the
    # draft memory would copy the cold call's reply, so they are off here and this measures SWIFT's
    # drafting alone. `swift-bench --pipeline` measures them on held-out tasks (docs/benchmark.md).
    llm = SwiftChatModel(
        max_tokens=MAX_TOKENS, temperature=0.0, swift_config=SwiftConfig(prefix_cache=False, draft_memory=0)
    )
    answer = (
        ChatPromptTemplate.from_messages(
            [
                ("system", "You answer questions using only the given document."),
                ("human", "Document:\n{document}\n\nQuestion: {question}"),
            ]
        )
        | llm
    ).with_config(run_name="answer")
    summarize = (
        ChatPromptTemplate.from_messages([("human", "Summarize this document in three sentences:\n{document}")]) | llm
    ).with_config(run_name="summarize")

    engine = llm.swift_engine
    choice = engine.kernel_choice  # cpu_kernels="auto": measured on this machine (once; saved)
    # dtype="auto" (the default) follows the file: the embedded Q4_1 GGUF runs at int4
    print(f"model: {engine.model_name} on {engine.runner.device}, {auto_precision(None).describe()}")
    print(f"dense kernels: {engine.runner.kernels}" + (f"  (measured: {choice.summary()})" if choice else ""))
    print()
    for name, chain, inputs, prompt in [
        ("answer", answer, {"document": DOCUMENT, "question": QUESTION}, None),
        ("summarize", summarize, {"document": DOCUMENT}, None),
    ]:
        rows = []
        for phase in ("cold", "warm"):
            msg = chain.invoke(inputs)
            stats = msg.response_metadata["swift_stats"]
            rows.append((phase, msg, stats))
        # plain transformers greedy decoding of the very same prompt, timed now
        prompt_value = chain.first.invoke(inputs)  # the rendered ChatPromptValue
        msgs = [{"role": _role(m.type), "content": m.content} for m in prompt_value.to_messages()]
        ids = engine.encode_prompt(msgs)
        hf = transformers_model(engine.model)  # transformers' class over the same weights (built untimed)
        t = time.perf_counter()
        ref = hf.generate(torch.tensor([ids], device=engine.runner.device), max_new_tokens=MAX_TOKENS, do_sample=False)
        hf_s = time.perf_counter() - t
        ref_ids = ref[0, len(ids) :].tolist()
        hf_tps = len(ref_ids) / hf_s
        # the engine's own loop without drafting: same kernels, so SWIFT's share of the speed-up shows
        own = engine.generate(ids, max_new_tokens=MAX_TOKENS, speculative=False)
        own_tps = own.stats.tokens_per_s

        final = rows[-1][1]
        print(f"== step {name!r} (step key {final.response_metadata['step_key']!r})")
        print(final.content.strip(), "\n")
        print(f"   plain transformers: {hf_tps:6.1f} tok/s")
        print(
            f"   swift, no drafts:   {own_tps:6.1f} tok/s"
            f"  (the engine's loop and CPU kernels alone: x{own_tps / hf_tps:4.2f})"
        )
        # the promise: SWIFT's tokens are plain greedy decoding's at the model's precision. In float32
        # that is transformers' own output; at int4/int8 it is the engine's plain loop (transformers'
        # loop calls PyTorch's int4 kernels, which round differently: docs/precision.md)
        if engine.runner.precision == "float32":
            ref_text = engine.tokenizer.decode(ref_ids, skip_special_tokens=True).strip()
        else:
            ref_text = own.text.strip()
        for phase, msg, st in rows:
            same = msg.content.strip() == ref_text
            print(
                f"   SWIFT {phase:4s}:        {st['tokens_per_s']:6.1f} tok/s"
                f"  speed-up x{st['tokens_per_s'] / hf_tps:4.2f}"
                f" (x{st['tokens_per_s'] / own_tps:4.2f} over no drafts)"
                f"  acceptance {st['acceptance_rate']:.2f}  tokens/step {st['mean_accepted_per_step']:.2f}"
                f"  search iters {st['search_iterations']:3d}  mode {st['mode']}"
                f"  identical to plain: {'yes' if same else 'NO'}"
            )
        print()


def _role(kind: str) -> str:
    return {"human": "user", "ai": "assistant", "system": "system"}.get(kind, kind)


if __name__ == "__main__":
    main()
