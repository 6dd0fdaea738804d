"""The tokenizer of a conversion-cache entry, kept in the form that loads fastest.

Why: model-specific tokenizer classes (``Qwen2Tokenizer``, ``GPT2Tokenizer``) rebuild their backend
from the vocabulary and merges, which transformers reads from ``tokenizer.json`` with Python's
``json`` -- 1.1 s of a second process's first call on the agent model's 151k-token vocabulary
(docs/bench/cold-start.md). The generic fast class loads the file natively but is *not* the same
tokenizer (it encodes some texts differently), so it is no substitute. Unpickling the tokenizer
object that ``AutoTokenizer`` built restores exactly its state (the Rust backend round-trips through
its own serialization) in well under half the time.

Trust: the pickle lives inside the entry this project wrote, with the entry's file mode, in the
same cache that holds the native kernels it loads as code; a file that fails to load or is not a
tokenizer is ignored (and rewritten). Its name carries the transformers and tokenizers versions, so
an upgrade never unpickles an older layout.
"""

from __future__ import annotations

import logging
import os
import pathlib
import pickle
import secrets
import stat
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["kept_tokenizer"]


def _kept_path(entry: pathlib.Path) -> pathlib.Path:
    import tokenizers
    import transformers

    return entry / f"tokenizer-transformers{transformers.__version__}-tokenizers{tokenizers.__version__}.pickle"


def kept_tokenizer(entry: pathlib.Path) -> Any:
    """``AutoTokenizer.from_pretrained(entry)``, from the kept copy where there is a usable one."""
    from transformers import AutoTokenizer, PreTrainedTokenizerBase

    path = _kept_path(entry)
    try:
        with path.open("rb") as fh:
            tokenizer = pickle.load(fh)  # noqa: S301 - our own file in our own cache (see the module docstring)
        if isinstance(tokenizer, PreTrainedTokenizerBase):
            return tokenizer
        logger.warning("Ignoring %s: it holds a %s, not a tokenizer", path, type(tokenizer).__name__)
    except FileNotFoundError:
        pass
    except Exception as exc:  # noqa: BLE001 - a bad copy only costs loading the tokenizer files
        logger.warning("Ignoring the kept tokenizer %s (%s: %s)", path, type(exc).__name__, exc)
    tokenizer = AutoTokenizer.from_pretrained(str(entry), local_files_only=True)
    tmp = entry / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        with tmp.open("wb") as fh:
            pickle.dump(tokenizer, fh, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.chmod(stat.S_IMODE((entry / "config.json").stat().st_mode))  # a shared cache keeps one mode
        os.replace(tmp, path)
    except Exception as exc:  # noqa: BLE001 - a read-only cache, an unpicklable tokenizer: load it each time
        logger.debug("Could not keep the tokenizer in %s (%s: %s)", path, type(exc).__name__, exc)
        tmp.unlink(missing_ok=True)
    return tokenizer
