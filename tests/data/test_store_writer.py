"""Tests for stego_tasks.data.store_writer: the parallel chunk writer of the features store.

The reference is zarr's own write (`array[rows] = values` into an empty chunk, then
`record_chunk` and the done flag, what `extract` did before): every file of a store written
by `SplitWriter`, with one thread or several, must equal it byte for byte, for every codec
`extract.compression` offers, the sharded train layout and the plain val layout, a last
chunk shorter than the others, and chunks (or a shard's rows) that are all fill value.
A writer process killed with SIGKILL while several chunks are in flight leaves only whole
chunks marked done, and completing the pending chunks gives the uninterrupted store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BytesCodec, ShardingCodec, ZstdCodec

from stego_tasks.data.feature_store import SPLITS, open_split, pending_chunks
from stego_tasks.data.store_integrity import record_chunk, verify_split
from stego_tasks.data.store_writer import ArrayEncoder, SplitWriter
from tests.conftest import REPO

CODECS = ("zstd", "none", "blosc-lz4", "blosc-zstd")
N_IMAGES, BATCH, DIM, GRID, RES = 7, 2, 16, 4, 24  # 4 chunks, the last one of 1 image


def _fingerprint(split: str, compression: str) -> dict:
    fingerprint = {"five_crop": split == "train", "batch_size": BATCH, "resolution": RES, "embed_dim": DIM,
                   "flip": split == "val"}
    if compression != "zstd":
        fingerprint["compression"] = compression
    return fingerprint


def _layout(split: str) -> tuple[int, int, np.ndarray]:
    """(rows, rows per chunk, row ids) of a split of `N_IMAGES` images."""
    crops = 5 if split == "train" else 1
    return N_IMAGES * crops, BATCH * crops, np.repeat(np.arange(N_IMAGES) + 100, crops).astype(np.int64)


def _chunk_arrays(split: str, index: int, n_rows: int, rows_per_chunk: int) -> dict[str, np.ndarray]:
    """Deterministic arrays of chunk `index`, with the values zarr treats specially."""
    rng = np.random.default_rng(index)
    m = min(rows_per_chunk, n_rows - index * rows_per_chunk)
    feats = rng.standard_normal((m, DIM, GRID, GRID)).astype(np.float16)
    arrays = {
        "feats": feats,
        "pooled": feats.astype(np.float32).mean(axis=(2, 3)),
        "labels": rng.integers(0, 4, (m, RES, RES)).astype(np.uint8),
        # Chunk 1 of crops is all zero (the fill value): zarr stores no object for it.
        "crops": (np.arange(m) % 5 if split == "train" and index != 1 else np.zeros(m)).astype(np.int8),
    }
    arrays["labels"][0] = 0  # a fill-valued row: no inner chunk in a shard
    if m > 1:
        arrays["feats"][1] = -0.0  # zarr compares float zeros by bits: this row is stored
    if split == "val":
        arrays["images"] = rng.integers(0, 256, (m, RES, RES, 3)).astype(np.uint8)
        arrays["feats_flip"] = np.ascontiguousarray(feats[..., ::-1])
    return arrays


def _new_split(path: Path, split: str, compression: str) -> zarr.Group:
    n_rows, _, _ = _layout(split)
    return open_split(zarr.open_group(str(path), mode="w", zarr_format=3), split, _fingerprint(split, compression),
                      n_rows, GRID)


def _zarr_write(group: zarr.Group, split: str, index: int) -> None:
    """The reference: zarr's own writes, then the digests read back and the flag."""
    n_rows, rows_per_chunk, row_ids = _layout(split)
    arrays = _chunk_arrays(split, index, n_rows, rows_per_chunk)
    rows = slice(index * rows_per_chunk, index * rows_per_chunk + arrays["feats"].shape[0])
    for name, values in arrays.items():
        group[name][rows] = values
    group["image_ids"][rows] = row_ids[rows]
    record_chunk(group, index)
    group["done"][index] = True


def _files(store: Path) -> dict[str, bytes]:
    """Every file of a store by relative path (a killed atomic write's `.partial` left out)."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and not p.name.endswith(".partial")}


def _assert_same_files(got: Path, want: Path, what: str) -> None:
    a, b = _files(got), _files(want)
    assert sorted(a) == sorted(b), f"{what}: files only in one store: {sorted(set(a) ^ set(b))}"
    differ = [name for name in b if a[name] != b[name]]
    assert not differ, f"{what}: files differ byte for byte: {differ}"


@pytest.mark.parametrize("compression", CODECS)
@pytest.mark.parametrize("split", SPLITS)
def test_one_and_several_writers_store_the_bytes_zarr_stores(tmp_path, split, compression):
    n_rows, rows_per_chunk, row_ids = _layout(split)
    n_chunks = -(-n_rows // rows_per_chunk)
    reference = tmp_path / "zarr.zarr"
    group = _new_split(reference, split, compression)
    for index in range(n_chunks):
        _zarr_write(group, split, index)
    assert not (reference / split / "crops" / "c" / "1").exists() or split == "val", "the all-zero crops chunk was stored"
    for writers in (1, 3):
        store = tmp_path / f"writers-{writers}.zarr"
        writer = SplitWriter(_new_split(store, split, compression), rows_per_chunk, row_ids)
        chunks = [(i, _chunk_arrays(split, i, n_rows, rows_per_chunk)) for i in reversed(range(n_chunks))]
        with ThreadPoolExecutor(writers) as pool:
            list(pool.map(writer.write, *zip(*chunks, strict=True)))
        _assert_same_files(store, reference, f"{split}, {compression}, {writers} writers vs zarr's write")
    verify_split(zarr.open_group(str(tmp_path / "writers-3.zarr"), mode="r")[split], tmp_path / "writers-3.zarr")


@pytest.mark.parametrize("index_location", ["start", "end"])
def test_a_shard_with_its_index_first_or_last_is_what_zarr_stores(tmp_path, index_location):
    codec = ShardingCodec(chunk_shape=(1, 3), codecs=[BytesCodec(), ZstdCodec()], index_location=index_location)
    array = zarr.create_array(str(tmp_path / "a.zarr"), shape=(10, 3), chunks=(4, 3), dtype="int32",
                              fill_value=0, serializer=codec, compressors=None)
    values = np.arange(30, dtype=np.int32).reshape(10, 3)
    values[5] = 0  # an empty inner chunk inside a shard
    array[:] = values
    encoder = ArrayEncoder(array)
    for index in range(3):
        stored = (tmp_path / "a.zarr" / encoder.key(index)).read_bytes()
        ours = encoder.encode(values[index * 4 : index * 4 + 4])
        assert ours is not None and ours.to_bytes() == stored, f"shard {index}, index {index_location}: bytes differ"
    assert encoder.encode(np.zeros((4, 3), np.int32)) is None, "an all-fill shard must not be stored"


def test_a_chunk_of_the_wrong_shape_is_refused_in_one_sentence(tmp_path):
    _, rows_per_chunk, row_ids = _layout("val")
    writer = SplitWriter(_new_split(tmp_path / "s.zarr", "val", "zstd"), rows_per_chunk, row_ids)
    with pytest.raises(ValueError, match=r"val/feats: a chunk holds at most 2 rows of shape \(16, 4, 4\), got \(3, 16, 4, 4\)"):
        writer.write(0, {"feats": np.zeros((3, DIM, GRID, GRID), np.float16)})


# --- SIGKILL while several chunks are in flight ---------------------------------------------

N_KILL_IMAGES = 60  # 30 train chunks of 2 images (10 rows each)
_CHILD = """
import sys, time
from concurrent.futures import ThreadPoolExecutor
import zarr
sys.path.insert(0, {repo!r})
from tests.data import test_store_writer as t
from stego_tasks.data.store_writer import SplitWriter
t.N_IMAGES = {n}
group = t._new_split({store!r}, "train", "zstd")
n_rows, rows_per_chunk, row_ids = t._layout("train")
writer = SplitWriter(group, rows_per_chunk, row_ids)
with ThreadPoolExecutor(4) as pool:
    for index in range(-(-n_rows // rows_per_chunk)):
        pool.submit(writer.write, index, t._chunk_arrays("train", index, n_rows, rows_per_chunk))
        time.sleep(0.03)  # results arrive as from a backbone; four writes overlap
"""


def _done(store: Path) -> np.ndarray | None:
    try:
        return zarr.open_group(str(store), mode="r")["train"]["done"][:]
    except Exception:  # noqa: BLE001 - not laid out yet
        return None


def test_sigkill_during_parallel_writes_then_completing_the_pending_chunks_gives_the_uninterrupted_store(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(sys.modules[__name__], "N_IMAGES", N_KILL_IMAGES)
    n_rows, rows_per_chunk, row_ids = _layout("train")
    n_chunks = -(-n_rows // rows_per_chunk)
    reference = tmp_path / "reference.zarr"
    group = _new_split(reference, "train", "zstd")
    for index in range(n_chunks):
        _zarr_write(group, "train", index)

    store = tmp_path / "killed.zarr"
    script = _CHILD.format(repo=str(REPO), n=N_KILL_IMAGES, store=str(store))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while (done := _done(store)) is None or done.sum() < 3:
            assert process.poll() is None, f"the writer ended before the kill: {process.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no chunk was done within 120 s"
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
    done = _done(store)
    assert 0 < done.sum() < n_chunks, f"the kill did not land mid-run: {int(done.sum())} of {n_chunks} chunks done"

    group = zarr.open_group(str(store), mode="a")["train"]
    pending = pending_chunks(group, row_ids, rows_per_chunk)
    flagged = set(np.flatnonzero(done).tolist())
    assert not flagged & set(pending), f"chunks marked done were not whole: {sorted(flagged & set(pending))}"
    assert sorted(set(range(n_chunks)) - flagged) == pending, f"pending {pending}, done {sorted(flagged)}"
    writer = SplitWriter(group, rows_per_chunk, row_ids)
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda i: writer.write(i, _chunk_arrays("train", i, n_rows, rows_per_chunk)), pending))
    _assert_same_files(store, reference, "killed then completed vs uninterrupted")
