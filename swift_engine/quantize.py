"""Weight-only int8 linears for CPU decoding (``dtype="int8"``).

Why: decoding a small model on a CPU is bound by reading the weights once per pass. Stored as int8
with one bfloat16 scale per output row, the dense layers read a quarter of float32's bytes, and
PyTorch's own kernel (``aten._weight_int8pack_mm``, bfloat16 activations, float32 accumulation)
does the product without a dequantized copy. Activations, norms, attention and the embedding
stay in bfloat16 (the model is converted to bfloat16 first).

Measured on a 2-vCPU Xeon (AVX-512, AMX), Qwen2.5-Coder-0.5B, 2 threads, one hour apart: a
one-token step takes 74 ms (float32 on its best kernels: 194-210 ms; bfloat16 on oneDNN: 105).
But the kernel's cost grows with the rows: a pass of 8 tokens takes 165 ms, 32 tokens 450, and
a 128-row product (a prefill block) costs about 40 one-row ones, where bfloat16 on oneDNN's AMX
path stays nearly flat (8 tokens: 110 ms). So int8 wins plain decoding and memory; bfloat16
wins verification and prefill there.

Quantization is symmetric per output row (``scale = max|w| / 127``), the scheme the kernel takes.
Its quality cost is measured in the README (perplexity per precision). Outputs are then exact at
*this* precision: greedy SWIFT gives the tokens the engine's plain loop gives on the same int8
model (:mod:`swift_engine.row_attention`, :mod:`swift_engine.batch_invariance`).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: ``dtype=`` spellings that mean weight-only int8 (bfloat16 activations)
INT8_NAMES = ("int8", "w8", "int8_weight_only")


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights and per-row scales; the same call signature and shapes."""

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scales = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
        # parameters (not buffers) so that model fingerprints, ``.to()`` and state dicts see them
        self.qweight = nn.Parameter(q.contiguous(), requires_grad=False)
        self.scales = nn.Parameter(scales.to(compute_dtype), requires_grad=False)
        self.bias = (
            None if linear.bias is None else nn.Parameter(linear.bias.detach().to(compute_dtype), requires_grad=False)
        )
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.qweight, self.scales, self.bias)

    def rows(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The weights of output rows ``ids`` (a head over a vocabulary subset)."""
        bias = None if self.bias is None else self.bias.index_select(0, ids)
        return self.qweight.index_select(0, ids), self.scales.index_select(0, ids), bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def int8_linear(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if x2.dtype != scales.dtype:
        x2 = x2.to(scales.dtype)
    y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), qweight, scales)
    if bias is not None:
        y = y + bias
    return y.reshape(*shape[:-1], qweight.shape[0])


def int8_available() -> bool:
    """Whether this PyTorch build has the int8 weight-only CPU kernel (and it computes)."""
    try:
        x = torch.ones(2, 32, dtype=torch.bfloat16)
        w = torch.ones(16, 32, dtype=torch.int8)
        y = torch.ops.aten._weight_int8pack_mm(x, w, torch.ones(16, dtype=torch.bfloat16))
        return bool(torch.all(y == 32))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def quantize_int8(model: nn.Module) -> int:
    """Replace every ``nn.Linear`` of ``model`` (decoder and output head) in place; returns how many.

    The model must already be in bfloat16 on CPU. The embedding keeps its bfloat16 weights; a
    tied output head gets its own int8 copy (a quarter of the embedding's bytes in float32 terms).
    """
    if not int8_available():
        raise RuntimeError(
            "dtype='int8' needs PyTorch's int8 weight-only CPU kernel (aten._weight_int8pack_mm), "
            f"which this build ({torch.__version__}) lacks; use dtype='bfloat16' or 'float32'"
        )
    count = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and not isinstance(child, Int8Linear):
                setattr(module, name, Int8Linear(child))
                count += 1
    config = getattr(model, "config", None)
    if config is not None:
        # a tied head is a separate int8 copy now: transformers must not re-tie it to the embedding
        config.tie_word_embeddings = False
        text = config.get_text_config() if hasattr(config, "get_text_config") else None
        if text is not None and text is not config:
            text.tie_word_embeddings = False
    logger.info("Quantized %d linear layers to int8 weights (bfloat16 activations)", count)
    return count


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())
