"""The decode path: what one verification step is made of, and the terms the code uses for it.

Modules: :mod:`~swift_engine.decoding.prefill` (the prompt into the KV cache, with the
:mod:`~swift_engine.decoding.prefix_cache` across calls), :mod:`~swift_engine.decoding.tree` (the
drafters' :class:`~swift_engine.decoding.tree.Proposal` merged into one token tree),
:mod:`~swift_engine.decoding.verification` (one full-model pass over the tree, the longest valid
path kept), :mod:`~swift_engine.decoding.sampling`, :mod:`~swift_engine.decoding.stopping` (stop
strings over streamed text) and :mod:`~swift_engine.decoding.constraints` (grammars). The loop
that strings them together is :mod:`swift_engine.decode_loop`.

Glossary
--------
root
    The token the full model has already chosen but not yet run: node 0 of the next tree. Its KV
    entry is written by the verification pass that checks the drafts hanging below it.
past
    How many positions of the KV cache hold committed tokens (prompt and accepted reply); the
    root sits at position ``past``, the tree's nodes at ``past + depth``.
proposal
    One drafter's chain of draft tokens after the root, with optional runner-up tokens where the
    drafter was unsure (they become sibling branches of the tree).
path
    The tree nodes verification accepted, root first. Only the path's KV entries are kept.
accepted
    The path's draft tokens (the path without its root).
bonus
    The full model's own token after the path: always committed, so every step commits at least
    one token, and it becomes the next step's root.
teacher targets
    The full model's argmax after each committed token (``Verdict.path_argmax``, and the prompt's
    last logits): the layer-set search scores a candidate skip set by how often its draft's argmax
    matches them (teacher-forced, see :mod:`swift_engine.search.layer_search`).
"""
