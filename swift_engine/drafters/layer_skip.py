"""Layer-skip drafts: SWIFT's own drafter, the target model with some sublayers skipped.

The draft runs the *same* model with the step's skip set, writing KV entries only in the layers it
runs, at positions right after the committed context. Nothing is cloned: after the draft this
drafter rewinds the cache (a length change), and the verification pass overwrites those positions
with the full model's entries. Which sublayers to skip is the layer-set search's choice
(:mod:`swift_engine.search.layer_search`), read at every proposal because the search may improve it mid-call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from swift_engine.config import SwiftConfig
from swift_engine.decoding.tree import SOURCE_LAYER_SKIP, Proposal, TokenTree
from swift_engine.decoding.verification import Verdict
from swift_engine.kernels.costs import CostModel
from swift_engine.model.draft_head import DraftHead
from swift_engine.model.kv_cache import SwiftKVCache
from swift_engine.model.runner import ModelRunner

if TYPE_CHECKING:
    from swift_engine.decoding.constraints import GrammarState
    from swift_engine.search.state import SkipChoice


@dataclass
class Draft:
    tokens: list[int] = field(default_factory=list)
    #: top-1 probability of each drafted token under the draft model
    confidences: list[float] = field(default_factory=list)
    #: runner-up tokens per position, best first
    alternates: list[list[int]] = field(default_factory=list)
    steps: int = 0


@torch.inference_mode()
def draft_chain(
    runner: ModelRunner,
    cache: SwiftKVCache,
    root: int,
    start: int,
    skip_attention: frozenset[int],
    skip_mlp: frozenset[int],
    config: SwiftConfig,
    max_len: int,
    head: DraftHead | None = None,
    grammar: GrammarState | None = None,
) -> Draft:
    """Greedy draft after ``root`` (at position ``start``) until the draft is unsure or long enough.

    The paper's confidence-aware early stop: once the draft's top-1 probability falls under
    ``config.draft_confidence`` further tokens are unlikely to be accepted, so their cost is wasted.
    """
    draft = Draft()
    max_len = min(max_len, config.max_draft_len)
    if max_len <= 0:
        return draft
    max_branch = max((w for _, w in config.tree.widths), default=0)
    token = root
    device = runner.device
    with runner.skipper.skipping(skip_attention, skip_mlp):
        for i in range(max_len):
            ids = torch.tensor([token], device=device)
            pos = torch.tensor([start + i], device=device)
            hidden = runner.hidden(cache, ids, pos)[-1:]
            if head is None:
                logits, vocab = runner.logits(hidden), None
            else:
                logits, vocab = head.logits(hidden)
            draft.steps += 1
            if grammar is not None:
                allowed = grammar.allowed(device)
                logits = logits.masked_fill(~(allowed if vocab is None else allowed[vocab]), float("-inf"))
                if not torch.isfinite(logits).any():
                    break  # the grammar allows nothing the draft head can say here
            probs = torch.softmax(logits[0], dim=-1)
            top = torch.topk(probs, min(1 + max_branch, probs.numel()))
            idx = top.indices if vocab is None else vocab[top.indices]
            values, indices = top.values.tolist(), idx.tolist()
            if grammar is not None:  # runner-ups the grammar forbids are no branches
                keep = [i for i, v in enumerate(values) if v > 0.0]
                values, indices = [values[i] for i in keep], [indices[i] for i in keep]
            token, conf = indices[0], values[0]
            draft.tokens.append(token)
            draft.confidences.append(conf)
            draft.alternates.append(indices[1:])
            if grammar is not None and not grammar.advance(token):
                draft.tokens.pop()
                draft.confidences.pop()
                draft.alternates.pop()
                break
            if grammar is not None and grammar.terminated:
                break  # the draft closed the grammar (a stop token): nothing can follow
            if conf < config.draft_confidence:
                break
    if grammar is not None:
        grammar.rollback(len(draft.tokens))  # the grammar only advances along verified tokens
    return draft


#: Evidence a step starts from: one good proposal's worth (a token gained per pass), so drafting is tried.
_PAYOFF_PRIOR = (2.0, 2.0)
#: Draft passes of evidence kept; older evidence is scaled down so a step whose content changes re-learns.
_PAYOFF_MEMORY = 48.0
#: While drafts do not pay, every this-many-th chance still drafts, to notice when they start paying again.
_PAYOFF_PROBE_EVERY = 8


@dataclass
class DraftPayoff:
    """Whether layer-skip drafts pay for their passes, in one step: tokens only they brought, per pass.

    A layer-skip draft costs model passes; it is worth them when the tokens it alone got accepted
    (tokens no free drafter proposed too) would have cost more plain steps than its passes cost.
    In a tool-calling step the free drafts (context, memory) carry the JSON and layer-skip drafts
    run only where those have nothing: in free text, where a poor skip set may mostly be rejected.
    Kept in the step's profile (``extra["layer_skip_payoff"]``), decayed like the other statistics.
    """

    gained: float = _PAYOFF_PRIOR[0]
    passes: float = _PAYOFF_PRIOR[1]

    def pays(self, token_s: float, pass_s: float) -> bool:
        return self.gained * token_s >= self.passes * pass_s

    def add(self, gained: int, passes: int) -> None:
        self.gained += gained
        self.passes += passes
        if self.passes > _PAYOFF_MEMORY:
            scale = _PAYOFF_MEMORY / self.passes
            self.gained *= scale
            self.passes *= scale

    def to_dict(self) -> dict[str, float]:
        return {"gained": round(self.gained, 3), "passes": round(self.passes, 3)}

    @classmethod
    def from_dict(cls, d: Any) -> DraftPayoff:
        """Read back :meth:`to_dict` (the record is untrusted: anything malformed is the prior)."""
        try:
            gained, passes = float(d["gained"]), float(d["passes"])
        except (TypeError, KeyError, ValueError):
            return cls()
        if not (0.0 <= gained <= 1e6 and 0.0 < passes <= 1e6):  # also rejects NaN
            return cls()
        return cls(gained, passes)


class LayerSkipDrafter:
    """Drafts a confidence-bounded chain (and runner-up branches) with the step's skip set.

    With ``costs``, it drafts only while its drafts pay for their passes in this step
    (:class:`DraftPayoff`), probing now and then when they do not.
    """

    source: ClassVar[int] = SOURCE_LAYER_SKIP
    runs_model: ClassVar[bool] = True
    profile_key: ClassVar[str | None] = "layer_skip_payoff"

    def __init__(
        self,
        runner: ModelRunner,
        cache: SwiftKVCache,
        config: SwiftConfig,
        head: DraftHead,
        skip: Callable[[], SkipChoice],
        grammar: GrammarState | None = None,
        *,
        costs: CostModel | None = None,
        payoff: Any = None,
    ) -> None:
        self.runner, self.cache, self.config = runner, cache, config
        self.head = head
        self.skip = skip
        self.grammar = grammar
        self.costs = costs
        self.payoff = DraftPayoff.from_dict(payoff) if payoff is not None else DraftPayoff()
        self._chances = 0
        #: passes of the proposal now being verified (0: none of ours)
        self._pending = 0

    def _pays(self, choice: SkipChoice) -> bool:
        if self.costs is None:
            return True
        self._chances += 1
        ratio = (len(choice.attention) + len(choice.mlp)) / (2 * self.runner.num_layers)
        if self.payoff.pays(self.costs.plain_s, self.costs.draft(ratio)):
            return True
        return self._chances % _PAYOFF_PROBE_EVERY == 0

    def propose(self, root: int, past: int, budget: int) -> Proposal | None:
        choice = self.skip()
        if choice.plain or not self._pays(choice):
            return None
        draft = draft_chain(
            self.runner,
            self.cache,
            root,
            past,
            choice.attention,
            choice.mlp,
            self.config,
            max_len=budget,
            head=self.head,
            grammar=self.grammar,
        )
        self.cache.truncate(past)
        self._pending = draft.steps
        return Proposal(draft.tokens, SOURCE_LAYER_SKIP, draft.confidences, draft.alternates, draft.steps)

    def observe(self, tree: TokenTree, verdict: Verdict, new_tokens: list[int]) -> None:
        self.head.add(new_tokens)
        if self._pending:
            # accepted tokens that only this drafter proposed (a node shared with a free draft is theirs too)
            gained = sum(1 for node in verdict.path[1:] if tree.sources[node] == SOURCE_LAYER_SKIP)
            self.payoff.add(gained, self._pending)
            self._pending = 0

    def profile_state(self) -> dict[str, Any] | None:
        return self.payoff.to_dict() if self.costs is not None else None
