"""The dynamic token tree that one verification pass checks.

Node 0 is the *root*: the token the full model already chose but has not yet run (its KV entry
is written by the verification pass itself). The draft chain hangs below it; at low-confidence
positions the draft's runner-up tokens become extra leaves (siblings of the chain token), so a
wrong guess where the draft was unsure can still be rescued in the same pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TokenTree:
    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)

    @classmethod
    def with_root(cls, token: int) -> "TokenTree":
        return cls(tokens=[token], parents=[-1], depths=[0])

    def add(self, token: int, parent: int) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        self.depths.append(self.depths[parent] + 1)
        return len(self.tokens) - 1

    def __len__(self) -> int:
        return len(self.tokens)

    def children(self) -> list[dict[int, int]]:
        """Per node: ``{token: child_index}`` (a token appears at most once below a parent)."""
        out: list[dict[int, int]] = [dict() for _ in self.tokens]
        for i in range(1, len(self.tokens)):
            out[self.parents[i]].setdefault(self.tokens[i], i)
        return out

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
