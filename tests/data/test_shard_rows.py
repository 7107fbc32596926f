"""Tests for stego_tasks.data.shard_rows: random rows of the store's training arrays, read fast.

Proves that `ShardRows` reads exactly the values zarr reads (every codec `extract.compression`
offers; unsorted, repeated and never-written rows, a last partial shard and a shard with no
file), that it leaves every other layout to zarr, that `gather_rows` returns the rows asked
in their order through either path and refuses rows outside the array, and that a damaged or
truncated shard is named in one sentence with the command that repairs it. Stores are written
here in extract's train layout (`feature_store.array_layout`: 4-row shards of one-row chunks)
or in plain 4-row chunks, on 10 rows of [8, 4, 4] features and [8, 8] labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
import zarr

from stego_tasks.data.feature_store import array_layout
from stego_tasks.data.shard_rows import ShardRows, gather_rows

N_CLASSES, IGNORE, ROWS_PER_CHUNK = 3, 255, 4
COMPRESSIONS = ("zstd", "none", "blosc-lz4", "blosc-zstd")


def _values(rows: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(rows, 8, 4, 4)).astype(np.float16)
    labels = rng.integers(0, N_CLASSES, (rows, 8, 8)).astype(np.uint8)
    labels[:, 0, :] = IGNORE
    return feats, labels


def _store(path: Path, compression: str = "zstd", rows: int = 10) -> tuple[Path, zarr.Group]:
    """A features store of `_values()` in extract's train layout with `compression`, and its train group."""
    feats, labels = _values(rows)
    feats[3] = 0  # an all-zero row: zarr writes no chunk for it, so it reads back as the fill value
    group = zarr.open_group(str(path / "features.zarr"), mode="w", zarr_format=3).create_group("train")
    for name, values in (("feats", feats), ("labels", labels)):
        layout = array_layout("train", name, ROWS_PER_CHUNK, values.shape[1:], compression)
        group.create_array(name, shape=values.shape, dtype=values.dtype, fill_value=0, **layout)[:] = values
    return path / "features.zarr", group


class _Rows(NamedTuple):
    feats: torch.Tensor
    labels: torch.Tensor


def _data() -> _Rows:
    feats, labels = _values()
    return _Rows(torch.from_numpy(feats), torch.from_numpy(labels))


def _stored(tmp_path: Path) -> tuple[Path, zarr.Group]:
    """The rows of `_data()` as plain 4-row chunks (the layout of stores written before shards), and the train group."""
    data = _data()
    group = zarr.open_group(str(tmp_path / "features.zarr"), mode="w", zarr_format=3).create_group("train")
    group.create_array("feats", data=data.feats.numpy(), chunks=(4, 8, 4, 4))
    group.create_array("labels", data=data.labels.numpy(), chunks=(4, 8, 8))
    return tmp_path / "features.zarr", group


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_shard_rows_read_exactly_what_zarr_reads(tmp_path, compression):
    store, _ = _store(tmp_path, compression)
    group = zarr.open_group(str(store), mode="r")["train"]
    # Unsorted, repeated, the never-written row 3 and the last, partial shard (rows 8, 9).
    index = np.array([9, 0, 3, 5, 5, 8, 1, 3, 7])
    for name in ("feats", "labels"):
        reader = ShardRows.open(group[name])
        assert reader is not None, f"{compression}: {name} is extract's layout, the direct reader must handle it"
        expected = np.stack([group[name][int(i)] for i in index])
        got = reader.gather(index)
        assert got.dtype == expected.dtype and np.array_equal(got, expected), f"{compression}: {name} rows differ from zarr's"
        assert np.array_equal(gather_rows(group[name], index), expected), f"{compression}: gather_rows of {name}"
    assert not gather_rows(group["feats"], np.array([3])).any(), "a never-written row must read as the fill value 0"


def test_shard_rows_leave_other_layouts_to_zarr(tmp_path):
    feats, _ = _values()
    plain = zarr.open_group(str(tmp_path / "p.zarr"), mode="w", zarr_format=3).create_array("feats", data=feats, chunks=(4, 8, 4, 4))
    assert ShardRows.open(plain) is None, "an unsharded array is read through zarr"
    memory = zarr.open_group(zarr.storage.MemoryStore(), mode="w", zarr_format=3).create_array(
        "feats", shape=feats.shape, dtype=feats.dtype, chunks=(1, 8, 4, 4), shards=(4, 8, 4, 4))
    memory[:] = feats
    assert ShardRows.open(memory) is None, "a store without files is read through zarr"
    assert np.array_equal(gather_rows(memory, np.array([7, 2, 2])), feats[[7, 2, 2]]), "zarr's path still answers"


def test_a_damaged_shard_index_is_named(tmp_path):
    store, _ = _store(tmp_path)
    shard = store / "train" / "feats" / "c" / "1" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # the index's checksum
    shard.write_bytes(bytes(data))
    reader = ShardRows.open(zarr.open_group(str(store), mode="r")["train"]["feats"])
    with pytest.raises(ValueError, match=r"c/1/0/0/0: the shard index does not match its checksum; run `stego extract`"):
        reader.gather(np.array([5]))


def test_gather_rows_returns_the_requested_rows_in_order_with_duplicates(tmp_path):
    store, _ = _stored(tmp_path)
    group = zarr.open_group(str(store), mode="r")["train"]
    # Unsorted, repeated, across all three 4-row chunks, first and last row included.
    index = np.array([9, 0, 5, 5, 3, 9, 8, 1, 0])
    for name in ("feats", "labels"):
        expected = np.asarray(group[name])[index]
        got = gather_rows(group[name], index)
        assert got.dtype == expected.dtype, f"{name}: dtype {got.dtype} != stored {expected.dtype}"
        assert np.array_equal(got, expected), f"{name}: gathered rows differ from the stored rows {index}"
    assert gather_rows(group["feats"], np.array([], dtype=np.int64)).shape == (0, 8, 4, 4), "empty selection"
    with pytest.raises(IndexError, match="rows \\[0, 10\\] requested from an array of 10 rows"):
        gather_rows(group["feats"], np.array([0, 10]))


def test_gather_rows_from_a_sharded_array(tmp_path):
    # One-row inner chunks in 4-row shards: read row by row, same answer.
    feats = _data().feats.numpy()
    array = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3).create_array(
        "feats", shape=feats.shape, shards=(4, 8, 4, 4), chunks=(1, 8, 4, 4), dtype="float16")
    array[:] = feats
    index = np.array([7, 2, 2, 9, 0])
    assert np.array_equal(gather_rows(array, index), feats[index]), "sharded gather differs"


def test_rows_of_a_shard_without_a_file_read_as_the_fill_value(tmp_path: Path) -> None:
    feats, _ = _values()
    feats[4:8] = 0  # the whole second shard: zarr writes no file for it
    array = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3).create_array(
        "feats", shape=feats.shape, dtype=feats.dtype, fill_value=0, **array_layout("train", "feats", 4, (8, 4, 4)))
    array[:] = feats
    assert not (tmp_path / "s.zarr" / "feats" / "c" / "1" / "0" / "0" / "0").exists(), "the empty shard has a file"
    reader = ShardRows.open(array)
    assert reader is not None, "extract's layout"
    index = np.array([5, 0, 9, 6])
    assert np.array_equal(reader.gather(index), feats[index]), "rows of a missing shard must read as zeros"


def test_a_sharded_array_of_several_row_chunks_is_left_to_zarr(tmp_path: Path) -> None:
    feats, _ = _values()
    array = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3).create_array(
        "feats", shape=feats.shape, dtype=feats.dtype, chunks=(2, 8, 4, 4), shards=(4, 8, 4, 4))
    array[:] = feats
    assert ShardRows.open(array) is None, "inner chunks of 2 rows are not rows"
    assert np.array_equal(gather_rows(array, np.array([9, 1, 1])), feats[[9, 1, 1]]), "zarr's path answers"


def test_gather_rows_refuses_negative_rows(tmp_path: Path) -> None:
    _, group = _store(tmp_path)
    with pytest.raises(IndexError, match=r"rows \[-1, 2\] requested from an array of 10 rows"):
        gather_rows(group["feats"], np.array([2, -1]))


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_a_shard_truncated_after_its_index_was_read_is_named(tmp_path: Path, compression: str) -> None:
    store, _ = _store(tmp_path, compression)
    reader = ShardRows.open(zarr.open_group(str(store), mode="r")["train"]["feats"])
    reader.gather(np.array([4]))  # the shard's index is read and kept
    shard = store / "train" / "feats" / "c" / "1" / "0" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[:10])
    with pytest.raises(ValueError, match=r"c/1/0/0/0: row 7 is truncated; run `stego extract` to repair the store\.$"):
        reader.gather(np.array([7]))


def test_a_shard_too_short_for_its_index_is_named(tmp_path: Path) -> None:
    store, _ = _store(tmp_path)
    shard = store / "train" / "feats" / "c" / "0" / "0" / "0" / "0"
    shard.write_bytes(b"short")
    reader = ShardRows.open(zarr.open_group(str(store), mode="r")["train"]["feats"])
    with pytest.raises(ValueError, match=r"c/0/0/0/0 is too short to hold a shard index; run `stego extract`"):
        reader.gather(np.array([1]))
