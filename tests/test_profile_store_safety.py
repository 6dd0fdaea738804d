"""The profile store against hostile, foreign and unexpected files: real files in tmp_path.

A profile is an optimisation: whatever sits in the store directory may cost a search, never a
generation call, and files the store did not write are never touched. Mocks appear only where a
syscall failure cannot be produced for real (filelock raising NotImplementedError).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from filelock import FileLock, Timeout
from typer.testing import CliRunner

import swift_engine.search.step_profiles as step_profiles
import swift_engine.store.profile_store as profile_store
from swift_engine.config import SearchConfig
from swift_engine.kernels.costs import CostModel, load_or_measure
from swift_engine.search.layer_search import LayerSetSearch
from swift_engine.search.session import SearchSession
from swift_engine.search.state import Candidate
from swift_engine.search.step_profiles import IMPORTED_SPEEDUP, MAX_CACHED_STEPS, StepProfiles
from swift_engine.store.profile_store import (
    MAX_RECORD_BYTES,
    SCHEMA_VERSION,
    ProfileRecord,
    ProfileStore,
    ProfileStoreUnavailable,
    SkipSet,
    escape_nonprintable,
    safe_step_name,
)

from .conftest import finishes_in_time

REPO_ROOT = Path(__file__).resolve().parents[1]
FP = "0123456789abcdef"
FP2 = "fedcba9876543210"
NUM_LAYERS = 6
START = Candidate(frozenset({2}), frozenset({3}))
COSTS = {
    "verify_s": {"1": 0.010, "2": 0.011, "4": 0.012, "8": 0.015, "16": 0.021, "32": 0.034},
    "draft_s_at": {"0.0": 0.010, "0.5": 0.0058},
    "head_s": 0.002,
}


def _record(step_key: str, fingerprint: str = FP, **kwargs: object) -> ProfileRecord:
    kwargs.setdefault("skip", SkipSet(attention=[1, 3], mlp=[2]))
    return ProfileRecord(model_fingerprint=fingerprint, step_key=step_key, **kwargs)  # type: ignore[arg-type]


def _raw_record(step_key: str, fingerprint: str = FP, **changes: object) -> dict:
    data = _record(step_key, fingerprint).model_dump(mode="json")
    data.update(changes)
    return data


def _profiles(store: ProfileStore) -> StepProfiles:
    return StepProfiles(store, FP, "tiny", NUM_LAYERS, START, SearchConfig())


def _tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root``: file contents, or the kind of a non-file (links not followed)."""
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = f"link->{os.readlink(path)}"
        elif path.is_dir():
            out[rel] = "dir"
        elif path.is_file():
            out[rel] = path.read_bytes()
        else:
            out[rel] = "special"
    return out


def _ours(directory: Path) -> list[str]:
    """Files under ``directory`` that the store's naming rule claims."""
    return sorted(
        p.name
        for p in directory.rglob("*")
        if profile_store._RECORD_NAME_RE.fullmatch(p.name) or profile_store._is_our_auxiliary(p.name)
    )


@pytest.fixture
def store(tmp_path: Path) -> ProfileStore:
    return ProfileStore(tmp_path / "profiles")


# --------------------------------------------------------------------------- 1. foreign files


@pytest.mark.parametrize(
    "key", ["summarize", "agent:plan", "思考", "x" * 200, "..", "-_-", "A", " padded ", "résumé/étape 2", "a\u202eb"]
)
def test_record_name_rule_matches_every_name_the_store_writes(key: str) -> None:
    name = safe_step_name(key) + ".json"
    assert profile_store._RECORD_NAME_RE.fullmatch(name)
    assert profile_store._LOCK_NAME_RE.fullmatch(name + ".lock")
    assert profile_store._TMP_NAME_RE.fullmatch(f".{name}.0123456789abcdef.tmp")
    assert profile_store._CORRUPT_NAME_RE.fullmatch(f"{name}.corrupt-20260101T000000.000000Z-2")
    for foreign in ("settings.json", "notes.json", name + ".bak", "SUMMARIZE-0123456789ABCDEF.json", name + "\n"):
        assert not profile_store._RECORD_NAME_RE.fullmatch(foreign)


def test_foreign_files_are_never_touched_by_list_get_update_clean_or_reset(store: ProfileStore) -> None:
    store.put(_record("summarize"))
    root = store.directory
    (root / "docs").mkdir()
    (root / "docs" / "settings.json").write_text('{"theme": "dark"}')  # looks like a fingerprint dir
    (root / "docs" / "broken.json").write_text("{not json")
    (root / FP / "notes.json").write_text("\x00 garbage")
    (root / FP / "notes.json.lock").write_text("someone else's lock")
    (root / FP / ".notes.json.abcdef.tmp").write_text("someone else's temp")
    (root / FP / "summarize.json.corrupt-20200101T000000.000000Z").write_text("not one of ours")
    (root / "README.md").write_text("hello")
    old = time.time() - 90 * 24 * 3600
    for path in root.rglob("*"):
        if path.is_file() and "notes" in path.name:
            os.utime(path, (old, old))
    foreign = {k: v for k, v in _tree(root).items() if "summarize-" not in k}

    assert [r.step_key for r in store.list()] == ["summarize"]
    assert store.get(FP, "summarize") is not None
    store.update(FP, "summarize", lambda r: r)
    store.clean()
    after = _tree(root)
    assert {k: after.get(k) for k in foreign} == foreign
    assert not (root / "docs" / "settings.json.lock").exists()
    assert not [name for name in os.listdir(root / "docs") if "corrupt" in name or name.endswith(".lock")]

    assert store.reset() == 1
    assert _tree(root) == foreign  # only the foreign files are left, byte for byte


# --------------------------------------------------------------------------- 2. symbolic links


def test_symlinked_record_is_never_followed(store: ProfileStore, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="swift_engine.store.profile_store")
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(_raw_record("summarize", calls=7)))  # even a valid record
    before = outside.read_bytes()
    path = store.path_for(FP, "summarize")
    path.parent.mkdir(parents=True)
    path.symlink_to(outside)

    assert store.get(FP, "summarize") is None
    assert store.list() == []
    assert any("symbolic link" in m for m in caplog.messages)
    with pytest.raises(ProfileStoreUnavailable, match="not a regular file"):
        store.update(FP, "summarize", lambda r: _record("summarize"))
    with pytest.raises(ProfileStoreUnavailable):
        store.put(_record("summarize"))
    state, _ = _profiles(store).checkout("summarize")
    assert _profiles(store).commit("summarize", state, plain=False, tokens=3, extra={}) is None
    assert path.is_symlink() and outside.read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if "corrupt" in p.name] == []


def test_symlinked_fingerprint_directory_is_never_followed(store: ProfileStore, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="swift_engine.store.profile_store")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / f"{safe_step_name('summarize')}.json").write_text(json.dumps(_raw_record("summarize")))
    (elsewhere / f"{safe_step_name('bad')}.json").write_text("{broken")
    before = _tree(elsewhere)
    store.directory.mkdir()
    (store.directory / FP).symlink_to(elsewhere, target_is_directory=True)

    assert store.get(FP, "summarize") is None
    assert store.get(FP, "bad") is None
    assert store.list() == []
    assert any("symbolic link" in m for m in caplog.messages)
    with pytest.raises(ProfileStoreUnavailable, match="symbolic link"):
        store.put(_record("other"))
    assert store.reset() == 0
    store.clean()
    assert _tree(elsewhere) == before  # no lock file, no set-aside file, nothing written there
    assert (store.directory / FP).is_symlink()


# --------------------------------------------------------------------------- 3. bounded, non-blocking reads


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and symbolic links")
def test_fifo_device_directory_and_loop_records_neither_block_nor_raise(store: ProfileStore) -> None:
    keys = {"fifo": "fifo", "zero": "zero", "dir": "dir", "loop": "loop"}
    paths = {name: store.path_for(FP, key) for name, key in keys.items()}
    store.directory.joinpath(FP).mkdir(parents=True)
    os.mkfifo(paths["fifo"])
    paths["zero"].symlink_to("/dev/zero")
    paths["dir"].mkdir()
    paths["loop"].symlink_to(paths["loop"].name)  # ELOOP when followed

    for key in keys.values():
        assert finishes_in_time(lambda key=key: store.get(FP, key)) is None
    assert finishes_in_time(store.list) == []
    profiles = _profiles(store)
    for key in keys.values():
        state, record = finishes_in_time(lambda key=key: profiles.checkout(key))
        assert state.best == START and record.calls == 0
        assert finishes_in_time(lambda: profiles.commit(key, state, plain=False, tokens=1, extra={})) is None
    assert paths["zero"].is_symlink() and paths["dir"].is_dir() and paths["loop"].is_symlink()
    assert not [name for name in os.listdir(store.directory / FP) if "corrupt" in name]


def test_oversized_record_is_set_aside_without_reading_it_whole(store: ProfileStore) -> None:
    path = store.path_for(FP, "big")
    path.parent.mkdir(parents=True)
    padding = "x" * (MAX_RECORD_BYTES + 10)
    path.write_text(json.dumps(_raw_record("big", extra={"padding": padding})))
    assert store.get(FP, "big") is None
    assert not path.exists()
    assert [p.name for p in path.parent.iterdir() if ".corrupt-" in p.name]
    store.put(_record("big", calls=1))
    assert store.get(FP, "big").calls == 1


@pytest.mark.parametrize(
    "content",
    [
        '{"score": NaN}',
        '{"score": Infinity}',
        '{"score": 1e999}',
        '{"calls": ' + "9" * 5000 + "}",
        '{"extra": {"deep": ' + "[" * 100_000 + "]" * 100_000 + "}}",
        "[1, 2, 3]",
        "\udcff",
    ],
)
def test_hostile_json_is_set_aside_and_never_raises(store: ProfileStore, content: str) -> None:
    path = store.path_for(FP, "step")
    path.parent.mkdir(parents=True)
    base = json.dumps(_raw_record("step"))
    if content.startswith('{"'):  # merge the hostile member into a valid record
        content = base[:-1] + ", " + content[1:]
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    assert store.get(FP, "step") is None
    assert not path.exists()
    state, _ = _profiles(store).checkout("step")
    assert state.best == START


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_record_reads_as_absent_and_is_replaced_on_write(store: ProfileStore) -> None:
    store.put(_record("locked"))
    path = store.path_for(FP, "locked")
    path.chmod(0)
    assert store.get(FP, "locked") is None and store.list() == []
    assert not [p for p in path.parent.iterdir() if ".corrupt-" in p.name]  # unreadable is not invalid
    store.put(_record("locked", calls=2))
    assert store.get(FP, "locked").calls == 2


# --------------------------------------------------------------------------- 4. newer schema


def test_newer_schema_record_is_left_byte_identical(store: ProfileStore, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="swift_engine.store.profile_store")
    path = store.path_for(FP, "future")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_raw_record("future", schema_version=SCHEMA_VERSION + 1, new_field={"x": 1})))
    before = path.read_bytes()
    called: list[object] = []

    assert store.get(FP, "future") is None
    assert store.get(FP, "future") is None
    assert store.list() == []
    assert store.update(FP, "future", lambda r: called.append(r) or _record("future")) is None
    assert called == []
    store.put(_record("future", calls=9))
    store.import_reference(_write(store.directory.parent / "ref.json", {"m_future": {"attention": [1]}}), FP, "m")
    profiles = _profiles(store)
    state, record = profiles.checkout("future")
    assert state.best == START and record.calls == 0
    assert profiles.commit("future", state, plain=False, tokens=5, extra={}) is None
    store.clean()

    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if ".corrupt-" in p.name] == []
    infos = [r for r in caplog.records if "newer release" in r.getMessage()]
    assert sum(r.levelno == logging.INFO for r in infos) == 1  # said once, then only at debug level
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert store.reset(FP, "future") == 1  # an explicit reset goes by name
    assert not path.exists()


def _write(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document))
    return path


# --------------------------------------------------------------------------- 5. validation


@pytest.mark.parametrize(
    "extra",
    [
        {"since_improvement": None},
        {"since_improvement": -24},
        {"since_improvement": "3"},
        {"since_improvement": 2.5},
        {"best_draft_len": 0},
        {"best_draft_len": 10_000},
        {"calls_since_probe": None},
        {"context_acceptance": [1, 2]},
    ],
)
def test_record_with_bad_search_extras_is_set_aside_and_the_step_starts_fresh(store: ProfileStore, extra: dict) -> None:
    path = store.path_for(FP, "plan")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_raw_record("plan", iterations=40, extra=extra)))
    profiles = _profiles(store)

    state, record = profiles.checkout("plan")
    assert not path.exists() and [p for p in path.parent.iterdir() if ".corrupt-" in p.name]
    assert state.best == START and state.iterations == 0 and state.since_improvement == 0
    # everything that reads since_improvement works on that state
    search = LayerSetSearch(NUM_LAYERS, SearchConfig(hopeless_after=2), CostModel.from_dict(COSTS), 8)
    for score in (0.3, 0.2, 0.1, 0.05):
        search.update(state, search.propose(state), score)
    assert state.since_improvement >= 1 and state.iterations == 4
    session = SearchSession.open(profiles, "plan", SearchConfig(), CostModel.from_dict(COSTS), NUM_LAYERS, 8)
    assert session.affordable(time.perf_counter()) in (True, False)
    assert profiles.commit("plan", state, plain=False, tokens=10, extra={}) is not None
    assert store.get(FP, "plan").extra["since_improvement"] == state.since_improvement


@pytest.mark.parametrize(
    "changes",
    [
        {"observations": [{"attention": [1], "mlp": [], "score": 0.5, "speedup": None}]},
        {"observations": [{"attention": [-1], "mlp": [], "score": 0.5, "speedup": 1.0}]},
        {"observations": [{"attention": [5000], "mlp": [], "score": 0.5, "speedup": 1.0}]},
        {"observations": [{"attention": [1], "mlp": [], "score": "0.5", "speedup": 1.0}]},
        {"observations": [{"attention": [1], "mlp": [], "score": 7.0, "speedup": 1.0}]},
        {"observations": [{"attention": [1]}] * 1001},
        {"skip": {"attention": [1, 5000], "mlp": []}},
        {"expected_speedup": -1.0},
        {"score": 2.0},
        {"updated_at": -5},
    ],
)
def test_out_of_range_fields_make_a_record_invalid(store: ProfileStore, changes: dict) -> None:
    path = store.path_for(FP, "obs")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_raw_record("obs", **changes)))
    assert store.get(FP, "obs") is None
    assert not path.exists()


def test_import_json_rejects_invalid_records_and_writes_nothing(store: ProfileStore, tmp_path: Path) -> None:
    for bad in (
        {"extra": {"since_improvement": None}},
        {"extra": {"since_improvement": -24}},
        {"observations": [{"attention": [1], "mlp": [], "score": 0.5, "speedup": -3}]},
        {"model_fingerprint": "../escape"},
    ):
        document = {
            "schema": "swift-profiles",
            "version": 1,
            "profiles": [_raw_record("ok"), _raw_record("bad", **bad)],
        }
        with pytest.raises(ValueError, match="profile #1 is invalid"):
            store.import_json(_write(tmp_path / "import.json", document))
    nan = json.dumps({"schema": "swift-profiles", "version": 1, "profiles": [_raw_record("x")]}).replace(
        '"calls": 0', '"calls": NaN'
    )
    (tmp_path / "nan.json").write_text(nan)
    with pytest.raises(ValueError, match="not valid JSON"):
        store.import_json(tmp_path / "nan.json")
    assert store.list() == []


def test_imported_converged_set_is_used_with_a_finite_prior_and_stays_cached(store: ProfileStore, tmp_path) -> None:
    store.import_reference(_write(tmp_path / "ref.json", {"tiny_plan": {"attention": [1, 2], "mlp": [3]}}), FP, "tiny")
    profiles = _profiles(store)
    state, record = profiles.checkout("plan")
    assert record.converged and record.score is None
    assert state.best_speedup == IMPORTED_SPEEDUP and 1.0 <= state.best_speedup < 1.01
    assert state.best == Candidate(frozenset({1, 2}), frozenset({3}))
    session = SearchSession.open(profiles, "plan", SearchConfig(), CostModel.from_dict(COSTS), NUM_LAYERS, 8)
    assert not session.choice.plain and session.search is None  # the cached set is drafted with
    saved = profiles.commit("plan", state, plain=False, tokens=4, extra={})
    assert saved is not None and saved.score is None and saved.expected_speedup is None  # still "cached"
    # any measured set beats the prior
    search = LayerSetSearch(NUM_LAYERS, SearchConfig(), CostModel.from_dict(COSTS), 8)
    state.converged = False
    assert search.update(state, Candidate(frozenset({1, 2, 3, 4}), frozenset({1, 2, 3, 4})), 0.99)


def test_skip_set_beyond_the_models_layers_starts_fresh(store: ProfileStore) -> None:
    store.put(_record("wide", skip=SkipSet(attention=[1, 40], mlp=[]), iterations=3))
    state, _ = _profiles(store).checkout("wide")
    assert state.best == START and state.iterations == 0


def test_cost_file_that_would_fail_mid_generation_is_measured_again(tmp_path: Path) -> None:
    from swift_engine.model.runner import ModelRunner

    from .conftest import tiny_model

    runner = ModelRunner(tiny_model("llama", layers=4), "torch")
    path = tmp_path / "_costs" / "fp.json"
    path.parent.mkdir()
    for bad in (
        {"verify_s": {}, "draft_s_at": {"0.0": 0.01, "0.5": 0.005}, "head_s": 0.001},
        {**COSTS, "verify_s": {"2": 0.01, "4": 0.02}},
        {**COSTS, "draft_s_at": {"0.0": 0.01}},
        {**COSTS, "head_s": -1},
        {**COSTS, "verify_s": {"1": 0.0, "2": 0.01}},
    ):
        with pytest.raises(ValueError):
            CostModel.from_dict(bad)
    path.write_text(json.dumps({"verify_s": {}, "draft_s_at": {"0.0": 0.01, "0.5": 0.005}, "head_s": 0.001}))
    costs = load_or_measure(path, runner)
    assert costs.verify(3) > 0 and costs.draft(0.3) > 0
    saved = CostModel.from_dict(json.loads(path.read_text()))  # overwritten with the measurement
    assert saved.verify_s == costs.verify_s
    again = load_or_measure(path, runner)
    assert again.verify_s == costs.verify_s  # read back, not measured again

    if hasattr(os, "mkfifo"):
        path.unlink()
        os.mkfifo(path)  # a FIFO in its place must not block the engine
        assert finishes_in_time(lambda: load_or_measure(path, runner)).verify(2) > 0
        assert path.is_file()  # replaced by a measurement


# --------------------------------------------------------------------------- 6. permissions

# The child imports swift_engine.store.profile_store from this checkout; the package __init__ is lazy,
# so neither torch nor transformers is loaded (seconds per process).
_CHILD = f"""
import json, os, stat, sys
sys.path.insert(0, {str(REPO_ROOT)!r})
import swift_engine.store.profile_store as ps
out = {{}}
for mask in (0o022, 0o002):
    os.umask(mask)
    root = os.path.join(sys.argv[1], oct(mask))
    store = ps.ProfileStore(root)
    store.put(ps.ProfileRecord(model_fingerprint={FP!r}, step_key="shared"))
    record = store.path_for({FP!r}, "shared")
    modes = {{}}
    for name, path in (("record", record), ("lock", str(record) + ".lock"), ("dir", record.parent)):
        modes[name] = oct(stat.S_IMODE(os.stat(path).st_mode))
    ps.write_file_atomic(os.path.join(root, "_costs", "c.json"), b"{{}}")
    modes["cost"] = oct(stat.S_IMODE(os.stat(os.path.join(root, "_costs", "c.json")).st_mode))
    out[oct(mask)] = modes
print(json.dumps(out))
"""


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_new_files_honour_the_umask(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_CHILD), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    modes = json.loads(result.stdout)
    assert modes["0o22"] == {"record": "0o644", "lock": "0o644", "dir": "0o755", "cost": "0o644"}
    assert modes["0o2"] == {"record": "0o664", "lock": "0o664", "dir": "0o775", "cost": "0o664"}


# --------------------------------------------------------------------------- 7. filelock failures


@pytest.mark.parametrize("error", [NotImplementedError("no flock"), Timeout("x.lock"), RuntimeError("deadlock")])
def test_lock_failures_become_one_oserror_and_never_fail_a_commit(
    store: ProfileStore, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    store.put(_record("plan", calls=1))

    def fail(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(FileLock, "acquire", fail)  # filelock's own failure modes, not reproducible here
    with pytest.raises(ProfileStoreUnavailable, match="could not lock"):
        store.update(FP, "plan", lambda r: r)
    profiles = _profiles(store)
    state, record = profiles.checkout("plan")
    assert record.calls == 1
    assert profiles.commit("plan", state, plain=False, tokens=1, extra={}) is None


def test_lock_timeout_is_a_profile_store_unavailable(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path, lock_timeout=0.05)
    store.put(_record("plan"))
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with FileLock(str(store.path_for(FP, "plan")) + ".lock"):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(10)
        with pytest.raises(ProfileStoreUnavailable) as excinfo:
            store.update(FP, "plan", lambda r: r)
        assert isinstance(excinfo.value, OSError)
    finally:
        release.set()
        thread.join()
    assert store.update(FP, "plan", lambda r: r) is not None


def test_pyproject_requires_a_filelock_without_the_known_symlink_cves() -> None:
    text = (REPO_ROOT / "pyproject.toml").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith('"filelock')]
    assert lines and all(">=3.20.3" in line or ">=4.2.1" in line for line in lines), lines
    from importlib.metadata import version

    major, minor, patch = (int(part) for part in version("filelock").split(".")[:3])
    assert (major, minor, patch) >= (3, 20, 3)


# --------------------------------------------------------------------------- 8. bounded size


def _age(path: Path, seconds_ago: float) -> None:
    when = time.time() - seconds_ago
    os.utime(path, (when, when))


def test_max_records_evicts_the_least_recently_updated_but_never_the_new_one(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path, max_records=3)
    assert ProfileStore(tmp_path).max_records == 512 and ProfileStore(tmp_path, max_records=0).max_records is None
    for age, key in ((300, "oldest"), (200, "old"), (100, "recent")):
        store.put(_record(key))
        _age(store.path_for(FP, key), age)
    store.put(_record("new", fingerprint=FP2))
    assert sorted(r.step_key for r in store.list()) == ["new", "old", "recent"]
    assert not Path(str(store.path_for(FP, "oldest")) + ".lock").exists()
    # updating an existing record does not evict; a newer release's record is never evicted
    store.update(FP, "old", lambda r: r)
    future = store.path_for(FP, "future")
    future.write_text(json.dumps(_raw_record("future", schema_version=SCHEMA_VERSION + 1)))
    _age(future, 10_000)
    _age(store.path_for(FP, "recent"), 5_000)
    store.put(_record("newest"))  # 5 records for 3 places: the two coldest of ours go
    assert future.exists()
    assert sorted(r.step_key for r in store.list()) == ["newest", "old"]
    # the record being written is kept even when it is the only candidate
    tiny = ProfileStore(tmp_path / "tiny", max_records=1)
    tiny.put(_record("a"))
    tiny.put(_record("b"))
    assert [r.step_key for r in tiny.list()] == ["b"]
    unbounded = ProfileStore(tmp_path / "all", max_records=None)
    for i in range(5):
        unbounded.put(_record(f"k{i}"))
    assert len(unbounded.list()) == 5


def test_clean_removes_our_leftovers_only(store: ProfileStore) -> None:
    store.put(_record("live"))
    store.put(_record("other"))
    d = store.directory / FP
    live, other = f"{safe_step_name('live')}.json", f"{safe_step_name('other')}.json"
    stale_tmp, fresh_tmp = d / f".{live}.aaaaaaaaaaaaaaaa.tmp", d / f".{live}.bbbbbbbbbbbbbbbb.tmp"
    stale_tmp.write_text("crashed writer")
    fresh_tmp.write_text("in flight")
    _age(stale_tmp, 3600)
    now = time.time()
    corrupt = []
    for minutes in range(5):
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now - 60 * minutes)) + ".000000Z"
        corrupt.append(d / f"{live}.corrupt-{stamp}")
    ancient = d / f"{other}.corrupt-20000101T000000.000000Z"
    for path in [*corrupt, ancient]:
        path.write_text("bad")
    orphan_lock = d / f"{safe_step_name('gone')}.json.lock"
    orphan_lock.write_text("")
    foreign = [d / "notes.json.lock", d / ".notes.json.cccccccccccccccc.tmp", d / "notes.json.corrupt-x"]
    for path in foreign:
        path.write_text("not ours")
        _age(path, 10**8)

    counts = store.clean()
    assert counts == {"tmp": 1, "corrupt": 3, "locks": 1}
    assert not stale_tmp.exists() and fresh_tmp.exists()
    assert [p.exists() for p in corrupt] == [True, True, True, False, False]  # the newest three stay
    assert not ancient.exists() and not orphan_lock.exists()
    assert Path(str(store.path_for(FP, "live")) + ".lock").exists()  # a record's own lock stays
    assert all(p.exists() for p in foreign)
    assert store.clean() == {"tmp": 0, "corrupt": 0, "locks": 0}


def test_reset_leaves_an_empty_store(store: ProfileStore) -> None:
    store.put(_record("a"))
    store.put(_record("b", fingerprint=FP2))
    store.update(FP, "never-written", lambda r: None)  # leaves a lock file without a record
    bad = store.path_for(FP, "bad")
    bad.write_text("{broken")
    assert store.get(FP, "bad") is None  # set aside: a .corrupt-* file
    (store.directory / FP2 / f".{safe_step_name('b')}.json.dddddddddddddddd.tmp").write_text("leftover")
    (store.directory / FP2 / "keep-me.txt").write_text("foreign")
    assert store.reset() == 2
    assert _ours(store.directory) == []
    assert not (store.directory / FP).exists()
    assert sorted(p.name for p in (store.directory / FP2).iterdir()) == ["keep-me.txt"]


def test_a_lock_whose_file_was_removed_is_not_trusted(store: ProfileStore) -> None:
    # A waiter that won flock() on a lock file its holder deleted meanwhile holds a lock on
    # nothing; the store notices (inode check) and takes the lock file now at the path.
    store.put(_record("plan"))
    name = f"{safe_step_name('plan')}.json"
    lock_path = str(store.path_for(FP, "plan")) + ".lock"
    with profile_store._Dir.open_dir(store.directory / FP, follow_symlinks=False) as directory:
        lock = FileLock(lock_path)
        with lock:
            assert ProfileStore._holds_current_lock_file(lock, directory, name + ".lock")
            os.unlink(lock_path)
            assert not ProfileStore._holds_current_lock_file(lock, directory, name + ".lock")
            Path(lock_path).touch()  # someone else's new lock file
            assert not ProfileStore._holds_current_lock_file(lock, directory, name + ".lock")
    assert store.update(FP, "plan", lambda r: r.model_copy(update={"calls": 3})).calls == 3


# --------------------------------------------------------------------------- 9. bounded memory


def test_step_profiles_keep_a_bounded_number_of_steps_in_memory(store: ProfileStore) -> None:
    profiles = _profiles(store)
    for i in range(MAX_CACHED_STEPS + 40):
        profiles.checkout(f"step{i}")
    assert len(profiles._states) == len(profiles._records) == MAX_CACHED_STEPS
    assert f"step{MAX_CACHED_STEPS + 39}" in profiles._states and "step0" not in profiles._states
    profiles.checkout("step40")  # most recently used moves to the end
    assert next(reversed(profiles._states)) == "step40"
    assert step_profiles.MAX_CACHED_STEPS == 256


# --------------------------------------------------------------------------- 10. hostile names


def test_profiles_list_and_show_escape_control_characters(tmp_path: Path) -> None:
    from swift_integrations.cli.app import app

    root = tmp_path / "profiles"
    key = "plan\u202e[bold]evil"
    path = ProfileStore(root).path_for(FP, key)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_raw_record(key, model_name="\x1b[31mRED\x1b[0m\x07")))
    runner = CliRunner()
    for args in (["profiles", "list"], ["profiles", "show", key]):
        result = runner.invoke(app, [*args, "--profile-dir", str(root)], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.output and "\u202e" not in result.output and "\x07" not in result.output
        assert "\\x1b[31mRED" in result.output and "\\u202e" in result.output
        assert "[bold]evil" in result.output  # shown literally, not read as rich markup
    record = ProfileStore(root).get(FP, key)
    assert record is not None and record.model_name == "\\x1b[31mRED\\x1b[0m\\x07"


def test_model_names_are_stored_escaped_and_bounded() -> None:
    record = _record("x", model_name="a\x1b[2Jb" + "n" * 1000)
    assert record.model_name.startswith("a\\x1b[2Jb") and len(record.model_name) == 256
    assert escape_nonprintable(escape_nonprintable("x\u202ey\x00")) == "x\\u202ey\\x00"
    assert escape_nonprintable("思考 plain") == "思考 plain"
