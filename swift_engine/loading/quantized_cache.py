"""int4/int8 weights kept beside a GGUF file's conversion, so later processes skip the float load and the quantizing.

Why: a weight-only model used to be rebuilt in every process -- the conversion cache's float
checkpoint read and cast (Qwen2.5-Coder-0.5B: 2 GB of float32), then every linear quantized and
packed (1.5 s on 2 cores) -- so a second process still took ~9 s to its first token
(docs/bench/cold-start.md). Those weights depend only on the GGUF file, the precision, this module's
format and PyTorch's packing, so they are computed once per machine: the first load writes them into
the file's conversion-cache entry (``weights-int4-torch<version>-v<format>.safetensors``, ~95 MB for
the embedded model), and later loads build the model from its config with no float weights at all,
then load the quantized tensors into it.

Exactness: the tensors saved are the quantized model's own, so a model loaded from here is bitwise
the one quantized in memory -- the same parameters, in the same order, hence the same
:func:`~swift_engine.loading.fingerprint.model_fingerprint` and the same profiles
(``tests/test_quantized_cache.py``). Validated on read: the file's metadata must name this GGUF's
digest, the precision, the PyTorch version and the format, and every tensor must fit the model's
shape; anything else is ignored (one log line) and the model is quantized again. A cache that can't
be written costs the next process a quantization, never this one its model.
"""

from __future__ import annotations

import logging
import os
import pathlib
import stat
from typing import Any

import torch
from torch import nn

from swift_engine.kernels.quantize import Int4Linear, Int8Linear, quantize, restack_siblings, untie_head
from swift_engine.loading.own_classes import materialize_buffers, skeleton
from swift_engine.loading.tokenizer_cache import kept_tokenizer

__all__ = ["load_quantized", "save_quantized"]

logger = logging.getLogger(__name__)

#: bumped whenever what is saved, or how a model is rebuilt from it, changes
QUANT_FORMAT = 1


def weights_file(entry: pathlib.Path, precision: str) -> pathlib.Path:
    """The quantized weights' file inside a conversion-cache ``entry``."""
    return entry / f"weights-{precision}-torch{torch.__version__.split('+')[0]}-v{QUANT_FORMAT}.safetensors"


def _metadata(digest: str, precision: str) -> dict[str, str]:
    return {"gguf_sha256": digest, "precision": precision, "torch": torch.__version__, "format": str(QUANT_FORMAT)}


def save_quantized(model: nn.Module, entry: pathlib.Path, digest: str, precision: str) -> None:
    """Write ``model``'s quantized tensors into ``entry`` (atomically); a failure is one warning."""
    from safetensors.torch import save_file

    target = weights_file(entry, precision)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        # own copies: stacked q/k/v share one buffer, which safetensors refuses to write as is
        tensors = {name: t.detach().contiguous().clone() for name, t in model.state_dict().items()}
        save_file(tensors, str(tmp), metadata=_metadata(digest, precision))
        # safetensors writes 0600; a cache shared through SWIFT_CACHE_DIR needs the entry's own mode
        tmp.chmod(stat.S_IMODE((entry / "config.json").stat().st_mode))
        os.replace(tmp, target)
        logger.info("Kept the %s weights in %s: later loads skip quantizing", precision, target)
    except Exception as exc:  # noqa: BLE001 - any failure only costs a later process a quantization
        logger.warning("Could not keep the %s weights in %s (%s: %s)", precision, entry, type(exc).__name__, exc)
        tmp.unlink(missing_ok=True)


def load_quantized(
    entry: pathlib.Path, digest: str, precision: str, attn_implementation: str
) -> tuple[Any, Any] | None:
    """The model and tokenizer of ``entry`` at ``precision`` from its kept weights; None where there are none
    (or they do not match: then the caller quantizes again, and overwrites them)."""
    path = weights_file(entry, precision)
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as handle:
            if handle.metadata() != _metadata(digest, precision):
                raise ValueError(f"its metadata {handle.metadata()} is not this file's")
        # own, aligned memory: safetensors' tensors sit at the file's offsets (8-byte aligned), and
        # PyTorch's weight-only kernels read their operands with aligned vector loads (a crash, not an error)
        tensors = {name: t.clone() for name, t in load_file(str(path)).items()}
        model = _skeleton(entry, tensors, attn_implementation)
        model.load_state_dict(tensors, strict=True, assign=True)
        materialize_buffers(model)
        restack_siblings(model)
        model.eval()
    except Exception as exc:  # noqa: BLE001 - a bad file means: quantize again
        logger.warning(
            "Ignoring the kept %s weights %s (%s: %s); quantizing again", precision, path, type(exc).__name__, exc
        )
        return None
    tokenizer = kept_tokenizer(entry)
    logger.info("Loaded the %s weights kept in %s", precision, path)
    return model, tokenizer


def _skeleton(entry: pathlib.Path, tensors: dict[str, torch.Tensor], attn_implementation: str) -> nn.Module:
    """The model of ``entry``'s config with no float weights read, each linear replaced by the
    :class:`Int4Linear` or :class:`Int8Linear` of its kept tensors (``load_state_dict`` then checks every
    name and shape, and puts the rest -- embedding, norms -- in place). The engine's own classes where they
    apply (own_classes.py: no transformers modeling import), else transformers'."""
    model: nn.Module | None = skeleton(entry, attn_implementation, untied_head=True)
    if model is None:
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.initialization import no_init_weights

        config = AutoConfig.from_pretrained(str(entry), local_files_only=True)
        untie_head(config)
        with no_init_weights(), torch.device("meta"):  # no memory for weights about to be replaced
            model = AutoModelForCausalLM.from_config(
                config, dtype=torch.bfloat16, attn_implementation=attn_implementation
            )
    for module_name, module in list(model.named_modules()):
        for name, child in list(module.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            prefix = f"{module_name}.{name}." if module_name else f"{name}."
            kept = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
            if "scales_zeros" in kept:
                setattr(module, name, Int4Linear.shell(child, kept))
            elif "scales" in kept:
                setattr(module, name, Int8Linear.shell(child, kept))
            else:
                raise ValueError(f"no quantized weights for {prefix.rstrip('.')}")
    return model


def quantize_and_keep(model: nn.Module, entry: pathlib.Path | None, digest: str, precision: str) -> None:
    """Quantize ``model`` in place, then keep its weights in ``entry`` (when the conversion is cached)."""
    quantize(model, precision)
    if entry is not None:
        save_quantized(model, entry, digest, precision)
