"""Attention masks for chunks, drafts and token trees, including sliding windows.

The engine always hands the model a ready 4D additive mask (``transformers`` uses a 4D mask as
is), so the same code path serves causal chunks and tree verification, and sliding windows are
enforced here rather than by cache eviction (which a rejected draft could not undo).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from swift_engine.model.sublayer_skip import UnsupportedArchitectureError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

_KNOWN_LAYER_TYPES = {"full_attention", "sliding_attention"}


def layer_windows(config: PretrainedConfig) -> dict[str, int | None]:
    """Map each attention layer type of the model to its window (``None``: full attention)."""
    sliding = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if not types:
        return {"_all": sliding}
    unknown = set(types) - _KNOWN_LAYER_TYPES
    if unknown:
        raise UnsupportedArchitectureError(f"attention layer types {sorted(unknown)} are not supported")
    return {t: (sliding if t == "sliding_attention" else None) for t in set(types)}


class MaskBuilder:
    """Builds the mask argument for one model: a tensor, or a dict per layer type when they differ."""

    def __init__(self, config: PretrainedConfig, dtype: torch.dtype, device: torch.device) -> None:
        self.windows = layer_windows(config)
        self.dtype = dtype
        self.device = device
        self._neg = torch.finfo(dtype).min

    def build(
        self,
        past_len: int,
        positions: torch.Tensor,
        ancestors: torch.Tensor | None = None,
        past_visible: int | None = None,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Mask for ``q = len(positions)`` new tokens after ``past_len`` cached ones.

        ``positions`` are the new tokens' position ids; cached entries sit at positions
        ``0..past_len-1``. ``ancestors[i, j]`` says new token ``i`` may see new token ``j``
        (ancestor-or-self in a tree); ``None`` means a causal chunk. ``past_visible`` hides cached
        entries from that index on (the layer-set search re-feeds tokens that are already cached).
        """
        q = positions.numel()
        if ancestors is None:
            ancestors = torch.ones(q, q, dtype=torch.bool, device=self.device).tril_()
        masks: dict[str, torch.Tensor] = {}
        by_window: dict[int | None, torch.Tensor] = {}
        for layer_type, window in self.windows.items():
            if window not in by_window:
                by_window[window] = self._one(past_len, positions, ancestors, window, past_visible)
            masks[layer_type] = by_window[window]
        if "_all" in masks:
            return masks["_all"]
        if len(by_window) == 1:
            return next(iter(by_window.values()))
        return masks

    def _one(
        self,
        past_len: int,
        positions: torch.Tensor,
        ancestors: torch.Tensor,
        window: int | None,
        past_visible: int | None,
    ) -> torch.Tensor:
        q = positions.numel()
        visible = torch.empty(q, past_len + q, dtype=torch.bool, device=self.device)
        visible[:, past_len:] = ancestors
        visible[:, :past_len] = True
        if past_visible is not None:
            visible[:, past_visible:past_len] = False
        if window is not None:
            # cached entry i sits at position i (the cache is packed in position order)
            key_pos = torch.cat([torch.arange(past_len, device=self.device), positions])
            visible &= (positions[:, None] - key_pos[None, :]) < window
        mask = torch.zeros(q, past_len + q, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~visible, self._neg)
        return mask[None, None]
