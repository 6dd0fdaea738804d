"""Checkpoint folders the engine wrote itself, built from its own model classes instead of transformers'.

Why: a conversion-cache entry (a GGUF file's checkpoint, and its kept int4/int8 weights) is read in every
later process, and building it from transformers' classes costs ~2 s of imports before any weight is read
(``model/llama_family.py`` says why, docs/bench/cold-start.md measures it). The classes there are bitwise
transformers' for the configs they accept; anything else returns None here and loads as before.
"""

from __future__ import annotations

import logging
import pathlib

import torch
from torch import nn

from swift_engine.model.llama_family import CausalLM, build

__all__ = ["load_checkpoint", "materialize_buffers", "skeleton"]

logger = logging.getLogger(__name__)


def skeleton(folder: pathlib.Path, attn_implementation: str, *, untied_head: bool = False) -> CausalLM | None:
    """``folder``'s model in the engine's classes, its weights on the meta device; None: transformers' classes."""
    model = build(folder, attn_implementation, untied_head=untied_head)
    if model is not None:
        logger.debug("Building %s from swift's own %s classes", folder, model.config.model_type)
    return model


def load_checkpoint(folder: pathlib.Path, dtype: torch.dtype, attn_implementation: str) -> CausalLM | None:
    """``folder``'s ``model.safetensors`` at ``dtype`` in the engine's classes; None where they do not apply
    (then transformers' ``from_pretrained`` loads it). The values are what ``from_pretrained`` gives: each
    tensor cast to ``dtype`` (round to nearest), a tied head sharing the embedding."""
    weights = folder / "model.safetensors"
    if not weights.is_file():
        return None
    model = skeleton(folder, attn_implementation)
    if model is None:
        return None
    from safetensors.torch import load_file

    # own, aligned memory (as quantized_cache.py: kernels read their operands with aligned vector loads)
    tensors = {
        name: t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t.clone()
        for name, t in load_file(str(weights)).items()
    }
    if model.config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)  # the embedding's, as transformers ties it
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    if unexpected or set(missing) - ({"lm_head.weight"} if model.config.tie_word_embeddings else set()):
        logger.info("%s does not fit swift's classes (missing %s, unexpected %s)", weights, missing, unexpected)
        return None
    model.tie_weights()
    materialize_buffers(model)
    model.eval()
    return model


def materialize_buffers(model: nn.Module) -> None:
    """Rebuild, on the CPU, each module whose buffers are computed at construction (rotary embeddings'
    ``inv_freq``): built on the meta device with the rest, they hold no values yet."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if any(b.is_meta for b in child.buffers(recurse=False)):
                if any(True for _ in child.parameters(recurse=False)):
                    raise ValueError(f"{name} has weights and buffers computed at construction")
                setattr(parent, name, type(child)(config=child.config))
    left = [n for n, b in model.named_buffers() if b.is_meta] + [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise ValueError(f"no values for {', '.join(left[:3])}")
