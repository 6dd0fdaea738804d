"""The dynamic token tree that one verification pass checks.

Node 0 is the *root*: the token the full model already chose but has not yet run (its KV entry
is written by the verification pass itself). The draft chain hangs below it; at low-confidence
positions the draft's runner-up tokens become extra leaves (siblings of the chain token), so a
wrong guess where the draft was unsure can still be rescued in the same pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from swift_engine.config import TreeConfig

#: Where a node's token came from (a bit mask: sources that agree share the node).
SOURCE_LAYER_SKIP = 1
SOURCE_CONTEXT = 2
SOURCE_MEMORY = 4


@dataclass
class Proposal:
    """A chain of draft tokens after the root, optionally with runner-up branches."""

    tokens: list[int]
    #: which drafter made it (a ``SOURCE_*`` bit of :mod:`swift_engine.decoding.tree`)
    source: int
    #: the drafter's top-1 probability per token; with ``alternates``, where the tree branches
    confidences: list[float] = field(default_factory=list)
    #: runner-up tokens per position, best first (empty: a chain without branches)
    alternates: list[list[int]] = field(default_factory=list)
    #: model passes spent on this proposal (0 for drafters that only look things up)
    steps: int = 0

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class TokenTree:
    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    sources: list[int] = field(default_factory=list)
    _kids: list[dict[int, int]] = field(default_factory=list, repr=False)

    @classmethod
    def with_root(cls, token: int) -> "TokenTree":
        return cls(tokens=[token], parents=[-1], depths=[0], sources=[0], _kids=[{}])

    def add(self, token: int, parent: int, source: int = 0) -> int:
        """Add ``token`` below ``parent``; an existing identical child is reused (trie)."""
        existing = self._kids[parent].get(token)
        if existing is not None:
            self.sources[existing] |= source
            return existing
        self.tokens.append(token)
        self.parents.append(parent)
        self.depths.append(self.depths[parent] + 1)
        self.sources.append(source)
        self._kids.append({})
        idx = len(self.tokens) - 1
        self._kids[parent][token] = idx
        return idx

    def insert(self, seq: list[int], source: int, budget: int, parent: int = 0) -> list[int]:
        """Insert a chain below ``parent`` while the tree has fewer than ``budget`` nodes; its node ids."""
        nodes = []
        for tok in seq:
            if tok in self._kids[parent]:
                parent = self.add(tok, parent, source)
            elif len(self.tokens) < budget:
                parent = self.add(tok, parent, source)
            else:
                break
            nodes.append(parent)
        return nodes

    def __len__(self) -> int:
        return len(self.tokens)

    def children(self) -> list[dict[int, int]]:
        """Per node: ``{token: child_index}`` (a token appears at most once below a parent)."""
        return self._kids

    def ancestors(self, device: torch.device) -> torch.Tensor:
        """``[n, n]`` bool: node i may attend to node j (j is i or one of its ancestors)."""
        n = len(self.tokens)
        anc = torch.zeros(n, n, dtype=torch.bool)
        for i in range(n):
            p = self.parents[i]
            if p >= 0:
                anc[i] = anc[p]
            anc[i, i] = True
        return anc.to(device)

    def positions(self, start: int, device: torch.device) -> torch.Tensor:
        return torch.tensor(self.depths, dtype=torch.long, device=device) + start


def build_tree(root: int, proposals: Sequence[Proposal], config: TreeConfig, budget: int | None = None) -> TokenTree:
    """Merge the drafters' proposals into one token tree (a trie) of at most ``budget`` nodes.

    Proposals claim nodes in priority order (the policy's), chains first: where drafters agree
    they share nodes, so nothing is verified twice. What budget is left goes to runner-up
    branches, at each proposal's least confident positions first.
    """
    budget = min(budget or config.max_tree_tokens, config.max_tree_tokens)
    tree = TokenTree.with_root(root)
    chains = [tree.insert(p.tokens, p.source, budget) for p in proposals]
    for proposal, nodes in zip(proposals, chains):
        if not proposal.alternates:
            continue
        for i in sorted(range(len(nodes)), key=lambda i: proposal.confidences[i]):
            if len(tree) >= budget:
                break
            parent = tree.parents[nodes[i]]
            for tok in proposal.alternates[i][: config.branches_for(proposal.confidences[i])]:
                if len(tree) >= budget:
                    break
                tree.add(tok, parent, proposal.source)
    return tree
