"""The int8 weights in the layout swift's AVX-512 VNNI kernel reads (``native/int8_vnni.cpp``).

Why: on a CPU with VNNI and no AMX, swift's int8 product multiplies 16 outputs by 4 inputs per
instruction, so a group of 32 inputs adds up as integers and costs one conversion per 16 outputs;
that needs the weights as tiles of 16 outputs (``[N / 16, K / 4, 16, 4]`` bytes), not as rows. Read
that way, a pass of 8-16 rows costs about 1.1-1.8 one-row passes, where the rows' layout cost 1.8-3.0
(docs/bench/measurements.md#int8-tiles). Given ``[N, K]`` rows, the kernel packs them for the call;
this module packs each int8 layer once, beside its ``qweight`` (:attr:`~.quantize.Int8Linear.tiles`).

What it costs: a second copy of the int8 weights (an int4 model's head: 28 MB for SmolLM2, 136 MB
for Qwen2.5-Coder-0.5B; an int8 model's every layer), kept with the model, because PyTorch's kernel
(``cpu_kernels="torch"``, engines sharing the model, prompt blocks on dequantized weights) reads the
rows. Packing is a copy: about 40 ms for Qwen's 136 MB head on 2 cores.

Bits: the kernel's result is the same from the rows or the tiles (it packs the rows the same way).
"""

from __future__ import annotations

import logging
from typing import cast

import torch
from torch import nn

from swift_engine.kernels.native_build import native_status
from swift_engine.kernels.quantize import QKV, Int8Linear, int8_native_fits, spanning_view

logger = logging.getLogger(__name__)

__all__ = ["pack_int8_tiles", "pack_tiles", "tiles_bytes", "tiles_wanted"]


def tiles_wanted() -> bool:
    """Whether swift's int8 kernel reads tiles in this process (loaded, AVX-512 VNNI, no AMX)."""
    return native_status().loaded and bool(torch.ops.swift_kernels.uses_vnni())


def pack_tiles(qweight: torch.Tensor) -> torch.Tensor:
    """``qweight`` (``[N, K]`` int8, N % 16 == 0, K % 32 == 0) in the VNNI kernel's layout."""
    return cast(torch.Tensor, torch.ops.swift_kernels.int8_pack(qweight))


@torch.no_grad()
def pack_int8_tiles(model: nn.Module) -> int:
    """Give every int8 layer of ``model`` that swift's kernel takes its :attr:`~.quantize.Int8Linear.tiles`;
    the bytes added (0 where they are there already).

    q/k/v weights stacked in one buffer (``quantize.restack_siblings``) get views of one packed buffer,
    so that their fused product (``quantize.FusedProduct``) reads one tensor too. Call before building
    what binds the layers' operands (``FastDecoder``, the scripted step).
    """
    added = 0
    done: set[int] = set()
    for parent in model.modules():
        linears = [getattr(parent, name, None) for name in QKV]
        if not all(type(m) is Int8Linear for m in linears):
            continue
        same = cast(list[Int8Linear], linears)
        whole = spanning_view([m.qweight for m in same])
        if whole is None or not int8_native_fits(whole) or any(m.out_features % 16 for m in same):
            continue
        if (
            all(m.tiles is not None for m in same)
            and spanning_view([cast(torch.Tensor, m.tiles) for m in same]) is not None
        ):
            done.update(id(m) for m in same)
            continue
        tiles = pack_tiles(whole.contiguous())
        start = 0
        for m in same:
            m.tiles = tiles[start : start + m.out_features // 16]
            start += m.out_features // 16
            done.add(id(m))
        added += tiles.numel()
    for module in model.modules():
        if type(module) is not Int8Linear or id(module) in done or module.tiles is not None:
            continue
        if int8_native_fits(module.qweight) and module.qweight.is_contiguous():
            module.tiles = pack_tiles(module.qweight)
            added += module.tiles.numel()
    if added:
        logger.info("int8 weights packed for swift's VNNI kernel: %.0f MB", added / 1e6)
    return added


def tiles_bytes(model: nn.Module) -> int:
    """Memory of ``model``'s int8 tiles (each packed buffer once; 0: none)."""
    storages: dict[int, int] = {}
    for module in model.modules():
        tiles = module.tiles if type(module) is Int8Linear else None
        if tiles is not None:
            storage = tiles.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())
