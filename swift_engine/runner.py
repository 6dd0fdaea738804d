"""One forward pass of the decoder with our cache, our masks and logits only where needed.

The engine calls the decoder stack (``model.get_decoder()``) directly and applies the output head
itself, so that it can (a) compute logits only at the positions it needs (the head is a large
share of a step for small models), (b) restrict drafting to a vocabulary subset later, and (c)
pass explicit position ids and tree masks for every architecture the same way.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from .cpu_kernels import KernelMode, LinearKernels, onednn_linear, should_pack, use_onednn
from .kv_cache import SwiftKVCache
from .layer_skip import LayerSkipper, UnsupportedArchitectureError
from .masks import MaskBuilder

if TYPE_CHECKING:
    from transformers import PretrainedConfig


class ModelRunner:
    def __init__(self, model: nn.Module, kernels: KernelMode = "auto") -> None:
        self.model = model
        # nn.Module.__getattr__ types every attribute as Tensor | Module; these are transformers' config and methods
        self.config = cast("PretrainedConfig", model.config)
        self.skipper = LayerSkipper.for_model(model)  # first: it explains unsupported architectures
        self.decoder: nn.Module = (
            cast(Callable[[], nn.Module], model.get_decoder)()
            if hasattr(model, "get_decoder")
            else cast(nn.Module, model.model)
        )
        # the output head of every supported architecture is an nn.Linear (weight [V, H])
        lm_head = cast(Callable[[], "nn.Linear | None"], model.get_output_embeddings)()
        if lm_head is None:
            raise UnsupportedArchitectureError(f"{type(model).__name__} has no output embeddings (LM head)")
        self.lm_head: nn.Linear = lm_head
        params = inspect.signature(self.decoder.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self.softcap = getattr(self.config, "final_logit_softcapping", None)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.masks = MaskBuilder(self.config, self.dtype, self.device)
        self.num_layers = self.skipper.num_layers
        self.vocab_size = self.lm_head.weight.shape[0]
        self.context_length = int(getattr(self.config, "max_position_embeddings", 0) or 0) or None
        #: the engine's passes run their linears through oneDNN (CPU); see cpu_kernels.py
        self.onednn = use_onednn(kernels, self.device, self.dtype)
        self._kernels = LinearKernels.for_model(model) if self.onednn else None
        if self._kernels is not None and should_pack(kernels, model):
            self._kernels.pack()

    @property
    def kernels(self) -> str:
        """Which dense kernels the engine's passes use: ``packed``, ``onednn`` or ``torch``."""
        if self._kernels is None:
            return "torch"
        return "packed" if self._kernels.packed else "onednn"

    def _linears(self) -> contextlib.AbstractContextManager[None]:
        """The engine's kernel choice for the passes inside this block (stock outside it)."""
        return self._kernels.active() if self._kernels is not None else contextlib.nullcontext()

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """A dense product with this runner's kernel choice (for heads over vocabulary subsets)."""
        if self.onednn:
            return onednn_linear(x, weight, bias)
        return torch.nn.functional.linear(x, weight, bias)

    def new_cache(self, capacity: int | None = None) -> SwiftKVCache:
        return SwiftKVCache(capacity)

    @torch.inference_mode()
    def hidden(
        self,
        cache: SwiftKVCache,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        ancestors: torch.Tensor | None = None,
        past_visible: int | None = None,
    ) -> torch.Tensor:
        """Final hidden states ``[q, H]`` of ``input_ids`` appended after the cache's entries."""
        past = cache.get_seq_length()
        mask = self.masks.build(past, positions, ancestors, past_visible)
        with self._linears():
            out = self.decoder(
                input_ids=input_ids[None],
                position_ids=positions[None],
                attention_mask=mask,
                use_cache=True,
                **{self._cache_kw: cache},
            )
        return out.last_hidden_state[0]

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor, vocab: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 logits of ``hidden`` over the whole vocabulary or a subset of token ids."""
        if vocab is None:
            with self._linears():
                out = self.lm_head(hidden)
        else:
            w = self.lm_head.weight.index_select(0, vocab)
            b = getattr(self.lm_head, "bias", None)
            out = self.linear(hidden, w, None if b is None else b.index_select(0, vocab))
        out = out.float()
        if self.softcap:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out

    def forward(
        self,
        cache: SwiftKVCache,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        ancestors: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        h = self.hidden(cache, input_ids, positions, ancestors)
        return self.logits(h[-1:] if last_only else h)
