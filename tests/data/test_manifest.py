"""Tests for stego_tasks.data.manifest: reading a manifest, hashing corpus files, paths kept in the corpus.

Proves that `resolve_in_corpus` turns manifest paths into files inside the corpus (links
inside it followed) and refuses empty, absolute, `..` and escaping paths in one sentence;
that `sha256_file` is hashlib's SHA-256 for any chunk size and refuses a named pipe instead
of blocking; and that `read_manifest` returns exactly the schema's columns, in order, and
names the columns a file lacks.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stego_tasks.data.corpus_files import ImageDecodeError
from stego_tasks.data.manifest import MANIFEST_SCHEMA, read_manifest, resolve_in_corpus, sha256_file
from stego_tasks.demo_data import demo_data
from stego_tasks.errors import InvalidInputError


def _corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    demo_data(root, n_train=4, n_val=3, size=32, seed=1)
    return root


def test_resolve_in_corpus(tmp_path):
    root = _corpus(tmp_path)
    good = resolve_in_corpus(root, "images/train/scene_0000.png")
    assert good == (root / "images/train/scene_0000.png").resolve(), "plain path resolved wrong"
    (root / "images" / "train" / "escape.png").symlink_to(tmp_path)
    for bad in [
        "../corpus/images/train/scene_0000.png",
        "/etc/passwd",
        "",
        "images/../../x.png",
        "images/train/escape.png",
    ]:
        with pytest.raises(ValueError, match="corpus path"):
            resolve_in_corpus(root, bad)


def test_a_link_inside_the_corpus_resolves_to_its_target(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    (root / "images" / "train").mkdir(parents=True)
    (root / "store").mkdir()
    (root / "store" / "a.png").write_bytes(b"a")
    (root / "images" / "train" / "a.png").symlink_to(root / "store" / "a.png")
    got = resolve_in_corpus(root, "images/train/a.png")
    assert got == (root / "store" / "a.png").resolve(), f"{got}"
    with pytest.raises(InvalidInputError, match=r"corpus path '/etc/passwd' must be a non-empty relative posix path"):
        resolve_in_corpus(root, "/etc/passwd")


@pytest.mark.parametrize("chunk_size", [1, 7, 1 << 20])
def test_sha256_file_is_hashlibs_digest_for_any_chunk_size(tmp_path: Path, chunk_size: int) -> None:
    data = os.urandom(1000)
    path = tmp_path / "a.bin"
    path.write_bytes(data)
    assert sha256_file(path, chunk_size) == hashlib.sha256(data).hexdigest(), f"chunk size {chunk_size}"


def test_sha256_file_refuses_a_named_pipe_instead_of_waiting(tmp_path: Path) -> None:
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    with pytest.raises(ImageDecodeError, match="not a regular file"):
        sha256_file(pipe)


def _rows(n: int) -> dict[str, list]:
    return {
        "id": list(range(n)), "path": [f"images/train/{i}.png" for i in range(n)], "hash": ["0" * 64] * n,
        "width": [32] * n, "height": [24] * n, "mode": ["RGB"] * n, "split": ["train"] * n,
        "label_path": [""] * n, "label_hash": [""] * n,
    }


def test_read_manifest_returns_the_schema_columns_in_order(tmp_path: Path) -> None:
    rows = _rows(3)
    shuffled = {"extra": [1, 2, 3], **dict(reversed(list(rows.items())))}
    pq.write_table(pa.table(shuffled), tmp_path / "m.parquet")
    frame = read_manifest(tmp_path / "m.parquet")
    assert list(frame.columns) == MANIFEST_SCHEMA.names, f"columns {list(frame.columns)}"
    assert frame.to_dict("list") == rows, "values changed on the way"


def test_a_file_without_manifest_columns_is_named_in_one_sentence(tmp_path: Path) -> None:
    rows = _rows(2)
    del rows["label_hash"], rows["mode"]
    pq.write_table(pa.table(rows), tmp_path / "m.parquet")
    with pytest.raises(InvalidInputError, match=r"m\.parquet is not an ingest manifest: columns \['mode', 'label_hash'\] are missing; rerun the ingest stage"):
        read_manifest(tmp_path / "m.parquet")


@pytest.mark.parametrize("content", [b"", b"\x8f\x00garbage" * 40, b"PAR1" + b"\x00" * 64])
def test_an_empty_or_damaged_manifest_is_named_in_one_sentence(tmp_path: Path, content: bytes) -> None:
    """Not Parquet at all (empty, garbage, a truncated file): one sentence, not pyarrow's exception."""
    path = tmp_path / "m.parquet"
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match=r"m\.parquet is not a readable Parquet manifest .*; rerun the ingest stage"):
        read_manifest(path)


def test_a_missing_manifest_names_the_stage_that_writes_it(tmp_path: Path) -> None:
    from stego_tasks.errors import MissingInputError

    with pytest.raises(MissingInputError, match=r"m\.parquet does not exist; run the ingest stage"):
        read_manifest(tmp_path / "m.parquet")
