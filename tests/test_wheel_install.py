"""Installed as users install it: the wheel, built from this checkout, in a clean virtual environment.

What a user does (README, Install): torch's CPU build first, then ``pip install "swift-accel[langchain]"``,
then a chain from a directory of their own. Here the wheel is built from the checkout, the environment
has nothing else in it (no ``--system-site-packages``, no editable install), torch is the same release
as the one running these tests (so pip takes it from its cache, its find-links or the CPU index --
never the multi-GB CUDA build), and ``pip check`` must be clean. The embedded model comes from the
user's models folder as on any second use; the first call of a fresh environment is what runs.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: pathlib.Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    said = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, f"{' '.join(cmd)} failed ({done.returncode}):\n{said}"
    return done.stdout


def test_the_wheel_installs_into_a_clean_venv_and_a_chain_answers(tmp_path: pathlib.Path) -> None:
    dist, venv, home, source = tmp_path / "dist", tmp_path / "venv", tmp_path / "elsewhere", tmp_path / "source"
    home.mkdir()
    # the build writes build/ and *.egg-info beside its sources: a copy keeps the checkout as it is
    for package in ("swift_engine", "swift_integrations"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    # --no-build-isolation: the build backend (setuptools) of this environment, no download of it
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist)]
    _run([*build, str(source)], home)
    (wheel,) = dist.glob("swift_accel-*.whl")
    _run([sys.executable, "-m", "venv", str(venv)], home)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check"]
    _run([*pip, f"torch=={torch.__version__}"], home)  # the README's first step: torch's CPU build
    _run([*pip, f"{wheel}[langchain]"], home)
    _run([python, "-m", "pip", "check"], home)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["SWIFT_OFFLINE"] = "1"  # the model is in the user's models folder: nothing may be downloaded
    script = (
        "import swift_integrations, sys\n"
        "from swift_integrations import SwiftChatModel\n"
        "reply = SwiftChatModel(max_tokens=8).invoke('Hi')\n"
        "sys.stdout.write(swift_integrations.__file__ + '\\n' + repr(reply.content) + '\\n')\n"
        "sys.stdout.write(reply.response_metadata['model_provider'] + '\\n')\n"
    )
    where, content, provider = _run([python, "-c", script], home, env).splitlines()
    assert pathlib.Path(where).resolve().is_relative_to(venv.resolve())  # the installed package, not the checkout
    assert eval(content).strip() and provider == "swift"  # noqa: S307 - our own repr() of a string


def test_the_development_environment_has_no_broken_requirements() -> None:
    """``make setup``'s environment: nothing installed whose dependencies are missing (``pip check``)."""
    _run([sys.executable, "-m", "pip", "check"], ROOT)
