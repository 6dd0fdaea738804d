"""The decoder's forward pass without the module plumbing, for llama-style models: bitwise the same.

Why: at 135M parameters a one-token step on a CPU is mostly overhead around small products. Of
SmolLM2's step, the ``transformers`` modules' Python (decorators, output capturing, mask
preparation, keyword plumbing, a dozen ``nn.Module.__call__`` per layer) was a sizeable share, which
this loop saves (figures: docs/bench/measurements.md#model). For architectures whose layers are
exactly ``h += attn(norm(h)); h += mlp(norm(h))`` with rotary embeddings (llama, mistral, qwen2),
this walks the *same* submodules and computes the same operations in the same order, calling each
leaf module's own ``forward`` (linears with whichever kernel is active, norms, a skipped MLP's
layer-skip wrapper) and the modeling file's own rotary and eager attention functions, so every
output is bitwise what the modules give: ``tests/test_fast_forward.py`` checks prompt blocks,
one-token steps and trees, with skipped sublayers, at every precision. With weight-only int8/int4
weights, q/k/v are one kernel call (:class:`~swift_engine.kernels.quantize.FusedProduct`, bitwise the three)
and the MLP's products are the kernels called directly (:func:`~swift_engine.kernels.quantize.direct_product`).

Anything else keeps the modules: other architectures, and passes while hooks are registered on the
decoder's modules (offloading, adapters, user hooks, global module hooks), which this loop would bypass;
that is checked on every pass (cheap next to a step, even over SmolLM2's 395 modules), since hooks
may come later.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from itertools import repeat
from operator import contains, itemgetter
from typing import Any, cast

import torch
from torch import nn

from swift_engine.kernels import row_attention
from swift_engine.kernels.quantize import QKV, FusedProduct, dequantizing, direct_product, native_active
from swift_engine.model.kv_cache import SwiftKVCache
from swift_engine.model.scripted_step import RMS_NORMS, ScriptedStep
from swift_engine.model.sublayer_skip import LayerSkipper

#: model types whose decoder (model, layer, attention) matches the loop below in ``transformers`` 5.x
SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2"})

#: the gated MLP's linears, in the order the loop calls them: ``down(act(gate(x)) * up(x))``
_MLP = ("gate_proj", "up_proj", "down_proj")


def _hooked(state: list[dict[str, Any]]) -> bool:
    """Whether anything would run around the modules' forward that this loop would bypass.

    ``state``: the modules' instance dictionaries (``m.__dict__``), where ``register_forward_hook``
    and accelerate's ``add_hook_to_module`` leave their marks; read with C-level iteration, since
    this runs on every pass (about 30 us for SmolLM2's 395 modules, against 300 us as attribute reads).
    """
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return True
    return (
        any(map(bool, map(itemgetter("_forward_hooks"), state)))
        or any(map(bool, map(itemgetter("_forward_pre_hooks"), state)))
        or any(map(contains, state, repeat("_hf_hook")))
    )


def _norm_fits(hidden: torch.Tensor) -> bool:
    """Whether swift's RMSNorm op takes ``hidden`` (``[q, H]`` contiguous, H % 16 == 0)."""
    return hidden.dim() == 2 and hidden.shape[1] % 16 == 0 and hidden.is_contiguous()


class FastDecoder:
    """Runs one model's decoder stack over our cache and masks (see the module docstring)."""

    def __init__(self, model: nn.Module, decoder: nn.Module, skipper: LayerSkipper) -> None:
        self.config: Any = model.config
        self.decoder = decoder
        self.skipper = skipper
        # the layers' submodules are read as transformers defines them (typed Any: nn.Module attributes)
        self.layers: list[Any] = list(cast(nn.ModuleList, decoder.layers))
        self._module_state = [m.__dict__ for m in decoder.modules()]
        model_type = getattr(self.config, "model_type", None)
        # what the modules pass the attention function besides the tensors (sdpa and ours ignore it;
        # eager implementations get it as the modules would give it)
        self._extra: list[dict[str, Any]] = []
        for layer in self.layers:
            attn = layer.self_attn
            if model_type == "qwen2":
                self._extra.append({"sliding_window": attn.sliding_window})
            elif model_type == "mistral":
                self._extra.append({"sliding_window": getattr(self.config, "sliding_window", None)})
            else:
                self._extra.append({})
        # the model's own functions, which its modules call: eager attention (their fallback) and rotary
        modeling = sys.modules[type(self.layers[0].self_attn).__module__]
        self._eager = modeling.eager_attention_forward
        self._rotary: Callable[..., tuple[torch.Tensor, torch.Tensor]] = modeling.apply_rotary_pos_emb
        self._rotate_half: Callable[[torch.Tensor], torch.Tensor] = modeling.rotate_half
        # q/k/v as one kernel call where the weights are weight-only and stacked (quantize.FusedProduct:
        # bitwise the separate calls); None: the modules' own products
        self._qkv = [FusedProduct.of([getattr(layer.self_attn, n, None) for n in QKV]) for layer in self.layers]
        #: how many layers compute q/k/v in one call
        self.fused = sum(p is not None for p in self._qkv)
        self._o_proj = [direct_product(layer.self_attn.o_proj) for layer in self.layers]
        # the MLP's weight-only products called directly (quantize.direct_product), where all three have one
        self._mlp: list[tuple[Callable[[torch.Tensor], torch.Tensor], ...] | None] = []
        for layer in self.layers:
            products = [direct_product(getattr(layer.mlp, n, nn.Identity())) for n in _MLP]
            gated = hasattr(layer.mlp, "act_fn")
            self._mlp.append(tuple(p for p in products if p is not None) if gated and all(products) else None)
        #: passes as one call (native layers or TorchScript) where the model allows (scripted_step.py)
        self.scripted = ScriptedStep.for_decoder(self.config, self.layers, self._qkv)
        # the final norm after a pass on swift's kernels: their RMSNorm op (bitwise the module's; one call
        # where the module's forward makes five small ones)
        norm: Any = getattr(decoder, "norm", None)
        self._native_norm: tuple[torch.Tensor, float] | None = None
        if self.scripted is not None and type(norm).__name__ in RMS_NORMS and norm.weight.dtype == torch.bfloat16:
            self._native_norm = (norm.weight, float(norm.variance_epsilon))
        types = getattr(self.config, "layer_types", None)
        self._layer_types: list[str] = list(types) if types else ["full_attention"] * len(self.layers)

    @classmethod
    def for_model(cls, model: nn.Module, decoder: nn.Module, skipper: LayerSkipper) -> FastDecoder | None:
        """A fast decoder for ``model``, or None where it must keep its modules (see the module docstring)."""
        if getattr(getattr(model, "config", None), "model_type", None) not in SUPPORTED_MODEL_TYPES:
            return None
        fast = cls(model, decoder, skipper)
        return None if not fast.usable() else fast

    def usable(self) -> bool:
        """No hooks on the decoder's modules now (checked every pass: hooks may come after the engine)."""
        return not _hooked(self._module_state)

    @torch.inference_mode()
    def __call__(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        mask: Callable[[], torch.Tensor | dict[str, torch.Tensor]],
        cache: SwiftKVCache,
    ) -> torch.Tensor:
        """Final hidden states ``[q, H]`` of ``input_ids`` at ``positions`` after the cache's entries
        (``mask()``: the pass's attention mask, built only where a pass reads it -- not a one-token step's
        script, which attends to its whole cache: ~60 us a step on SmolLM2, docs/bench/measurements.md)."""
        dec: Any = self.decoder
        # hidden states as [q, H] (the modules keep [1, q, H]: the same numbers, fewer reshapes)
        hidden = dec.embed_tokens.forward(input_ids)
        cos, sin = dec.rotary_emb.forward(hidden, positions[None])
        skipped_attention, skipped_mlp = self.skipper.active()
        q_rows = input_ids.numel()
        scripted = self.scripted
        pass_mask = None if q_rows == 1 else mask()
        if (
            scripted is not None
            and row_attention.active()  # the row-by-row attention the script computes
            and not dequantizing()
            and not isinstance(pass_mask, dict)
        ):
            # None: not for this pass (several rows on PyTorch's kernels, or with skips)
            out = scripted(hidden, cos, sin, cache, pass_mask, (skipped_attention, skipped_mlp))
            if out is not None:
                norm = self._native_norm
                if norm is not None and native_active() and out.dtype == torch.bfloat16 and _norm_fits(out):
                    return cast(torch.Tensor, torch.ops.swift_kernels.rms_norm(out, norm[0], norm[1]))
                return cast(torch.Tensor, dec.norm.forward(out))
        rotary, rotate_half = self._rotary, self._rotate_half
        cos_heads, sin_heads = cos.unsqueeze(1), sin.unsqueeze(1)  # as apply_rotary_pos_emb unsqueezes them
        direct = not dequantizing()  # prompt blocks on dequantized weights go through the modules' forward
        attention: Callable[..., tuple[torch.Tensor, Any]] = row_attention.attention_function(
            self.config._attn_implementation, self._eager
        )
        if pass_mask is None:
            pass_mask = mask()
        for i, layer in enumerate(self.layers):
            layer_mask = pass_mask[self._layer_types[i]] if isinstance(pass_mask, dict) else pass_mask
            residual = hidden
            x = layer.input_layernorm.forward(hidden)
            attn = layer.self_attn
            if i in skipped_attention:  # what the layer-skip wrapper returns for a skipped sublayer
                out = torch.zeros_like(x)
            else:
                shape = (1, q_rows, -1, attn.head_dim)
                qkv = self._qkv[i]
                if qkv is not None:
                    # q and k rotated together: apply_rotary_pos_emb's elementwise formula on both at once
                    q_heads, kv_heads = (n // attn.head_dim for n in qkv.sizes[:2])
                    qk, value = qkv(x).view(shape).transpose(1, 2).split([q_heads + kv_heads, kv_heads], dim=1)
                    qk = (qk * cos_heads) + (rotate_half(qk) * sin_heads)
                    query, key = qk.split([q_heads, kv_heads], dim=1)
                else:
                    q, k, v = attn.q_proj.forward(x), attn.k_proj.forward(x), attn.v_proj.forward(x)
                    query, key, value = (t.view(shape).transpose(1, 2) for t in (q, k, v))
                    query, key = rotary(query, key, cos, sin)
                key, value = cache.update(key, value, i)
                heads, _ = attention(
                    attn,
                    query,
                    key,
                    value,
                    layer_mask,
                    dropout=0.0 if not attn.training else attn.attention_dropout,
                    scaling=attn.scaling,
                    **self._extra[i],
                )
                heads = heads.reshape(q_rows, -1).contiguous()
                o_proj = self._o_proj[i]
                out = o_proj(heads) if o_proj is not None and direct else attn.o_proj.forward(heads)
            hidden = residual + out
            x = layer.post_attention_layernorm.forward(hidden)
            mlp = self._mlp[i]
            if mlp is not None and direct and i not in skipped_mlp:  # LlamaMLP.forward's arithmetic
                gate, up, down = mlp
                hidden = hidden + down(layer.mlp.act_fn(gate(x)) * up(x))
            else:  # through its own forward: the layer-skip wrapper returns a skipped sublayer's zeros
                hidden = hidden + layer.mlp.forward(x)
        return cast(torch.Tensor, dec.norm.forward(hidden))
