"""Llama and Qwen2 decoders as the engine's own modules, bitwise transformers' classes, without their import.

Why: importing ``transformers``' modeling code costs every process ~2 s on a 2-core machine, whatever the
model's size (the model classes pull in ``transformers.activations`` -> ``torch.distributed.tensor``,
``masking_utils`` -> ``torch._dynamo``, ``modeling_utils``), more than the embedded model's whole first
call once its weights are kept on disk (issue #32's second-process start; docs/bench/cold-start.md).
The engine's passes never need those classes' ``forward``: they run on ``fast_forward.py`` and
``scripted_step.py``, which read the modules' weights and call their leaves.

What: for a checkpoint folder's ``config.json`` of ``model_type`` ``llama`` or ``qwen2``, the same module
tree as ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` -- the same attribute names, parameter shapes and
registration order, hence the same ``state_dict`` keys and the same
:func:`~swift_engine.loading.fingerprint.model_fingerprint` (profiles and measurements keyed by it stay
valid) -- whose leaves compute what transformers' compute, op for op: RMSNorm in float32, rotary tables
from the same formula, SiLU, and attention through transformers' own sdpa function. So a model built here
is bitwise the transformers one (``tests/test_llama_family.py`` compares logits, fingerprints and
generations). :meth:`CausalLM.as_transformers` gives transformers' class over the same weight tensors
where ``transformers``' own ``generate`` is wanted (the benchmark's baseline).

Only what these classes reproduce exactly is built here; :func:`build` returns None for anything else
(other model types, rope scaling, sliding windows, another attention implementation, unknown activation),
and the caller loads with transformers as before. The config is transformers' base ``PretrainedConfig``
over the file's values (``_attn_implementation`` set), which imports none of the above.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, NamedTuple

import torch
from torch import nn

from swift_engine.kernels import row_attention

__all__ = ["CausalLM", "build", "supported_config", "transformers_model"]

#: the model types built here, and their attention projections' biases (q/k/v, o) as transformers has them
_ATTENTION_BIAS = {"llama": None, "qwen2": (True, False)}

#: what ``config.json`` must give (no defaults are guessed: a missing value means transformers' class)
_REQUIRED = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "rms_norm_eps",
    "vocab_size",
    "tie_word_embeddings",
)


def _rope_theta(values: dict[str, Any]) -> float | None:
    """The default rotary embedding's base, or None for any other rotary scheme."""
    params = values.get("rope_parameters")
    if isinstance(params, dict):
        return float(params["rope_theta"]) if params.get("rope_type", "default") == "default" else None
    if values.get("rope_scaling") or values.get("rope_theta") is None:
        return None
    return float(values["rope_theta"])


def supported_config(values: dict[str, Any]) -> str | None:
    """Why ``config.json``'s ``values`` are not built here (None: they are)."""
    model_type = values.get("model_type")
    if model_type not in _ATTENTION_BIAS:
        return f"model type {model_type!r}"
    missing = [key for key in _REQUIRED if key not in values]
    if missing:
        return f"config.json lacks {', '.join(missing)}"
    if values.get("hidden_act", "silu") != "silu":
        return f"activation {values.get('hidden_act')!r}"
    if _rope_theta(values) is None:
        return "a rotary embedding other than the default"
    if values.get("use_sliding_window") or any(t != "full_attention" for t in values.get("layer_types") or []):
        return "sliding-window layers"
    if model_type == "llama" and (values.get("pretraining_tp", 1) != 1):
        return "pretraining_tp"
    return None


def _file_config_class() -> type:
    """transformers' base config, keeping a ``config.json``'s ``model_type`` in ``to_dict`` (the base class
    writes its own, empty one). Defined on first use (importing transformers), and reachable as this
    module's ``FileConfig`` (:func:`__getattr__`) so that configs pickle."""
    from transformers import PretrainedConfig

    class FileConfig(PretrainedConfig):
        def to_dict(self) -> dict[str, Any]:
            out = super().to_dict()
            out["model_type"] = self.__dict__.get("model_type", "")
            return out

    FileConfig.__module__, FileConfig.__qualname__ = __name__, "FileConfig"
    return FileConfig


def __getattr__(name: str) -> Any:
    if name == "FileConfig":
        globals()[name] = cls = _file_config_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _config(values: dict[str, Any], folder: pathlib.Path) -> Any:
    """transformers' base config over ``values`` (its ``model_type`` kept), as a loaded checkpoint's reads."""
    import sys

    config = sys.modules[__name__].FileConfig.from_dict(values)
    config._name_or_path = str(folder)
    config._attn_implementation = "sdpa"
    head_dim = values.get("head_dim") or values["hidden_size"] // values["num_attention_heads"]
    config.head_dim = head_dim
    for key, default in (("attention_bias", False), ("mlp_bias", False), ("attention_dropout", 0.0)):
        if not hasattr(config, key):
            setattr(config, key, default)
    return config


# -- the leaves' arithmetic: the formulas of transformers' modeling_llama, which fast_forward.py calls --


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[..., d]`` -> ``[-x2, x1]``, the halves of the last dimension swapped and the second negated."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and keys ``[1, heads, q, d]`` rotated by tables ``[1, q, d]``."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def _repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    """``[1, kv_heads, n, d]`` -> ``[1, kv_heads * groups, n, d]``, each head repeated ``groups`` times."""
    if groups == 1:
        return states
    b, heads, n, d = states.shape
    return states[:, :, None].expand(b, heads, groups, n, d).reshape(b, heads * groups, n, d)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention as explicit products (``attn_implementation="eager"``): ``[1, H, q, d]`` -> ``[1, q, H, d]``."""
    groups = int(getattr(module, "num_key_value_groups", 1))
    weights = torch.matmul(query, _repeat_kv(key, groups).transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, _repeat_kv(value, groups)).transpose(1, 2).contiguous()
    return out, weights


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        dtype = hidden.dtype
        hidden = hidden.to(torch.float32)
        variance = hidden.pow(2).mean(-1, keepdim=True)
        hidden = hidden * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden.to(dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables ``[1, q, d]`` of positions ``[1, q]`` (the default rotary scheme; float32 math)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        base = _rope_theta(config.to_dict())
        assert base is not None, "supported_config admits the default rotary embedding only"
        dim = int(config.head_dim)
        # computed on the CPU even while the model is built on the meta device (no values to assign later;
        # and arange on the meta device imports torch._dynamo)
        exponents = torch.arange(0, dim, 2, dtype=torch.float, device="cpu") / dim
        self.inv_freq = nn.Buffer(1.0 / (base**exponents), persistent=False)
        self.attention_scaling = 1.0

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


class SiLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.silu(x)


class MLP(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        hidden, inner, bias = config.hidden_size, config.intermediate_size, bool(config.mlp_bias)
        self.gate_proj = nn.Linear(hidden, inner, bias=bias)
        self.up_proj = nn.Linear(hidden, inner, bias=bias)
        self.down_proj = nn.Linear(inner, hidden, bias=bias)
        self.act_fn = SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class Attention(nn.Module):
    def __init__(self, config: Any, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = int(config.head_dim)
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        biases = _ATTENTION_BIAS[config.model_type] or (bool(config.attention_bias),) * 2
        q_out, kv_out = config.num_attention_heads * self.head_dim, config.num_key_value_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, q_out, bias=biases[0])
        self.k_proj = nn.Linear(config.hidden_size, kv_out, bias=biases[0])
        self.v_proj = nn.Linear(config.hidden_size, kv_out, bias=biases[0])
        self.o_proj = nn.Linear(q_out, config.hidden_size, bias=biases[1])
        if config.model_type == "qwen2":
            self.sliding_window = None  # supported_config admits full attention only

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[1, q, H]`` -> (``[1, q, H]``, attention weights or None), as transformers' attention returns."""
        shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        query = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        attention = row_attention.attention_function(self.config._attn_implementation, eager_attention_forward)
        extra = {"sliding_window": self.sliding_window} if hasattr(self, "sliding_window") else {}
        out, weights = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **extra,
        )
        return self.o_proj(out.reshape(*hidden_states.shape[:-1], -1).contiguous()), weights


class DecoderLayer(nn.Module):
    def __init__(self, config: Any, layer_idx: int) -> None:
        super().__init__()
        self.hidden_size = config.hidden_size
        self.self_attn = Attention(config, layer_idx)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: Any,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        attended, _ = self.self_attn(
            self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            cache=cache,
        )
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class DecoderOutput(NamedTuple):
    last_hidden_state: torch.Tensor  # [1, q, H]


class Decoder(nn.Module):
    """The decoder stack; its ``forward`` takes what the engine's runner passes a transformers decoder."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.padding_idx = getattr(config, "pad_token_id", None)
        self.vocab_size = config.vocab_size
        # given its weight, the embedding skips its random init (on the meta device that init imports
        # torch._dynamo, ~1.2 s: the cost this module exists to spare)
        weight = torch.empty(config.vocab_size, config.hidden_size)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx, _weight=weight)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | dict[str, torch.Tensor] | None = None,
        cache: Any = None,
        use_cache: bool = True,
        **kwargs: Any,
    ) -> DecoderOutput:
        """Final hidden states of ``input_ids`` ``[1, q]`` at ``position_ids`` ``[1, q]``, through the modules.

        The engine's passes take this path only while hooks sit on the modules (fast_forward.py); the mask is
        the engine's ready additive one (a dict per layer type never arises: no sliding layers here).
        """
        if isinstance(attention_mask, dict):
            attention_mask = attention_mask["full_attention"]
        hidden = self.embed_tokens(input_ids)
        position_embeddings = self.rotary_emb(hidden, position_ids)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask, cache, position_embeddings)
        return DecoderOutput(self.norm(hidden))


class CausalLM(nn.Module):
    """``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` as the engine reads them (see the module docstring)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.generation_config: Any = None
        self.tie_weights()

    def tie_weights(self) -> None:
        """The head shares the embedding's weight where the config ties them (as transformers ties them)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def get_decoder(self) -> Decoder:
        return self.model

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    @property
    def name_or_path(self) -> str:
        return str(self.config._name_or_path)

    @property
    def dtype(self) -> torch.dtype:
        """The first floating-point parameter's dtype (a weight-only model's activations), as transformers'."""
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.float32)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """transformers' forward (``model(input_ids).logits``) on this model's weights (:meth:`transformers_view`).

        The engine never calls it: its passes run the decoder's layers themselves (fast_forward.py).
        """
        return self.transformers_view()(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """transformers' ``generate`` on this model's weights (:meth:`transformers_view`)."""
        return self.transformers_view().generate(*args, **kwargs)

    def transformers_view(self) -> Any:
        """:meth:`as_transformers`, built on first use and kept."""
        view = self.__dict__.get("_transformers_view")
        if view is None:
            view = self.as_transformers()
            # kept outside nn.Module's registries: its modules are this model's, listed once
            object.__setattr__(self, "_transformers_view", view)
        return view

    def as_transformers(self) -> nn.Module:
        """transformers' class for this model over the same leaf modules and rotary tables (no weights copied).

        Imports transformers' modeling code (the cost this module exists to spare) -- only where asked. The
        engine's sublayer wrappers sit on this model's attention and MLP modules, not on the view's, so the view
        always computes with every layer; its attention is transformers' own sdpa.
        """
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.initialization import no_init_weights

        values = self.config.to_dict()
        config = AutoConfig.for_model(values.pop("model_type"), **values)
        config._name_or_path = self.config._name_or_path
        with no_init_weights(), torch.device("meta"):
            dtype = next(self.parameters()).dtype
            view = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
        ours, theirs = self.model, view.get_decoder()
        theirs.embed_tokens, theirs.norm = ours.embed_tokens, ours.norm
        for mine, other in zip(ours.layers, theirs.layers, strict=True):
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                setattr(other.self_attn, name, getattr(mine.self_attn, name))
            for name in ("gate_proj", "up_proj", "down_proj"):
                setattr(other.mlp, name, getattr(mine.mlp, name))
            other.input_layernorm, other.post_attention_layernorm = mine.input_layernorm, mine.post_attention_layernorm
        view.lm_head = self.lm_head
        # this model's rotary tables as they are (a load at bfloat16 casts them, as it casts transformers')
        theirs.rotary_emb = ours.rotary_emb
        if self.generation_config is not None:
            view.generation_config = self.generation_config
        view.eval()
        return view


def transformers_model(model: nn.Module) -> Any:
    """``model`` as transformers' class: itself, or the view of the engine's own classes
    (:meth:`CausalLM.transformers_view`, over the same weights). For what needs transformers' class itself
    (``pipeline``, a timed ``generate`` baseline that should not pay for the view's imports)."""
    view = getattr(model, "transformers_view", None)
    return view() if callable(view) else model


def read_config(folder: pathlib.Path) -> tuple[dict[str, Any], str | None]:
    """``folder``'s ``config.json`` values, and why they are not built here (None: they are)."""
    values = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return values, supported_config(values)


def build(folder: pathlib.Path, attn_implementation: str, *, untied_head: bool = False) -> CausalLM | None:
    """The model of ``folder``'s config with its weights on the meta device (to be assigned by the caller);
    None where this module does not reproduce it (:func:`supported_config`) or ``attn_implementation`` is not sdpa.

    ``untied_head``: the head gets its own weight whatever the config says (a quantized model's int8 head).
    """
    values, why_not = read_config(folder)
    if why_not is not None or attn_implementation != "sdpa":
        return None
    config = _config(values, folder)
    if untied_head:
        config.tie_word_embeddings = False
    with torch.device("meta"):
        model = CausalLM(config)
    generation = folder / "generation_config.json"
    if generation.is_file():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(str(folder))
    return model
