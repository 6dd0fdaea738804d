"""Dense layers through oneDNN on CPU, inside the engine's own passes only.

On a CPU, small-model decoding is a stream of skinny matrix products (1 to 32 rows against a
weight matrix), and PyTorch's default ``linear`` path is slow there: measured on 2 cores, fp32,
Qwen2.5-0.5B's output head (151,936 x 896) takes 39 ms for one row and 88 ms for two through
``F.linear``, 19 ms and 30 ms through oneDNN's linear; a whole one-token step drops from 144 to
75 ms, an 8-token verification from 277 to 151 ms (SmolLM2-135M: 56 to 42 ms, 88 to 63 ms).
Both speculation sides (draft and verify) get cheaper, so this changes speed, never which token
wins beyond float rounding (max logit difference ~1e-5, checked at start-up).

The wrappers are installed per ``nn.Linear`` *instance* and are only active inside
:meth:`LinearKernels.active`, which the engine's runner enters for its own passes; anything else
using the same model object (``model.generate``, the benchmark's transformers baseline) runs
PyTorch's stock path.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn

logger = logging.getLogger(__name__)

KernelMode = Literal["auto", "onednn", "torch"]

_ATTR = "_swift_linear_kernels"


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN's linear operator (x86 and aarch64 CPU wheels do)."""
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` through oneDNN (same layout, no weight copy)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _agrees(dtype: torch.dtype) -> bool:
    """oneDNN's result matches ``F.linear`` here (a broken build must not change outputs)."""
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(3, 64, generator=g).to(dtype)
        w = torch.randn(48, 64, generator=g).to(dtype)
        b = torch.randn(48, generator=g).to(dtype)
        with torch.inference_mode():
            ref = nn.functional.linear(x, w, b).float()
            got = onednn_linear(x, w, b).float()
        tol = 1e-3 if dtype == torch.float32 else 5e-2
        return got.shape == ref.shape and bool(((got - ref).abs() <= tol * (1 + ref.abs())).all())
    except RuntimeError:
        return False


def use_onednn(mode: KernelMode, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether an engine in ``mode`` should run its linears through oneDNN on this device and dtype.

    ``auto`` takes oneDNN on CPU for float32 (measured faster for every model tried); ``onednn``
    also for other dtypes; both fall back to PyTorch, with a log line, where oneDNN is missing or
    disagrees with ``F.linear``.
    """
    if mode == "torch" or device.type != "cpu":
        return False
    if mode == "auto" and dtype != torch.float32:
        return False
    if not onednn_available() or not _agrees(dtype):
        logger.info("oneDNN linear unavailable or inconsistent for %s here; using PyTorch's linear", dtype)
        return False
    return True


class LinearKernels:
    """Switches the ``nn.Linear`` layers of one model to oneDNN while an engine pass runs."""

    def __init__(self, model: nn.Module) -> None:
        self._on = False
        self.wrapped = 0
        for module in model.modules():
            # exactly nn.Linear with dense weights: quantized or hooked (offloaded) layers keep their forward
            if type(module) is nn.Linear and not hasattr(module, "_hf_hook") and module.weight.layout == torch.strided:
                self._wrap(module)
                self.wrapped += 1

    @classmethod
    def for_model(cls, model: nn.Module) -> "LinearKernels":
        """One set of wrappers per model object, shared by the engines over it."""
        existing = model.__dict__.get(_ATTR)
        if existing is None:
            existing = cls(model)
            model.__dict__[_ATTR] = existing  # plain attribute: not a submodule, not in state_dict
        return existing

    def _wrap(self, module: nn.Linear) -> None:
        original = module.forward
        kernels = self

        def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if kernels._on and not args and not kwargs:
                return onednn_linear(x, module.weight, module.bias)
            return original(x, *args, **kwargs)

        module.forward = forward  # instance attribute shadows the class method

    @contextlib.contextmanager
    def active(self, on: bool = True) -> Iterator[None]:
        """Run the model's linears through oneDNN (``on``) inside this block; callers serialize model use."""
        prev = self._on
        self._on = on
        try:
            yield
        finally:
            self._on = prev
