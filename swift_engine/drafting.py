"""Confidence-aware drafting with the layer-skipped model, and the tree built from the draft.

The draft runs the *same* model with some sublayers skipped, writing KV entries only in the
layers it runs, at positions right after the committed context. Nothing is cloned: after the
draft the engine rewinds the cache (a length change), and the verification pass overwrites those
positions with the full model's entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import SwiftConfig
from .kv_cache import SwiftKVCache
from .runner import ModelRunner
from .tree import SOURCE_CONTEXT, SOURCE_LAYER_SKIP, TokenTree


class DraftHead:
    """The draft's output head over a vocabulary subset (FR-Spec style).

    The head is never skipped and is a large share of a small model's step (SmolLM2: ~20%,
    Qwen2.5-0.5B: ~26%). Drafting only needs a good guess, so it scores the tokens of the context
    plus the lowest token ids (BPE ids follow merge order, a proxy for frequency); verification uses
    the full head, so the output stays exact. The sub-matrix is gathered once per generation and
    only regathered when the context brings new tokens.
    """

    def __init__(self, runner: ModelRunner, base_size: int | None, context: list[int]) -> None:
        self.runner = runner
        v = runner.vocab_size
        self.full = base_size is None or base_size >= v
        self._member = torch.zeros(v, dtype=torch.bool)
        if not self.full:
            self._member[: int(base_size)] = True
            self._dirty = True
            self.add(context)

    @staticmethod
    def expected_share(vocab_size: int, base_size: int | None, context_tokens: int = 1024) -> float:
        """The share of the full head a draft step computes, for the cost model (before any context is seen)."""
        if base_size is None or base_size >= vocab_size:
            return 1.0
        return min(1.0, (base_size + context_tokens) / vocab_size)

    def add(self, tokens: list[int]) -> None:
        if self.full or not tokens:
            return
        t = torch.tensor(tokens, dtype=torch.long)
        t = t[(t >= 0) & (t < self._member.numel())]
        if not bool(self._member[t].all()):
            self._member[t] = True
            self._dirty = True

    def _refresh(self) -> None:
        if self._dirty:
            self.ids = self._member.nonzero().squeeze(-1).to(self.runner.device)
            self.weight = self.runner.lm_head.weight.index_select(0, self.ids)
            bias = getattr(self.runner.lm_head, "bias", None)
            self.bias = None if bias is None else bias.index_select(0, self.ids)
            self._dirty = False

    def vocab(self) -> torch.Tensor | None:
        """The subset's token ids, up to date (``None``: the full vocabulary)."""
        if self.full:
            return None
        self._refresh()
        return self.ids

    def logits(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits over the subset, and the subset's token ids (``None``: the full vocabulary)."""
        if self.full:
            return self.runner.logits(hidden), None
        self._refresh()
        out = self.runner.linear(hidden, self.weight, self.bias).float()
        if self.runner.softcap:
            out = torch.tanh(out / self.runner.softcap) * self.runner.softcap
        return out, self.ids


#: Prior counts ``[attempts, first-token hits, later hits, later misses]`` of a context draft by the
#: length of its n-gram match: worth a few observations, optimistic enough that every order gets
#: tried, lower for weak single-token matches.
_CONTEXT_PRIOR = {1: (4.0, 1.0, 3.0, 1.0), 2: (4.0, 2.0, 3.0, 1.0), 3: (4.0, 2.0, 3.0, 1.0), 4: (4.0, 2.0, 3.0, 1.0)}
_CONTEXT_MEMORY = 200.0


@dataclass
class ContextAcceptance:
    """How often context drafts are accepted, for one step key, by n-gram match length.

    Copies are bursty: a continuation is either wrong from its first token or right for a
    stretch. So two rates are kept per match length (a continuation found after a 4-token match is
    far likelier than one after a single token): ``p1``, that the first drafted token is accepted,
    and ``a``, that each later one is, given the ones before were. The expected number of accepted
    tokens of a draft of length ``L`` is then ``p1 * (1 - a^L) / (1 - a)``, which the cost model
    weighs against the measured cost of verifying ``L + 1`` tokens. Old evidence is decayed so a
    step whose content changes is re-learned.
    """

    counts: dict[int, list[float]] = field(default_factory=lambda: {n: list(v) for n, v in _CONTEXT_PRIOR.items()})

    def _c(self, order: int) -> list[float]:
        return self.counts.get(order) or list(_CONTEXT_PRIOR.get(order, _CONTEXT_PRIOR[1]))

    def first_rate(self, order: int) -> float:
        attempts, first, _, _ = self._c(order)
        return first / attempts

    def continue_rate(self, order: int) -> float:
        _, _, hits, misses = self._c(order)
        return hits / (hits + misses)

    def draft_length(self, costs, max_len: int, order: int, probe: bool = False) -> int:
        """The draft length with the best expected speed-up on this hardware for a match of ``order`` (0: don't)."""
        if max_len <= 0 or order <= 0:
            return 0
        speedup, length = costs.best_copy_length(self.first_rate(order), self.continue_rate(order), max_len)
        if speedup < 1.0:
            return min(3, max_len) if probe else 0
        return length

    def observe(self, tree, path: list[int], source: int, stats, order: int = 0) -> None:
        hits = sum(1 for node in path[1:] if tree.sources[node] & source)
        last = path[-1]
        miss = any(tree.sources[c] & source for c in tree.children()[last].values())
        proposed = sum(1 for s in tree.sources if s & source)
        stats.context_drafted_tokens += proposed
        stats.context_accepted_tokens += hits
        if order <= 0 or not proposed:
            return
        c = self.counts.setdefault(order, list(_CONTEXT_PRIOR.get(order, _CONTEXT_PRIOR[1])))
        c[0] += 1
        if hits:
            c[1] += 1
            c[2] += hits - 1
            c[3] += 1 if miss else 0
        if c[0] > _CONTEXT_MEMORY:
            scale = _CONTEXT_MEMORY / c[0]
            for i in range(4):
                c[i] *= scale

    def to_dict(self) -> dict:
        return {"by_order_v2": {str(n): [round(x, 3) for x in v] for n, v in sorted(self.counts.items())}}

    @classmethod
    def from_dict(cls, d: dict | None) -> "ContextAcceptance":
        """From a stored profile; a malformed or older entry starts again from the prior."""
        try:
            if d and "by_order_v2" in d:
                counts = {int(n): [float(x) for x in v] for n, v in d["by_order_v2"].items()}
                if all(len(v) == 4 and v[0] > 0 and v[2] + v[3] > 0 for v in counts.values()):
                    return cls(counts=counts)
        except (TypeError, ValueError, AttributeError):
            pass
        return cls()


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
    grammar=None,
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


def build_tree(
    root: int,
    draft: Draft | None,
    context: list[list[int]],
    config: SwiftConfig,
    budget: int | None = None,
) -> TokenTree:
    """Merge context continuations and the layer-skip draft into one token tree (a trie).

    Order of claim on the node budget: the best context continuation (free to draft and, when it
    matches, long), then the layer-skip chain, then the other context continuations, then
    runner-up branches at the draft's least confident positions. Where sources agree they share
    nodes, so nothing is verified twice.
    """
    budget = min(budget or config.tree.max_tree_tokens, config.tree.max_tree_tokens)
    tree = TokenTree.with_root(root)
    if context:
        tree.insert(context[0], SOURCE_CONTEXT, budget)
    chain_nodes: list[int] = []
    if draft is not None and draft.tokens:
        chain_nodes = tree.insert(draft.tokens, SOURCE_LAYER_SKIP, budget)
    for seq in context[1:]:
        tree.insert(seq, SOURCE_CONTEXT, budget)
    if draft is not None:
        order = sorted(range(len(chain_nodes)), key=lambda i: draft.confidences[i])
        for i in order:
            if len(tree) >= budget:
                break
            width = config.tree.branches_for(draft.confidences[i])
            parent = tree.parents[chain_nodes[i]]
            for tok in draft.alternates[i][:width]:
                if len(tree) >= budget:
                    break
                tree.add(tok, parent, SOURCE_LAYER_SKIP)
    return tree
