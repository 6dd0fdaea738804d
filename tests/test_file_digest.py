"""A GGUF file is hashed once per version of the file: later processes reuse the digest while the
file's status is unchanged, and never once it was replaced (same size and mtime included)."""

from __future__ import annotations

import hashlib
import os
import pathlib

import pytest

from swift_engine.loading import file_digest
from swift_engine.loading.file_digest import remembered_digest


def _counting(calls: list[pathlib.Path]):
    def sha256(path: pathlib.Path) -> str:  # the real digest; only its calls are counted
        calls.append(path)
        return hashlib.sha256(path.read_bytes()).hexdigest()

    return sha256


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written by the test count as settled (in use, files are minutes or years old)."""
    monkeypatch.setattr(file_digest, "_RACY_S", -1.0)


def test_the_digest_is_remembered_while_the_file_is_unchanged(tmp_path: pathlib.Path, settled: None) -> None:
    path, folder, calls = tmp_path / "m.gguf", tmp_path / "digests", []
    path.write_bytes(b"weights " * 1000)
    first = remembered_digest(path, folder, _counting(calls))
    assert first == hashlib.sha256(path.read_bytes()).hexdigest() and len(calls) == 1
    assert remembered_digest(path, folder, _counting(calls)) == first and len(calls) == 1
    link = tmp_path / "link.gguf"
    link.symlink_to(path)  # another name of the same file: the same record
    assert remembered_digest(link, folder, _counting(calls)) == first and len(calls) == 1


def test_a_replaced_file_with_the_same_size_and_mtime_is_hashed_again(tmp_path: pathlib.Path, settled: None) -> None:
    path, folder, calls = tmp_path / "m.gguf", tmp_path / "digests", []
    path.write_bytes(b"a" * 4096)
    first = remembered_digest(path, folder, _counting(calls))
    before = path.stat()
    path.write_bytes(b"b" * 4096)  # other bytes, same size ...
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # ... and the old mtime (cp -p, rsync -t)
    assert path.stat().st_mtime_ns == before.st_mtime_ns and path.stat().st_size == before.st_size
    second = remembered_digest(path, folder, _counting(calls))
    assert second != first and second == hashlib.sha256(b"b" * 4096).hexdigest() and len(calls) == 2


def test_a_file_changed_just_now_is_not_remembered(tmp_path: pathlib.Path) -> None:
    path, folder, calls = tmp_path / "m.gguf", tmp_path / "digests", []
    path.write_bytes(b"fresh")
    remembered_digest(path, folder, _counting(calls))
    remembered_digest(path, folder, _counting(calls))
    assert len(calls) == 2 and not any(folder.glob("*.json"))


@pytest.mark.parametrize("record", [b"{not json", b'{"sha256": "00"}', b"[]"])
def test_an_unusable_record_is_hashed_again_and_replaced(tmp_path: pathlib.Path, settled: None, record: bytes) -> None:
    path, folder, calls = tmp_path / "m.gguf", tmp_path / "digests", []
    path.write_bytes(b"weights")
    digest = remembered_digest(path, folder, _counting(calls))
    (kept,) = folder.glob("*.json")
    kept.write_bytes(record)
    assert remembered_digest(path, folder, _counting(calls)) == digest and len(calls) == 2
    assert remembered_digest(path, folder, _counting(calls)) == digest and len(calls) == 2  # rewritten


def test_a_folder_that_cannot_be_written_costs_only_a_hash(tmp_path: pathlib.Path, settled: None) -> None:
    path, calls = tmp_path / "m.gguf", []
    path.write_bytes(b"weights")
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    assert remembered_digest(path, blocked / "digests", _counting(calls)) == hashlib.sha256(b"weights").hexdigest()
