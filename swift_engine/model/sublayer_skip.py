"""Skipping attention and MLP sublayers of a Hugging Face decoder, per engine, without forking models.

SWIFT's draft model is the target model with some sublayers turned into the identity. In a pre-norm
residual block ``h = h + f(norm(h))``, the identity is ``f(.) = 0``; post-norms applied to ``f``'s
output (Gemma2/3) map zero to zero, so returning zeros is exact for every architecture supported
here. We wrap the ``forward`` of each sublayer *instance* (not the class), so nothing changes for
other models in the process and the weights' ``state_dict`` keys stay the same.

Which sublayers are skipped is *per-call context*, not a switch on the shared model: it lives in a
context variable set only inside :meth:`LayerSkipper.skipping`, so it is private to the thread (and
asyncio task) that set it. Another engine, or ``model.generate`` in another thread, running the
same model at the same moment computes with every layer.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch
from torch import nn

from swift_engine.attach import attached

#: model_type values whose decoder layers are known to follow the pre-norm residual pattern with
#: ``self_attn`` / ``mlp`` sublayers and whose attention returns ``(output, weights)``.
SUPPORTED_MODEL_TYPES = frozenset(
    {"llama", "qwen2", "qwen3", "mistral", "phi3", "gemma", "gemma2", "gemma3_text", "olmo2", "granite"}
)

_ATTR = "_swift_layer_skipper"


class UnsupportedArchitectureError(ValueError):
    """The model's decoder layers can't be skipped safely; the message says why."""


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder's list of layers, wherever the architecture keeps it."""
    # nn.Module.__getattr__ types attributes as Tensor | Module; get_decoder is transformers' method
    decoder = (
        cast(Callable[[], nn.Module], model.get_decoder)()
        if hasattr(model, "get_decoder")
        else getattr(model, "model", None)
    )
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__}: no decoder `layers` list found (expected model.model.layers); "
            "SWIFT needs per-layer attention and MLP sublayers to skip"
        )
    return layers


class LayerSkipper:
    """Owns the sublayer wrappers of one model and the skip set active during a draft pass."""

    def __init__(self, model: nn.Module) -> None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedArchitectureError(
                f"model_type {model_type!r} is not supported for layer skipping: its decoder layers are not "
                f"known to be pre-norm residual blocks with `self_attn`/`mlp` sublayers. Supported: "
                f"{', '.join(sorted(SUPPORTED_MODEL_TYPES))}"
            )
        self.layers = find_decoder_layers(model)
        self.num_layers = len(self.layers)
        for i, layer in enumerate(self.layers):
            for attr in ("self_attn", "mlp"):
                if not isinstance(getattr(layer, attr, None), nn.Module):
                    raise UnsupportedArchitectureError(
                        f"{model_type}: decoder layer {i} has no `{attr}` sublayer to skip"
                    )
        #: (skipped attention, skipped MLP) of the calling context; empty outside :meth:`skipping`
        self._active: contextvars.ContextVar[tuple[frozenset[int], frozenset[int]]] = contextvars.ContextVar(
            f"swift_skip_{id(model):x}", default=(frozenset(), frozenset())
        )
        for i, layer in enumerate(self.layers):
            # both checked to be nn.Module above
            self._wrap(cast(nn.Module, layer.self_attn), i, attention=True)
            self._wrap(cast(nn.Module, layer.mlp), i, attention=False)

    @classmethod
    def for_model(cls, model: nn.Module) -> "LayerSkipper":
        """One skipper per model object: engines sharing a model share its wrappers."""
        return attached(model, _ATTR, cls)

    @property
    def skippable(self) -> list[int]:
        """Layers that may be skipped: never the first and the last."""
        return list(range(1, self.num_layers - 1))

    def validate(self, attention: list[int] | tuple[int, ...], mlp: list[int] | tuple[int, ...]) -> None:
        allowed = set(self.skippable)
        for kind, idx in (("attention", attention), ("mlp", mlp)):
            bad = sorted(set(idx) - allowed)
            if bad:
                raise ValueError(
                    f"cannot skip {kind} layers {bad}: skippable layers are 1..{self.num_layers - 2} "
                    "(the first and last layer always run)"
                )

    def _wrap(self, module: nn.Module, index: int, *, attention: bool) -> None:
        original = module.forward
        skipper = self

        def forward(*args: Any, **kwargs: Any) -> Any:
            skipped = skipper._active.get()[0 if attention else 1]
            if index in skipped:
                hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
                zeros = torch.zeros_like(hidden)
                return (zeros, None) if attention else zeros
            return original(*args, **kwargs)

        module.forward = forward  # instance attribute shadows the class method

    def active(self) -> tuple[frozenset[int], frozenset[int]]:
        """The (attention, MLP) layers skipped in the calling context (empty outside :meth:`skipping`)."""
        return self._active.get()

    @contextlib.contextmanager
    def skipping(self, attention: frozenset[int] | set[int], mlp: frozenset[int] | set[int]) -> Iterator[None]:
        """Run the model with these sublayers skipped, in this thread / task only.

        Must not span a ``yield`` to code outside the engine: the setting belongs to the context
        that entered the block.
        """
        token = self._active.set((frozenset(attention), frozenset(mlp)))
        try:
            yield
        finally:
            self._active.reset(token)


def default_skip_set(num_layers: int, ratio: float) -> tuple[list[int], list[int]]:
    """SWIFT's starting point: skip every other layer's sublayers until ``ratio`` of all are skipped.

    Alternating layers spreads the skipped compute over the depth; attention and MLP of the same
    layer are taken together, the way the paper's uniform initialisation does.
    """
    budget = int(round(ratio * 2 * num_layers))
    candidates = list(range(1, num_layers - 1, 2)) + list(range(2, num_layers - 1, 2))
    attention: list[int] = []
    mlp: list[int] = []
    for layer in candidates:
        if budget <= 0:
            break
        attention.append(layer)
        budget -= 1
        if budget <= 0:
            break
        mlp.append(layer)
        budget -= 1
    return sorted(attention), sorted(mlp)
