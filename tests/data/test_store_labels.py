"""Tests for stego_tasks.data.store_labels: each stored row records what its labels were cut from.

Proves that a label key changes with the label file's hash and with the ignore index, is the
same for "no label" however the manifest says it, and is never the `UNKNOWN` key; that a
split's keys follow its rows (one per crop, in store order); that the keys array is created,
resized (new rows unknown) or rebuilt when damaged; that `stale_label_chunks` picks exactly
the chunks whose keys differ; and that `write_labels` replaces a chunk's labels and records
both their digest and their keys, so the chunk is intact and up to date afterwards. Split
groups are written here, in 4-row chunks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from stego_tasks.data.store_integrity import chunk_problems, ensure_digests, record_chunk
from stego_tasks.data.store_labels import (
    LABEL_KEYS,
    UNKNOWN,
    ensure_label_keys,
    label_key,
    row_label_keys,
    stale_label_chunks,
    write_label_keys,
    write_labels,
)

ROWS_PER_CHUNK = 4


def _split(path: Path, rows: int = 10) -> zarr.Group:
    """A split with `labels` [rows, 2, 2] (value = row) in 4-row chunks, recorded and done."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3).create_group("train")
    labels = np.repeat(np.arange(rows, dtype=np.uint8), 4).reshape(rows, 2, 2)
    group.create_array("labels", data=labels, chunks=(ROWS_PER_CHUNK, 2, 2))
    n_chunks = -(-rows // ROWS_PER_CHUNK)
    group.create_array("done", data=np.ones(n_chunks, dtype=bool))
    ensure_digests(group, ROWS_PER_CHUNK)
    for index in range(n_chunks):
        record_chunk(group, index)
    return group


def test_a_label_key_changes_with_the_label_file_and_the_ignore_index() -> None:
    a, b = "a" * 64, "b" * 64
    keys = {label_key(a, 255), label_key(b, 255), label_key(a, 0), label_key(None, 255), label_key(None, 0)}
    assert len(keys) == 5, f"five different inputs gave {len(keys)} keys"
    assert label_key(a, 255) == label_key(a, 255), "the key is a function of its inputs"
    assert label_key(None, 255) == label_key("", 255), "None and '' both mean no label file"
    assert UNKNOWN not in keys and all(-(2**63) <= k < 2**63 for k in keys), f"{keys}"


def test_row_keys_repeat_each_images_key_per_crop_and_read_missing_hashes_as_no_label() -> None:
    rows = pd.DataFrame({"id": [1, 2, 3], "label_hash": ["h1", None, float("nan")]})
    keys = row_label_keys(rows, crops=5, ignore_index=255)
    none = label_key(None, 255)
    assert keys.dtype == np.int64 and keys.tolist() == [label_key("h1", 255)] * 5 + [none] * 10, f"{keys}"
    assert row_label_keys(rows[["id"]], crops=1, ignore_index=255).tolist() == [none] * 3, "no label_hash column"


def test_the_keys_array_is_created_unknown_and_resized_keeping_what_is_known(tmp_path: Path) -> None:
    group = _split(tmp_path / "f.zarr")
    keys = ensure_label_keys(group, 10, ROWS_PER_CHUNK)
    assert keys.shape == (10,) and keys.chunks == (ROWS_PER_CHUNK,) and not keys[:].any(), "all UNKNOWN (0)"
    keys[:] = np.arange(1, 11)
    grown = ensure_label_keys(group, 13, ROWS_PER_CHUNK)
    assert grown[:].tolist() == [*range(1, 11), UNKNOWN, UNKNOWN, UNKNOWN], f"{grown[:]}"
    assert ensure_label_keys(group, 6, ROWS_PER_CHUNK)[:].tolist() == list(range(1, 7)), "shrunk"


def test_damaged_keys_are_rebuilt_unknown(tmp_path: Path) -> None:
    group = _split(tmp_path / "f.zarr")
    ensure_label_keys(group, 10, ROWS_PER_CHUNK)[:] = 5
    (tmp_path / "f.zarr" / "train" / LABEL_KEYS / "zarr.json").write_text("{ broken")
    fresh = zarr.open_group(str(tmp_path / "f.zarr"), mode="a")["train"]
    assert ensure_label_keys(fresh, 10, ROWS_PER_CHUNK)[:].tolist() == [UNKNOWN] * 10, "damaged keys start over"


def test_stale_chunks_are_those_whose_recorded_keys_differ(tmp_path: Path) -> None:
    group = _split(tmp_path / "f.zarr")
    ensure_label_keys(group, 10, ROWS_PER_CHUNK)
    expected = np.arange(1, 11, dtype=np.int64)
    for index in range(3):
        write_label_keys(group, index, ROWS_PER_CHUNK, expected)
    assert group[LABEL_KEYS][:].tolist() == expected.tolist(), "every chunk's keys recorded, the partial last one too"
    assert stale_label_chunks(group, expected, ROWS_PER_CHUNK, [0, 1, 2]) == [], "all up to date"
    changed = expected.copy()
    changed[5] = 99  # a label of chunk 1 was edited
    assert stale_label_chunks(group, changed, ROWS_PER_CHUNK, [0, 1, 2]) == [1], "only chunk 1"
    assert stale_label_chunks(group, changed, ROWS_PER_CHUNK, [0, 2]) == [], "only the chunks asked"
    assert stale_label_chunks(group, changed, ROWS_PER_CHUNK, []) == [], "none asked"
    (tmp_path / "f.zarr" / "train" / LABEL_KEYS / "c" / "0").write_bytes(b"garbage")
    fresh = zarr.open_group(str(tmp_path / "f.zarr"), mode="r")["train"]
    assert stale_label_chunks(fresh, expected, ROWS_PER_CHUNK, [0, 2]) == [0, 2], "unreadable keys: all asked are stale"


def test_write_labels_replaces_a_chunk_and_records_its_digest_and_keys(tmp_path: Path) -> None:
    group = _split(tmp_path / "f.zarr")
    ensure_label_keys(group, 10, ROWS_PER_CHUNK)
    expected = np.full(10, 7, dtype=np.int64)
    new = np.full((4, 2, 2), 200, dtype=np.uint8)
    write_labels(group, 1, ROWS_PER_CHUNK, new, expected)
    labels = group["labels"][:]
    assert np.array_equal(labels[4:8], new), "chunk 1's labels replaced"
    assert labels[:4, 0, 0].tolist() == [0, 1, 2, 3] and labels[8:, 0, 0].tolist() == [8, 9], "other chunks kept"
    assert chunk_problems(group, [0, 1, 2]) == {}, "the rewritten chunk's digest was recorded"
    assert stale_label_chunks(group, expected, ROWS_PER_CHUNK, [0, 1, 2]) == [0, 2], "chunk 1's keys recorded, alone"
