"""The public engine: prompt in, SWIFT-accelerated tokens out, with statistics.

The decode loop (``_decode``) is the whole acceleration phase in a few lines: draft with skipped
layers from the last token, widen the draft into a tree, verify the tree with the full model,
keep the accepted path. Everything around it is prompt handling, stop conditions and reporting.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .config import SwiftConfig
from .drafting import build_tree, draft_chain
from .layer_skip import default_skip_set
from .results import FinishReason, GenerationResult, GenerationStats, StreamChunk
from .runner import ModelRunner
from .sampling import SamplingParams
from .steps import resolve_step_key
from .stopping import StopStrings, TextStream
from .tree import TokenTree
from .verification import verify_tree

logger = logging.getLogger(__name__)

Prompt = str | Sequence[dict[str, Any]] | Sequence[int]

#: Prefill in chunks so the mask of a long prompt stays small.
_PREFILL_CHUNK = 512


@dataclass(frozen=True)
class SkipChoice:
    """What one generation drafts with: the skipped sublayers, or plain decoding."""

    attention: frozenset[int]
    mlp: frozenset[int]
    plain: bool = False


class SwiftEngine:
    """SWIFT self-speculative decoding over a Hugging Face causal LM.

    Thread-safe: generations on one engine are serialized by a lock (they share the model's
    layer-skip switches; on CPU two concurrent forwards would only contend for the same cores).
    """

    def __init__(self, model, tokenizer, config: SwiftConfig | None = None, *, model_name: str | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config or SwiftConfig()
        self.model_name = model_name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.runner = ModelRunner(model)
        self._lock = threading.RLock()
        n = self.runner.num_layers
        if self.config.skip_attention is not None or self.config.skip_mlp is not None:
            att, mlp = list(self.config.skip_attention or ()), list(self.config.skip_mlp or ())
        else:
            att, mlp = default_skip_set(n, self.config.skip_ratio)
        self.runner.skipper.validate(att, mlp)
        self._default_skip = SkipChoice(frozenset(att), frozenset(mlp))
        self.eos_ids = self._eos_ids()

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model_id: str | os.PathLike | None = None,
        *,
        gguf_file: str | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        config: SwiftConfig | None = None,
    ) -> "SwiftEngine":
        """Load a model (``None``: the embedded SmolLM2-135M-Instruct) and wrap it."""
        from .loading import load_model

        loaded = load_model(model_id, gguf_file=gguf_file, device=device, dtype=dtype)
        return cls(loaded.model, loaded.tokenizer, config, model_name=loaded.model_name)

    def _eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for src in (getattr(self.model, "generation_config", None), self.model.config, self.tokenizer):
            e = getattr(src, "eos_token_id", None)
            if isinstance(e, int):
                ids.add(e)
            elif isinstance(e, (list, tuple)):
                ids.update(int(x) for x in e)
        return frozenset(ids)

    # -- prompts -------------------------------------------------------------------------------
    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of a string, a list of chat messages (chat template applied), or ids."""
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt is empty")
            ids = self.tokenizer(prompt)["input_ids"]
        elif isinstance(prompt, Sequence) and len(prompt) > 0 and all(isinstance(m, dict) for m in prompt):
            if not getattr(self.tokenizer, "chat_template", None):
                raise ValueError(
                    "this tokenizer has no chat template; pass a string prompt (the integrations render "
                    "messages in a plain documented format for such models)"
                )
            for m in prompt:
                if "role" not in m or "content" not in m:
                    raise ValueError(f"chat messages need 'role' and 'content', got keys {sorted(m)}")
            text = self.tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        elif isinstance(prompt, Sequence) and len(prompt) > 0 and all(isinstance(t, int) for t in prompt):
            ids = list(prompt)
            bad = [t for t in ids if not 0 <= t < self.runner.vocab_size]
            if bad:
                raise ValueError(f"token ids out of range [0, {self.runner.vocab_size}): {bad[:5]}")
        else:
            raise ValueError("prompt must be a non-empty string, list of chat messages, or list of token ids")
        if not ids:
            raise ValueError("prompt encodes to zero tokens")
        ctx = self.runner.context_length
        if ctx is not None and len(ids) >= ctx:
            raise ValueError(f"prompt has {len(ids)} tokens but the model's context is {ctx}; shorten it")
        return list(ids)

    # -- profiles (the layer-set search plugs in here) -------------------------------------
    def _choose_skip(self, step_key: str) -> SkipChoice:
        if not self.config.speculative:
            return SkipChoice(frozenset(), frozenset(), plain=True)
        return self._default_skip

    # -- public API ---------------------------------------------------------------------------
    def generate(self, prompt: Prompt, **kwargs: Any) -> GenerationResult:
        """Generate a completion; see :meth:`stream` for the arguments."""
        result = None
        for chunk in self.stream(prompt, **kwargs):
            result = chunk.result or result
        assert result is not None
        return result

    def stream(
        self,
        prompt: Prompt,
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop: str | Sequence[str] | None = None,
        step_key: str | None = None,
        seed: int | None = None,
        speculative: bool | None = None,
    ) -> Iterator[StreamChunk]:
        """Stream chunks (text delta + token ids); the last chunk carries the :class:`GenerationResult`.

        ``speculative=False`` decodes plainly through the same loop (the benchmark's own baseline).
        """
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        params = SamplingParams(float(temperature), float(top_p), int(top_k))
        stops = StopStrings(stop)
        key = resolve_step_key(step_key, self.config.default_step_key)
        ids = self.encode_prompt(prompt)
        return self._stream(ids, max_new_tokens, params, stops, key, seed, speculative)

    def _stream(self, ids, max_new_tokens, params, stops, key, seed, speculative) -> Iterator[StreamChunk]:
        with self._lock:
            t0 = time.perf_counter()
            if self.runner.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.runner.device)
            choice = self._choose_skip(key)
            if speculative is False:
                choice = SkipChoice(frozenset(), frozenset(), plain=True)
            stats = GenerationStats(
                prompt_tokens=len(ids),
                step_key=key,
                mode="plain" if choice.plain else "swift",
                skip_attention=sorted(choice.attention),
                skip_mlp=sorted(choice.mlp),
            )
            ctx = self.runner.context_length
            if ctx is not None:
                max_new_tokens = min(max_new_tokens, ctx - len(ids))
            generator = None
            if not params.greedy:
                generator = torch.Generator(device=self.runner.device)
                generator.manual_seed(seed if seed is not None else random.SystemRandom().randrange(2**63))
            text = TextStream(self.tokenizer, stops)
            out: list[int] = []
            finish: FinishReason = "length"
            for new in self._decode(ids, max_new_tokens, params, generator, choice, stats):
                emit: list[int] = []
                for tok in new:
                    emit.append(tok)
                    if tok in self.eos_ids:
                        finish = "eos"
                        break
                out.extend(emit)
                delta = text.push([t for t in emit if t not in self.eos_ids])
                if text.stopped_at is not None:
                    finish = "stop"
                if delta or emit:
                    yield StreamChunk(text=delta, token_ids=emit)
                if finish != "length" or len(out) >= max_new_tokens:
                    break
            tail = text.flush()
            if tail:
                yield StreamChunk(text=tail)
            stats.new_tokens = len(out)
            stats.wall_time_s = time.perf_counter() - t0
            if self.runner.device.type == "cuda":
                stats.peak_memory_bytes = int(torch.cuda.max_memory_allocated(self.runner.device))
            result = GenerationResult(
                text=text.final_text, token_ids=out, finish_reason=finish, stats=stats.finalize()
            )
            yield StreamChunk(result=result)

    # -- the decode loop --------------------------------------------------------------------
    def _decode(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        params: SamplingParams,
        generator: torch.Generator | None,
        choice: SkipChoice,
        stats: GenerationStats,
    ) -> Iterator[list[int]]:
        """Yield committed tokens as they are accepted; the caller decides when to stop."""
        runner, device = self.runner, self.runner.device
        cache = runner.new_cache()
        tp = time.perf_counter()
        n = len(prompt_ids)
        for s in range(0, n, _PREFILL_CHUNK):
            chunk = torch.tensor(prompt_ids[s : s + _PREFILL_CHUNK], device=device)
            logits = runner.forward(cache, chunk, torch.arange(s, s + chunk.numel(), device=device), last_only=True)
        root = self._pick(logits[-1], params, generator)
        stats.prefill_time_s = time.perf_counter() - tp
        yield [root]
        produced = 1
        past = n  # cache entries: every committed token except the root
        while produced < max_new_tokens:
            remaining = max_new_tokens - produced
            if choice.plain or remaining <= 1:
                tree = TokenTree.with_root(root)
            else:
                draft = draft_chain(
                    runner, cache, root, past, choice.attention, choice.mlp, self.config, max_len=remaining - 1
                )
                cache.truncate(past)
                stats.draft_steps += draft.steps
                stats.drafted_tokens += len(draft.tokens)
                tree = build_tree(root, draft, self.config)
            verdict = verify_tree(runner, cache, tree, past, params, generator)
            stats.verify_steps += 1
            stats.accepted_drafted_tokens += len(verdict.accepted)
            new = verdict.accepted + [verdict.bonus]
            past += len(verdict.path)
            root = verdict.bonus
            produced += len(new)
            yield new

    def _pick(self, logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
        from .sampling import sample, target_probs

        if params.greedy:
            return int(logits.argmax().item())
        return sample(target_probs(logits, params), generator)
