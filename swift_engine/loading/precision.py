"""Where and in what precision a model runs: ``device=`` and ``dtype=`` turned into torch objects.

Kept apart from the loaders because the serving layer and the benchmarks resolve a device and name a
precision (for cache keys and reports) without loading anything. ``"auto"`` picks what is fast and
safe on the hardware at hand (on a CPU, the model file's own precision:
:mod:`swift_engine.loading.file_precision`); anything unavailable is a ``ValueError`` here, not a
confusing failure deep inside ``model.to``. ``int8``/``int4`` are weight-only CPU precisions
(:mod:`swift_engine.kernels.quantize`): they compute in bfloat16.
"""

from __future__ import annotations

import torch

from swift_engine.kernels.quantize import INT4_NAMES, INT8_NAMES, weight_only_precision

__all__ = ["precision_name", "resolve_device", "resolve_dtype"]

_DTYPE_ALIASES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_ACCEPTED_DTYPES = ("auto", *_DTYPE_ALIASES, *INT8_NAMES, *INT4_NAMES)


def precision_name(dtype: str | torch.dtype, device: torch.device) -> str:
    """What a model loaded with ``dtype`` computes in: ``float32``, ``bfloat16``, ``float16``, ``int8`` or ``int4``."""
    return weight_only_precision(dtype) or str(resolve_dtype(dtype, device)).removeprefix("torch.")


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn ``"auto"``/``"cpu"``/``"cuda[:N]"``/``"mps"`` or a ``torch.device`` into a usable device.

    Unavailable accelerators are rejected here, with a ValueError, rather than failing later deep
    inside ``model.to`` with a less helpful message.
    """
    if isinstance(device, torch.device):
        resolved = device
    elif isinstance(device, str):
        text = device.strip().lower()
        if text == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            resolved = torch.device(text)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"Unknown device {device!r}; expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.") from exc
    else:
        raise ValueError(f"device must be a string or torch.device, got {type(device).__name__}")

    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"Device {device!r} requested but CUDA is not available.")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"Device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist.")
    elif resolved.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"Device {device!r} requested but MPS is not available.")
    elif resolved.type != "cpu":
        raise ValueError(f"Unsupported device {device!r}; expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """Pick the compute dtype.

    ``"auto"`` here, without a model file to read, means float32 on CPU, bfloat16 on CUDA when the
    card supports it (same range as fp32, so no overflow), else float16. :func:`~swift_engine.loading.load_model`
    reads the file first: on a CPU ``"auto"`` follows its precision (a 4-bit GGUF at int4:
    :mod:`swift_engine.loading.file_precision`).
    ``"int8"`` and ``"int4"`` compute in bfloat16 (their weights are quantized after loading).
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPE_ALIASES.values():
            raise ValueError(f"Unsupported dtype {dtype}; accepted values: {', '.join(_ACCEPTED_DTYPES)}")
        return dtype
    if not isinstance(dtype, str):
        raise ValueError(f"dtype must be a string or torch.dtype; accepted values: {', '.join(_ACCEPTED_DTYPES)}")
    text = dtype.strip().lower().removeprefix("torch.")
    if weight_only_precision(text):
        return torch.bfloat16
    if text == "auto":
        device = torch.device(device)
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return _DTYPE_ALIASES[text]
    except KeyError:
        raise ValueError(f"Unknown dtype {dtype!r}; accepted values: {', '.join(_ACCEPTED_DTYPES)}") from None
