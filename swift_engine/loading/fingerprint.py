"""A cheap, name-independent identity of a model's weights: :func:`model_fingerprint`.

SWIFT skips layers of the *same* model to draft tokens, so anything that keys on "which weights are
these" (layer-skip plans, calibration results) needs an identity that survives renaming or moving a
checkpoint yet differs for different or re-initialised weights, without hashing gigabytes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

__all__ = ["model_fingerprint", "weights_identity"]

_SAMPLE_VALUES = 64


def _sample_bytes(tensor: torch.Tensor) -> bytes:
    """First and last few values as float32 bytes: cheap, yet differs between any two real models."""
    flat = tensor.detach().reshape(-1)
    head = flat[:_SAMPLE_VALUES]
    tail = flat[-_SAMPLE_VALUES:]
    both = torch.cat([head, tail]).to(device="cpu", dtype=torch.float32).contiguous()
    return both.numpy().tobytes()


def model_fingerprint(model: Any) -> str:
    """A short hex digest identifying a model's weights and shapes, independent of its name or path.

    Used to key anything derived from the weights (e.g. layer-skip plans), so renaming or moving a
    checkpoint keeps its plans while a different or re-initialised model never reuses them. Hashing
    every weight would take seconds, so it hashes the architecture essentials, every parameter's
    name/shape/dtype, and a content sample (first/last values) of a few tensors.
    """
    hasher = hashlib.blake2b(digest_size=8)
    config = getattr(model, "config", None)
    if config is not None:
        text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        essentials = {
            key: getattr(text_cfg, key, None)
            for key in ("model_type", "num_hidden_layers", "hidden_size", "vocab_size", "intermediate_size")
        }
        essentials["model_type"] = getattr(config, "model_type", None)
        hasher.update(json.dumps(essentials, sort_keys=True, default=str).encode())

    params = list(model.named_parameters())
    for name, param in params:
        hasher.update(f"{name}|{tuple(param.shape)}|{param.dtype}\n".encode())

    samples: list[torch.Tensor] = []
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        samples.append(embeddings.weight)
    if params:
        samples.append(params[len(params) // 2][1])  # a middle layer's weight
        samples.append(params[-1][1])
    for tensor in samples:
        if tensor.numel() and tensor.device.type != "meta":
            hasher.update(_sample_bytes(tensor))
    return hasher.hexdigest()


def weights_identity(model: Any) -> str:
    """Which weights these are, whatever they were loaded as: the same digest at every dtype and from every path.

    :func:`model_fingerprint` keys what depends on the loaded form too (profiles, measured costs: an
    int4 and a float32 load are different engines). What depends on the model alone -- the catalog's
    measured behaviour, such as the agent model needing to be asked for its answer after tool results --
    keys on this: the architecture essentials and a sample of the input embedding rounded to bfloat16
    (the embedding is never quantized; float32, bfloat16 and the weight-only precisions load the same
    values, which bfloat16 rounding makes equal bit for bit). So a model loaded by short name, by its
    GGUF path, from the conversion cache or behind the server is recognised as the same.
    """
    hasher = hashlib.blake2b(digest_size=8)
    config = getattr(model, "config", None)
    text_cfg = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    essentials = {
        key: getattr(text_cfg, key, None)
        for key in ("num_hidden_layers", "hidden_size", "vocab_size", "intermediate_size", "num_attention_heads")
    }
    essentials["model_type"] = getattr(config, "model_type", None)
    hasher.update(json.dumps(essentials, sort_keys=True, default=str).encode())
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    if weight is not None and weight.numel() and weight.device.type != "meta":
        flat = weight.detach().reshape(-1)
        sample = torch.cat([flat[:_SAMPLE_VALUES], flat[-_SAMPLE_VALUES:]]).to(device="cpu", dtype=torch.bfloat16)
        hasher.update(sample.view(torch.int16).numpy().tobytes())
    return hasher.hexdigest()
