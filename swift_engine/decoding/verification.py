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

    path = [0]
    node = 0
    if grammar is not None:
        # each node's target is masked by the grammar state reached along its own path; the walk
        # only follows accepted tokens, so the state never needs rolling back
        logits = runner.logits(hidden)
        choices = []
        while True:
            row = grammar.mask_(logits[node].clone())
            y = int(row.argmax().item()) if params.greedy else sample(target_probs(row, params), generator)
            choices.append(y)
            grammar.advance(y)
            nxt = children[node].get(y)
            if nxt is None or grammar.terminated:  # a stop token ends the walk (and the generation)
                bonus = y
                break
            node = nxt
            path.append(node)
        path_argmax = choices
    elif params.greedy:
        # argmax of every node at once: one head pass, one host sync
        logits = runner.logits(hidden)
        choices = logits.argmax(dim=-1).tolist()
        while True:
            nxt = children[node].get(choices[node])
            if nxt is None:
                bonus = choices[node]
                break
            node = nxt
            path.append(node)
    else:
        logits = runner.logits(hidden)
        choices = None
        while True:
            y = sample(target_probs(logits[node], params), generator)
            nxt = children[node].get(y)
            if nxt is None:
                bonus = y
                break
            node = nxt
            path.append(node)

    if len(tree) > 1:
        if path == list(range(len(path))):  # the chain's prefix: entries already packed in place
            cache.truncate(start + len(path))
        else:
            cache.keep(start, torch.tensor(path, device=device))
    if grammar is None:  # (with a grammar, path_argmax is the masked choices made above)
        if choices is None:
            path_argmax = logits[torch.tensor(path, device=device)].argmax(dim=-1).tolist()
        else:
            path_argmax = [choices[i] for i in path]
    return Verdict(path=path, accepted=[tree.tokens[i] for i in path[1:]], bonus=bonus, path_argmax=path_argmax)
