"""Engine configuration.

Every knob of the SWIFT algorithm lives here, with the paper's defaults where the paper gives one,
so that a run can be reproduced from its config alone.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from swift_engine.store.records import MAX_DRAFT_MEMORY_TOKENS


class TreeConfig(BaseModel):
    """How low-confidence draft positions are widened into a token tree.

    SWIFT verifies more than the greedy chain: where the draft was unsure, the runner-up tokens are
    worth a slot in the verification pass. Lower confidence gets wider branches.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: ``(confidence_below, extra_branches)`` pairs, checked in order; the first match wins.
    widths: tuple[tuple[float, int], ...] = ((0.3, 3), (0.6, 2), (0.8, 1))
    #: Hard cap on the number of tokens verified in one pass (root + chain + branches).
    max_tree_tokens: int = Field(default=32, ge=1, le=512)

    def branches_for(self, confidence: float) -> int:
        for below, width in self.widths:
            if confidence < below:
                return width
        return 0


class SearchConfig(BaseModel):
    """The optimization phase: on-the-fly search for the set of sublayers to skip."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    #: Search before every ``opt_interval``-th verify step while a step key has not converged.
    opt_interval: int = Field(default=1, ge=1)
    #: A Bayesian-optimization proposal every ``bayes_interval`` search iterations (paper: 25).
    bayes_interval: int = Field(default=25, ge=1)
    #: Teacher-forced scoring window over already generated tokens (paper: 32-50).
    context_window: int = Field(default=32, ge=4)
    #: Stop when the match score passes this (paper: 0.93-0.95).
    max_score: float = Field(default=0.93, gt=0.0, le=1.0)
    #: Stop after this many iterations without improvement.
    max_tolerance_iter: int = Field(default=300, ge=1)
    #: Stop after this many iterations in total.
    max_opt_iter: int = Field(default=1000, ge=1)
    #: Skip ratios the search may choose between (fraction of all sublayers skipped).
    skip_ratios: tuple[float, ...] = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.45)
    #: Search time allowed per call, as a fraction of the call's decoding time (bounds the cold-state
    #: cost); shrinks as the search stagnates (see ``SearchSession.affordable`` in search.py).
    max_overhead: float = Field(default=0.5, gt=0.0)
    #: The whole ``max_overhead`` while the search could still gain this much speed-up over the
    #: better of plain decoding and its best set; less in proportion below (see ``affordable``).
    full_budget_gain: float = Field(default=0.25, gt=0.0)
    #: After this many iterations, stop when even an optimistic score (+0.1 over the best seen at
    #: each skip ratio) could not beat plain decoding on this hardware.
    hopeless_after: int = Field(default=24, ge=1)
    #: Re-probe a step that decodes plainly after this many calls.
    reprobe_every_calls: int = Field(default=8, ge=1)


class SwiftConfig(BaseModel):
    """Configuration of one :class:`~swift_engine.engine.SwiftEngine`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Starting skip profile: every other layer (never first/last) at this ratio of all sublayers.
    skip_ratio: float = Field(default=0.45, ge=0.0, lt=1.0)
    #: Explicit starting skip sets; override ``skip_ratio`` when given.
    skip_attention: tuple[int, ...] | None = None
    skip_mlp: tuple[int, ...] | None = None
    #: Confidence-aware early stop of drafting (paper default 0.8).
    draft_confidence: float = Field(default=0.8, ge=0.0, le=1.0)
    #: Maximum draft length per round (paper: 25).
    max_draft_len: int = Field(default=25, ge=1, le=256)
    #: Draft over the context's tokens plus this many lowest token ids (``None``: full vocabulary).
    #: Verification always uses the full head, so this changes speed, never the output.
    draft_vocab_size: int | None = Field(default=8192, ge=1)
    #: Dense layers of the engine's own passes on CPU (see ``cpu_kernels.py``): ``"packed"``
    #: (oneDNN on weights re-laid out once; a second copy of the weights), ``"onednn"`` (no copy),
    #: ``"torch"`` (stock), or ``"auto"``: each of them (packed only when the copy fits in a quarter
    #: of the available memory) timed on this machine for a one-token step and a verification pass,
    #: the fastest kept per shape and saved with the costs (``kernel_choice.py``). Which wins differs
    #: between machines. Outputs are the same up to float rounding; other users of the model get the
    #: stock path.
    cpu_kernels: Literal["auto", "packed", "onednn", "torch"] = "auto"
    tree: TreeConfig = TreeConfig()
    search: SearchConfig = SearchConfig()
    #: Weigh layer-skip drafts against what their passes cost, per step: while the tokens only they
    #: got accepted are worth less than their passes (the cost model), stop drafting with skipped
    #: layers, probing every 8th chance (``drafters/layer_skip.py``, ``DraftPayoff``). ``False``:
    #: draft whenever the free drafts offer too little, as the paper does. Outputs are the same.
    draft_payoff: bool = True
    #: Also draft continuations found earlier in the context (prompt lookup), merged into the tree.
    context_drafts: bool = True
    #: Also draft continuations of this step's earlier outputs (its draft memory, kept in the step's
    #: profile): up to this many tokens of recent outputs per step; 0 turns it off (and stores none).
    draft_memory: int = Field(default=4096, ge=0, le=MAX_DRAFT_MEMORY_TOKENS)
    #: Keep prompts' keys and values across calls, so a call prefills only what no earlier prompt
    #: began with (an agent's system prompt, tools and history; a chain's instructions). ``True``:
    #: up to a tenth of the memory available at start (64 MiB to 2 GiB); an int: that many bytes;
    #: ``False`` (or 0): off. Outputs are the same either way (see ``prefix_cache.py``).
    prefix_cache: bool | int = True
    #: Prompts are prefilled in passes of this many tokens at fixed positions, cache or not, so a
    #: cached prefix is bitwise what a fresh prefill computes. Smaller: finer reuse, but each pass
    #: reads every weight, so a cold prefill costs more (measured in ``docs/bench``).
    prefill_block: int = Field(default=128, ge=1, le=8192)
    #: Compute each token's verification row bitwise as its one-token step would (attention row by
    #: row, trees capped at the rows the dense kernels keep invariant; ``row_attention.py``), so
    #: greedy SWIFT is token-identical to plain decoding at that precision. ``None``: on below
    #: float32 (bfloat16, int8), where one ulp flips near-ties; off in float32, where a flip is rare
    #: and the row-by-row attention would cost more than it fixes.
    row_invariant: bool | None = None
    #: Calls that arrive while another runs share one pass per token, up to this many rows (continuous
    #: batching of their plain decoding, each output bitwise what it is alone: swift_engine/batching);
    #: only on swift's int4/int8 kernels, whose rows are independent by construction. 0: calls take
    #: turns on the model, as before.
    batch_rows: int = Field(default=16, ge=0, le=64)
    #: While calls decode in the batch, a pass takes at most this many tokens of joining calls' prompts
    #: (at least one ``prefill_block``) beside their rows, so a long prompt delays their next tokens by
    #: a block's rows rather than by its whole prefill (vLLM's chunked prefill). The blocks are the
    #: ones a call alone prefills, so outputs are unchanged. 0: no budget (a pass takes at most
    #: ``batching.batcher.MAX_PROMPT_ROWS`` prompt tokens, as when nothing decodes).
    prefill_budget: int = Field(default=128, ge=0, le=1 << 20)
    #: Use SWIFT at all; ``False`` decodes plainly (a baseline that shares every other code path).
    speculative: bool = True
    #: Default step key when neither the call nor the context names one.
    default_step_key: str = "default"

    @field_validator("prefix_cache")
    @classmethod
    def _budget(cls, v: bool | int) -> bool | int:
        if not isinstance(v, bool) and v < 0:
            raise ValueError(f"prefix_cache must be True, False or a size in bytes >= 0, got {v}")
        return v

    @field_validator("skip_attention", "skip_mlp")
    @classmethod
    def _sorted_unique(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is None:
            return None
        if any(i < 0 for i in v):
            raise ValueError("layer indices must be >= 0")
        return tuple(sorted(set(v)))
