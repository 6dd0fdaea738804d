"""swift's own int4/int8 kernels (kernels/native/): row-invariant, close to PyTorch's, optional.

Exact greedy SWIFT rests on a verification row being bitwise its one-token step; the native kernel
promises that by construction (every row count takes one path, rows never mix), so these tests
check it over every row count up to two tile passes, rows in any order, and every block shape
the packing has (full 64-column blocks and 16/32/48-column tails), on the path this machine takes
(AMX tiles; without them int4 on int8 activations with AVX-512 VNNI, or bfloat16 ones with
``SWIFT_NATIVE_VNNI=0``) and, in child processes, on the paths this one does not take, so every machine
checks them all. Where the kernels cannot run (no
AVX-512 BF16, no compiler) the engine must keep PyTorch's kernel and say why, which runs in a
subprocess because the loader's answer is fixed once per process.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import swift_engine.kernels.native_build as nb
from swift_engine import SwiftConfig, SwiftEngine
from swift_engine.kernels.int8_tiles import pack_tiles, tiles_bytes, tiles_wanted
from swift_engine.kernels.native_build import (
    REQUIRED_FLAGS,
    build,
    cpu_flags,
    instruction_set,
    kernels_label,
    native_status,
)
from swift_engine.kernels.quantize import (
    INT4_GROUP,
    Int4Linear,
    Int8Linear,
    int4_available,
    int4_product,
    int8_product,
    native_products,
    quantize,
)
from swift_engine.model.runner import ModelRunner

from .conftest import CharTokenizer, tiny_model

pytestmark = pytest.mark.skipif(not int4_available(), reason="this PyTorch build lacks the int4 CPU kernel")

needs_native = pytest.mark.skipif(
    not native_status().loaded, reason=f"swift's kernels are not usable here: {native_status().reason}"
)


def _weights(kind: str, n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random operands of the ``kind`` ("int4"/"int8") kernel, as ``Int4Linear``/``Int8Linear`` hold them."""
    g = torch.Generator().manual_seed(seed)
    if kind == "int8":
        w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
        return w, (torch.rand(n, generator=g) * 0.02).to(torch.bfloat16)
    q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=g)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    sz = (torch.randn(k // INT4_GROUP, n, 2, generator=g) * 0.05).to(torch.bfloat16)
    return packed, sz


PRODUCTS = {"int4": int4_product, "int8": int8_product}
ATEN = {
    "int4": lambda x, w, s: torch.ops.aten._weight_int4pack_mm_for_cpu(x, w, INT4_GROUP, s),
    "int8": torch.ops.aten._weight_int8pack_mm,
}


@needs_native
@pytest.mark.parametrize("kind", ["int4", "int8"])
@pytest.mark.parametrize("n,k", [(192, 256), (960, 576), (80, 96), (48, 64), (16, 32), (112, 128)])
def test_a_row_gets_the_same_bits_in_a_pass_of_any_size_and_place(kind: str, n: int, k: int) -> None:
    weight, scales = _weights(kind, n, k, seed=n + k)
    product = PRODUCTS[kind]
    x = torch.randn(40, k, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    with native_products():
        alone = torch.cat([product(x[i : i + 1], weight, scales) for i in range(len(x))])
        for rows in range(2, len(x) + 1):  # 1..16 rows: one tile pass; 17..32: two; then three
            assert torch.equal(product(x[:rows].contiguous(), weight, scales), alone[:rows]), rows
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(2))
        assert torch.equal(product(x[order].contiguous(), weight, scales), alone[order])


needs_tiles = pytest.mark.skipif(
    not tiles_wanted(),
    reason="swift's int8 kernel reads tiles on the AVX-512 VNNI path only (not loaded, or AMX here)",
)


@needs_tiles
@pytest.mark.parametrize("n,k", [(960, 576), (48, 64), (16, 32)])
def test_int8_tiles_are_the_rows_in_the_vnni_layout_and_give_the_rows_bits_in_any_pass(n: int, k: int) -> None:
    weight, scales = _weights("int8", n, k, seed=n * k)
    tiles = pack_tiles(weight)
    assert tiles.dtype == torch.uint8 and tiles.shape == (n // 16, k // 4, 16, 4)
    # tile t, input quad q, output o, byte j: weight row 16 t + o, input 4 q + j, stored as w + 128
    rows = (tiles.to(torch.int16) - 128).permute(0, 2, 1, 3).reshape(n, k)
    assert torch.equal(rows, weight.to(torch.int16))
    x = torch.randn(40, k, generator=torch.Generator().manual_seed(6)).to(torch.bfloat16)
    with native_products():
        alone = torch.cat([int8_product(x[i : i + 1], weight, scales, tiles) for i in range(len(x))])
        assert torch.equal(int8_product(x, weight, scales), alone)  # the rows, packed by the call itself
        for count in range(2, len(x) + 1):
            assert torch.equal(int8_product(x[:count].contiguous(), weight, scales, tiles), alone[:count]), count
        float_head = torch.ops.swift_kernels.int8_mm_float(x, tiles, scales)
        assert torch.equal(float_head, alone.float())


@needs_native
def test_an_int8_heads_float_logits_are_its_bfloat16_outputs_widened_in_one_pass() -> None:
    head = Int8Linear(nn.Linear(96, 208, bias=False))
    x = torch.randn(40, 96, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    with native_products():
        for rows in (1, 3, 16, 17, 40):
            direct = head.float_outputs(x[:rows])
            assert direct.dtype == torch.float32
            assert torch.equal(direct, head(x[:rows]).float()), rows
    assert torch.equal(head.float_outputs(x), head(x).float())  # PyTorch's kernel outside the block


@needs_native
def test_the_fused_layers_silu_is_written_out_where_it_matches_atens_on_every_value() -> None:
    # decoder_layers.cpp checks its SiLU (Sleef's expf from PyTorch's library) against ATen's on all
    # 65536 bfloat16 values at first use; a build where it differs calls ATen's (same bits, one thread)
    assert torch.ops.swift_kernels.silu_written_out()


@needs_native
@pytest.mark.parametrize("kind", ["int4", "int8"])
@pytest.mark.parametrize("n,k", [(192, 256), (960, 576)])
def test_it_agrees_with_pytorchs_kernel_to_bfloat16_rounding(kind: str, n: int, k: int) -> None:
    weight, scales = _weights(kind, n, k, seed=3)
    x = torch.randn(9, k, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    aten = ATEN[kind](x, weight, scales).float()
    with native_products():
        native = PRODUCTS[kind](x, weight, scales).float()
    if kind == "int4":  # another kernel: the switch took effect (int8's exact products often round alike) ...
        assert not torch.equal(native, aten)
    if torch.ops.swift_kernels.uses_vnni():
        # ... with inputs rounded to int8 per group of 32 (llama.cpp's arithmetic for quantized files): each
        # input off by up to max|x| / 254, which a dot product of random signs mostly averages out
        assert (native - aten).norm() <= 0.01 * aten.norm()
        assert ((native - aten).abs() <= 0.02 * aten.abs().max()).all()
        return
    # ... for the same product: both are float32 sums rounded to bfloat16 (2^-8 relative)
    assert ((native - aten).abs() <= 2**-7 * aten.abs() + 1e-3 * aten.abs().max()).all()


@needs_native
@pytest.mark.parametrize("precision", ["int4", "int8"])
def test_engines_use_it_for_every_pass_and_stay_exact_where_cpu_kernels_torch_keeps_pytorchs(precision: str) -> None:
    model = tiny_model("llama").to(torch.bfloat16)
    quantize(model, precision)
    assert not ModelRunner(model, kernels="torch").native_kernels
    runner = ModelRunner(model)
    assert runner.native_kernels and kernels_label() in runner.kernels
    engine = SwiftEngine(model, CharTokenizer(), SwiftConfig(skip_ratio=0.25, search={"enabled": False}))
    assert engine.runner.native_kernels
    drafted = 0
    for prompt in ([3, 14, 15, 9, 26, 5, 35, 8, 9, 7], list(range(40, 70))):
        plain = engine.generate(prompt, max_new_tokens=40, speculative=False)
        res = engine.generate(prompt, max_new_tokens=40)
        assert res.token_ids == plain.token_ids
        drafted += res.stats.accepted_drafted_tokens
    assert drafted > 0  # trees of several rows were verified on the native kernel
    assert engine.runner.max_rows == engine.config.tree.max_tree_tokens  # and it held at every size
    int8 = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert int8  # an int4 model's output head is int8
    if tiles_wanted():  # every int8 layer read as tiles; q/k/v stacked as one view
        assert all(m.tiles is not None for m in int8)
        assert engine.runner.packed_bytes == tiles_bytes(model) >= sum(m.qweight.numel() for m in int8)
        fast = engine.runner.fast
        assert fast is not None and (
            precision == "int4" or all(p is not None and p.tiles is not None for p in fast._qkv)
        )
    linear = next(m for m in model.modules() if isinstance(m, (Int4Linear, Int8Linear)))
    x = torch.randn(3, linear.in_features).to(torch.bfloat16)
    outside = linear(x)  # other users of the model keep PyTorch's kernel
    scales = linear.scales_zeros if isinstance(linear, Int4Linear) else linear.scales
    assert torch.equal(outside, ATEN[precision](x, linear.qweight, scales))


def _status_in_subprocess(env: dict[str, str]) -> str:
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s');"
        "from swift_engine.kernels.native_build import native_status; s = native_status(); print('LOADED', s.loaded)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=600, check=True
    )
    return done.stdout


def test_without_a_compiler_pytorchs_kernel_stays_and_one_line_says_why(tmp_path) -> None:
    no_compiler = {"CXX": str(tmp_path / "no-such-compiler"), "PATH": str(tmp_path)}
    out = _status_in_subprocess({**no_compiler, "SWIFT_KERNEL_CACHE": str(tmp_path)})
    assert "LOADED False" in out
    lines = [line for line in out.splitlines() if line.startswith("int4/int8 products")]
    assert len(lines) == 1 and "PyTorch's kernels" in lines[0]
    missing = [f for f in REQUIRED_FLAGS if f not in cpu_flags()]
    assert ("lacks" in lines[0]) if missing else ("no C++ compiler" in lines[0])


def test_it_can_be_turned_off() -> None:
    out = _status_in_subprocess({"SWIFT_NATIVE_KERNELS": "0"})
    assert "LOADED False" in out and "SWIFT_NATIVE_KERNELS=0" in out


#: the paths a machine without AMX takes (or one with AMX told not to use it), by what selects them
PATHS = {
    "AVX-512 VNNI": {"SWIFT_NATIVE_AMX": "0"},
    "AVX-512 BF16": {"SWIFT_NATIVE_AMX": "0", "SWIFT_NATIVE_VNNI": "0"},
}


@needs_native
@pytest.mark.slow  # a child pytest per path this process does not take
def test_every_path_this_process_does_not_take_keeps_the_same_promises_in_a_child() -> None:
    """Each path must keep the promises (row-invariant, close to PyTorch's, engines exact): this module's
    tests ran above on this process's path; the others (AVX-512 VNNI and BF16; on an AMX machine both)
    run them again in a child with the environment that selects them."""
    tests = "same_bits or agrees or float_logits or attention_rows or stay_exact"
    for label, env in PATHS.items():
        if label == instruction_set():
            continue
        out = _status_in_subprocess(env)
        assert "LOADED True" in out and label in out, out
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", __file__, "-k", tests],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=1200, check=False,
        )  # fmt: skip
        assert done.returncode == 0 and " passed" in done.stdout, (label, done.stdout[-2000:])


@pytest.mark.skipif(nb._compiler() is None, reason="no C++ compiler here")
def test_builds_go_to_the_cache_keyed_by_source_and_torch(tmp_path, monkeypatch) -> None:
    # the build machinery on a one-function source (the real library's compile is `make setup`'s, and the
    # other tests here load it): its own flags, link and cache, in seconds rather than half a minute
    cache, sources = tmp_path / "cache", tmp_path / "src"
    sources.mkdir()
    source = sources / "one.cpp"
    source.write_text('extern "C" int swift_one() { return 1; }\n')
    monkeypatch.setenv("SWIFT_KERNEL_CACHE", str(cache))
    monkeypatch.setattr(nb, "SOURCES", (source,))
    path = build()
    assert path.parent == cache and path.name.startswith("swift_kernels-") and path.stat().st_size > 0
    assert ctypes.CDLL(str(path)).swift_one() == 1
    assert build() == path  # cached: not rebuilt
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temporary left behind
    source.write_text('extern "C" int swift_one() { return 2; }\n')
    assert nb.library_path() != path  # another source, another library


def _key_lists(lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    index = torch.zeros(len(lists), max(map(len, lists)), dtype=torch.int32)
    for i, keys in enumerate(lists):
        index[i, : len(keys)] = torch.tensor(keys, dtype=torch.int32)
    return index, torch.tensor([len(keys) for keys in lists], dtype=torch.int32)


@needs_native
@pytest.mark.parametrize("heads,kv_heads,dim,past", [(9, 3, 64, 200), (4, 2, 16, 37), (14, 2, 64, 130), (8, 8, 32, 5)])
def test_attention_rows_are_their_one_token_steps_and_close_to_float(heads: int, kv_heads: int, dim: int, past: int):
    g = torch.Generator().manual_seed(heads + past)
    keys = torch.randn(kv_heads, past + 20, dim, generator=g).to(torch.bfloat16)  # a cache buffer, spare room
    values = torch.randn(kv_heads, past + 20, dim, generator=g).to(torch.bfloat16)
    # a tree after ``past`` cached keys: a chain of 5, a branch off its root, a grandchild on the branch
    parents = [-1, 0, 1, 2, 3, 0, 5]
    paths = []
    for node in range(len(parents)):
        path = [node]
        while parents[path[0]] >= 0:
            path.insert(0, parents[path[0]])
        paths.append(path)
    index, lengths = _key_lists([list(range(past)) + [past + n for n in path] for path in paths])
    query = torch.randn(len(parents), heads, dim, generator=g).to(torch.bfloat16)
    scale = dim**-0.5
    tree = torch.ops.swift_kernels.rows_attention(
        query, keys[:, : past + 7], values[:, : past + 7], index, lengths, scale
    )
    for row, path in enumerate(paths):
        # the row's one-token step: its ancestors' entries laid out right after the cache, then the row
        step_keys, step_values = keys.clone(), values.clone()
        for depth, node in enumerate(path):
            step_keys[:, past + depth], step_values[:, past + depth] = keys[:, past + node], values[:, past + node]
        n = past + len(path)
        step_index, step_lengths = _key_lists([list(range(n))])
        step = torch.ops.swift_kernels.rows_attention(
            query[row : row + 1].contiguous(), step_keys[:, :n], step_values[:, :n], step_index, step_lengths, scale
        )
        assert torch.equal(step[0], tree[row]), row
        k = step_keys[:, :n].float().repeat_interleave(heads // kv_heads, 0)
        v = step_values[:, :n].float().repeat_interleave(heads // kv_heads, 0)
        ref = torch.softmax(torch.einsum("hd,hjd->hj", query[row].float(), k) * scale, -1)
        ref = torch.einsum("hj,hjd->hd", ref, v)
        assert (tree[row].float() - ref).abs().max() <= 1e-2 * ref.abs().max()


@needs_native
def test_attention_refuses_keys_outside_the_cache_and_reads_none_past_a_rows_length() -> None:
    keys = torch.randn(3, 40, 64).to(torch.bfloat16)
    query = torch.randn(2, 9, 64).to(torch.bfloat16)
    lengths = torch.tensor([20, 18], dtype=torch.int32)
    for bad in (-1, 40):  # the second row's 18th key, at the end of a 16-key vector's tail
        index = torch.arange(20, dtype=torch.int32).repeat(2, 1).contiguous()
        index[1, 17] = bad
        with pytest.raises(RuntimeError, match="index out of range"):
            torch.ops.swift_kernels.rows_attention(query, keys, keys, index, lengths, 0.125)
    index[1, 17], index[1, 19] = 17, 99  # past the row's 18 keys: never read
    out = torch.ops.swift_kernels.rows_attention(query, keys, keys, index, lengths, 0.125)
    index[1, 19] = 19
    assert torch.equal(out, torch.ops.swift_kernels.rows_attention(query, keys, keys, index, lengths, 0.125))


@needs_native
@pytest.mark.parametrize("width", [16, 64, 576, 896, 2048, 4096, 8192])
def test_the_fused_layers_norm_is_bitwise_the_modules_rmsnorm(width: int) -> None:
    # decoder_layers.cpp writes ATen's float sum out (found by comparing with ATen at first use); a
    # machine where that does not match falls back to ATen's own mean, same bits, slower (lanes 0)
    assert torch.ops.swift_kernels.mean_lanes() in (8, 16)
    g = torch.Generator().manual_seed(width)
    weight = torch.randn(width, generator=g).to(torch.bfloat16)
    for rows in (1, 5, 32):
        hidden = (torch.randn(rows, width, generator=g) * 3).to(torch.bfloat16)
        h = hidden.to(torch.float32)  # LlamaRMSNorm.forward
        expected = weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)).to(torch.bfloat16)
        assert torch.equal(torch.ops.swift_kernels.rms_norm(hidden, weight, 1e-5), expected), rows


def test_a_library_that_faults_is_tried_once_in_a_child_and_never_loaded(tmp_path, monkeypatch) -> None:
    library = tmp_path / "swift_kernels-0123456789abcdef.so"
    library.write_bytes(b"not a library")
    # what a CPU that lists an instruction set but faults on it does to the process that tries (SIGILL)
    monkeypatch.setattr(nb, "_PROBE", "import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    reason = nb.probe(library)
    assert reason is not None and "fault" in reason and "signal 4" in reason
    runs: list[object] = []
    monkeypatch.setattr(nb.subprocess, "run", lambda *a, **k: runs.append(a))
    assert nb.probe(library) == reason and runs == []  # the verdict is kept: not tried again
    other = tmp_path / "swift_kernels-fedcba9876543210.so"  # another library that computes wrong numbers
    other.write_bytes(b"")
    monkeypatch.undo()
    monkeypatch.setattr(nb, "_PROBE", "raise SystemExit(3)")
    assert nb.probe(other) == "its products disagree with PyTorch's kernel here"


def test_a_failed_compile_is_one_clear_error_remembered_until_forced(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SWIFT_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(nb, "_compiler", lambda: "c++")
    monkeypatch.setattr(nb, "_commands", lambda compiler, out: ([["c++", "--no-such-option"]], ["c++"]))
    with pytest.raises(RuntimeError, match="compiling the kernels failed"):
        nb.build()
    runs: list[object] = []
    monkeypatch.setattr(nb.subprocess, "run", lambda *a, **k: runs.append(a))
    with pytest.raises(RuntimeError, match="compiling the kernels failed"):
        nb.build()  # remembered: no second compile in this or any later process
    assert runs == []
    with pytest.raises(Exception):  # noqa: B017 - forced: compiled again (the fake run returns nothing)
        nb.build(force=True)
    assert len(runs) == 1


def test_every_kernel_source_ships_with_the_package() -> None:
    """An installed package compiles its kernels from its own files: all of native/ must be package data."""
    import fnmatch
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = patterns["swift_engine.kernels"]
    files = sorted(p.relative_to(nb.NATIVE.parent).as_posix() for p in nb.NATIVE.iterdir() if p.is_file())
    assert files and all(any(fnmatch.fnmatch(f, pattern) for pattern in shipped) for f in files), files
    assert set(nb.SOURCES) <= set(nb.NATIVE.iterdir())
