"""Dense layers through oneDNN on CPU, inside the engine's own passes only.

On a CPU, small-model decoding is a stream of skinny matrix products (1 to 32 rows against a weight
matrix), and PyTorch's default ``linear`` path is slow there: one row leaves much of the memory
bandwidth unused, and two rows cost two passes. oneDNN's linear on the same weight is faster, and on
weights re-laid out once in its blocked format ("packed") a few rows cost about what one does, for
the output head and for the whole model (figures, measured on 2 cores in fp32 with Qwen2.5-0.5B:
docs/bench/measurements.md#kernels). Packing is what makes speculation pay on a CPU: verifying 8
tokens then costs about one step, as on a GPU. Its price is a second copy of the linear weights (the
model object keeps its own for everyone else), so ``auto`` considers packing only when that copy
fits comfortably in the memory available. Outputs change only by float rounding (checked at
start-up), never by which token the full model verifies.

Those measurements are one machine's. On a second 2-vCPU Xeon (AVX-512 and AMX flags) packed and
plain oneDNN made the one-token step *slower* than stock (same page). So ``auto`` does not assume:
:mod:`swift_engine.kernels.kernel_choice` times the candidates on the machine and keeps the fastest
per pass shape.

The wrappers are installed per ``nn.Linear`` *instance* and are only active inside
:meth:`LinearKernels.active`, which the engine's runner enters for its own passes; the switch is a
context variable, so anything else using the same model object at the same time, in another thread
(``model.generate``, the benchmark's transformers baseline), runs PyTorch's stock path.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal, TypeGuard, cast

import torch
from torch import nn

from swift_engine.attach import attached

logger = logging.getLogger(__name__)

KernelMode = Literal["auto", "packed", "onednn", "torch"]

#: ``auto`` packs when the packed copy takes at most this share of the memory available now.
PACK_MEMORY_SHARE = 0.25

_ATTR = "_swift_linear_kernels"

#: Row count oneDNN tunes the packed layout for: a verification tree (1-32 rows) is the hot path.
_PACK_BATCH = 8


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN's linear operator (x86 and aarch64 CPU wheels do)."""
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` through oneDNN (same layout, no weight copy)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _agrees(weight: torch.Tensor, bias: torch.Tensor | None, onednn_weight: torch.Tensor | None = None) -> bool:
    """oneDNN's linear (on ``onednn_weight``, default ``weight``) matches ``F.linear`` here.

    A broken build or layout must not change outputs; agreement is to float rounding.
    """
    try:
        x = torch.randn(3, weight.shape[1], generator=torch.Generator().manual_seed(0)).to(weight.dtype)
        with torch.inference_mode():
            ref = nn.functional.linear(x, weight, bias).float()
            got = onednn_linear(x, weight if onednn_weight is None else onednn_weight, bias).float()
    except RuntimeError:
        return False
    tol = 1e-3 if weight.dtype == torch.float32 else 5e-2
    return got.shape == ref.shape and bool(((got - ref).abs() <= tol * (1 + ref.abs())).all())


def _probe(dtype: torch.dtype) -> bool:
    g = torch.Generator().manual_seed(0)
    return _agrees(torch.randn(48, 64, generator=g).to(dtype), torch.randn(48, generator=g).to(dtype))


def use_onednn(mode: KernelMode, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether an engine in ``mode`` should run its linears through oneDNN on this device and dtype.

    ``auto`` considers oneDNN on CPU for float32 and bfloat16 (whether it is used is measured, see
    :mod:`~swift_engine.kernels.kernel_choice`; bfloat16 products can run on AMX tiles where the CPU has
    them); ``packed`` and ``onednn`` also for other dtypes; all fall back to PyTorch, with a log
    line, where oneDNN is missing or disagrees with ``F.linear``.
    """
    if mode == "torch" or device.type != "cpu":
        return False
    if mode == "auto" and dtype not in (torch.float32, torch.bfloat16):
        return False
    if not onednn_available() or not _probe(dtype):
        logger.info("oneDNN linear unavailable or inconsistent for %s here; using PyTorch's linear", dtype)
        return False
    return True


def available_memory_bytes() -> int | None:
    """Memory available to new allocations now, ``None`` where unknown.

    Linux's ``MemAvailable`` counts reclaimable page cache (free pages alone are often small on a
    machine that has read model files); elsewhere, free pages from ``sysconf``.
    """
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights a packed copy would duplicate."""
    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules() if _eligible(m))


def should_pack(mode: KernelMode, model: nn.Module) -> bool:
    """``packed``: always; ``auto``: when the copy fits in ``PACK_MEMORY_SHARE`` of the available memory."""
    if mode == "packed":
        return True
    if mode != "auto":
        return False
    free = available_memory_bytes()
    need = linear_weight_bytes(model)
    if free is None or need > PACK_MEMORY_SHARE * free:
        logger.info(
            "not packing the linear weights for oneDNN: a copy needs %.0f MiB, %s MiB available "
            "(cpu_kernels='packed' forces it)",
            need / 2**20,
            "?" if free is None else f"{free / 2**20:.0f}",
        )
        return False
    return True


def _eligible(module: nn.Module) -> TypeGuard[nn.Linear]:
    # exactly nn.Linear with dense weights: quantized or hooked (offloaded) layers keep their forward
    return type(module) is nn.Linear and not hasattr(module, "_hf_hook") and module.weight.layout == torch.strided


class LinearKernels:
    """Switches the ``nn.Linear`` layers of one model to oneDNN while an engine pass runs.

    Which kernel a pass uses is per pass (:meth:`active`, a context variable); the packed weight
    copy is shared by the engines over the model that use it, and freed when the last one lets go
    (:meth:`pack` / :meth:`unpack` count them).
    """

    def __init__(self, model: nn.Module) -> None:
        #: the calling thread's / task's kernel inside :meth:`active`: "onednn", "packed" or None (stock)
        self._mode: contextvars.ContextVar[str | None] = contextvars.ContextVar(
            f"swift_onednn_{id(model):x}", default=None
        )
        self._pack_lock = threading.Lock()
        self._pack_users = 0
        self._modules: list[nn.Linear] = [m for m in model.modules() if _eligible(m)]
        #: id(module) -> its weight in oneDNN's blocked layout (filled by :meth:`pack`)
        self._packed: dict[int, torch.Tensor] = {}
        self.wrapped = len(self._modules)
        for module in self._modules:
            self._wrap(module)

    @property
    def packed(self) -> bool:
        return bool(self._packed)

    @property
    def packed_bytes(self) -> int:
        """Memory the packed copy holds now, beside the model's own weights (0 when not packed)."""
        packed = self._packed  # one read: another thread may free it meanwhile
        return sum(t.numel() * t.element_size() for t in packed.values())

    def current(self) -> str | None:
        """The kernel of the calling context's pass (None: PyTorch's stock path)."""
        return self._mode.get()

    @torch.inference_mode()
    def pack(self) -> bool:
        """Re-lay out every wrapped weight once for oneDNN (a copy; the module keeps its own).

        Returns whether the packed copy is in use (it is not where oneDNN's packed product
        disagrees with ``F.linear``). Each successful call must be paired with :meth:`unpack`.
        Like the profiles (keyed by a fingerprint of the weights taken once), the copy assumes the
        weights are frozen while engines use the model: build a new engine after changing them.
        """
        with self._pack_lock:  # two engines built at once over one model pack it once
            if not self._packed:
                self._pack()
            if self._packed:
                self._pack_users += 1
            return bool(self._packed)

    def unpack(self) -> None:
        """One user fewer of the packed copy; the last one frees it."""
        with self._pack_lock:
            self._pack_users = max(0, self._pack_users - 1)
            if self._pack_users == 0:
                self._packed = {}

    def _pack(self) -> None:
        t0 = time.perf_counter()
        packed: dict[int, torch.Tensor] = {}
        for module in self._modules:
            w = module.weight.detach()
            packed[id(module)] = torch.ops.mkldnn._reorder_linear_weight(w, _PACK_BATCH)
        first = self._modules[0] if self._modules else None
        if first is not None and not _agrees(first.weight.detach(), first.bias, packed[id(first)]):
            logger.warning("oneDNN's packed weights disagree with F.linear here; using them unpacked")
            return
        self._packed = packed
        logger.info("packed %d linear weights for oneDNN in %.1fs", len(packed), time.perf_counter() - t0)

    @classmethod
    def for_model(cls, model: nn.Module) -> "LinearKernels":
        """One set of wrappers per model object, shared by the engines over it."""
        return attached(model, _ATTR, cls)

    def _wrap(self, module: nn.Linear) -> None:
        original = module.forward
        kernels = self

        def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            mode = kernels._mode.get()
            if mode is not None and not args and not kwargs:
                weight = kernels._packed.get(id(module), module.weight) if mode == "packed" else module.weight
                return onednn_linear(x, weight, module.bias)
            return original(x, *args, **kwargs)

        # instance attribute shadows the class method (nn.Module declares forward as a settable callable)
        cast(nn.Module, module).forward = forward

    @contextlib.contextmanager
    def active(self, mode: str = "onednn") -> Iterator[None]:
        """Run the model's linears through oneDNN (``"onednn"`` or ``"packed"``) in this block, this thread only."""
        token = self._mode.set(mode)
        try:
            yield
        finally:
            self._mode.reset(token)
