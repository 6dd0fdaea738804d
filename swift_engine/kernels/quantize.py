"""Weight-only int8 and int4 linears for CPU decoding (``dtype="int8"``, ``dtype="int4"``).

Why: decoding a small model on a CPU is bound by reading the weights once per pass. Stored as int8
with one bfloat16 scale per output row, the dense layers read a quarter of float32's bytes, and
PyTorch's own kernel (``aten._weight_int8pack_mm``, bfloat16 activations, float32 accumulation)
does the product without a dequantized copy. Activations, norms, attention and the embedding
stay in bfloat16 (the model is converted to bfloat16 first).

Measured on a 2-vCPU Xeon (AVX-512, AMX) with Qwen2.5-Coder-0.5B: an int8 one-token step is
much faster than float32 on its best kernels, and faster than bfloat16 on oneDNN. But the kernel's
cost grows with the rows (a 128-row prefill block costs many one-row products), where bfloat16 on
oneDNN's AMX path stays nearly flat. So int8 wins plain decoding and memory; bfloat16 wins
verification and prefill there (figures: docs/bench/measurements.md#kernels).

Quantization is symmetric per output row (``scale = max|w| / 127``), the scheme the kernel takes.
Its quality cost is measured in docs/precision.md (perplexity per precision). Outputs are then exact at
*this* precision: greedy SWIFT gives the tokens the engine's plain loop gives on the same int8
model (:mod:`swift_engine.kernels.row_attention`, :mod:`swift_engine.kernels.batch_invariance`).

int4 (``aten._weight_int4pack_mm_for_cpu``) is groupwise and asymmetric: 32 consecutive inputs of
a row share a bfloat16 scale and zero point, ``w = (q - 8) * scale + zero`` with ``q`` in 0..15.
That is the block layout of GGUF's ``Q4_0``/``Q4_1`` (32 weights, a scale and a minimum), so a
model loaded from such a file gets back the file's own 4-bit grid, up to rounding the file's
float16 scales to bfloat16 (the embedded SmolLM2 ``Q4_1``: see ``tests/test_low_precision.py``).
The output head stays int8, as llama.cpp's 4-bit files keep theirs at 6 or 8 bits: the embedded
SmolLM2's head is tied to an 8-bit embedding, and requantizing it to 4 bits cost far more
perplexity than an int8 head (on Qwen2.5-Coder-0.5B too, by a smaller margin; docs/precision.md).
It costs speed on a large vocabulary: Qwen's head is much slower a row at int8 than at int4 (the
decoder's small layers cost about what int8's do: per-call overhead, not bytes). Like int8, the
kernel's cost grows with the rows (figures: docs/bench/measurements.md#kernels). It needs
``out_features % 16 == 0`` and ``in_features % 32 == 0``; layers of other shapes get int8 too.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
from collections.abc import Callable, Iterator
from typing import cast

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: ``dtype=`` spellings that mean weight-only int8 (bfloat16 activations)
INT8_NAMES = ("int8", "w8", "int8_weight_only")
#: ``dtype=`` spellings that mean weight-only groupwise int4 (bfloat16 activations)
INT4_NAMES = ("int4", "w4", "int4_weight_only")
#: inputs per int4 group: GGUF's 4-bit block size, and the smallest group the kernel takes
INT4_GROUP = 32


def weight_only_precision(dtype: object) -> str | None:
    """``"int8"`` or ``"int4"`` when ``dtype`` asks for weight-only linears, else ``None``."""
    if not isinstance(dtype, str):
        return None
    text = dtype.strip().lower()
    return "int8" if text in INT8_NAMES else "int4" if text in INT4_NAMES else None


class _Workspace:
    """Scratch memory for one pass's dequantized weights, reused layer after layer.

    Fresh allocations of a layer's size are served by new pages, and faulting them in costs about
    as much as the dequantization itself (Qwen2.5-0.5B, a 128-token block; figures:
    docs/bench/measurements.md#kernels).
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            buf = self._buffers[name] = torch.empty(numel, dtype=dtype)
        return buf[:numel]


#: the calling thread's / task's scratch for dequantized weights; None: the kernels (:func:`dequantized`)
_DEQUANTIZED: contextvars.ContextVar[_Workspace | None] = contextvars.ContextVar(
    "swift_dequantized_linears", default=None
)


@contextlib.contextmanager
def dequantized() -> Iterator[None]:
    """Inside this block, weight-only linears multiply by their weights dequantized to bfloat16.

    Why: the weight-only kernels' cost grows with the rows (at int4 a 128-row prompt block costs
    many one-token steps, on SmolLM2 and Qwen2.5-0.5B), while a bfloat16 product of many rows runs
    on PyTorch's dense (oneDNN; AMX where present) path at a fraction of that. Dequantizing a layer
    reads its codes once, cheaply (figures: docs/bench/measurements.md#kernels), into scratch memory
    reused layer after layer, so no second set of weights is kept. Whether it pays is measured per
    machine (``kernel_choice.py``).

    Only prompt blocks use it: decoding passes must keep the kernel's own bits, so that a token's
    verification row equals its one-token step (``row_attention.py``). Prompt blocks are computed
    the same way for plain and speculative calls (and for cached and uncached prompts), so
    exactness is untouched. This thread or task only: other users of the model compute as before.
    """
    token = _DEQUANTIZED.set(_Workspace())
    try:
        yield
    finally:
        _DEQUANTIZED.reset(token)


#: whether weight-only products in the calling thread / task run on swift's own kernels (:func:`native_products`)
_NATIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("swift_native_products", default=False)


@contextlib.contextmanager
def native_products() -> Iterator[None]:
    """Inside this block, int4 and int8 products run on swift's kernels (``kernels/native/``).

    Why: PyTorch's kernels cost about ceil(rows / 4) one-row products, the native ones about one up
    to 16 rows, so verifying a draft costs about a step (figures: docs/bench/measurements.md#native-kernels).
    Their bits differ from PyTorch's (by bfloat16 rounding) but not between passes: a row gets the
    same bits in a pass of any size. So an engine uses one kernel for all its passes, and enters
    this block around each when the kernels are loaded (:func:`~swift_engine.kernels.native_build.native_status`);
    everyone else using the model keeps PyTorch's kernels. (int8 layers of shapes the native kernel
    does not take -- ``out % 16``, ``in % 32`` -- keep PyTorch's kernel in every pass.)
    """
    token = _NATIVE.set(True)
    try:
        yield
    finally:
        _NATIVE.reset(token)


def native_active() -> bool:
    """Whether the calling context is inside :func:`native_products`."""
    return _NATIVE.get()


def int4_product(x: torch.Tensor, qweight: torch.Tensor, scales_zeros: torch.Tensor) -> torch.Tensor:
    """The int4 product of a 2-D contiguous bfloat16 ``x``, on the kernel the calling context chose."""
    if _NATIVE.get():
        return torch.ops.swift_kernels.int4_mm(x, qweight, INT4_GROUP, scales_zeros)
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, qweight, INT4_GROUP, scales_zeros)


def int8_native_fits(qweight: torch.Tensor) -> bool:
    """Whether swift's int8 kernel takes a weight of this shape (``[out, in]``: out % 16, in % 32)."""
    return qweight.shape[0] % 16 == 0 and qweight.shape[1] % INT4_GROUP == 0


def int8_product(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, tiles: torch.Tensor | None = None
) -> torch.Tensor:
    """The int8 product of a 2-D contiguous bfloat16 ``x``, on the kernel the calling context chose
    (swift's reads ``tiles``, the weights in its VNNI layout, where given: :attr:`Int8Linear.tiles`)."""
    if _NATIVE.get() and int8_native_fits(qweight):
        return torch.ops.swift_kernels.int8_mm(x, qweight if tiles is None else tiles, scales)
    return torch.ops.aten._weight_int8pack_mm(x, qweight, scales)


def dequantizing() -> bool:
    """Whether the calling context is inside :func:`dequantized` (weight-only layers multiply dense weights)."""
    return _DEQUANTIZED.get() is not None


def kernel_operands(linear: object, native: bool = False) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(weight, scales) of a bias-free weight-only linear as its kernel takes them (``native``: swift's
    kernel, which reads an int8 layer's :attr:`~Int8Linear.tiles` where it has them); None for other layers."""
    if type(linear) is Int4Linear and linear.bias is None:
        return linear.qweight, linear.scales_zeros
    if type(linear) is Int8Linear and linear.bias is None:
        tiles = linear.tiles if native else None
        return linear.qweight if tiles is None else tiles, linear.scales
    return None


def direct_product(linear: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``linear``'s weight-only kernel bound to its weights, or None (other layers, layers with a bias).

    For a caller that already holds a 2-D contiguous input in the layer's compute dtype and is not
    inside :func:`dequantized` (it checks :func:`dequantizing`): the same kernel call ``forward``
    makes, without its checks and reshapes (a few microseconds, over a hundred times a step).
    """
    operands = kernel_operands(linear)
    if operands is None:
        return None
    weight, scales = operands
    if type(linear) is Int8Linear:
        tiles = linear.tiles
        return lambda x: int8_product(x, weight, scales, tiles)
    return lambda x: int4_product(x, weight, scales)


def _shell(cls: type[nn.Module], linear: nn.Linear, names: tuple[str, ...], kept: dict[str, torch.Tensor]) -> nn.Module:
    """A ``cls`` instance holding the kept tensors ``kept`` (``names``, then ``bias`` where ``linear`` has
    one) as its parameters, registered in the order ``cls.__init__`` registers them."""
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    for name in names:
        setattr(module, name, nn.Parameter(kept[name], requires_grad=False))
    module.bias = None if linear.bias is None else nn.Parameter(kept["bias"], requires_grad=False)
    vars(module).update(in_features=linear.in_features, out_features=linear.out_features)
    return module


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights and per-row scales; the same call signature and shapes."""

    #: the weights in swift's VNNI kernel's layout (:func:`~swift_engine.kernels.int8_tiles.pack_int8_tiles`),
    #: which its products read in place of ``qweight``; None: ``qweight`` (PyTorch's kernel, AMX, no VNNI).
    #: Not a parameter: model fingerprints, state dicts and the quantized cache see ``qweight`` only.
    tiles: torch.Tensor | None = None

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

    @classmethod
    def shell(cls, linear: nn.Linear, kept: dict[str, torch.Tensor]) -> Int8Linear:
        """``linear`` quantized earlier, from its kept tensors (``qweight``, ``scales``, ``bias``), without
        quantizing (:mod:`swift_engine.loading.quantized_cache`): the same parameters, in the same order."""
        return cast(Int8Linear, _shell(cls, linear, ("qweight", "scales"), kept))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ``_parameters`` directly: ``nn.Module.__getattr__`` is slow per lookup, and a decode step of
        # a small model makes over 200 of these calls (figures: docs/bench/measurements.md#kernels)
        p = self._parameters
        work = _DEQUANTIZED.get()
        if work is not None:
            return nn.functional.linear(x.to(self.scales.dtype), self.dense_weight(work), p.get("bias"))
        return int8_linear(
            x, cast(torch.Tensor, p["qweight"]), cast(torch.Tensor, p["scales"]), p.get("bias"), self.tiles
        )

    def float_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """``self(x).float()``, with the same bits; in one pass on swift's kernel where it computes this layer.

        Why: an output head's logits are widened to float32; at 16 rows of a 49152-token vocabulary the
        separate widening pass cost ~0.3 ms, a twentieth of a one-token step on the embedded model.
        """
        p = self._parameters
        qweight = cast(torch.Tensor, p["qweight"])
        if _NATIVE.get() and _DEQUANTIZED.get() is None and p.get("bias") is None and int8_native_fits(qweight):
            scales = cast(torch.Tensor, p["scales"])
            weight = qweight if self.tiles is None else self.tiles
            return _weight_only(
                x, scales.dtype, None, lambda x2: torch.ops.swift_kernels.int8_mm_float(x2, weight, scales)
            )
        return self(x).float()

    def dense_weight(self, work: _Workspace | None = None) -> torch.Tensor:
        """The weights the kernel multiplies by, as an ``[out, in]`` bfloat16 tensor (in ``work``'s memory)."""
        work = work or _Workspace()
        out = work.get("weight", self.qweight.numel(), self.scales.dtype).view(self.qweight.shape)
        return torch.mul(self.qweight, self.scales[:, None], out=out)

    def rows(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The weights of output rows ``ids`` (a head over a vocabulary subset)."""
        bias = None if self.bias is None else self.bias.index_select(0, ids)
        return self.qweight.index_select(0, ids), self.scales.index_select(0, ids), bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def int8_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    bias: torch.Tensor | None = None,
    tiles: torch.Tensor | None = None,
) -> torch.Tensor:
    return _weight_only(x, scales.dtype, bias, lambda x2: int8_product(x2, qweight, scales, tiles))


def _weight_only(
    x: torch.Tensor, dtype: torch.dtype, bias: torch.Tensor | None, product: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """What the weight-only kernels need around ``product``: a contiguous 2-D input in ``dtype``, then
    the bias and the input's leading shape back (no copy where none is needed: a small model's step
    makes over 200 of these calls)."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if x2.dtype != dtype:
        x2 = x2.to(dtype)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    y = product(x2)
    if bias is not None:
        y = y + bias
    return y.view(*shape[:-1], y.shape[-1])


def int8_available() -> bool:
    """Whether this PyTorch build has the int8 weight-only CPU kernel (and it computes)."""
    try:
        x = torch.ones(2, 32, dtype=torch.bfloat16)
        w = torch.ones(16, 32, dtype=torch.int8)
        y = torch.ops.aten._weight_int8pack_mm(x, w, torch.ones(16, dtype=torch.bfloat16))
        return bool(torch.all(y == 32))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


class Int4Linear(nn.Module):
    """``nn.Linear`` with groupwise asymmetric int4 weights (see the module docstring)."""

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        if not int4_fits(linear):
            raise ValueError(
                f"int4 needs out_features % 16 == 0 and in_features % {INT4_GROUP} == 0, got "
                f"{linear.out_features} x {linear.in_features}"
            )
        n, k = linear.out_features, linear.in_features
        w = linear.weight.detach().float().reshape(n, k // INT4_GROUP, INT4_GROUP)
        low, high = w.amin(dim=-1), w.amax(dim=-1)
        # the kernel reads scale and zero in bfloat16: round them first, then fit the codes to
        # the rounded grid, so a file's own 4-bit values come back where bfloat16 can hold them
        scale = ((high - low) / 15).clamp_min(1e-12).to(compute_dtype)
        zero = (low + 8 * scale.float()).to(compute_dtype)
        base = zero.float() - 8 * scale.float()
        q = torch.round((w - base[..., None]) / scale.float()[..., None]).clamp_(0, 15)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.reshape(n, k).to(torch.int32).contiguous(), 1)
        self.qweight = nn.Parameter(packed, requires_grad=False)
        # [groups, out, 2]: the layout the kernel takes
        self.scales_zeros = nn.Parameter(
            torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous(), requires_grad=False
        )
        self.bias = (
            None if linear.bias is None else nn.Parameter(linear.bias.detach().to(compute_dtype), requires_grad=False)
        )
        self.in_features, self.out_features = k, n

    @classmethod
    def shell(cls, linear: nn.Linear, kept: dict[str, torch.Tensor]) -> Int4Linear:
        """As :meth:`Int8Linear.shell` (``qweight``, ``scales_zeros``, ``bias``)."""
        return cast(Int4Linear, _shell(cls, linear, ("qweight", "scales_zeros"), kept))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ``_parameters`` directly, as in Int8Linear.forward (Module.__getattr__ per lookup)
        p = self._parameters
        qweight, scales_zeros = cast(torch.Tensor, p["qweight"]), cast(torch.Tensor, p["scales_zeros"])
        work = _DEQUANTIZED.get()
        if work is not None:
            return nn.functional.linear(x.to(scales_zeros.dtype), self.dense_weight(work), p.get("bias"))
        return _weight_only(
            x,
            scales_zeros.dtype,
            p.get("bias"),
            lambda x2: int4_product(x2, qweight, scales_zeros),
        )

    def dense_weight(self, work: _Workspace | None = None) -> torch.Tensor:
        """The weights the kernel multiplies by, as an ``[out, in]`` bfloat16 view (of ``work``'s memory).

        Built transposed (``[in, out]``): that is the order the packed codes come in, so unpacking
        is two strided copies, and a dense product takes the transposed view as it is.
        """
        work = work or _Workspace()
        n, k = self.out_features, self.in_features
        dtype = self.scales_zeros.dtype
        codes = _int4_codes_transposed(self.qweight, n, k, work.get("codes", n * k, dtype).view(k, n))
        codes.sub_(8)  # exact in bfloat16, as are the scales and zeros: then ``zero + code * scale`` is
        # computed in float32 and rounded once, the kernel's own arithmetic
        # contiguous [groups, n] (strided operands send addcmul down a much slower path;
        # docs/bench/measurements.md#kernels)
        scale, zero = (t.contiguous() for t in self.scales_zeros.unbind(-1))
        w_t = work.get("weight", n * k, dtype).view(k // INT4_GROUP, INT4_GROUP, n)
        torch.addcmul(zero[:, None], codes.view(k // INT4_GROUP, INT4_GROUP, n), scale[:, None], out=w_t)
        return w_t.view(k, n).t()

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, int4 weights (groups of {INT4_GROUP})"
        )


#: output rows per block of PyTorch's CPU int4 packing (``_convert_weight_to_int4pack_for_cpu``)
_PACK_BLOCK = 64


def _int4_codes_transposed(packed: torch.Tensor, n: int, k: int, codes: torch.Tensor) -> torch.Tensor:
    """Write into ``codes`` (``[k, n]``) the codes (0..15) of an ``[n, k]`` weight in PyTorch's CPU int4 packing.

    The packing (as of PyTorch 2.13): output rows in blocks of 64, each block ``[k, 32]`` bytes whose
    low nibbles are the block's rows 0-31 and high nibbles rows 32-63; the last ``n % 64`` rows are
    ``[k, rows / 2]`` bytes, row pairs in (low, high) nibbles. It is an implementation detail, so
    :func:`dequantize_available` checks it on this build before anything relies on it.
    """
    flat = packed.reshape(-1)
    full = n // _PACK_BLOCK * _PACK_BLOCK
    if full:
        blocks = flat[: full * k // 2].view(full // _PACK_BLOCK, k, _PACK_BLOCK // 2).transpose(0, 1)
        out = codes[:, :full].view(k, full // _PACK_BLOCK, _PACK_BLOCK)
        out[..., : _PACK_BLOCK // 2] = blocks & 0xF
        out[..., _PACK_BLOCK // 2 :] = blocks >> 4
    if n > full:
        tail = flat[full * k // 2 :].view(k, (n - full) // 2)
        out = codes[:, full:].view(k, (n - full) // 2, 2)
        out[..., 0] = tail & 0xF
        out[..., 1] = tail >> 4
    return codes


@functools.cache
def dequantize_available() -> bool:
    """Whether :meth:`Int4Linear.dense_weight` reads this PyTorch build's int4 packing right.

    Checked once per process on shapes with and without a partial block: codes packed by the
    build must unpack to themselves. (A constant of the build, hence cached.)
    """
    if not int4_available():
        return False
    g = torch.Generator().manual_seed(0)
    for n, k in ((128, 64), (80, 96)):
        q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=g)
        try:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
            codes = _int4_codes_transposed(packed, n, k, torch.empty(k, n))
        except (RuntimeError, ValueError):
            return False
        if not torch.equal(codes.t(), q.float()):
            return False
    return True


def int4_fits(linear: nn.Linear) -> bool:
    """Whether the int4 kernel takes this layer's shape."""
    return linear.out_features % 16 == 0 and linear.in_features % INT4_GROUP == 0


def int4_available() -> bool:
    """Whether this PyTorch build has the int4 weight-only CPU kernels (and they compute)."""
    try:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.full((16, 32), 9, dtype=torch.int32), 1)
        sz = torch.zeros(1, 16, 2, dtype=torch.bfloat16)
        sz[..., 0] = 1
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(torch.ones(2, 32, dtype=torch.bfloat16), packed, 32, sz)
        return bool(torch.all(y == 32))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def quantize_int8(model: nn.Module) -> int:
    """Replace every ``nn.Linear`` of ``model`` with int8 weights, in place (see :func:`quantize`)."""
    return quantize(model, "int8")


def quantize(model: nn.Module, precision: str) -> int:
    """Replace every ``nn.Linear`` of ``model`` (decoder and output head) in place; returns how many.

    ``precision`` is ``"int8"`` or ``"int4"`` (the output head, and layers int4 cannot take, get
    int8). The model must already be in bfloat16 on CPU. The embedding keeps its bfloat16 weights;
    a tied output head gets its own quantized copy.
    """
    if precision not in ("int8", "int4"):
        raise ValueError(f"precision must be 'int8' or 'int4', got {precision!r}")
    if not int8_available() or (precision == "int4" and not int4_available()):
        kernel = "aten._weight_int8pack_mm" if precision == "int8" else "aten._weight_int4pack_mm_for_cpu"
        raise RuntimeError(
            f"dtype={precision!r} needs PyTorch's {precision} weight-only CPU kernel ({kernel}), "
            f"which this build ({torch.__version__}) lacks; use dtype='bfloat16' or 'float32'"
        )
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    count, fallback = 0, 0
    from tqdm.auto import tqdm  # transformers' own dependency; a bar on a terminal only (disable=None)

    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    bar = tqdm(total=linears, desc=f"Quantizing to {precision}", unit="layer", disable=None, leave=False)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                bar.update()
                if precision == "int4" and child is not head and int4_fits(child):
                    setattr(module, name, Int4Linear(child))
                else:
                    fallback += precision == "int4" and child is not head
                    setattr(module, name, Int8Linear(child))
                count += 1
    bar.close()
    stacked = restack_siblings(model)
    config = getattr(model, "config", None)
    if config is not None:
        untie_head(config)
    logger.info(
        "Quantized %d linear layers to %s weights (bfloat16 activations)%s",
        count,
        precision if precision == "int8" else "int4 (output head: int8)",
        f"; {fallback} of a shape int4 cannot take are int8" if fallback else "",
    )
    logger.debug("q/k/v weights stored side by side in %d layers", stacked)
    return count


#: an attention module's linears that read the same input: :func:`quantize` stores their weights side
#: by side so that one kernel call can compute all three (:class:`FusedProduct`). (The MLP's gate and
#: up read one input too, but there the kernel is bound by the weights' bytes, not by the call:
#: one call gains little or nothing on SmolLM2 and Qwen2.5-0.5B, so they keep their own calls;
#: figures: docs/bench/measurements.md#kernels.)
QKV = ("q_proj", "k_proj", "v_proj")


def untie_head(config: object) -> None:
    """A quantized model's head is a separate int8 copy: transformers must not re-tie it to the embedding."""
    setattr(config, "tie_word_embeddings", False)  # noqa: B010 - any config object
    get_text = getattr(config, "get_text_config", None)
    text = get_text() if callable(get_text) else None
    if text is not None and text is not config:
        text.tie_word_embeddings = False


def restack_siblings(model: nn.Module) -> int:
    """Store every attention's q/k/v weights side by side (:func:`_stack_siblings`); how many were."""
    return sum(_stack_siblings(module) for module in list(model.modules()))


def _stackable(linears: list[nn.Module | None]) -> bool:
    """Whether these linears' products can be one kernel call on their weights stacked by output rows."""
    first = linears[0]
    if type(first) not in (Int8Linear, Int4Linear) or any(type(m) is not type(first) for m in linears):
        return False
    same = cast(list[Int8Linear | Int4Linear], linears)
    if len({m.in_features for m in same}) != 1 or len({m.bias is None for m in same}) != 1:
        return False
    # int4 packs output rows in blocks of 64: stacked, every block stays whole where each layer fills whole blocks
    return type(first) is Int8Linear or all(m.out_features % _PACK_BLOCK == 0 for m in same)


def _stacked_parameters(linear: nn.Module) -> tuple[str, ...]:
    """The parameters of a weight-only linear indexed by output row first, hence stackable on dim 0."""
    return ("qweight", "scales", "bias") if isinstance(linear, Int8Linear) else ("qweight", "bias")


@torch.no_grad()
def _stack_siblings(parent: nn.Module) -> int:
    """Store the weights of ``parent``'s q/k/v linears (:data:`QKV`) in one buffer each.

    Each module's parameters become consecutive slices of it: the same values, shapes and names,
    no memory added. (int4's ``[groups, out, 2]`` scales cannot be sliced that way and stay
    separate; :class:`FusedProduct` keeps a stacked copy, about 3% of the weights.)
    """
    linears = [getattr(parent, name, None) for name in QKV]
    if not _stackable(linears):
        return 0
    for attr in _stacked_parameters(cast(nn.Module, linears[0])):
        params = [getattr(m, attr) for m in linears]
        if not all(isinstance(p, nn.Parameter) for p in params):
            continue  # no bias
        whole = torch.cat([p.data for p in params])
        start = 0
        for p in params:
            p.data = whole[start : start + p.shape[0]]
            start += p.shape[0]
    return 1


def spanning_view(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """A view over ``tensors`` stacked on dim 0 where they lie that way in one buffer, else None."""
    first = tensors[0]
    base, offset = first.untyped_storage().data_ptr(), first.storage_offset()
    for t in tensors:
        if (
            not t.is_contiguous()
            or t.untyped_storage().data_ptr() != base
            or t.storage_offset() != offset
            or t.shape[1:] != first.shape[1:]
        ):
            return None
        offset += t.numel()
    rows = sum(t.shape[0] for t in tensors)
    return first.as_strided((rows, *first.shape[1:]), first.stride(), first.storage_offset())


class FusedProduct:
    """Weight-only q/k/v linears (:data:`QKV`) as one kernel call, bitwise their outputs side by side.

    Why: a small model's decode step is mostly per-call overhead around small products (SmolLM2 at
    int4: 210 kernel calls a step), and q/k/v as one call costs less than the three (SmolLM2,
    Qwen2.5-0.5B; figures: docs/bench/measurements.md#kernels). q, k and v read the same input,
    and the weight-only kernels compute each output column from its own weight row in the same
    order whatever the other rows are, so one call on the stacked weights gives exactly the
    separate calls' numbers (``tests/test_fast_forward.py`` checks every pass bitwise against the
    modules). Prompt blocks on dequantized weights (:func:`dequantized`) run each module's own
    product: there the rows dominate, not the calls.

    Built only where :func:`quantize` laid the weights side by side (no copy of them is made), and,
    like the kernels' packed copies, it assumes the weights stay as they are while an engine uses
    them (build a new engine after changing or moving the model).
    """

    def __init__(self, linears: list[Int8Linear | Int4Linear], weight: torch.Tensor) -> None:
        self.linears = linears
        #: each linear's out_features: where to split the output
        self.sizes = [m.out_features for m in linears]
        #: what the kernel takes: the stacked weights (a view of the modules' own), their scales, the biases
        self.weight = weight
        #: the stacked weights in swift's VNNI layout (a view of the modules' own tiles), where they have them
        self.tiles: torch.Tensor | None = None
        if isinstance(linears[0], Int8Linear) and all(cast(Int8Linear, m).tiles is not None for m in linears):
            self.tiles = spanning_view([cast(torch.Tensor, cast(Int8Linear, m).tiles) for m in linears])
        biases = [m.bias for m in linears]
        self.bias = None if biases[0] is None else spanning_view(cast(list[torch.Tensor], biases))
        self.scales: torch.Tensor
        if isinstance(linears[0], Int8Linear):
            self.scales = cast(torch.Tensor, spanning_view([cast(Int8Linear, m).scales for m in linears]))
        else:
            self.scales = torch.cat([cast(Int4Linear, m).scales_zeros for m in linears], dim=1)

    @classmethod
    def of(cls, linears: list[nn.Module | None]) -> FusedProduct | None:
        """One product for ``linears``, or None where their weights are not stacked (dense, or moved since)."""
        if not _stackable(linears):
            return None
        same = cast(list[Int8Linear | Int4Linear], linears)
        weight = spanning_view([m.qweight for m in same])
        int8 = isinstance(same[0], Int8Linear)
        if weight is None or (int8 and spanning_view([cast(Int8Linear, m).scales for m in same]) is None):
            return None
        if same[0].bias is not None and spanning_view([cast(torch.Tensor, m.bias) for m in same]) is None:
            return None
        return cls(same, weight)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The linears' outputs for a 2-D contiguous ``x``, concatenated on the last dim."""
        if _DEQUANTIZED.get() is not None:
            return torch.cat([m.forward(x) for m in self.linears], dim=-1)
        if x.dtype != self.scales.dtype:
            x = x.to(self.scales.dtype)
        if isinstance(self.linears[0], Int8Linear):
            y = int8_product(x, self.weight, self.scales, self.tiles)
        else:
            y = int4_product(x, self.weight, self.scales)
        return y if self.bias is None else y + self.bias


def quantized_precision(model: nn.Module) -> str | None:
    """``"int4"``, ``"int8"`` or ``None``: the weight-only precision of ``model``'s linears."""
    kinds = {type(m) for m in model.modules()}
    return "int4" if Int4Linear in kinds else "int8" if Int8Linear in kinds else None
