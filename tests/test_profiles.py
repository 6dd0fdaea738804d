"""Tests for swift_engine.store.profile_store: real files, real processes, no mocks.

The store is the one place where concurrent pipeline workers meet, so besides the
round trips these tests hammer it from several processes and threads and feed it
corrupt files, checking that nothing is lost and nothing raises.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from swift_engine.store.profile_store import (
    SCHEMA_VERSION,
    ProfileRecord,
    ProfileStore,
    SkipSet,
    default_profile_dir,
    safe_step_name,
    validate_step_key,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
FP = "0123456789abcdef"
FP2 = "fedcba9876543210"


def _record(step_key: str, fingerprint: str = FP, **kwargs: object) -> ProfileRecord:
    kwargs.setdefault("skip", SkipSet(attention=[1, 3], mlp=[2]))
    return ProfileRecord(model_fingerprint=fingerprint, step_key=step_key, **kwargs)  # type: ignore[arg-type]


# Child interpreters import swift_engine.store.profile_store from this checkout (the same source
# files under test). The package __init__ imports lazily, so this pulls in neither torch nor
# transformers (seconds per process): only the store, profile_records and safe_files.
_CHILD_PRELUDE = f"""
import sys
sys.path.insert(0, {str(REPO_ROOT)!r})
import swift_engine.store.profile_store as profiles
ProfileRecord, ProfileStore, SkipSet = profiles.ProfileRecord, profiles.ProfileStore, profiles.SkipSet
"""


def _child_command(code: str) -> list[str]:
    return [sys.executable, "-c", _CHILD_PRELUDE + textwrap.dedent(code)]


def _run_python(code: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with ProfileRecord/ProfileStore/SkipSet in scope."""
    return subprocess.run(
        _child_command(code),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def store(tmp_path: Path) -> ProfileStore:
    return ProfileStore(tmp_path / "profiles")


# --------------------------------------------------------------------------- models


def test_skipset_sorts_dedups_and_rejects_negatives() -> None:
    skip = SkipSet(attention=[5, 1, 5, 3], mlp=[2, 2])
    assert skip.attention == [1, 3, 5]
    assert skip.mlp == [2]
    assert skip.key() == ((1, 3, 5), (2,))
    assert hash(skip.key()) == hash(SkipSet(attention=[3, 1, 5], mlp=[2]).key())
    assert skip.ratio(4) == pytest.approx(4 / 8)
    assert SkipSet.empty().key() == ((), ())
    assert SkipSet.empty().ratio(32) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        SkipSet(attention=[-1], mlp=[])
    with pytest.raises(ValueError):
        SkipSet(attention=["3"], mlp=[])  # type: ignore[list-item]


def test_record_defaults_and_schema_version_guard() -> None:
    record = _record("summarize")
    assert record.schema_version == SCHEMA_VERSION
    assert (record.iterations, record.calls, record.tokens_seen) == (0, 0, 0)
    assert not record.converged and not record.plain
    assert record.observations == [] and record.extra == {}
    assert record.created_at > 0 and record.updated_at > 0
    with pytest.raises(ValueError, match="newer"):
        _record("summarize", schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(ValueError):
        _record("summarize", fingerprint="../escape")


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "non-empty"),
        ("   \t ", "non-empty"),
        ("x" * 201, "at most 200"),
        ("plan\nact", "control character"),
        ("plan\x00", "control character"),
        ("bell\x07", "control character"),
    ],
)
def test_validate_step_key_rejects(key: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_step_key(key)


def test_validate_step_key_accepts_and_returns_exact_key() -> None:
    for key in ("summarize", "agent:plan", " padded ", "x" * 200, "résumé/étape 2", "思考"):
        assert validate_step_key(key) == key


def test_bad_step_key_is_rejected_by_store(store: ProfileStore) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        store.get(FP, "  ")
    with pytest.raises(ValueError):
        _record("a\nb")
    with pytest.raises(ValueError, match="fingerprint"):
        store.get("../../etc", "summarize")


# --------------------------------------------------------------------------- store basics


def test_round_trip_put_get_list_delete_reset(store: ProfileStore) -> None:
    assert store.get(FP, "summarize") is None
    assert store.list() == []
    assert store.delete(FP, "summarize") is False
    assert store.reset() == 0

    original = _record(
        "summarize",
        model_name="tiny-llama",
        score=0.71,
        expected_speedup=1.3,
        iterations=7,
        observations=[{"attention": [1], "mlp": [2], "score": 0.7, "speedup": 1.1}],
        extra={"draft_sources": {"layers": {"accepted": 10, "proposed": 14}}},
    )
    store.put(original)
    path = store.path_for(FP, "summarize")
    assert path.is_file() and path.parent.name == FP
    assert json.loads(path.read_text())["step_key"] == "summarize"
    assert store.get(FP, "summarize") == original

    store.put(_record("agent:plan"))
    store.put(_record("summarize", fingerprint=FP2))
    assert [(r.model_fingerprint, r.step_key) for r in store.list()] == [
        (FP, "agent:plan"),
        (FP, "summarize"),
        (FP2, "summarize"),
    ]
    assert [r.step_key for r in store.list(FP2)] == ["summarize"]
    assert store.list("0000") == []

    assert store.delete(FP, "agent:plan") is True
    assert store.get(FP, "agent:plan") is None
    assert store.delete(FP, "agent:plan") is False

    store.put(_record("agent:plan"))
    assert store.reset(step_key="summarize") == 2  # across both fingerprints
    assert [r.step_key for r in store.list()] == ["agent:plan"]
    store.put(_record("x", fingerprint=FP2))
    assert store.reset(fingerprint=FP) == 1
    assert [(r.model_fingerprint, r.step_key) for r in store.list()] == [(FP2, "x")]
    assert store.reset() == 1
    assert store.list() == []
    # Stores are stateless: a new instance on the same directory sees the same thing.
    store.put(_record("again"))
    assert ProfileStore(store.directory).get(FP, "again") is not None


def test_update_read_modify_write(store: ProfileStore) -> None:
    def bump(current: ProfileRecord | None) -> ProfileRecord:
        record = current or _record("summarize")
        record.calls += 1
        record.tokens_seen += 10
        return record

    first = store.update(FP, "summarize", bump)
    assert first is not None and first.calls == 1
    before = first.updated_at
    time.sleep(0.01)
    second = store.update(FP, "summarize", bump)
    assert second is not None and (second.calls, second.tokens_seen) == (2, 20)
    assert second.updated_at > before
    assert second.created_at == first.created_at

    # Returning None writes nothing and reports what is stored.
    unchanged = store.update(FP, "summarize", lambda current: None)
    assert unchanged == store.get(FP, "summarize") == second
    assert store.update(FP, "absent", lambda current: None) is None
    assert store.get(FP, "absent") is None

    with pytest.raises(ValueError, match="got a record for"):
        store.update(FP, "summarize", lambda current: _record("other"))
    assert store.get(FP, "summarize") == second


def test_same_slug_step_keys_do_not_collide(store: ProfileStore) -> None:
    keys = ["agent:plan", "agent/plan", "agent plan", "Agent:Plan", "agent?plan", "../agent:plan"]
    names = {safe_step_name(key) for key in keys}
    assert len(names) == len(keys)
    assert all(name.startswith("agent_plan-") for name in names)
    for index, key in enumerate(keys):
        store.put(_record(key, calls=index))
    for index, key in enumerate(keys):
        record = store.get(FP, key)
        assert record is not None and record.step_key == key and record.calls == index
    assert sorted(r.step_key for r in store.list()) == sorted(keys)
    # Nothing escaped the fingerprint directory.
    assert {p.parent for p in store.directory.rglob("*.json")} == {store.directory / FP}


def test_default_directory_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWIFT_PROFILE_DIR", str(tmp_path / "from-env"))
    assert default_profile_dir() == tmp_path / "from-env"
    store = ProfileStore()
    assert store.directory == tmp_path / "from-env"
    assert not store.directory.exists()  # created on demand only
    store.put(_record("summarize"))
    assert (tmp_path / "from-env" / FP).is_dir()
    monkeypatch.delenv("SWIFT_PROFILE_DIR")
    assert default_profile_dir().name == "profiles"


# --------------------------------------------------------------------------- persistence


def test_separate_process_reads_and_writes(store: ProfileStore) -> None:
    store.put(_record("summarize", model_name="tiny", score=0.5, calls=3))
    result = _run_python(
        f"""
        import json
        store = ProfileStore({str(store.directory)!r})
        record = store.get({FP!r}, "summarize")
        print(json.dumps({{"calls": record.calls, "score": record.score, "name": record.model_name,
                           "attention": record.skip.attention}}))
        def bump(current):
            current.calls += 1
            return current
        store.update({FP!r}, "summarize", bump)
        """
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"calls": 3, "score": 0.5, "name": "tiny", "attention": [1, 3]}
    record = store.get(FP, "summarize")
    assert record is not None and record.calls == 4


# --------------------------------------------------------------------------- concurrency

_WORKER = """
import os, sys, time
from pathlib import Path

directory, worker, fingerprint, go = sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
store = ProfileStore(directory)
deadline = time.monotonic() + 30
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.005)

def bump(current):
    if current is None:
        current = ProfileRecord(model_fingerprint=fingerprint, step_key="shared", skip=SkipSet.empty())
    current.calls += 1
    current.observations.append({"worker": worker})
    return current

for i in range(25):
    store.update(fingerprint, "shared", bump)
    if i % 5 == 0:
        store.put(ProfileRecord(model_fingerprint=fingerprint, step_key=f"worker{worker}:rec{i}",
                                skip=SkipSet(attention=[worker], mlp=[i])))
"""


def test_concurrent_processes_never_lose_updates(tmp_path: Path) -> None:
    directory = tmp_path / "profiles"
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [*_child_command(_WORKER), str(directory), str(worker), FP, str(go)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for worker in range(4)
    ]
    time.sleep(0.3)  # let the interpreters start so they really contend
    go.touch()
    for proc in procs:
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr

    store = ProfileStore(directory)
    shared = store.get(FP, "shared")
    assert shared is not None
    assert shared.calls == 100
    assert sorted(o["worker"] for o in shared.observations) == sorted([0, 1, 2, 3] * 25)
    for worker in range(4):
        for i in range(0, 25, 5):
            record = store.get(FP, f"worker{worker}:rec{i}")
            assert record is not None and record.skip.key() == ((worker,), (i,))
    assert len(store.list(FP)) == 1 + 4 * 5
    # No torn writes or set-aside files appeared.
    leftovers = [p.name for p in (directory / FP).iterdir() if ".corrupt-" in p.name or p.name.endswith(".tmp")]
    assert leftovers == []


def test_concurrent_threads_never_lose_updates(tmp_path: Path) -> None:
    directory = tmp_path / "profiles"
    barrier = threading.Barrier(8)

    def worker(index: int) -> None:
        store = ProfileStore(directory)  # separate instances, as separate components would have
        barrier.wait()

        def bump(current: ProfileRecord | None) -> ProfileRecord:
            record = current or _record("shared", skip=SkipSet.empty())
            record.calls += 1
            record.tokens_seen += index
            return record

        for i in range(25):
            store.update(FP, "shared", bump)
            if i % 10 == 0:
                store.put(_record(f"thread{index}:{i}"))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(worker, range(8)))

    store = ProfileStore(directory)
    shared = store.get(FP, "shared")
    assert shared is not None
    assert shared.calls == 8 * 25
    assert shared.tokens_seen == 25 * sum(range(8))
    assert len(store.list(FP)) == 1 + 8 * 3


# --------------------------------------------------------------------------- corrupt files


def _corrupt_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if ".corrupt-" in p.name)


def test_corrupt_files_are_set_aside_foreign_and_newer_ones_left_alone(
    store: ProfileStore, caplog: pytest.LogCaptureFixture
) -> None:
    # Updated for the ownership rule (see profile_store's docstring): this test used to
    # expect that a foreign ``foreign.json`` and a newer release's record were renamed
    # aside too. Now only files with our record names and unusable content are set aside.
    caplog.set_level(logging.INFO, logger="swift_engine.store.profile_store")
    store.put(_record("good"))

    garbage_path = store.path_for(FP, "summarize")
    garbage_path.write_bytes(b"\x00\xff\xfe not json at all \x89PNG")
    foreign_path = store.directory / FP / "foreign.json"
    foreign_path.write_text(json.dumps({"schema": "somebody-else", "layers": [1, 2, 3]}))
    future = _record("future").model_dump(mode="json")
    future["schema_version"] = SCHEMA_VERSION + 1
    future_path = store.path_for(FP, "future")
    future_path.write_text(json.dumps(future))
    future_bytes = future_path.read_bytes()
    misplaced_path = store.path_for(FP, "misplaced")  # holds the record of another key
    misplaced_path.write_text(_record("good").model_dump_json())

    # get() on the garbage record: absent, moved aside, warned about, no exception.
    assert store.get(FP, "summarize") is None
    assert not garbage_path.exists()
    assert any(garbage_path.name in r.getMessage() and "invalid JSON" in r.getMessage() for r in caplog.records)

    # list() skips the rest and still returns the good record.
    assert [r.step_key for r in store.list()] == ["good"]
    messages = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert misplaced_path.name in messages and "does not belong" in messages
    assert foreign_path.name not in messages  # not ours: not even opened
    info = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    assert future_path.name in info and "newer" in info
    for path in (garbage_path, misplaced_path):
        assert not path.exists()
        assert any(name.startswith(path.name + ".corrupt-") for name in _corrupt_files(store.directory))
    assert len(_corrupt_files(store.directory)) == 2
    assert foreign_path.read_text() == json.dumps({"schema": "somebody-else", "layers": [1, 2, 3]})
    assert not (store.directory / FP / "foreign.json.lock").exists()
    assert future_path.read_bytes() == future_bytes

    # The store keeps working: listing again is quiet, and new writes land.
    caplog.clear()
    assert [r.step_key for r in store.list()] == ["good"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    store.put(_record("summarize", calls=5))
    record = store.get(FP, "summarize")
    assert record is not None and record.calls == 5
    assert sorted(r.step_key for r in store.list()) == ["good", "summarize"]


def test_update_over_corrupt_file_starts_fresh(store: ProfileStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="swift_engine.store.profile_store")
    path = store.path_for(FP, "summarize")
    path.parent.mkdir(parents=True)
    path.write_text("{truncated")
    seen: list[ProfileRecord | None] = []

    def bump(current: ProfileRecord | None) -> ProfileRecord:
        seen.append(current)
        return _record("summarize", calls=1)

    result = store.update(FP, "summarize", bump)
    assert seen == [None]
    assert result is not None and result.calls == 1
    assert len(_corrupt_files(store.directory)) == 1
    assert any("summarize" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


# --------------------------------------------------------------------------- export / import


def test_reference_format_round_trip(store: ProfileStore, tmp_path: Path) -> None:
    store.put(_record("cnndm", model_name="llama-2-13b", skip=SkipSet(attention=[9, 2], mlp=[4, 30])))
    store.put(_record("agent:plan", model_name="llama-2-13b", skip=SkipSet(attention=[1], mlp=[])))
    store.put(_record("unnamed", skip=SkipSet(attention=[5], mlp=[6])))
    store.put(_record("plainstep", model_name="llama-2-13b", plain=True))
    store.put(_record("nothing", model_name="llama-2-13b", skip=SkipSet.empty()))

    out = tmp_path / "skip_layers.json"
    assert store.export_reference(out) == 3
    data = json.loads(out.read_text())
    assert data == {
        "llama-2-13b_cnndm": {"attention": [2, 9], "mlp": [4, 30]},
        "llama-2-13b_agent:plan": {"attention": [1], "mlp": []},
        f"{FP}_unnamed": {"attention": [5], "mlp": [6]},
    }
    assert store.export_reference(tmp_path / "none.json", fingerprint=FP2) == 0
    assert json.loads((tmp_path / "none.json").read_text()) == {}

    other = ProfileStore(tmp_path / "other")
    imported = other.import_reference(out, fingerprint=FP2, model_name="llama-2-13b", num_layers=40)
    assert sorted(r.step_key for r in imported) == ["agent:plan", "cnndm"]
    cnndm = other.get(FP2, "cnndm")
    assert cnndm is not None
    assert cnndm.skip.key() == ((2, 9), (4, 30))
    assert cnndm.converged and cnndm.score is None and not cnndm.plain
    assert cnndm.model_name == "llama-2-13b"

    # Importing again keeps usage counters but refreshes the skip set.
    other.update(FP2, "cnndm", lambda r: r.model_copy(update={"calls": 7}) if r else None)
    (tmp_path / "v2.json").write_text(json.dumps({"llama-2-13b_cnndm": {"attention": [0], "mlp": [1]}}))
    other.import_reference(tmp_path / "v2.json", fingerprint=FP2, model_name="llama-2-13b")
    refreshed = other.get(FP2, "cnndm")
    assert refreshed is not None and refreshed.calls == 7 and refreshed.skip.key() == ((0,), (1,))

    # No key with the model prefix: every entry is imported under its whole key.
    fallback = other.import_reference(out, fingerprint="aa55", model_name="mistral-7b")
    assert sorted(r.step_key for r in fallback) == sorted(data)
    # Export -> import -> export is stable for the model-named entries.
    again = tmp_path / "again.json"
    other.export_reference(again, fingerprint=FP2)
    assert json.loads(again.read_text()) == {
        "llama-2-13b_cnndm": {"attention": [0], "mlp": [1]},
        "llama-2-13b_agent:plan": {"attention": [1], "mlp": []},
    }


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"attention": [1, 40], "mlp": []}, "out of range"),
        ({"attention": [], "mlp": [-2]}, "negative"),
        ({"attention": ["3"], "mlp": []}, "not an integer"),
        ({"attention": 3, "mlp": []}, "must be a list"),
        ([1, 2], "must be an object"),
    ],
)
def test_reference_import_rejects_bad_entries(tmp_path: Path, entry: object, message: str) -> None:
    path = tmp_path / "skip_layers.json"
    path.write_text(json.dumps({"llama_ok": {"attention": [1], "mlp": [2]}, "llama_bad": entry}))
    store = ProfileStore(tmp_path / "profiles")
    with pytest.raises(ValueError, match=message) as excinfo:
        store.import_reference(path, fingerprint=FP, model_name="llama", num_layers=40)
    assert "llama_bad" in str(excinfo.value)
    assert store.list() == []  # validated before anything was written


def test_own_json_export_import_round_trip(store: ProfileStore, tmp_path: Path) -> None:
    records = [
        _record("summarize", model_name="m", score=0.8, observations=[{"attention": [1], "mlp": [], "score": 0.8}]),
        _record("agent:plan", iterations=3, converged=True, extra={"k": {"v": 1}}),
        _record("summarize", fingerprint=FP2, plain=True),
    ]
    for record in records:
        store.put(record)
    out = tmp_path / "export.json"
    assert store.export_json(out) == 3
    document = json.loads(out.read_text())
    assert document["schema"] == "swift-profiles" and document["version"] == 1
    assert len(document["profiles"]) == 3
    assert store.export_json(tmp_path / "fp2.json", fingerprint=FP2) == 1

    other = ProfileStore(tmp_path / "other")
    assert other.import_json(out) == 3
    assert other.list() == store.list()

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "something-else", "version": 1, "profiles": []}))
    with pytest.raises(ValueError, match="swift-profiles"):
        other.import_json(bad)
    bad.write_text(json.dumps({"schema": "swift-profiles", "version": 1, "profiles": [{"step_key": "x"}]}))
    with pytest.raises(ValueError, match="profile #0"):
        other.import_json(bad)
