"""Which labels each row of the features store was cut from, so edited labels reach the store.

The features of a row depend on its image (the manifest id changes with the image's
content) and on the backbone and preprocessing (the split's fingerprint); its `labels`
depend on the label file too, which can be edited, replaced or removed while the image
stays. So every row records a key of what its labels came from, in
`<split>/integrity/label_keys` (int64 [M]): the first 8 bytes of SHA-256 over the label
file's content hash (or "no label") and the ignore index that fills unlabelled pixels.

`extract` compares the recorded keys with the manifest's and re-reads only the labels of
chunks whose keys differ: the images are decoded again (labels are cut exactly as the
image is), the backbone is not run, and the features stay. Key 0 means "unknown" (a
store written before keys existed), so such a store gets its labels re-read once.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import zarr

from stego_tasks.data.store_integrity import INTEGRITY_GROUP, record_chunk

LABEL_KEYS = f"{INTEGRITY_GROUP}/label_keys"
UNKNOWN = 0
# Bump when the way labels are cut or converted changes: every store re-reads its labels.
_LABEL_RULES = "1"


def label_key(label_hash: str | None, ignore_index: int) -> int:
    """The int64 key of one image's stored labels (never `UNKNOWN`).

    Args:
        label_hash: the manifest's SHA-256 of the label file; None or "" when the image has none.
        ignore_index: the class id that fills pixels without a label.

    Returns:
        A nonzero signed 64-bit integer.
    """
    text = f"{_LABEL_RULES}|{label_hash or '-'}|{int(ignore_index)}"
    key = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little", signed=True)
    return key if key != UNKNOWN else 1


def row_label_keys(rows: pd.DataFrame, crops: int, ignore_index: int) -> np.ndarray:
    """The label key of every store row of a split, in store order (each image's key repeated per crop).

    Args:
        rows: the split's manifest rows, sorted by id (as the store holds them).
        crops: rows per image (5 with five-crop, else 1).
        ignore_index: the corpus' ignore index.

    Returns:
        int64 [M] with M = len(rows) x crops.
    """
    hashes = rows["label_hash"].tolist() if "label_hash" in rows else [None] * len(rows)
    keys = np.asarray([label_key(h if isinstance(h, str) else None, ignore_index) for h in hashes], dtype=np.int64)
    return np.repeat(keys, crops)


def ensure_label_keys(group: zarr.Group, n_rows: int, rows_per_chunk: int) -> zarr.Array:
    """The split's `label_keys` array, created (all `UNKNOWN`) or resized to `n_rows`; damage resets it."""
    # Not `LABEL_KEYS in group`: that reads the metadata too, and raises when it is damaged.
    try:
        array = group[LABEL_KEYS]
        array[:0]  # its metadata reads
    except KeyError:
        pass  # no keys yet
    except Exception:  # noqa: BLE001 - damaged metadata: the keys are only a cache of what is known
        del group[LABEL_KEYS]
    else:
        if array.shape[0] != n_rows:
            old = array.shape[0]
            array.resize((n_rows,))
            if n_rows > old:
                array[old:] = UNKNOWN
        return array
    return group.require_group(INTEGRITY_GROUP).create_array(
        "label_keys", shape=(n_rows,), chunks=(max(rows_per_chunk, 1),), dtype="int64", fill_value=UNKNOWN,
        overwrite=True,
    )


def stale_label_chunks(group: zarr.Group, expected: np.ndarray, rows_per_chunk: int, chunks: list[int]) -> list[int]:
    """Those of `chunks` whose recorded label keys differ from `expected` (unreadable keys count as differing)."""
    if not chunks:
        return []
    try:
        recorded = np.asarray(group[LABEL_KEYS][:], dtype=np.int64)
    except Exception:  # noqa: BLE001 - a damaged keys chunk: re-read every chunk's labels
        return list(chunks)
    stale = []
    for index in chunks:
        rows = slice(index * rows_per_chunk, (index + 1) * rows_per_chunk)
        if not np.array_equal(recorded[rows], expected[rows]):
            stale.append(index)
    return stale


def write_label_keys(group: zarr.Group, index: int, rows_per_chunk: int, expected: np.ndarray) -> None:
    """Record the label keys of chunk `index`'s rows (after its labels are written)."""
    rows = slice(index * rows_per_chunk, min((index + 1) * rows_per_chunk, expected.shape[0]))
    group[LABEL_KEYS][rows] = expected[rows]


def write_labels(group: zarr.Group, index: int, rows_per_chunk: int, labels: np.ndarray, expected: np.ndarray) -> None:
    """Replace the labels of done chunk `index` and record what they were cut from.

    Order matters for a kill at any point: the labels object is rewritten first, then its
    digest (a kill before that leaves a digest mismatch, so the chunk is computed again),
    then the keys (a kill before that re-reads the labels once more).

    Args:
        group: the split group, open for writing (the caller holds the store's lock).
        index: the extraction chunk.
        rows_per_chunk: store rows per chunk.
        labels: uint8 [m, R, R], the chunk's labels as `extract` cuts them.
        expected: the split's label keys (`row_label_keys`).
    """
    start = index * rows_per_chunk
    group["labels"][start : start + labels.shape[0]] = labels
    record_chunk(group, index)
    write_label_keys(group, index, rows_per_chunk, expected)
