"""One forward pass of the decoder with our cache, our masks and logits only where needed.

The engine calls the decoder stack (``model.get_decoder()``) directly and applies the output head
itself, so that it can (a) compute logits only at the positions it needs (the head is a large
share of a step for small models), (b) restrict drafting to a vocabulary subset later, and (c)
pass explicit position ids and tree masks for every architecture the same way.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, cast

import torch
from torch import nn

from swift_engine.attach import attached
from swift_engine.kernels import row_attention
from swift_engine.kernels.batch_invariance import kept_invariant_rows, largest_invariant_rows
from swift_engine.kernels.cpu_kernels import KernelMode, LinearKernels, onednn_linear, should_pack, use_onednn
from swift_engine.kernels.int8_tiles import pack_int8_tiles, pack_tiles, tiles_bytes, tiles_wanted
from swift_engine.kernels.native_build import kernels_label, native_status
from swift_engine.kernels.quantize import (
    Int8Linear,
    dequantize_available,
    dequantized,
    int8_linear,
    int8_native_fits,
    native_products,
    quantized_precision,
)
from swift_engine.model.fast_forward import FastDecoder
from swift_engine.model.kv_cache import SwiftKVCache
from swift_engine.model.masks import MaskBuilder
from swift_engine.model.sublayer_skip import LayerSkipper, UnsupportedArchitectureError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: model attribute keeping the row-invariance checks done on it:
#: (kernel, precision, swift's kernels used) -> (rows checked, rows held)
_ROWS_ATTR = "_swift_invariant_rows"


class KernelPlan(NamedTuple):
    """Dense kernel per pass shape: ``step`` for one-token passes, ``verify`` for the rest."""

    step: str
    verify: str


class ModelRunner:
    def __init__(self, model: nn.Module, kernels: KernelMode = "auto", row_invariant: bool | None = None) -> None:
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
        # swift's int8 kernel on VNNI reads its own layout: packed before the fast path binds the weights
        if kernels != "torch" and quantized_precision(model) in ("int4", "int8") and tiles_wanted():
            pack_int8_tiles(model)
        #: memory of the int8 weights' second copy that swift's VNNI kernel reads (int8_tiles.py; 0: none)
        self.tiles_bytes = tiles_bytes(model)
        #: the decoder stack without the module plumbing, bitwise the same (None: the modules run;
        #: other architectures, or hooked modules; see fast_forward.py)
        self.fast: FastDecoder | None = FastDecoder.for_model(model, self.decoder, self.skipper)
        params = inspect.signature(self.decoder.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self.softcap = getattr(self.config, "final_logit_softcapping", None)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.masks = MaskBuilder(self.config, self.dtype, self.device)
        self.num_layers = self.skipper.num_layers
        self.vocab_size = int(self.lm_head.out_features)
        self.hidden_size = int(self.lm_head.in_features)
        #: what the dense layers compute in: ``float32``, ``bfloat16``, ``int8``/``int4`` (weights; bf16 activations)
        self.precision = quantized_precision(model) or str(self.dtype).removeprefix("torch.")
        # Below float32 one ulp flips near-ties, so a token's verification row must be bitwise its
        # one-row step (row_attention.py, batch_invariance.py); in float32 it costs more than it
        # fixes (a flipped argmax is rare there), so ``None`` turns it on only below float32.
        self.row_invariant = self.precision != "float32" if row_invariant is None else row_invariant
        if self.row_invariant:
            row_attention.install(model)
        #: most rows a verification pass may have (None: not measured yet; see :meth:`measure_rows`)
        self.max_rows: int | None = None if self.row_invariant else 0
        self.context_length = int(getattr(self.config, "max_position_embeddings", 0) or 0) or None
        # Dense kernels of the engine's passes (see cpu_kernels.py): one for one-token steps (plain
        # decoding, drafts) and one for multi-token passes (verification, prefill). ``auto`` starts
        # on PyTorch's own and is decided by measurement on this machine (kernel_choice.py).
        self.requested_kernels = kernels
        # int8/int4 layers have their own kernels (quantize.py): nothing for oneDNN to wrap
        onednn = quantized_precision(model) is None and use_onednn(kernels, self.device, self.dtype)
        self._kernels = LinearKernels.for_model(model) if onednn else None
        #: whether this runner's passes use swift's kernels (native_build.py; AMX or AVX-512): weight-only
        #: int4/int8 products and row-by-row attention, nearly flat in the rows and row-invariant by construction,
        #: one path for every pass; never with ``cpu_kernels="torch"``. Not at bfloat16: its dense
        #: products are PyTorch's, row-invariant only as far as measured, and with the native attention's
        #: bits a tiny Qwen2 met a 5-row pass whose dense products after attention gave one row other
        #: bits than its step; the Python row path keeps the bits that were checked there.
        self.native_kernels = self.precision in ("int4", "int8") and kernels != "torch" and native_status().loaded
        self._prompt_by_rows: bool | None = None  # see _native_prompt
        #: the kernels ``auto`` chooses among, here
        self.candidates: list[str] = ["torch"]
        self.plan = KernelPlan("torch", "torch")
        self._packed_ref: weakref.finalize | None = None
        # Prompt blocks (prefill: many rows, no tree) of a weight-only model may multiply by weights
        # dequantized per call instead (quantize.dequantized); ``auto`` measures which is faster
        #: the prompt-block kernels ``auto`` chooses among: ``torch`` (the pass's own) or ``dequantized``
        self.prompt_candidates: list[str] = ["torch"]
        if kernels == "auto" and (self.precision == "int8" or (self.precision == "int4" and dequantize_available())):
            self.prompt_candidates.append("dequantized")
        #: the kernel of prompt blocks of at least :attr:`prompt_min_rows` tokens (below: the pass's own)
        self.prompt_kernel = "torch"
        self.prompt_min_rows = 2
        if self._kernels is not None:
            if kernels == "auto":
                self.candidates = ["torch", "onednn"] + (["packed"] if should_pack("auto", model) else [])
            else:
                self.set_plan(KernelPlan(kernels, kernels))

    @property
    def needs_kernel_choice(self) -> bool:
        """``auto`` with more than one candidate: the plan is measured before the first call."""
        return self.requested_kernels == "auto" and (len(self.candidates) > 1 or len(self.prompt_candidates) > 1)

    def set_prompt_kernel(self, kernel: str, min_rows: int = 2) -> None:
        """Run prompt blocks of at least ``min_rows`` tokens with ``kernel`` (see :attr:`prompt_candidates`)."""
        if kernel not in self.prompt_candidates:
            raise ValueError(f"prompt-block kernel {kernel!r} is not one of {self.prompt_candidates}")
        self.prompt_kernel, self.prompt_min_rows = kernel, max(2, int(min_rows))

    def set_plan(self, plan: KernelPlan) -> None:
        """Use ``plan`` for this runner's passes (holding the model's packed weights while it needs them)."""
        if self.row_invariant and plan.step != plan.verify:
            raise ValueError(f"row-invariant passes need one kernel for every shape, got {plan}")
        if self.row_invariant:
            self.max_rows = None  # measured again for these kernels
        kernels = self._kernels
        if kernels is None:
            self.plan = KernelPlan("torch", "torch")
            return
        if "packed" in plan and "packed" not in self.plan:
            if kernels.pack():
                # let go of the copy when this runner is dropped, too (engines come and go over one model)
                self._packed_ref = weakref.finalize(self, kernels.unpack)
            else:
                plan = KernelPlan(*("onednn" if k == "packed" else k for k in plan))  # packing disagreed here
        if "packed" in self.plan and "packed" not in plan and self._packed_ref is not None:
            self._packed_ref()  # unpacks once
            self._packed_ref = None
        self.plan = plan

    @property
    def kernels(self) -> str:
        """The dense kernels of the engine's passes: ``torch``, ``onednn``, ``packed``, or ``<step>+<verify>``.

        With ``, swift's kernels (AMX)`` (or ``(AVX-512 BF16)``) where they are used (:attr:`native_kernels`), and
        ``, prompt blocks dequantized from N rows`` when prompt blocks use their own kernel.
        """
        step, verify = self.plan
        name = step if step == verify else f"{step}+{verify}"
        if self.native_kernels:
            name += f", {kernels_label()}"
        if self.prompt_kernel != "torch":
            name += f", prompt blocks {self.prompt_kernel} from {self.prompt_min_rows} rows"
        return name

    def kernel_for(self, rows: int) -> str:
        return self.plan.step if rows == 1 else self.plan.verify

    def _linears(self, rows: int) -> contextlib.AbstractContextManager[None]:
        """This runner's kernel for a pass of ``rows`` tokens, inside this block (stock outside it)."""
        if self.native_kernels:  # weight-only layers: swift's products and row attention, no dense kernel to wrap
            return native_products()
        mode = self.kernel_for(rows)
        if self._kernels is None or mode == "torch":
            return contextlib.nullcontext()
        return self._kernels.active(mode)

    @contextlib.contextmanager
    def trying(self, kernel: str) -> Iterator[None]:
        """Run this block's passes with ``kernel`` for every shape (measurement; packed weights must be held)."""
        saved = self.plan
        self.plan = KernelPlan(kernel, kernel)
        try:
            yield
        finally:
            self.plan = saved

    @contextlib.contextmanager
    def trying_prompt(self, kernel: str) -> Iterator[None]:
        """Run this block's prompt blocks (from two rows) with ``kernel`` (measurement)."""
        saved = self.prompt_kernel, self.prompt_min_rows
        self.set_prompt_kernel(kernel)
        try:
            yield
        finally:
            self.prompt_kernel, self.prompt_min_rows = saved

    def hold_packed(self) -> bool:
        """Take a reference to the packed weights (for measuring them); pair with :meth:`release_packed`."""
        return self._kernels is not None and self._kernels.pack()

    def close(self) -> None:
        """Drop this runner's packed weight copies now rather than when it is collected."""
        if self._packed_ref is not None:
            self._packed_ref()
            self._packed_ref = None
        self.plan = KernelPlan("torch", "torch")

    @property
    def packed_bytes(self) -> int:
        """Memory of the weight copies this model holds now for the kernels (shared by its engines; 0: none):
        the dense layers' packed copy, or the int8 layers' tiles (int8_tiles.py)."""
        return (self._kernels.packed_bytes if self._kernels is not None else 0) + self.tiles_bytes

    def release_packed(self) -> None:
        if self._kernels is not None:
            self._kernels.unpack()

    def measure_rows(self, max_rows: int, kept: tuple[Path, str] | None = None) -> int:
        """Cap verification passes at the row count this machine's dense kernels keep row-invariant.

        0 means no cap (``row_invariant`` off). Measured at a runner's first generation, once per
        model, kernel and precision: the result is kept on the model (engines over one model share
        it; the check is not free: docs/bench/measurements.md#model), and measured again only for
        more rows than it covered. ``kept`` (a file, and what it depends on in words: see
        :func:`~swift_engine.kernels.kernel_choice.rows_file`) keeps it for later processes.
        """
        if self.max_rows is None:
            memo: dict[tuple[str, str, bool], tuple[int, int]] = attached(self.model, _ROWS_ATTR, lambda _: {})
            key = (self.plan.verify, self.precision, self.native_kernels)
            found = memo.get(key)
            if found is not None and found[0] >= max_rows:
                self.max_rows = min(found[1], max_rows)
            else:

                def check(rows: int) -> int:
                    with self._linears(2):  # the plan's kernel (one for every shape when row-invariant)
                        return largest_invariant_rows(self.model, self.lm_head, rows, self.dtype)

                path, machine = kept if kept is not None else (None, "")
                self.max_rows = kept_invariant_rows(path, max_rows, machine, check)
                memo[key] = (max_rows, self.max_rows)
        return self.max_rows

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """A dense product with this runner's kernel choice (for heads over vocabulary subsets)."""
        if self._kernels is not None and self.kernel_for(x.shape[0] if x.dim() > 1 else 1) != "torch":
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

        def mask() -> torch.Tensor | dict[str, torch.Tensor]:
            return self.masks.build(past, positions, ancestors, past_visible)

        # one-token steps and verification trees attend row by row when exactness needs it; the search's
        # re-fed windows are computed the same way in every mode anyway. Prompt blocks too where swift's
        # kernels take the whole pass (native/decoder_layers.cpp: a third less time than the Python
        # layers over PyTorch's attention, docs/bench/measurements.md#prompt-blocks); elsewhere a
        # row-by-row prompt would only be slower.
        by_rows = (
            self.row_invariant
            and past_visible is None
            and (ancestors is not None or input_ids.numel() == 1 or self._native_prompt())
        )
        # a prompt block: no tree, no hidden cache entries, enough rows for the prompt kernel to pay
        prompt = (
            self.prompt_kernel == "dequantized"
            and ancestors is None
            and past_visible is None
            and input_ids.numel() >= self.prompt_min_rows
        )
        with (
            self._linears(input_ids.numel()),
            row_attention.rows() if by_rows else contextlib.nullcontext(),
            dequantized() if prompt else contextlib.nullcontext(),
        ):
            if self.fast is not None and self.fast.usable():
                return self.fast(input_ids, positions, mask, cache)
            out = self.decoder(
                input_ids=input_ids[None],
                position_ids=positions[None],
                attention_mask=mask(),
                use_cache=True,
                **{self._cache_kw: cache},
            )
        return out.last_hidden_state[0]

    def _native_prompt(self) -> bool:
        """Whether prompt blocks attend row by row: where swift's kernels take a whole pass of this
        model (products, attention and layers). Decided once, at the first pass, so that a prompt's bits
        never depend on the path a pass takes later (hooks registered: the modules, the same attention)."""
        if self._prompt_by_rows is None:
            fast = self.fast
            self._prompt_by_rows = bool(
                self.native_kernels and fast is not None and fast.scripted is not None and fast.scripted.batchable()
            )
        return self._prompt_by_rows

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor, vocab: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 logits of ``hidden`` over the whole vocabulary or a subset of token ids."""
        if vocab is None:
            with self._linears(hidden.shape[0] if hidden.dim() > 1 else 1):
                head = self.lm_head
                out = head.float_outputs(hidden) if isinstance(head, Int8Linear) else head(hidden)
        else:
            out = self.head_subset(vocab)(hidden)
        return self.finish_logits(out)

    def head_subset(self, vocab: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The output head restricted to token ids ``vocab`` (raw outputs; see :meth:`finish_logits`)."""
        head = self.lm_head
        if isinstance(head, Int8Linear):
            qweight, scales, qbias = head.rows(vocab)
            # in swift's VNNI layout once here, not for every call (int8_tiles.py)
            tiles = pack_tiles(qweight) if head.tiles is not None and int8_native_fits(qweight) else None
            return lambda h: int8_linear(h, qweight, scales, qbias, tiles)
        w = head.weight.index_select(0, vocab)
        b = getattr(head, "bias", None)
        b = None if b is None else b.index_select(0, vocab)
        return lambda h: self.linear(h, w, b)

    def finish_logits(self, out: torch.Tensor) -> torch.Tensor:
        """Head outputs as the float32 logits the engine compares (with the model's final softcap)."""
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
