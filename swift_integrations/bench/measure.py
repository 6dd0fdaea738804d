"""One timed generation per method on one engine: :class:`Bench`, and :class:`Run`, its record.

:class:`Bench` holds the primitives every part of ``swift-bench`` times with: ``transformers``'
``generate`` (plain and prompt lookup) on a clean greedy config, the engine's own ``generate``
(plain or SWIFT), and llama.cpp through its worker. Each is synchronised with the device before
and after, so the wall time is the generation's own. It keeps every :class:`Run`, the reference
tokens the others must reproduce, and the memory snapshots taken between phases; the phases
themselves are :func:`swift_integrations.bench.runner.run_benchmark`'s.

``torch`` and ``transformers`` are imported inside the methods that use them: ``swift-accel``
imports the benchmark's command at start-up and must not pay for them.
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from swift_integrations.bench.methods import INEXACT_BASELINES, PROMPT_LOOKUP_TOKENS
from swift_integrations.bench.prompt_sets import BenchPrompt

logger = logging.getLogger(__name__)


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

        from swift_engine.model.llama_family import transformers_model

        self.engine = engine
        #: transformers' class over the engine's weights (its own classes' view built here, not in a timed call)
        self.hf_model = transformers_model(engine.model)
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
            out = self.hf_model.generate(
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
