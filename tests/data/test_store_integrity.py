"""Tests for stego_tasks.data.store_integrity: what was written is recorded, and checked before it is read.

Proves, on small Zarr stores written here, that the recorded digest of an object is its size
and zlib's crc32; that a store written whole by a stage (`record_store_digests`, `open_store`)
and a features-store split (`record_chunk`, `chunk_problems`, `verify_split`, `verify_rows`)
name a deleted, truncated, bit-flipped or unexpected chunk file, or lost array metadata, as
one sentence with the store, array, chunk and the command that repairs it, and check only
the arrays and chunks asked; that stores without records are read unchecked; and that
`content_identity` and `same_images` follow what the stores hold.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr

from stego_tasks.data.store_integrity import (
    DIGESTS,
    EXTRACT_FIX,
    NO_RECORD,
    StoreDamagedError,
    chunk_problems,
    content_identity,
    ensure_digests,
    object_digest,
    open_store,
    opens,
    record_chunk,
    record_store_digests,
    same_images,
    stage_fix,
    verify_rows,
    verify_split,
)
from stego_tasks.errors import InvalidInputError, MissingInputError

ROWS_PER_CHUNK = 4


def _flat_store(path: Path, record: bool = True) -> Path:
    """A store as knn writes it: `a` [10, 3] in 4-row chunks (rows 4..7 all zero, never written), `b` [5]."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    a = np.arange(1, 31, dtype=np.int64).reshape(10, 3)
    a[4:8] = 0
    root.create_array("a", shape=a.shape, chunks=(4, 3), dtype="int64", fill_value=0)[:] = a
    root.create_array("b", data=np.arange(5, dtype=np.float32) + 1, chunks=(5,))
    if record:
        record_store_digests(root)
    return path


def _split(path: Path, rows: int = 10) -> zarr.Group:
    """A features-store split `train` with `feats` and `image_ids` in 4-row chunks, every chunk recorded and done."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    group = root.create_group("train")
    n_chunks = -(-rows // ROWS_PER_CHUNK)
    feats = np.random.default_rng(0).normal(size=(rows, 2, 2)).astype(np.float16)
    group.create_array("feats", shape=feats.shape, chunks=(ROWS_PER_CHUNK, 2, 2), dtype="float16", fill_value=0)[:] = feats
    group.create_array("image_ids", data=np.arange(rows, dtype=np.int64) + 1, chunks=(ROWS_PER_CHUNK,))
    group.create_array("done", data=np.ones(n_chunks, dtype=bool), chunks=(n_chunks,))
    ensure_digests(group, ROWS_PER_CHUNK)
    for index in range(n_chunks):
        record_chunk(group, index)
    return group


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_digest_is_the_size_and_zlib_crc32_of_the_bytes() -> None:
    data = np.arange(100, dtype=np.uint16)
    assert object_digest(data) == (200, zlib.crc32(data.tobytes())), "numpy buffer"
    assert object_digest(b"abc") == (3, zlib.crc32(b"abc")), "bytes"


def test_an_intact_store_opens_and_reads_what_was_written(tmp_path: Path) -> None:
    store = _flat_store(tmp_path / "knn.zarr")
    group = open_store(store, "knn")
    assert group["b"][:].tolist() == [1, 2, 3, 4, 5] and int(group["a"][9, 2]) == 30, "values"
    recorded = dict(group["integrity"].attrs)["chunks"]
    assert sorted(recorded["a"]) == ["a/c/0/0", "a/c/2/0"], f"only written chunks are recorded: {recorded['a']}"
    raw = (store / "a" / "c" / "0" / "0").read_bytes()
    assert recorded["a"]["a/c/0/0"] == [len(raw), zlib.crc32(raw)], "the record is the file's size and crc32"


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda f: f.unlink(), re.escape("is missing (no file a/c/2/0)")),
        (lambda f: f.write_bytes(f.read_bytes()[:-3]), r"is truncated or damaged \(file a/c/2/0 has (\d+) bytes, (\d+) were written\)"),
        (_flip_a_byte, re.escape("is damaged (file a/c/2/0 does not match the checksum recorded when it was written)")),
    ],
)
def test_a_damaged_chunk_of_a_stage_store_names_store_array_chunk_and_stage(
    tmp_path: Path, damage: Callable[[Path], object], problem: str
) -> None:
    store = _flat_store(tmp_path / "knn.zarr")
    damage(store / "a" / "c" / "2" / "0")
    with pytest.raises(StoreDamagedError) as info:
        open_store(store, "knn")
    error = info.value
    assert (error.store, error.array, error.chunk) == (str(store), "a", 2), f"{error!r}"
    expected = re.escape(f"{store}: chunk 2 of a ") + problem + re.escape(f"; {stage_fix('knn')}.")
    assert re.fullmatch(expected, str(error)), str(error)
    assert stage_fix("knn") == "rerun `stego knn` (or `dvc repro knn`) to write it again", stage_fix("knn")
    assert open_store(store, "knn", arrays=["b"])["b"][0] == 1, "an array not asked for is not checked"


def test_a_file_for_a_chunk_that_was_never_written_is_named(tmp_path: Path) -> None:
    store = _flat_store(tmp_path / "knn.zarr")
    (store / "a" / "c" / "1").mkdir(parents=True, exist_ok=True)
    (store / "a" / "c" / "1" / "0").write_bytes((store / "a" / "c" / "0" / "0").read_bytes())
    with pytest.raises(StoreDamagedError, match=re.escape("chunk 1 of a was never written but a file a/c/1/0 exists")):
        open_store(store, "knn")


def test_lost_array_metadata_is_named(tmp_path: Path) -> None:
    store = _flat_store(tmp_path / "knn.zarr")
    (store / "b" / "zarr.json").unlink()
    with pytest.raises(StoreDamagedError, match=re.escape(f"{store}: b has lost its metadata (zarr.json); rerun `stego knn`")):
        open_store(store, "knn")


def test_a_missing_unreadable_or_unrecorded_stage_store(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match=r"knn\.zarr does not exist; run `stego knn` first\.$"):
        open_store(tmp_path / "knn.zarr", "knn")
    store = _flat_store(tmp_path / "old.zarr", record=False)
    (store / "a" / "c" / "2" / "0").unlink()
    assert int(open_store(store, "knn")["a"][9, 0]) == 0, "a store without records is read unchecked"
    (store / "zarr.json").write_text("{ not json")
    with pytest.raises(InvalidInputError, match=r"old\.zarr cannot be opened as a Zarr store \(\w+\); rerun `stego crf`"):
        open_store(store, "crf")


def test_an_intact_split_has_no_problems_and_a_damaged_chunk_is_named_with_extracts_fix(tmp_path: Path) -> None:
    group = _split(tmp_path / "features.zarr")
    assert chunk_problems(group, range(3)) == {}, "intact split"
    verify_split(group, tmp_path / "features.zarr")
    (tmp_path / "features.zarr" / "train" / "feats" / "c" / "1" / "0" / "0").unlink()
    problems = chunk_problems(group, [0, 1, 2])
    assert problems == {1: ("train/feats", "is missing (no file train/feats/c/1/0/0)")}, f"{problems}"
    assert chunk_problems(group, [1], names=["image_ids"]) == {}, "only the arrays asked are checked"
    with pytest.raises(StoreDamagedError) as info:
        verify_split(group, "features.zarr")
    assert str(info.value) == f"features.zarr: chunk 1 of train/feats is missing (no file train/feats/c/1/0/0); {EXTRACT_FIX}."
    verify_split(group, "features.zarr", chunks=[0, 2])  # the damaged chunk not asked for
    verify_split(group, "features.zarr", arrays=[])  # nothing asked, nothing checked


def test_verify_rows_checks_only_the_chunks_holding_the_rows(tmp_path: Path) -> None:
    _split(tmp_path / "features.zarr")
    _flip_a_byte(tmp_path / "features.zarr" / "train" / "image_ids" / "c" / "2")
    array = zarr.open_group(str(tmp_path / "features.zarr"), mode="r")["train"]["image_ids"]
    verify_rows(array, np.array([0, 7, 3]))  # chunks 0 and 1
    with pytest.raises(StoreDamagedError, match=r"chunk 2 of train/image_ids is damaged"):
        verify_rows(array, np.array([1, 9]))


def test_a_chunk_without_a_record_is_reported_as_such(tmp_path: Path) -> None:
    group = _split(tmp_path / "features.zarr")
    group[DIGESTS][2] = -1
    assert chunk_problems(group, [2]) == {2: ("train/feats", NO_RECORD)}, f"{chunk_problems(group, [2])}"


def test_a_split_without_records_is_unchecked_unless_it_had_them(tmp_path: Path) -> None:
    group = _split(tmp_path / "features.zarr")
    (tmp_path / "features.zarr" / "train" / "feats" / "c" / "1" / "0" / "0").unlink()
    del group["integrity"]
    with pytest.raises(StoreDamagedError, match=r"train/integrity/digests is missing; run `stego extract`"):
        verify_split(group, "features.zarr")
    del group.attrs["integrity"]
    verify_split(group, "features.zarr")  # written before records existed: read unchecked


def test_content_identity_follows_rewritten_bytes(tmp_path: Path) -> None:
    group = _split(tmp_path / "features.zarr")
    before = content_identity(group, ["feats"])
    assert before is not None and before.endswith(":3x1"), before
    group["image_ids"][0] = 99
    record_chunk(group, 0)
    assert content_identity(group, ["feats"]) == before, "another array's chunk changed, not the features"
    group["feats"][0] = 7
    record_chunk(group, 0)
    assert content_identity(group, ["feats"]) != before, "a rewritten features chunk changes the identity"
    del group["integrity"]
    assert content_identity(group, ["feats"]) is None, "no digests, no identity"


def test_predictions_for_other_images_are_refused_in_one_sentence(tmp_path: Path) -> None:
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    val = root.create_group("val")
    val.create_array("image_ids", data=np.array([3, 5, 8]))
    same = root.create_group("p1")
    same.create_array("image_ids", data=np.array([3, 5, 8]))
    other = root.create_group("p2")
    other.create_array("image_ids", data=np.array([3, 5, 9]))
    same_images(same, val, "p.zarr", "f.zarr")
    same_images(root.create_group("p3"), val, "p.zarr", "f.zarr")  # written before predictions recorded images
    with pytest.raises(InvalidInputError, match=r"^p\.zarr holds predictions for other images than f\.zarr now holds; rerun `stego cluster` and `stego crf`"):
        same_images(other, val, "p.zarr", "f.zarr")


def test_opens_tells_present_from_missing_or_damaged_metadata(tmp_path: Path) -> None:
    group = _split(tmp_path / "features.zarr")
    assert opens(group, "feats") and not opens(group, "nothing"), "present / missing"
    (tmp_path / "features.zarr" / "train" / "feats" / "zarr.json").write_text("{ broken")
    fresh = zarr.open_group(str(tmp_path / "features.zarr"), mode="r")["train"]
    assert not opens(fresh, "feats"), "damaged metadata"
    problems = chunk_problems(fresh, [0, 2])
    assert problems == {i: ("train/feats", "has lost its metadata (zarr.json)") for i in (0, 2)}, f"{problems}"


@pytest.mark.parametrize("damage", ["not JSON", "no attributes"])
def test_unreadable_digests_are_named_to_readers_and_made_again_by_the_writer(tmp_path: Path, damage: str) -> None:
    group = _split(tmp_path / "s.zarr")
    metadata = tmp_path / "s.zarr" / "train" / DIGESTS / "zarr.json"
    if damage == "not JSON":
        metadata.write_text("{broken", encoding="utf-8")
    else:
        record = json.loads(metadata.read_text(encoding="utf-8"))
        record["attributes"] = {}
        metadata.write_text(json.dumps(record), encoding="utf-8")
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")["train"]
    for check in (lambda: verify_split(group, tmp_path / "s.zarr"),
                  lambda: verify_rows(group["feats"], np.array([0]), tmp_path / "s.zarr")):
        with pytest.raises(StoreDamagedError) as caught:
            check()
        message = str(caught.value)
        assert message.startswith(f"{tmp_path / 's.zarr'}: train/{DIGESTS} its zarr.json ")
        assert message.endswith(f"; {EXTRACT_FIX}.") and "\n" not in message
    # `stego extract` makes the records again: empty (no record) until each chunk is recorded.
    ensure_digests(group, ROWS_PER_CHUNK)
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")["train"]
    assert chunk_problems(group, [0, 1, 2]) == {i: ("train/feats", NO_RECORD) for i in range(3)}
    for index in range(3):
        record_chunk(group, index)
    verify_split(group, tmp_path / "s.zarr")


def test_a_stage_store_whose_records_group_is_damaged_is_one_sentence(tmp_path: Path) -> None:
    store = _flat_store(tmp_path / "knn.zarr")
    (store / "integrity" / "zarr.json").write_text("{}")
    with pytest.raises(StoreDamagedError, match=r"knn\.zarr: integrity cannot be opened \(its zarr\.json: \w+\); "
                                                r"rerun `stego knn`"):
        open_store(store, "knn")
