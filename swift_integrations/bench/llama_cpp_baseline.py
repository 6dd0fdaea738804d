"""llama.cpp as a benchmark baseline: the same GGUF file and the same prompt tokens, in its own Python.

What a CPU user runs instead of this package is llama.cpp (or Ollama over it), so the benchmark
reports it beside ``transformers``. llama-cpp-python is never a dependency of this package and
never runs in CI: it lives in a virtual environment of its own (``python -m venv ~/.venvs/llama-cpp``,
then that environment's ``pip install llama-cpp-python``, which compiles llama.cpp: minutes), and
the benchmark talks to a small worker script run by that environment's Python over JSON lines (one
request, one reply), so neither environment imports the other's packages.

The worker decodes greedily itself (``llama_eval`` of the prompt, then argmax and one ``eval`` per
token) and times the prefill and the decode separately inside the process; the reply carries the
token ids, so the benchmark counts the same tokens it counts for every other method. llama.cpp
runs at the file's own precision (e.g. Q4_1), so its tokens may differ from the fp32 reference:
that is reported, not treated as an exactness failure.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: how to get llama-cpp-python, for the messages (an environment of its own: never this package's)
INSTALL_HINT = (
    "make one with `python -m venv ~/.venvs/llama-cpp && ~/.venvs/llama-cpp/bin/pip install llama-cpp-python` "
    "(pip compiles llama.cpp: minutes)"
)

logger = logging.getLogger(__name__)

__all__ = ["LlamaCppBaseline", "LlamaCppReply", "baseline_for_model", "default_llama_cpp_python"]

#: Where ``get-llama-cpp.sh`` puts its environment by default, and the variable that overrides it.
DEFAULT_VENV = Path("~/.cache/swift-llama-cpp/venv").expanduser()
ENV_PYTHON = "SWIFT_LLAMA_CPP_PYTHON"

_WORKER = r"""
import json, resource, sys, time
import numpy as np
import llama_cpp

cfg = json.loads(sys.stdin.readline())
llm = llama_cpp.Llama(
    model_path=cfg["gguf"], n_ctx=cfg["n_ctx"], n_threads=cfg["threads"], n_threads_batch=cfg["threads"],
    n_batch=512, logits_all=False, verbose=False,
)
n_vocab = llm.n_vocab()
print(json.dumps({"ready": True, "version": llama_cpp.__version__}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    ids, budget, eos = req["ids"], req["max_new_tokens"], set(req["eos"])
    reused = 0
    if req.get("reuse_prefix"):
        # what llama.cpp's server does with cache_prompt: keep the KV of the previous prompt's common
        # prefix (always leaving one token to evaluate); eval() drops the entries after n_tokens
        for a, b in zip(llm._input_ids[: llm.n_tokens].tolist(), ids[:-1]):
            if a != b:
                break
            reused += 1
        llm.n_tokens = reused
    else:
        llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids[reused:])
    t1 = time.perf_counter()
    out = []
    while True:
        # the last position's logits (Llama.scores is only filled with logits_all=True)
        tok = int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))))
        out.append(tok)
        if tok in eos or len(out) >= budget:
            break
        llm.eval([tok])
    t2 = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    reply = {"tokens": out, "prefill_s": t1 - t0, "decode_s": t2 - t1, "max_rss_bytes": rss, "reused": reused}
    print(json.dumps(reply), flush=True)
"""


def default_llama_cpp_python() -> str | None:
    """``$SWIFT_LLAMA_CPP_PYTHON``, else the environment ``get-llama-cpp.sh`` builds by default, if present."""
    override = os.environ.get(ENV_PYTHON)
    if override:
        return override
    python = DEFAULT_VENV / "bin" / "python"
    return str(python) if python.exists() else None


@dataclass
class LlamaCppReply:
    tokens: list[int]
    prefill_s: float
    decode_s: float
    max_rss_bytes: int | None = None
    #: prompt tokens whose KV was kept from the previous request (``reuse_prefix=True``)
    reused_tokens: int = 0

    @property
    def wall_s(self) -> float:
        return self.prefill_s + self.decode_s


class LlamaCppBaseline:
    """A llama.cpp worker process over one GGUF file (start it once; call :meth:`generate` per request)."""

    def __init__(self, python: str, gguf: str | os.PathLike[str], *, threads: int, n_ctx: int = 4096) -> None:
        self.python = python
        self.gguf = str(Path(gguf).expanduser().resolve())
        self.threads = threads
        if not Path(self.gguf).is_file():
            raise FileNotFoundError(f"llama.cpp baseline: no GGUF file at {self.gguf}")
        try:
            self._proc = subprocess.Popen(
                [python, "-c", _WORKER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
        except OSError as exc:
            raise RuntimeError(
                f"llama.cpp baseline: cannot run {python!r} ({exc}); {INSTALL_HINT}, and pass its python with "
                f"--llama-cpp-python or ${ENV_PYTHON}"
            ) from exc
        hello = self._ask({"gguf": self.gguf, "n_ctx": n_ctx, "threads": threads})
        self.version = str(hello.get("version", "?"))
        logger.info("llama.cpp baseline: llama-cpp-python %s on %s, %d threads", self.version, self.gguf, threads)

    def _ask(self, message: dict[str, Any]) -> dict[str, Any]:
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(message) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            err = proc.stderr.read() if proc.stderr is not None and proc.poll() is not None else ""
            tail = " | ".join(err.strip().splitlines()[-3:]) or f"exit code {proc.poll()}"
            raise RuntimeError(f"llama.cpp baseline worker failed: {tail}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def generate(
        self, ids: list[int], max_new_tokens: int, eos: list[int], *, reuse_prefix: bool = False
    ) -> LlamaCppReply:
        """Greedy decoding of ``ids`` (the same token ids the other methods get), timed inside the worker.

        ``reuse_prefix``: keep the KV of the prefix shared with the previous request, as llama.cpp's
        server does with ``cache_prompt`` (the pipeline benchmark's setting); otherwise start clean.
        """
        request = {"ids": list(ids), "max_new_tokens": max_new_tokens, "eos": list(eos), "reuse_prefix": reuse_prefix}
        reply = self._ask(request)
        return LlamaCppReply(
            tokens=[int(t) for t in reply["tokens"]],
            prefill_s=float(reply["prefill_s"]),
            decode_s=float(reply["decode_s"]),
            max_rss_bytes=reply.get("max_rss_bytes"),
            reused_tokens=int(reply.get("reused", 0)),
        )

    def close(self) -> None:
        if self._proc.poll() is None:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()

    def __enter__(self) -> LlamaCppBaseline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def baseline_for_model(python: str | None, gguf: str | None, model: str | None) -> LlamaCppBaseline:
    """The llama.cpp worker for ``--baseline llama.cpp``, on the GGUF the engine's weights came from."""
    import torch

    from swift_engine.loading.catalog import embedded_model_path

    python = python or default_llama_cpp_python()
    if python is None:
        raise RuntimeError(
            f"--baseline llama.cpp needs llama-cpp-python in its own environment: {INSTALL_HINT}, and pass that "
            "environment's python with --llama-cpp-python (or $SWIFT_LLAMA_CPP_PYTHON)"
        )
    if gguf is None:
        if model is None:
            gguf = str(embedded_model_path())
        elif model.endswith(".gguf"):
            gguf = model
        else:
            raise RuntimeError("--baseline llama.cpp: pass the model's GGUF file with --gguf")
    return LlamaCppBaseline(python, gguf, threads=torch.get_num_threads())
