"""Fault injection: crashes, hostile files and keys, full and read-only disks, concurrency, abandoned calls.

Each test asserts what docs/guarantees.md promises: no wrong tokens (compared with
plain greedy decoding of the same model), no lost committed profile, no file outside the store
touched, and a clear error or warning where one is due. A bad file may cost a search, never a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from swift_engine import ProfileRecord, ProfileStore, SwiftConfig, SwiftEngine

from .conftest import CharTokenizer, finishes_in_time, tiny_model

PROMPT = [3, 14, 15, 9, 26, 5, 35]
N_NEW = 20
FP = "fault-model"
STEPS = ["plan", "answer", "summarize"]


# ------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_model("llama", seed=5)


@pytest.fixture(scope="module")
def expected(model) -> list[int]:
    out = model.generate(torch.tensor([PROMPT]), max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False)
    return out[0, len(PROMPT) :].tolist()


def _engine(model, store: Path | ProfileStore, **config) -> SwiftEngine:
    return SwiftEngine(model, CharTokenizer(), SwiftConfig(**{"skip_ratio": 0.25, **config}), profile_store=store)


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (not following links) -> digest of its bytes (or what it is)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if os.path.islink(path):
                out[rel] = "link:" + os.readlink(path)
            elif not os.path.isfile(path):
                out[rel] = f"special:{st.st_mode:o}"
            else:
                out[rel] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return out


def _outside(tmp_path: Path) -> Path:
    """A folder beside the store with files nobody may touch."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "notes.json").write_text('{"keep": true}\n')
    (outside / "passwd").write_text("root:x:0:0\n")
    return outside


def _generate_in_time(engine: SwiftEngine, timeout: float = 120.0, **kwargs) -> list[int]:
    """Generate; a call that would block (a FIFO read) fails the test instead of hanging it."""
    return finishes_in_time(lambda: engine.generate(PROMPT, max_new_tokens=N_NEW, **kwargs).token_ids, timeout)


# ------------------------------------------------------------------------------ kill -9 mid-write


def _writer(directory: str, worker: int, log_path: str, rounds: int, seed: int) -> None:
    """Bump a counter of a random step, then log it (only after the store returned: committed)."""
    try:
        store = ProfileStore(directory)
        rng = random.Random(seed)
        with open(log_path, "a") as log:
            for _ in range(rounds):
                step = rng.choice(STEPS)

                def bump(current: ProfileRecord | None, step: str = step) -> ProfileRecord:
                    base = current or ProfileRecord(model_fingerprint=FP, step_key=step)
                    extra = dict(base.extra)
                    extra[f"w{worker}"] = int(extra.get(f"w{worker}", 0)) + 1
                    return base.model_copy(update={"calls": base.calls + 1, "extra": extra})

                store.update(FP, step, bump)
                log.write(f"{step}\n")
                log.flush()
                os.fsync(log.fileno())
    finally:
        os._exit(0)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_writers_killed_mid_write_lose_no_committed_profile(tmp_path: Path) -> None:
    """4 processes update overlapping steps; a fifth is SIGKILLed at a random moment, 50 times over."""
    ctx = multiprocessing.get_context("fork")
    store_dir = tmp_path / "store"
    outside = _outside(tmp_path)
    before = _snapshot(outside)
    logs = tmp_path / "logs"
    logs.mkdir()
    steady = [ctx.Process(target=_writer, args=(str(store_dir), w, str(logs / f"w{w}"), 150, w)) for w in range(4)]
    for p in steady:
        p.start()
    rng = random.Random(0)
    killed = []
    for k in range(50):
        victim_id = 100 + k
        victim = ctx.Process(target=_writer, args=(str(store_dir), victim_id, str(logs / f"w{victim_id}"), 10_000, k))
        victim.start()
        time.sleep(rng.uniform(0.0, 0.04))
        os.kill(victim.pid, signal.SIGKILL)
        victim.join()
        killed.append(victim_id)
    for p in steady:
        p.join(timeout=300)
        assert p.exitcode == 0
    store = ProfileStore(store_dir)
    records = {r.step_key: r for r in store.list(FP)}
    assert sorted(records) == sorted(STEPS)
    for step, record in records.items():
        counts: Counter[str] = Counter()  # a victim killed before it opened its log logged nothing
        for log in logs.iterdir():
            counts[log.name] = Counter(log.read_text().split())[step]
        stored = {k: int(v) for k, v in record.extra.items() if k.startswith("w")}
        for w in range(4):  # finished normally: every logged update is there, exactly once
            assert stored.get(f"w{w}", 0) == counts[f"w{w}"], (step, w)
        for v in killed:  # killed: logged updates are there; at most one more (killed before logging it)
            assert counts[f"w{v}"] <= stored.get(f"w{v}", 0) <= counts[f"w{v}"] + 1, (step, v)
        # each update bumped both counters in one atomic write: none half-applied, none lost
        assert record.calls == sum(stored.values())
        victims_wrote = sum(stored.get(f"w{v}", 0) for v in killed)
    assert victims_wrote > 0, "no victim got to write before it was killed: the test tested nothing"
    assert not [p for p in store_dir.rglob("*.corrupt-*")], "a killed writer left a torn record"
    assert _snapshot(outside) == before


# ------------------------------------------------------------------------------ bad files


def _valid_record(step: str, **changes) -> dict:
    data = ProfileRecord(model_fingerprint="x", step_key=step).model_dump(mode="json")
    data.update(changes)
    return data


BAD_RECORDS = {
    "garbage": lambda p, fp: p.write_bytes(b"\x00\xff not json"),
    "truncated": lambda p, fp: p.write_text(json.dumps(_valid_record("bad", model_fingerprint=fp))[:40]),
    "foreign-json": lambda p, fp: p.write_text('{"settings": {"theme": "dark"}}'),
    "since-improvement-null": lambda p, fp: p.write_text(
        json.dumps(_valid_record("bad", model_fingerprint=fp, iterations=3, extra={"since_improvement": None}))
    ),
    "since-improvement-negative": lambda p, fp: p.write_text(
        json.dumps(_valid_record("bad", model_fingerprint=fp, iterations=3, extra={"since_improvement": -24}))
    ),
    "observations-garbage": lambda p, fp: p.write_text(
        json.dumps(_valid_record("bad", model_fingerprint=fp, iterations=3, observations=[{"attention": "x"}]))
    ),
    "a-directory": lambda p, fp: p.mkdir(),
    "a-fifo": lambda p, fp: os.mkfifo(p),
    "link-to-dev-zero": lambda p, fp: p.symlink_to("/dev/zero"),
    "link-loop": lambda p, fp: p.symlink_to(p),
}


@pytest.mark.parametrize("kind", sorted(BAD_RECORDS))
def test_a_bad_record_costs_a_search_never_a_call(model, expected, tmp_path: Path, kind: str) -> None:
    store = ProfileStore(tmp_path / "store")
    engine = _engine(model, store)
    path = store.path_for(engine.fingerprint, "bad")
    path.parent.mkdir(parents=True)
    BAD_RECORDS[kind](path, engine.fingerprint)
    for _ in range(2):  # the first call meets the bad file, the second whatever replaced it
        assert _generate_in_time(engine, step_key="bad") == expected
    record = store.get(engine.fingerprint, "bad")
    if kind not in ("a-directory", "a-fifo", "link-to-dev-zero", "link-loop"):
        assert record is not None and record.calls >= 1  # set aside and replaced by a fresh, working profile


def test_a_newer_schema_record_is_left_alone(model, expected, tmp_path: Path) -> None:
    """A newer release's record (rolling upgrade) is skipped read-only: never renamed, never overwritten."""
    store = ProfileStore(tmp_path / "store")
    engine = _engine(model, store)
    path = store.path_for(engine.fingerprint, "new")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_valid_record("new", model_fingerprint=engine.fingerprint, schema_version=99)))
    before = path.read_bytes()
    assert _generate_in_time(engine, step_key="new") == expected
    store.list()
    assert path.read_bytes() == before
    assert not list(path.parent.glob("*.corrupt-*"))


@pytest.mark.usefixtures("own_measurements")
def test_a_bad_cost_file_is_measured_again(model, expected, tmp_path: Path, caplog) -> None:
    store = ProfileStore(tmp_path / "store")
    engine = _engine(model, store)
    from swift_engine.kernels.costs import cost_file, measurement_dir

    path = cost_file(measurement_dir(), engine.fingerprint, engine.runner)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"verify_s": {}, "draft_s_at": {"0.0": 0.01, "0.5": 0.005}, "head_s": 0.001}))
    with caplog.at_level(logging.WARNING):
        assert _generate_in_time(engine, step_key="c") == expected
    assert "cost file" in caplog.text
    assert json.loads(path.read_text())["verify_s"]  # measured and saved again


@pytest.mark.usefixtures("own_measurements")
def test_costs_kept_by_another_cpu_are_not_used(model, expected, tmp_path: Path, monkeypatch) -> None:
    """A measurement folder shared with another machine: that machine's pass costs are its own."""
    from swift_engine.kernels import costs

    store = ProfileStore(tmp_path / "store")
    here = _engine(model, store)
    assert _generate_in_time(here, step_key="c") == expected
    (mine,) = (costs.measurement_dir() / "_costs").glob(f"{here.fingerprint}-*.json")
    monkeypatch.setattr(costs, "cpu_key", lambda: "0therCPU00")
    there = _engine(model, store)
    assert _generate_in_time(there, step_key="c") == expected
    theirs = costs.cost_file(costs.measurement_dir(), there.fingerprint, there.runner)
    assert theirs != mine and theirs.name.endswith("-0therCPU00.json")
    assert json.loads(theirs.read_text())["verify_s"]  # measured on "that" CPU, not read from this one's


def test_foreign_files_in_the_store_are_never_touched(model, expected, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    engine = _engine(model, store_dir)
    assert _generate_in_time(engine, step_key="answer") == expected
    foreign = {
        store_dir / "docs" / "settings.json": '{"a": 1}',
        store_dir / engine.fingerprint / "notes.json": "not a profile",
        store_dir / engine.fingerprint / "README.txt": "hello",
    }
    for path, text in foreign.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    before = {p: p.read_bytes() for p in foreign}
    listing = {p.name for p in store_dir.rglob("*")}
    store = ProfileStore(store_dir)
    assert [r.step_key for r in store.list()] == ["answer"]
    assert {p.name for p in store_dir.rglob("*")} == listing  # listing created nothing (no .lock beside them)
    store.reset()
    for path, data in before.items():
        assert path.read_bytes() == data
    assert store.list() == []


# ------------------------------------------------------------------------------ hostile keys and names


HOSTILE_KEYS = [
    "a/b",
    "../../outside/passwd",
    "..",
    "C:\\windows",
    "name\x00nul",
    "k" * 10_000,
    "\x1b[2Jred",
    "\u202eevil",
]


def test_hostile_step_keys_stay_inside_the_store_or_are_refused(model, expected, tmp_path: Path) -> None:
    outside = _outside(tmp_path)
    before = _snapshot(outside)
    store_dir = tmp_path / "store"
    engine = _engine(model, store_dir)
    for key in HOSTILE_KEYS:
        try:
            ids = engine.generate(PROMPT, max_new_tokens=N_NEW, step_key=key).token_ids
        except ValueError as exc:
            assert "step key" in str(exc) and len(str(exc)) < 500  # one clear, bounded message
        else:
            assert ids == expected
    assert _snapshot(outside) == before
    for path in tmp_path.rglob("*"):
        assert path.is_relative_to(store_dir) or path.is_relative_to(outside), path


def test_hostile_names_are_shown_escaped(model, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from swift_integrations.cli.app import app

    store_dir = tmp_path / "store"
    engine = SwiftEngine(
        model,
        CharTokenizer(),
        SwiftConfig(skip_ratio=0.25),
        model_name="\x1b]0;pwned\x07\x1b[2J../../evil",
        profile_store=store_dir,
    )
    engine.generate(PROMPT, max_new_tokens=N_NEW, step_key="\u202eright-to-left")
    result = CliRunner().invoke(app, ["profiles", "list", "--profile-dir", str(store_dir)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output and "\u202e" not in result.output
    assert "pwned" in result.output  # shown, escaped


# ------------------------------------------------------------------------------ read-only and full disks


@contextlib.contextmanager
def _small_tmpfs(path: Path, size: str):
    """A real tmpfs mounted at ``path`` (root with mount rights), else skip."""
    path.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    except FileNotFoundError:
        pytest.skip("no mount command")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _make_read_only(path: Path) -> None:
    if os.geteuid() == 0:
        done = subprocess.run(["mount", "-o", "remount,ro", str(path)], capture_output=True)
        assert done.returncode == 0, done.stderr
    else:
        for p in [path, *path.rglob("*")]:
            if p.is_dir():
                p.chmod(0o555)


def test_a_read_only_store_costs_nothing_but_the_saving(model, expected, tmp_path: Path, caplog) -> None:
    with _small_tmpfs(tmp_path / "ro", "4m") as store_dir:
        first = _engine(model, store_dir)
        assert _generate_in_time(first, step_key="answer") == expected
        before = _snapshot(store_dir)
        _make_read_only(store_dir)
        engine = _engine(model, store_dir)
        with caplog.at_level(logging.WARNING):
            for key in ("answer", "new-step"):
                assert _generate_in_time(engine, step_key=key) == expected
        assert "could not save the profile" in caplog.text
        assert _snapshot(store_dir) == before
        assert engine.profiles.get("answer") is not None


def test_a_full_filesystem_costs_nothing_but_the_saving(model, expected, tmp_path: Path, caplog) -> None:
    with _small_tmpfs(tmp_path / "full", "256k") as store_dir:
        first = _engine(model, store_dir)
        assert _generate_in_time(first, step_key="answer") == expected
        committed = {p: p.read_bytes() for p in store_dir.rglob("*.json")}
        filler = store_dir / "filler.bin"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == 28  # ENOSPC: the disk is full now
        finally:
            os.close(fd)
        engine = _engine(model, store_dir)
        with caplog.at_level(logging.WARNING):
            for key in ("answer", "new-step"):
                assert _generate_in_time(engine, step_key=key) == expected
        assert "could not save the profile" in caplog.text
        for path, data in committed.items():  # atomic writes: a full disk never truncates a record
            assert path.read_bytes() == data
        assert not [p for p in store_dir.rglob("*.tmp")]  # failed writes cleaned up after themselves


# ------------------------------------------------------------------------------ concurrency


def test_two_engines_one_model_one_store_under_threads(model, expected, tmp_path: Path) -> None:
    """A searching engine and a fixed-set one share a model and a store; every call is counted once."""
    store_dir = tmp_path / "store"
    engines = [_engine(model, store_dir), _engine(model, store_dir, skip_ratio=0.5)]
    calls: Counter[str] = Counter()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        try:
            for j in range(3):
                key = STEPS[(i + j) % 3]
                assert engines[i % 2].generate(PROMPT, max_new_tokens=N_NEW, step_key=key).token_ids == expected
                with lock:
                    calls[key] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors[0]
    records = {r.step_key: r for r in ProfileStore(store_dir).list()}
    assert {k: r.calls for k, r in records.items()} == dict(calls)  # no lost commit


def test_abandoned_streams_leave_the_engine_and_store_sound(model, expected, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    engine = _engine(model, store_dir)
    rng = random.Random(1)
    finished = 0
    for i in range(12):
        stream = engine.stream(PROMPT, max_new_tokens=N_NEW, step_key=STEPS[i % 3])
        got: list[int] = []
        stop_after = rng.randrange(0, 6)
        for n, chunk in enumerate(stream):
            got += chunk.token_ids
            if n == stop_after and i % 2 == 0:
                break  # abandoned mid-way (closed here, or dropped on the floor below)
        else:
            finished += 1
            assert got == expected
        if i % 4 == 0:
            stream.close()
        assert expected[: len(got)] == got
        del stream
    assert sum(r.calls for r in ProfileStore(store_dir).list()) == finished
    box: list[list[int]] = []
    t = threading.Thread(target=lambda: box.append(engine.generate(PROMPT, max_new_tokens=N_NEW).token_ids))
    t.start()
    t.join(120)
    assert box == [expected]


def test_cancelled_async_calls_free_the_engine(model, expected, tmp_path: Path) -> None:
    from swift_integrations import SwiftChatModel

    engine = _engine(model, tmp_path / "store")
    chat = SwiftChatModel(engine=engine, max_tokens=N_NEW, temperature=0.0)
    reference = chat.invoke("Hi").content

    async def scenario() -> str:
        async def consume() -> None:
            async for _ in chat.astream("Hi"):
                await asyncio.sleep(0.05)

        for _ in range(3):
            task = asyncio.create_task(consume())
            await asyncio.sleep(0.2)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return (await asyncio.wait_for(chat.ainvoke("Hi"), timeout=120)).content

    assert asyncio.run(scenario()) == reference
    assert engine.generate(PROMPT, max_new_tokens=N_NEW).token_ids == expected
