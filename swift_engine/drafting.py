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
from .tree import TokenTree


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

    def logits(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits over the subset, and the subset's token ids (``None``: the full vocabulary)."""
        if self.full:
            return self.runner.logits(hidden), None
        self._refresh()
        out = torch.nn.functional.linear(hidden, self.weight, self.bias).float()
        if self.runner.softcap:
            out = torch.tanh(out / self.runner.softcap) * self.runner.softcap
        return out, self.ids


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
            probs = torch.softmax(logits[0], dim=-1)
            top = torch.topk(probs, min(1 + max_branch, probs.numel()))
            idx = top.indices if vocab is None else vocab[top.indices]
            values, indices = top.values.tolist(), idx.tolist()
            token, conf = indices[0], values[0]
            draft.tokens.append(token)
            draft.confidences.append(conf)
            draft.alternates.append(indices[1:])
            if conf < config.draft_confidence:
                break
    return draft


def build_tree(root: int, draft: Draft, config: SwiftConfig) -> TokenTree:
    """Root, then the draft chain; low-confidence positions get runner-up leaves beside the chain.

    Chain tokens are added first (they carry most of the expected acceptance); branches are
    added while the tree stays under ``max_tree_tokens``, most uncertain positions first.
    """
    tree = TokenTree.with_root(root)
    budget = config.tree.max_tree_tokens - 1
    chain_nodes: list[int] = []
    parent = 0
    for tok in draft.tokens[:budget]:
        parent = tree.add(tok, parent)
        chain_nodes.append(parent)
    budget -= len(chain_nodes)
    order = sorted(range(len(chain_nodes)), key=lambda i: draft.confidences[i])
    for i in order:
        if budget <= 0:
            break
        width = config.tree.branches_for(draft.confidences[i])
        parent = tree.parents[chain_nodes[i]]
        for tok in draft.alternates[i][:width]:
            if budget <= 0:
                break
            tree.add(tok, parent)
            budget -= 1
    return tree
