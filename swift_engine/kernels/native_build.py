"""Builds and loads the project's own CPU kernels (``native/*.cpp``) on this machine.

Why: PyTorch's CPU int4 and int8 kernels re-read and re-convert every weight tile for each block of
4 rows, so verifying k drafted tokens costs about ceil(k/4) one-token steps, and speculation stops
paying at the precisions that make the step fast. swift's kernels read each weight block once for all
of a pass's rows (up to 16 rows per block: on AMX tiles where the OS grants them, else with AVX-512
dot products -- AMD Zen 4: inputs rounded to int8, VNNI, as llama.cpp computes quantized files;
docs/bench/measurements.md#without-amx), attend every row of a pass in one call, and run a
pass's decoder layers as one call (figures: docs/bench/measurements.md#native-kernels). They are
registered as ``torch.ops.swift_kernels.*`` (``int4_mm``, ``int8_mm``, ``rows_attention``,
``decoder_layers``), so TorchScript calls them too; ``instruction_set()`` says which path runs.

They are compiled from source on the user's machine -- never a downloaded binary -- by ``make setup``
(``python -m swift_engine.kernels.native_build``) or, failing that, at the first int4/int8 engine of a
process (seconds), into a cache directory keyed by the sources, the PyTorch version and the
compiler flags: ``$SWIFT_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/swift/kernels``, else
``~/.cache/swift/kernels``. Where it cannot be used -- no compiler (``$CXX``, else ``c++``), a CPU
without AVX-512 BF16 and VNNI, a build that fails, or results that disagree with PyTorch's kernel -- the
engine keeps PyTorch's kernels, says why in one log line, and nothing else changes. A new library is
tried first in a child process (:func:`probe`): a CPU that lists AMX but faults on it must not take
the engine's process down.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "NativeStatus",
    "build",
    "cache_dir",
    "cpu_flags",
    "declare_native_ops",
    "instruction_set",
    "kernels_label",
    "library_path",
    "native_status",
    "probe",
]

NATIVE = Path(__file__).with_name("native")
#: the sources compiled into one library (``tiles.h`` and ``pool.h`` are their shared headers)
_SOURCE_NAMES = (
    "pool.cpp",
    "int4_amx.cpp",
    "int4_avx512.cpp",
    "int4_vnni.cpp",
    "int8_amx.cpp",
    "int8_avx512.cpp",
    "int8_vnni.cpp",
    "row_attention.cpp",
    "decoder_layers.cpp",
    "ops.cpp",
)
SOURCES = tuple(NATIVE / name for name in _SOURCE_NAMES)
#: the fused layers' operator (native/decoder_layers.cpp; ops.cpp registers the same text)
DECODER_LAYERS_SCHEMA = (
    "decoder_layers(Tensor hidden, Tensor cos, Tensor sin, Tensor[] norm_weights, float[] norm_eps, "
    "Tensor[] weights, Tensor[] scales, Tensor[] qkv_bias, Tensor(a!)[] keys, Tensor(b!)[] values, int[] lengths, "
    "bool[] skip_attention, bool[] skip_mlp, int q_heads, int kv_heads, int head_dim, float scaling, int kind, "
    "int group, Tensor rows_index, Tensor[] rows_lengths, Tensor? slots=None) -> Tensor"
)
#: what the kernels' instructions need from the CPU (``/proc/cpuinfo`` names); AMX tiles are used
#: where the OS also grants them (decided inside the library, once per process)
REQUIRED_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vbmi", "avx512_bf16", "avx512_vnni")
_ARCH_FLAGS = [
    "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vbmi", "-mavx512bf16", "-mavx512vnni",
    "-mamx-tile", "-mamx-bf16",
]  # fmt: skip


@dataclass(frozen=True)
class NativeStatus:
    """Whether the native kernels are loaded in this process, and if not, why (one line)."""

    loaded: bool
    reason: str
    #: the library (built or found), where there is one
    path: Path | None = None


def cache_dir() -> Path:
    """Where built kernels are kept (see the module docstring)."""
    explicit = os.environ.get("SWIFT_KERNEL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "swift" / "kernels"


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


def _commands(compiler: str, out: Path) -> tuple[list[list[str]], list[str]]:
    """The compile jobs (one per source, into objects beside ``out``; run in parallel) and the link into ``out``."""
    torch_dir = Path(torch.__file__).parent
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    flags = [
        "-O3", "-std=c++20", "-fPIC", "-fopenmp", *_ARCH_FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-w",
        f"-I{torch_dir / 'include'}", f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
    ]  # fmt: skip
    objects = [out.with_name(f"{source.stem}.o") for source in SOURCES]
    jobs = [[compiler, *flags, "-c", str(source), "-o", str(obj)] for source, obj in zip(SOURCES, objects, strict=True)]
    link = [
        compiler, "-shared", "-fopenmp", *map(str, objects), "-o", str(out),
        f"-L{torch_dir / 'lib'}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{torch_dir / 'lib'}",
    ]  # fmt: skip
    return jobs, link


def _run_build(compiler: str, out: Path) -> subprocess.CompletedProcess[str]:
    """Compile the sources (as many at once as there are CPUs), then link; the first failure's result."""
    jobs, link = _commands(compiler, out)
    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        done = list(pool.map(lambda job: subprocess.run(job, capture_output=True, text=True, check=False), jobs))
    failed = [d for d in done if d.returncode != 0]
    return failed[0] if failed else subprocess.run(link, capture_output=True, text=True, check=False)


def library_path(compiler: str | None = None) -> Path:
    """The cached library's path for this source, PyTorch and compiler (it may not exist yet)."""
    key = hashlib.sha256()
    for source in (*SOURCES, NATIVE / "tiles.h", NATIVE / "pool.h", NATIVE / "int4_codes.h"):
        key.update(source.read_bytes())
    jobs, link = _commands(compiler or "c++", Path("x"))
    command = " ".join(" ".join(c) for c in (*jobs, link))
    # where the sources and torch lie is not part of the build: the same sources, flags and torch
    # version make the same library, so another checkout or environment on the machine reuses it
    for place, name in ((str(NATIVE), "<sources>"), (str(Path(torch.__file__).parent), "<torch>")):
        command = command.replace(place, name)
    key.update(command.encode())
    key.update(f"{torch.__version__} {sys.version_info[:2]}".encode())
    return cache_dir() / f"swift_kernels-{key.hexdigest()[:16]}.so"


def build(force: bool = False) -> Path:
    """Compile the kernels into the cache (atomically: concurrent builders are safe); returns the path.

    Raises ``RuntimeError`` with the reason where it cannot (no compiler, a failed compile). A failed
    compile is remembered (a ``.build-failed`` file beside the library) so that every process does not
    try again; ``force`` (``python -m swift_engine.kernels.native_build``) tries anyway.
    """
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    target = library_path(compiler)
    failed = target.with_suffix(".build-failed")  # this source, compiler and PyTorch failed before
    if target.exists() and not force:
        return target
    if failed.exists() and not force:
        raise RuntimeError(failed.read_text().strip() or "compiling the kernels failed before")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        done = _run_build(compiler, out)
        if done.returncode != 0:
            reason = f"compiling the kernels failed: {done.stderr.strip()[-400:]}"
            with contextlib.suppress(OSError):
                failed.write_text(reason + "\n")
            raise RuntimeError(reason)
        os.replace(out, target)
        failed.unlink(missing_ok=True)
    return target


def _agrees_with_aten() -> bool:
    """The native products are close to PyTorch's on this machine (they are not bitwise: see the sources)."""
    g = torch.Generator().manual_seed(0)
    n, k = 192, 256
    x = torch.randn(5, k, generator=g).to(torch.bfloat16)
    q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=g)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    sz = (torch.rand(k // 32, n, 2, generator=g) * 0.1).to(torch.bfloat16)
    w8 = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    s8 = (torch.rand(n, generator=g) * 0.02).to(torch.bfloat16)
    pairs = [
        (
            torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 32, sz),
            torch.ops.swift_kernels.int4_mm(x, packed, 32, sz),
        ),
        (torch.ops.aten._weight_int8pack_mm(x, w8, s8), torch.ops.swift_kernels.int8_mm(x, w8, s8)),
    ]
    return all(bool(((got.float() - ref.float()).abs() <= 2e-2 * ref.float().abs().amax()).all()) for ref, got in pairs)


#: run in a child process: load the library and compute with it (exit 0: fine; 3: wrong numbers)
_PROBE = (
    "import sys, torch; torch.ops.load_library(sys.argv[1]); "
    "from swift_engine.kernels.native_build import _agrees_with_aten; sys.exit(0 if _agrees_with_aten() else 3)"
)


def _machine_key() -> str:
    """A short digest of this CPU (model name and flags): a probe's verdict holds for it only."""
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return hashlib.sha256((name + " ".join(sorted(cpu_flags()))).encode()).hexdigest()[:12]


def probe(path: Path) -> str | None:
    """Why the kernels at ``path`` cannot run on this machine, or None: tried once in a child process.

    Why a child: a CPU may list AMX among its flags, and the OS grant the tiles, yet fault on the
    instructions (seen on other virtual machines of this kind: "Illegal instruction"), which would
    kill the process that tried. The verdict is kept beside the library, per CPU, so later
    processes start without trying again.
    """
    marker = path.with_name(f"{path.stem}-{_machine_key()}")
    ok, bad = marker.with_suffix(".ok"), marker.with_suffix(".fails")
    if ok.exists():
        return None
    if bad.exists():
        return bad.read_text().strip() or "it failed here before"
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, timeout=600, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"trying it failed ({type(exc).__name__})"
    if done.returncode == 0:
        reason = None
    elif done.returncode < 0:
        reason = f"its instructions fault on this machine (signal {-done.returncode})"
    elif done.returncode == 3:
        reason = "its products disagree with PyTorch's kernel here"
    else:
        reason = f"trying it failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:200]}"
    try:
        if reason is None:
            ok.touch()
        else:
            bad.write_text(reason + "\n")
    except OSError:
        pass  # a read-only cache: try again next time
    return reason


@functools.cache
def native_status() -> NativeStatus:
    """Load the native kernels once per process (building them if needed); never raises.

    A constant of the machine and the installation, hence cached; the reason is logged once.
    """
    missing = [f for f in REQUIRED_FLAGS if f not in cpu_flags()]
    if os.environ.get("SWIFT_NATIVE_KERNELS", "1") == "0":
        status = NativeStatus(False, "turned off by SWIFT_NATIVE_KERNELS=0")
    elif sys.platform != "linux" or missing:
        status = NativeStatus(False, f"this CPU lacks {', '.join(missing) or 'Linux'}")
    else:
        try:
            path = build()
            reason = probe(path)
            if reason is not None:
                status = NativeStatus(False, reason, path)
            else:
                torch.ops.load_library(str(path))
                status = NativeStatus(True, f"built and checked; {instruction_set()}", path)
        except (RuntimeError, OSError) as exc:
            status = NativeStatus(False, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if status.loaded:
        logger.info("int4/int8 products: swift's kernels, %s (%s)", instruction_set(), status.path)
    else:
        logger.info("int4/int8 products: PyTorch's kernels (swift's kernels unavailable: %s)", status.reason)
    return status


def instruction_set() -> str:
    """Which of the loaded kernels' paths runs in this process, a constant of the machine and the process:
    ``"AMX"`` (the OS grants the tiles), else ``"AVX-512 VNNI"`` (int4 and int8 products on inputs rounded
    to int8, as llama.cpp computes quantized files) or, with ``SWIFT_NATIVE_VNNI=0``, ``"AVX-512 BF16"``."""
    if torch.ops.swift_kernels.uses_amx():
        return "AMX"
    return "AVX-512 VNNI" if torch.ops.swift_kernels.uses_vnni() else "AVX-512 BF16"


def kernels_label() -> str:
    """How reports name the kernels in use: ``"swift's kernels (AMX)"`` or ``"swift's kernels (AVX-512 BF16)"``."""
    return f"swift's kernels ({instruction_set()})"


@functools.cache
def declare_native_ops() -> object:
    """Make ``torch.ops.swift_kernels.*`` resolvable (for TorchScript) even where they are not loaded.

    Loads the kernels if they can be (:func:`native_status`); otherwise declares the op's schema
    with an implementation that refuses, which no engine calls (it runs PyTorch's kernel there).
    Returns the declaration's handle (kept by the cache: dropping it would undeclare the op).
    """
    if native_status().loaded:
        return None
    library = torch.library.Library("swift_kernels", "DEF")  # noqa: TOR901 - a schema for TorchScript only
    library.define("int4_mm(Tensor x, Tensor packed, int group, Tensor scales_zeros) -> Tensor")
    library.define("int8_mm(Tensor x, Tensor weight, Tensor scales) -> Tensor")
    library.define(
        "rows_attention(Tensor query, Tensor key, Tensor value, Tensor index, Tensor lengths, float scale) -> Tensor"
    )
    library.define(DECODER_LAYERS_SCHEMA)

    def unavailable(*args: object) -> torch.Tensor:
        raise RuntimeError(f"swift's kernels are not loaded here: {native_status().reason}")

    library.impl("int4_mm", unavailable, "CPU")
    library.impl("int8_mm", unavailable, "CPU")
    library.impl("rows_attention", unavailable, "CPU")
    library.impl("decoder_layers", unavailable, "CPU")
    return library


def main() -> int:
    """``python -m swift_engine.kernels.native_build``: build (and check) the kernels; 0 even when unavailable."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with contextlib.suppress(RuntimeError, OSError):  # native_status() says why, below
        build(force=not library_path(_compiler()).exists())  # a fresh try after a failed one
    status = native_status()
    sys.stderr.write(f"swift native kernels: {'ready' if status.loaded else 'not used'} ({status.reason})\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
