"""Which dense kernels the engine's passes use on this machine: measured, not assumed.

The kernel that wins depends on the CPU, its flags, the thread count, the dtype, the model's shapes
and the PyTorch build. Measured: on one 2-vCPU Xeon oneDNN's packed weights made a one-token step
clearly faster than PyTorch's stock linear; on another (same flags list, AMX) they made it *slower*
than stock, and the plain loop lost to ``transformers`` (figures:
docs/bench/measurements.md#kernels). So ``cpu_kernels="auto"`` times every candidate
(:attr:`ModelRunner.candidates`: stock PyTorch, oneDNN, oneDNN on packed weights when the copy fits
in memory) on this machine, for a one-token step and for a tree-sized verification pass, and keeps
the fastest for each shape. Stock PyTorch is always a candidate, so the engine's own loop is never
slower than the model's ``forward``.

The choice is saved beside the measured costs, in a file keyed by the model fingerprint and a
signature of the machine (CPU model and flags, thread count, PyTorch version, device and dtype):
when any of them changes, the file name changes and the kernels are measured again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swift_engine.kernels.costs import synthetic_passes
from swift_engine.kernels.machine import cpu_identity
from swift_engine.kernels.native_build import instruction_set, kernels_label, native_status
from swift_engine.model.runner import KernelPlan, ModelRunner
from swift_engine.store.records import validate_fingerprint
from swift_engine.store.safe_files import loads_strict_json, read_regular_file, write_file_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "KernelChoice",
    "choose_kernels",
    "kernel_file",
    "machine_signature",
    "measure_kernels",
    "rows_file",
]

Kernel = Literal["torch", "onednn", "packed"]
Shape = Literal["step", "verify"]
#: prompt blocks: the pass's own kernel, or weights dequantized per call (weight-only models)
PromptKernel = Literal["torch", "dequantized"]
#: the measured prompt passes: a whole block, and the smallest a prompt kernel takes (2 rows)
PromptShape = Literal["block", "small"]
_Ms = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]

#: Tokens of the measured verification pass: a typical tree on a CPU (see ``TreeConfig``).
VERIFY_ROWS = 8
#: Cached tokens before the measured passes (attention cost is small at this length either way).
CONTEXT = 64
_REPS = 5
_MAX_FILE_BYTES = 64 * 1024
#: 2: prompt blocks on swift's kernels attend row by row in the fused layers (runner.py), so the prompt
#: kernel's timings of version 1 measured another path
_VERSION = 2


class KernelChoice(BaseModel):
    """The kernels chosen per pass shape, and the timings they were chosen by (ms, best of several)."""

    model_config = ConfigDict(extra="ignore")

    version: int = _VERSION
    machine: str = ""
    step: Kernel
    verify: Kernel
    timings_ms: dict[Kernel, dict[Shape, _Ms]] = Field(default_factory=dict)
    #: memory a kernel needs beside the model's weights (the packed copy), as measured
    extra_bytes: dict[Kernel, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    #: the kernel of prompt blocks of at least :attr:`prompt_min_rows` tokens
    prompt: PromptKernel = "torch"
    prompt_min_rows: int = Field(default=2, ge=2)
    #: tokens of the measured prompt block (the engine's ``prefill_block``); 0: not measured
    prompt_rows: int = Field(default=0, ge=0)
    prompt_timings_ms: dict[PromptKernel, dict[PromptShape, _Ms]] = Field(default_factory=dict)

    @property
    def extra_memory_bytes(self) -> int:
        """Memory the chosen kernels hold beside the model (the packed copy when either shape uses it)."""
        return max((self.extra_bytes.get(k, 0) for k in {self.step, self.verify}), default=0)

    @property
    def plan(self) -> KernelPlan:
        return KernelPlan(self.step, self.verify)

    def uniform(self) -> "KernelChoice":
        """One kernel for both shapes, the fastest over a step plus a verification pass.

        Row-invariant passes (below float32; ``row_attention.py``) need it: a token must get the
        same bits in a one-token step and in a verification pass, so both use the same kernel.
        """
        timed = [k for k in self.timings_ms if {"step", "verify"} <= set(self.timings_ms[k])]
        if self.step == self.verify or not timed:
            return self.model_copy(update={"verify": self.step})
        best = min(timed, key=lambda k: self.timings_ms[k]["step"] + self.timings_ms[k]["verify"])
        return self.model_copy(update={"step": best, "verify": best})

    def summary(self) -> str:
        """One line for logs, ``swift-accel info`` and the benchmark: the choice and what it beat."""
        parts = []
        for shape in ("step", "verify"):
            times = ", ".join(f"{k} {t[shape]:.1f}" for k, t in self.timings_ms.items() if shape in t)
            parts.append(f"{shape}: {getattr(self, shape)}" + (f" ({times} ms)" if times else ""))
        if self.prompt_timings_ms:
            times = ", ".join(f"{k} {t['block']:.0f}" for k, t in self.prompt_timings_ms.items() if "block" in t)
            start = f" from {self.prompt_min_rows} rows" if self.prompt != "torch" else ""
            parts.append(f"{self.prompt_rows}-token prompt blocks: {self.prompt}{start} ({times} ms)")
        if self.extra_memory_bytes:
            parts.append(f"packed weight copy {self.extra_memory_bytes / 2**20:.0f} MiB")
        return "; ".join(parts)


def machine_signature(runner: ModelRunner) -> tuple[str, str]:
    """(description, short key) of what the kernel timings depend on besides the model."""
    name, flags = cpu_identity()
    threads = torch.get_num_threads()
    dtype = str(runner.dtype).split(".")[-1]
    description = (
        f"{name}; flags {flags}; {threads} threads; torch {torch.__version__}; {runner.device.type} {dtype}; "
        f"candidates {'/'.join(runner.candidates)}"
    )
    if len(runner.prompt_candidates) > 1:
        description += f"; {runner.precision} prompt blocks {'/'.join(runner.prompt_candidates)}"
    if runner.native_kernels:  # their paths differ in speed and bits (AMX, AVX-512 VNNI or BF16)
        description += f"; {kernels_label()}"
    return description, hashlib.sha256(description.encode()).hexdigest()[:16]


def kernel_file(directory: Path, fingerprint: str, runner: ModelRunner) -> Path:
    """Where this model's kernel choice on this machine is kept (beside the cost files)."""
    validate_fingerprint(fingerprint)
    return directory / "_costs" / f"kernels-{fingerprint}-{machine_signature(runner)[1]}.json"


def rows_file(directory: Path, fingerprint: str, runner: ModelRunner) -> tuple[Path, str]:
    """Where this model's row-invariance verdict on this machine is kept, and what it depends on.

    Besides the machine (:func:`machine_signature`): the verification kernel, the precision and, where
    swift's kernels run, their library (its name is a digest of their sources and build flags).
    """
    validate_fingerprint(fingerprint)
    machine = machine_signature(runner)[0] + f"; verify {runner.plan.verify}; {runner.precision}"
    library = native_status().path
    if runner.native_kernels and library is not None:
        machine += f"; {library.name}, {instruction_set()}"
    digest = hashlib.sha256(machine.encode()).hexdigest()[:16]
    return directory / "_costs" / f"rows-{fingerprint}-{digest}.json", machine


def _seconds(fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


@torch.inference_mode()
def measure_kernels(runner: ModelRunner, reps: int = _REPS, prompt_rows: int = 128) -> KernelChoice:
    """Time each candidate kernel for a one-token step and a verification pass; keep the fastest of each.

    Where prompt blocks have candidates of their own (weight-only models: the kernel, or weights
    dequantized per call), a ``prompt_rows``-token block and a two-row one are timed too: the
    block decides the kernel, the two-row pass (about the cost of dequantizing) from how many
    rows it pays.

    Candidates are interleaved within each repetition, so a burst of load from elsewhere on the
    machine hits them alike; the best of ``reps`` is kept (other processes only ever add time).
    """
    t0 = time.perf_counter()
    context = min(CONTEXT, max(1, (runner.context_length or 4096) // 4))
    pass_of = synthetic_passes(runner, context, max(VERIFY_ROWS, prompt_rows))

    holding = "packed" in runner.candidates and runner.hold_packed()
    candidates = [k for k in runner.candidates if k != "packed" or holding]
    extra = {k: (runner.packed_bytes if k == "packed" else 0) for k in candidates}
    shapes = {"step": pass_of(1), "verify": pass_of(VERIFY_ROWS)} if len(candidates) > 1 else {}
    timings: dict[str, dict[str, float]] = {k: dict.fromkeys(shapes, float("inf")) for k in candidates if shapes}
    prompts = runner.prompt_candidates if len(runner.prompt_candidates) > 1 else []
    prompt_shapes = {"block": pass_of(prompt_rows, tree=False), "small": pass_of(2, tree=False)} if prompts else {}
    prompt_timings: dict[str, dict[str, float]] = {k: dict.fromkeys(prompt_shapes, float("inf")) for k in prompts}

    def run(table: dict[str, float], runs: dict[str, Callable[[], None]], keep: bool) -> None:
        for shape, fn in runs.items():
            seconds = _seconds(fn)
            if keep:
                table[shape] = min(table[shape], seconds)

    try:
        for rep in range(reps + 1):  # round 0 warms up: first calls allocate and JIT oneDNN primitives
            for kernel in timings:
                with runner.trying(kernel):
                    run(timings[kernel], shapes, keep=rep > 0)
            for kernel in prompt_timings:
                with runner.trying_prompt(kernel):
                    run(prompt_timings[kernel], prompt_shapes, keep=rep > 0)
    finally:
        if holding:
            runner.release_packed()
    step, verify = runner.plan
    if timings:
        step = min(timings, key=lambda k: timings[k]["step"])
        verify = min(timings, key=lambda k: timings[k]["verify"])
    prompt, min_rows = "torch", 2
    if prompt_timings:
        prompt = min(prompt_timings, key=lambda k: prompt_timings[k]["block"])
        if prompt != "torch":
            # where the two lines through (2 rows, block rows) cross: dequantizing is a fixed cost
            # per pass that the kernel's steeper growth with the rows pays back from there on
            own, other = prompt_timings["torch"], prompt_timings[prompt]
            fixed = max(0.0, other["small"] - own["small"])
            crossing = 2 + (prompt_rows - 2) * fixed / (fixed + own["block"] - other["block"])
            min_rows = min(prompt_rows, max(2, math.ceil(crossing)))
    choice = KernelChoice.model_validate(
        {
            "machine": machine_signature(runner)[0],
            "step": step,
            "verify": verify,
            "timings_ms": {k: {shape: 1e3 * v for shape, v in t.items()} for k, t in timings.items()},
            "extra_bytes": extra,
            "prompt": prompt,
            "prompt_min_rows": min_rows,
            "prompt_rows": prompt_rows if prompts else 0,
            "prompt_timings_ms": {k: {shape: 1e3 * v for shape, v in t.items()} for k, t in prompt_timings.items()},
        }
    )
    logger.info("chose dense kernels in %.1fs: %s", time.perf_counter() - t0, choice.summary())
    return choice


def choose_kernels(runner: ModelRunner, path: Path | None, prompt_rows: int = 128) -> KernelChoice:
    """Set ``runner``'s kernels from ``path`` when measured before on this machine, else measure and save.

    A file that is unreadable or invalid (validated like every file the store reads) is measured
    again and overwritten; one that can't be written is a warning.
    """
    choice = None
    if path is not None:
        try:
            choice = KernelChoice.model_validate(loads_strict_json(read_regular_file(path, _MAX_FILE_BYTES)))
            if choice.version != _VERSION:
                choice = None  # measured by an older engine, on passes this one no longer makes
            elif {choice.step, choice.verify} - set(runner.candidates):
                choice = None  # e.g. packing no longer fits in memory
            elif len(runner.prompt_candidates) > 1 and choice.prompt_rows != prompt_rows:
                choice = None  # measured for another prompt block size
        except FileNotFoundError:
            pass
        except (OSError, ValueError, ValidationError) as exc:
            logger.warning("ignoring unusable kernel choice file %s (%s); measuring again", path, exc)
    if choice is None:
        choice = measure_kernels(runner, prompt_rows=prompt_rows)
        if path is not None:
            try:
                data = json.dumps(choice.model_dump(mode="json"), indent=2).encode()
                write_file_atomic(path, data, follow_parent_symlink=False)
            except OSError as exc:
                logger.warning("could not save the kernel choice to %s: %s", path, exc)
    if runner.row_invariant:
        choice = choice.uniform()
    runner.set_plan(choice.plan)
    if choice.prompt in runner.prompt_candidates:
        runner.set_prompt_kernel(choice.prompt, choice.prompt_min_rows)
    return choice
