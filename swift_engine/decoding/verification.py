"""One full-model pass over the token tree, and the walk that accepts the longest valid path.

Greedy: at each node the full model's argmax must be one of the node's children to descend; the
first argmax that isn't becomes the bonus token, so the output is exactly plain greedy decoding.

Sampling: the drafts are deterministic (argmax and runner-ups, i.e. point-mass proposals), for
which speculative sampling's accept test ``u < p(x)/q(x)`` with ``q = δ_x`` followed by sampling
the residual is *equivalent* to drawing ``y ~ p`` and descending iff ``y`` is a child. With
several children (tree branches) the same holds by recursion: each rejected child is removed and
``p`` renormalised, which again is just "draw y ~ p, match it against the children". Either way
every emitted token is a draw from the target distribution given the accepted prefix, so the
output distribution is exactly the full model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from swift_engine.decoding.sampling import SamplingParams, sample, target_probs
from swift_engine.decoding.tree import TokenTree
from swift_engine.model.kv_cache import SwiftKVCache
from swift_engine.model.runner import ModelRunner

if TYPE_CHECKING:
    from swift_engine.decoding.constraints import GrammarState


@dataclass
class Verdict:
    #: tree node indices of the accepted path, root first
    path: list[int]
    #: accepted draft tokens (excluding the root)
    accepted: list[int]
    #: the full model's own next token after the accepted path
    bonus: int
    #: the full model's argmax after each accepted node (root first): the search's teacher targets
    path_argmax: list[int]


def accept(
    children: list[dict[int, int]], logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> tuple[list[int], int, list[int] | None]:
    """Walk a verified tree from its root: the accepted path, the bonus token, and (greedy) every node's argmax.

    ``children[n]``: node ``n``'s children by token; ``logits``: ``[nodes, vocab]``, the full model's
    after each node. A child is followed while it is the token plain decoding picks there -- the
    argmax, or (sampling) one draw from the call's own generator per position, as plain decoding
    draws -- so the path and bonus are exactly what plain decoding produces (within a grammar:
    :func:`accept_constrained`). Also used by the batch's shared passes (``batching/batcher.py``).
    """
    path, node = [0], 0
    if params.greedy:
        choices = logits.argmax(dim=-1).tolist()  # every node at once: one host sync
        while (nxt := children[node].get(choices[node])) is not None:
            node = nxt
            path.append(node)
        return path, choices[node], choices
    while True:
        y = sample(target_probs(logits[node], params), generator)
        nxt = children[node].get(y)
        if nxt is None:
            return path, y, None
        node = nxt
        path.append(node)


def accept_constrained(
    children: list[dict[int, int]],
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None,
    grammar: GrammarState,
) -> tuple[list[int], int, list[int]]:
    """:func:`accept` within a grammar: the accepted path, the bonus token, and the masked choice at each
    node of the path (root first).

    Each node's row of ``logits`` ``[nodes, vocab]`` is masked by the grammar state reached along its
    own path -- the walk only follows accepted tokens, so the state never needs rolling back -- and the
    grammar advances by every token picked, the bonus included. A stop token ends the walk (and the
    generation). Also used by the batch's shared passes (``batching/batcher.py``).
    """
    path, node = [0], 0
    masked: list[int] = []
    while True:
        row = grammar.mask_(logits[node].clone())
        y = int(row.argmax().item()) if params.greedy else sample(target_probs(row, params), generator)
        masked.append(y)
        grammar.advance(y)
        nxt = children[node].get(y)
        if nxt is None or grammar.terminated:
            return path, y, masked
        node = nxt
        path.append(node)


@torch.inference_mode()
def verify_tree(
    runner: ModelRunner,
    cache: SwiftKVCache,
    tree: TokenTree,
    start: int,
    params: SamplingParams,
    generator: torch.Generator | None,
    grammar: GrammarState | None = None,
) -> Verdict:
    """Run the full model over the whole tree at once; keep only the accepted path's KV entries."""
    device = runner.device
    ids = torch.tensor(tree.tokens, device=device)
    positions = tree.positions(start, device)
    ancestors = tree.ancestors(device) if len(tree) > 1 else None
    hidden = runner.hidden(cache, ids, positions, ancestors)
    children = tree.children()

    if grammar is not None:
        path, bonus, path_argmax = accept_constrained(children, runner.logits(hidden), params, generator, grammar)
    else:
        logits = runner.logits(hidden)
        path, bonus, choices = accept(children, logits, params, generator)
        if choices is None:  # sampled: the argmax only along the path
            path_argmax = logits[torch.tensor(path, device=device)].argmax(dim=-1).tolist()
        else:
            path_argmax = [choices[i] for i in path]

    if len(tree) > 1:
        if path == list(range(len(path))):  # the chain's prefix: entries already packed in place
            cache.truncate(start + len(path))
        else:
            cache.keep(start, torch.tensor(path, device=device))
    return Verdict(path=path, accepted=[tree.tokens[i] for i in path[1:]], bonus=bonus, path_argmax=path_argmax)
