"""Model loading for the SWIFT engine: the embedded default model, catalog short names, local
folders, GGUF files and Hugging Face hub ids, each read by the module for that kind of source.

* :mod:`~swift_engine.loading.load` — :func:`load_model`, the entry point: what ``model_id`` names,
  and the common tail (device, dtype, pad token, int8/int4 weight-only quantization).
* :mod:`~swift_engine.loading.catalog` — short names of installable models (``pull``) and the
  embedded model's file (:func:`embedded_model_path`).
* :mod:`~swift_engine.loading.gguf` — GGUF files, de-quantized once into a per-user conversion cache.
* :mod:`~swift_engine.loading.local` — transformers checkpoint folders.
* :mod:`~swift_engine.loading.hub` — hub ids, the only sources that may download
  (:class:`ModelNotAvailableError` when one is not cached and cannot be).
* :mod:`~swift_engine.loading.precision` — ``device=`` / ``dtype=`` resolution.
* :mod:`~swift_engine.loading.file_precision` — what ``dtype="auto"`` picks on a CPU: the file's own
  precision (a 4-bit GGUF at int4, a 5- to 8-bit one at int8, float files at float32).
* :mod:`~swift_engine.loading.fingerprint` — :func:`model_fingerprint`, a name-independent identity
  of a model's weights that layer-skip plans are keyed on.
* :mod:`~swift_engine.loading.model_info` — context length and chat template, read without loading.

Names are imported lazily, as in :mod:`swift_engine`: the catalog and the model-info reader are
light, and importing them must not pay for torch and transformers. Lookups go to the defining
module each time, so a test that patches ``swift_engine.loading.load.load_model`` is seen here too.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "load_model": "load",
    "auto_precision": "load",
    "is_auto_dtype": "load",
    "FilePrecision": "file_precision",
    "LoadedModel": "load",
    "ModelNotAvailableError": "hub",
    "hub_download_expected": "hub",
    "model_fingerprint": "fingerprint",
    "embedded_model_path": "catalog",
    "EMBEDDED_MODEL_NAME": "catalog",
    "resolve_device": "precision",
    "resolve_dtype": "precision",
    "precision_name": "precision",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from swift_engine.loading.catalog import EMBEDDED_MODEL_NAME, embedded_model_path
    from swift_engine.loading.file_precision import FilePrecision
    from swift_engine.loading.fingerprint import model_fingerprint
    from swift_engine.loading.hub import ModelNotAvailableError, hub_download_expected
    from swift_engine.loading.load import LoadedModel, auto_precision, is_auto_dtype, load_model
    from swift_engine.loading.precision import precision_name, resolve_device, resolve_dtype


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
