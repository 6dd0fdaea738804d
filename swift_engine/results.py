"""Public result types of a generation: what the integrations report upward."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

FinishReason = Literal["stop", "length", "eos"]


class GenerationStats(BaseModel):
    """Counters of one generation; the source of the speed-up statistics every integration shows."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    #: Forward passes of the full model after the prefill (each emits >= 1 token).
    verify_steps: int = 0
    #: Draft forward passes (layer-skipped model).
    draft_steps: int = 0
    #: Draft tokens the verifier checked (every tree node but the root) and how many it accepted.
    drafted_tokens: int = 0
    accepted_drafted_tokens: int = 0
    #: The share of those that came from the context (prompt-lookup drafts).
    context_drafted_tokens: int = 0
    context_accepted_tokens: int = 0
    #: Draft tokens copied from this step's earlier outputs (its draft memory), and those accepted.
    memory_drafted_tokens: int = 0
    memory_accepted_tokens: int = 0
    #: accepted_drafted_tokens / drafted_tokens (0 when nothing was drafted).
    acceptance_rate: float = 0.0
    #: Tokens emitted per verify step, the prefill's first token aside (1.0 is plain decoding).
    mean_accepted_per_step: float = 0.0
    prefill_time_s: float = 0.0
    wall_time_s: float = 0.0
    #: new_tokens / wall_time_s.
    tokens_per_s: float = 0.0
    #: ``"swift"`` when the step drafted with skipped layers, ``"plain"`` otherwise.
    mode: Literal["swift", "plain"] = "swift"
    step_key: str = "default"
    skip_attention: list[int] = Field(default_factory=list)
    skip_mlp: list[int] = Field(default_factory=list)
    #: Whether the layer-set search ran during this call, and how many iterations it made.
    search_ran: bool = False
    search_iterations: int = 0
    profile_score: float | None = None
    #: The search's estimate of this step's speed-up on this hardware (cost model x match score).
    expected_speedup: float | None = None
    peak_memory_bytes: int | None = None
    #: Bytes held by this generation's KV cache (pre-allocated, grown geometrically; never cloned).
    kv_cache_bytes: int = 0
    #: Tokens appended after ``max_new_tokens`` cut a grammar-constrained reply short, so that it
    #: still parses (see :meth:`swift_engine.decoding.constraints.GrammarState.close`); included in new_tokens.
    grammar_closing_tokens: int = 0
    #: Dense kernels of the engine's passes: ``torch``, ``onednn``, ``packed`` or ``<step>+<verify>``
    #: (``cpu_kernels="auto"`` measures them on the machine; see ``engine.kernel_choice``).
    kernels: str = "torch"
    #: What the dense layers computed in: ``float32``, ``bfloat16``, ``float16`` or ``int8`` (weights).
    precision: str = "float32"
    #: Memory the kernels held beside the model's weights during the call (oneDNN's packed weight
    #: copy, shared by the engines over one model; 0 for stock kernels).
    kernel_memory_bytes: int = 0
    #: Prompt tokens whose keys and values came from the prefix cache (not prefilled by this call).
    cached_prompt_tokens: int = 0
    #: Passes this call shared with other calls' tokens (continuous batching: swift_engine/batching); 0 alone.
    shared_passes: int = 0
    #: Whether the call decoded in the batch's passes (from its start, or after its first token when others
    #: were in flight by then), rather than alone with SWIFT.
    batched: bool = False
    #: Memory of the engine's prefix cache after this call's prompt was added (0: off).
    prefix_cache_bytes: int = 0

    def finalize(self) -> "GenerationStats":
        self.acceptance_rate = self.accepted_drafted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0
        # the first token comes from the prefill, every later one from a verify step
        self.mean_accepted_per_step = (self.new_tokens - 1) / self.verify_steps if self.verify_steps else 0.0
        self.tokens_per_s = self.new_tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0
        return self


class GenerationResult(BaseModel):
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    stats: GenerationStats


class StreamChunk(BaseModel):
    """One piece of a streamed generation; the last chunk carries ``result``."""

    text: str = ""
    token_ids: list[int] = Field(default_factory=list)
    result: GenerationResult | None = None
