"""``dtype="auto"`` on a CPU: the precision the model's file was made at.

Why follow the file: a 4-bit GGUF *is* a 4-bit model. Decoding it in float32 reads eight times the
bytes the file holds (decoding a small model on a CPU is bound by reading the weights), and the
float32 weights are the file's 4-bit values anyway, de-quantized. So ``"auto"`` runs a 4-bit file
at int4, on the file's own 4-bit grid (GGUF's blocks of 32 weights with a scale and a minimum are
the int4 kernel's groups: :mod:`swift_engine.kernels.quantize`), and a 5-, 6- or 8-bit file at
int8. It never goes below the file's precision (a 6-bit file is not squeezed to 4 bits); that
takes an explicit ``dtype="int4"``. Files below 4 bits (``Q2_K``, ``Q3_K``, the ``IQ1``-``IQ3``
and ternary kinds) run at int4, the lowest precision the engine has, which is above theirs.

Float files (``F32``/``F16``/``BF16`` GGUFs, transformers checkpoints) run at float32: the one
precision whose output is token for token ``transformers``' own, which the tests and the
benchmark's exactness column hold SWIFT to. bfloat16, measured as the alternative, was not faster
a step on the embedded model, so it would lose that for nothing (docs/precision.md#dtypeauto);
``dtype="bfloat16"`` still asks for it.

The file's kind is GGUF's ``general.file_type`` (llama.cpp's ``llama_ftype`` numbering), read from
the key-value header without loading anything. A file without it, or with a kind this table does
not know, runs at float32 and says why.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from swift_engine.loading.model_info import gguf_metadata

__all__ = ["FilePrecision", "gguf_file_precision", "float_file_precision"]

#: llama.cpp's ``llama_ftype``: the file's dominant tensor kind -> (its name, the engine's precision)
_FILE_TYPES: dict[int, tuple[str, str]] = {
    0: ("F32", "float32"),
    1: ("F16", "float32"),
    2: ("Q4_0", "int4"),
    3: ("Q4_1", "int4"),
    4: ("Q4_1 (some F16)", "int4"),
    7: ("Q8_0", "int8"),
    8: ("Q5_0", "int8"),
    9: ("Q5_1", "int8"),
    10: ("Q2_K", "int4"),
    11: ("Q3_K_S", "int4"),
    12: ("Q3_K_M", "int4"),
    13: ("Q3_K_L", "int4"),
    14: ("Q4_K_S", "int4"),
    15: ("Q4_K_M", "int4"),
    16: ("Q5_K_S", "int8"),
    17: ("Q5_K_M", "int8"),
    18: ("Q6_K", "int8"),
    19: ("IQ2_XXS", "int4"),
    20: ("IQ2_XS", "int4"),
    21: ("Q2_K_S", "int4"),
    22: ("IQ3_XS", "int4"),
    23: ("IQ3_XXS", "int4"),
    24: ("IQ1_S", "int4"),
    25: ("IQ4_NL", "int4"),
    26: ("IQ3_S", "int4"),
    27: ("IQ3_M", "int4"),
    28: ("IQ2_S", "int4"),
    29: ("IQ2_M", "int4"),
    30: ("IQ4_XS", "int4"),
    31: ("IQ1_M", "int4"),
    32: ("BF16", "float32"),
    33: ("Q4_0_4_4", "int4"),
    34: ("Q4_0_4_8", "int4"),
    35: ("Q4_0_8_8", "int4"),
    36: ("TQ1_0", "int4"),
    37: ("TQ2_0", "int4"),
}


@dataclass(frozen=True)
class FilePrecision:
    """What ``dtype="auto"`` picked for a model file, and why (shown by ``swift-accel info`` and ``make demo``)."""

    #: the engine's precision: ``"int4"``, ``"int8"`` or ``"float32"``
    precision: str
    #: the file's kind as llama.cpp names it (``"Q4_1"``, ``"Q6_K"``, ``"F16"``), or ``"float checkpoint"``
    file_kind: str

    def describe(self) -> str:
        """One line: ``int4 (dtype='auto' follows the file: Q4_1)``."""
        return f"{self.precision} (dtype='auto' follows the file: {self.file_kind})"


def gguf_file_precision(path: str | os.PathLike[str]) -> FilePrecision:
    """The precision ``dtype="auto"`` runs the GGUF file at ``path`` in (see the module docstring)."""
    stat = os.stat(path)
    return _file_precision(os.fspath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _file_precision(path: str, mtime_ns: int, size: int) -> FilePrecision:
    """Memoised per file version: the adapters fetch their engine from the cache on every call, and
    its key asks this again; reading the header skips the whole vocabulary (tens of ms)."""
    kind = gguf_metadata(path, {"general.file_type"}).get("general.file_type")
    if isinstance(kind, int) and kind in _FILE_TYPES:
        name, precision = _FILE_TYPES[kind]
        return FilePrecision(precision, name)
    what = "no general.file_type" if kind is None else f"unknown general.file_type {kind!r}"
    return FilePrecision("float32", f"GGUF with {what}")


def float_file_precision() -> FilePrecision:
    """A transformers checkpoint (float weights): float32 on a CPU (see the module docstring)."""
    return FilePrecision("float32", "float checkpoint")
