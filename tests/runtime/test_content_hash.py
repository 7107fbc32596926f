"""Tests for `runtime.content_hash`: SHA-256 of large files, cached by the file's stat.

They prove the digest equals hashlib's over the whole file whatever the chunk size, that the
cache folder follows `$STEGO_CACHE_DIR`, then `$XDG_CACHE_HOME`, then `~/.cache`, that an
unchanged file is read once, a rewritten one again, that a link shares its target's entry,
that a folder is refused in one sentence, that the cache keeps its newest entries only, and
that an unreadable or unwritable cache changes nothing but speed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pytest

from stego_tasks.runtime import content_hash
from stego_tasks.runtime.content_hash import cache_dir, cached_sha256, sha256_of_file


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own empty cache folder."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("STEGO_CACHE_DIR", str(folder))
    return folder


def _counting_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each file the module reads in full (every call of `sha256_of_file`)."""
    reads: list[str] = []
    original = content_hash.sha256_of_file
    monkeypatch.setattr(content_hash, "sha256_of_file", lambda path, *a, **k: reads.append(str(path)) or original(path, *a, **k))
    return reads


@pytest.mark.parametrize("chunk_size", [1, 7, 1 << 22])
def test_the_digest_is_hashlibs_over_the_whole_file_for_any_chunk_size(tmp_path: Path, chunk_size: int) -> None:
    data = os.urandom(1000) + b"tail"
    (tmp_path / "f.bin").write_bytes(data)
    assert sha256_of_file(tmp_path / "f.bin", chunk_size=chunk_size) == hashlib.sha256(data).hexdigest()


def test_a_given_opener_is_used_to_read_the_file(tmp_path: Path) -> None:
    opened: list[Path] = []

    def opener(path: Path) -> io.BytesIO:
        opened.append(path)
        return io.BytesIO(b"from the opener")

    assert sha256_of_file(tmp_path / "absent", opener=opener) == hashlib.sha256(b"from the opener").hexdigest()
    assert opened == [tmp_path / "absent"]


def test_the_cache_folder_follows_stego_cache_dir_then_xdg_then_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEGO_CACHE_DIR", str(tmp_path / "own"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "own"
    monkeypatch.setenv("STEGO_CACHE_DIR", "")
    assert cache_dir() == tmp_path / "xdg" / "stego", "an empty STEGO_CACHE_DIR counts as unset"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "stego"


def test_an_unchanged_file_is_read_once_and_a_rewritten_one_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = _counting_reads(monkeypatch)
    path = tmp_path / "w.bin"
    path.write_bytes(b"one")
    assert cached_sha256(path) == hashlib.sha256(b"one").hexdigest()
    assert cached_sha256(path) == hashlib.sha256(b"one").hexdigest()
    assert len(reads) == 1, f"an unchanged file was read {len(reads)} times"
    stat = path.stat()
    path.write_bytes(b"two")  # same size; put the mtime back: the ctime still changes
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cached_sha256(path) == hashlib.sha256(b"two").hexdigest(), "a rewritten file kept its old hash"
    assert len(reads) == 2


def test_a_link_shares_the_cache_entry_of_its_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _own_cache: Path) -> None:
    reads = _counting_reads(monkeypatch)
    target = tmp_path / "real.bin"
    target.write_bytes(b"checkpoint")
    (tmp_path / "link.bin").symlink_to(target)
    assert cached_sha256(tmp_path / "link.bin") == cached_sha256(target) == hashlib.sha256(b"checkpoint").hexdigest()
    assert reads == [os.path.realpath(target)], reads
    entries = json.loads((_own_cache / "sha256-by-stat.json").read_text())
    assert list(entries) == [os.path.realpath(target)], "the cache is keyed by the real path"


def test_a_folder_or_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"is not a regular file; pass the path of a checkpoint file\.$"):
        cached_sha256(tmp_path)
    with pytest.raises(FileNotFoundError):
        cached_sha256(tmp_path / "missing.bin")


def test_the_cache_keeps_only_its_newest_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _own_cache: Path) -> None:
    monkeypatch.setattr(content_hash, "_MAX_ENTRIES", 3)
    files = []
    for i in range(5):
        files.append(tmp_path / f"f{i}.bin")
        files[-1].write_bytes(bytes([i]))
        cached_sha256(files[-1])
    entries = json.loads((_own_cache / "sha256-by-stat.json").read_text())
    assert list(entries) == [os.path.realpath(f) for f in files[2:]], list(entries)


def test_a_damaged_cache_file_is_ignored_and_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _own_cache: Path) -> None:
    _own_cache.mkdir()
    (_own_cache / "sha256-by-stat.json").write_text("{not json")
    path = tmp_path / "w.bin"
    path.write_bytes(b"data")
    assert cached_sha256(path) == hashlib.sha256(b"data").hexdigest()
    assert os.path.realpath(path) in json.loads((_own_cache / "sha256-by-stat.json").read_text())
    (_own_cache / "sha256-by-stat.json").write_text("[1, 2]")  # JSON, but not a mapping
    assert cached_sha256(path) == hashlib.sha256(b"data").hexdigest()


def test_a_cache_that_cannot_be_written_still_gives_the_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache folder cannot be created under a file")
    monkeypatch.setenv("STEGO_CACHE_DIR", str(blocker / "cache"))
    path = tmp_path / "w.bin"
    path.write_bytes(b"data")
    assert cached_sha256(path) == hashlib.sha256(b"data").hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "w.bin"], "a temporary file was left behind"


def test_a_file_changed_while_it_was_read_is_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _own_cache: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"old")
    original = content_hash.sha256_of_file

    def read_then_rewrite(name: str, *args: object) -> str:
        digest = original(name)
        path.write_bytes(b"newer")
        return digest

    monkeypatch.setattr(content_hash, "sha256_of_file", read_then_rewrite)
    cached_sha256(path)
    assert not (_own_cache / "sha256-by-stat.json").exists(), "a digest was cached under the rewritten file's stat"
