"""The train split as the `train` stage reads it: held in memory, or streamed from Zarr.

`load_training_data` opens the features store's train split and the kNN graph and picks
how to hold them (see `IN_MEMORY_BYTES`); `TrainingData.batch` gives one step's features,
kNN positives' features and labels on the training device.
"""

from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from stego_tasks.feature_store import content_identity, open_store, read_split

log = logging.getLogger("stego")

# Splits whose features and labels take at most this many bytes are read into memory once;
# larger ones are streamed from Zarr step by step. Why both: a step reads 16 random rows and
# their 16 kNN positives. `extract` stores the train split as one-row inner chunks in one
# shard per extraction chunk (`feature_store.array_layout`), so a row decodes alone, but the
# reads still cost: measured at 224 px on 2 CPUs (benchmarks/results.md), 3.20 steps/s in
# memory against 2.86 streamed (26.4x and 23.6x the backbone-in-the-loop step); with the
# earlier whole-chunk layout streaming managed 1.67 steps/s. A chunk cache would not help:
# random rows hit a cache of K chunks with probability K / chunks, and a cache big enough
# to matter is the in-memory split again. Holding the split costs RAM growing with the
# corpus (0.62 MiB per 224 px crop, about 150 GiB for a COCO-Stuff-sized split), so above
# 1 GiB (about 1650 such crops) memory is bounded instead.
IN_MEMORY_BYTES = 1 << 30
# Chunks a streamed gather decodes at once. zarr's default (10) holds up to 10 compressed
# plus 10 decoded chunks (about 440 MiB at 224 px), so the step's memory would still grow
# with the split until it has 10 chunks; 2 in flight measured 352 MiB peak and 410 ms for
# 32 rows on 2 CPUs against 633 MiB and 618 ms with 10. More CPUs can decode more at once.
_READ_CONCURRENCY = min(8, max(2, os.cpu_count() or 2))

ArrayLike = torch.Tensor | zarr.Array


def gather_rows(array: zarr.Array, index: np.ndarray) -> np.ndarray:
    """Read rows `index` of a Zarr array, in that order, reading each needed chunk once.

    Args:
        array: Zarr array [M, ...].
        index: row numbers [B] in [0, M), any order, duplicates allowed.

    Returns:
        numpy array [B, ...] with `result[i] == array[index[i]]`, the array's dtype.

    Raises:
        IndexError: if an index lies outside [0, M).
    """
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    if index.size == 0:
        return np.empty((0, *array.shape[1:]), dtype=array.dtype)
    if index.min() < 0 or index.max() >= array.shape[0]:
        raise IndexError(f"rows [{index.min()}, {index.max()}] requested from an array of {array.shape[0]} rows")
    # Sorted, unique rows: one orthogonal selection decodes each touched chunk once, where
    # row-by-row reads would decode a chunk once per row in it.
    unique, inverse = np.unique(index, return_inverse=True)
    if array.shards is not None and array.chunks[0] == 1:
        # Sharded with one-row inner chunks: a single-row read decodes only that row
        # (2 ms at 224 px ViT-S/8), while zarr 3.1's orthogonal selection on a shard read
        # the whole shard (measured 280-480 ms for 32 rows against 40-60 ms row by row).
        rows = np.stack([array[int(row)] for row in unique])
    else:
        with zarr.config.set({"async.concurrency": _READ_CONCURRENCY}):
            rows = array.get_orthogonal_selection((unique,))
    return rows[inverse.reshape(-1)]


def _rows(source: ArrayLike, index: np.ndarray) -> torch.Tensor:
    """Rows `index` [B] of an in-memory tensor or a Zarr array, as a CPU tensor [B, ...]."""
    if isinstance(source, torch.Tensor):
        return source[torch.from_numpy(index)]
    return torch.from_numpy(gather_rows(source, index))


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to `device`; to a GPU through pinned memory, asynchronously."""
    if device.type == "cuda":
        # Only a page-locked source lets the copy run as DMA without a staging copy, and
        # only then is non_blocking truly asynchronous. The caching host allocator keeps
        # the pinned block alive until the copy on the current stream has finished.
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@dataclass
class TrainingBatch:
    """One step's inputs on the training device.

    feats [B, C, h, w] and feats_pos [B, C, h, w] float32 (a batch and one kNN positive per
    row), labels [B, R, R] int64 or None.
    """

    feats: torch.Tensor
    feats_pos: torch.Tensor
    labels: torch.Tensor | None


@dataclass
class TrainingData:
    """The train split: features, labels and kNN graph, held in memory or read per batch.

    `feats` [M, C, h, w] (float16 as stored) and `labels` [M, R, R] (uint8 as stored, any
    integer dtype accepted; None when no crop has a valid label) are either tensors in
    memory or the store's Zarr arrays, from which each step reads only its rows
    (`load_training_data` picks; see `IN_MEMORY_BYTES` for why). `knn` [M, k] is always in
    memory (k int64 per crop). Labels are widened to int64 per batch, never for the split:
    int64 would take 8x the bytes of the stored uint8.
    """

    feats: ArrayLike
    labels: ArrayLike | None
    knn: np.ndarray
    # What the data is (see `data_identity`); None: computed from the values when needed.
    identity: dict[str, Any] | None = None

    @property
    def size(self) -> int:
        """Number of training rows M."""
        return int(self.feats.shape[0])

    @property
    def in_dim(self) -> int:
        """Feature channels C."""
        return int(self.feats.shape[1])

    @property
    def streamed(self) -> bool:
        """True when features are read from the Zarr store per batch, not held in memory."""
        return not isinstance(self.feats, torch.Tensor)

    def feature_rows(self, index: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Features of rows `index` [B] (any order, duplicates allowed): CPU tensor [B, C, h, w], stored dtype."""
        return _rows(self.feats, np.asarray(index, dtype=np.int64).reshape(-1))

    def label_rows(self, index: np.ndarray | torch.Tensor) -> torch.Tensor | None:
        """Labels of rows `index` [B]: CPU tensor [B, R, R] in the stored dtype (uint8), or None."""
        if self.labels is None:
            return None
        return _rows(self.labels, np.asarray(index, dtype=np.int64).reshape(-1))

    def batch(self, index: np.ndarray | torch.Tensor, positives: np.ndarray, device: torch.device) -> TrainingBatch:
        """A step's features, positives' features and labels on `device`.

        Args:
            index: batch rows [B].
            positives: one kNN partner row per batch row [B].
            device: training device.

        Returns:
            `TrainingBatch`: feats and feats_pos float32 [B, C, h, w], labels int64 [B, R, R] or None.
        """
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        n = index.shape[0]
        # One read for both halves: a chunk holding a batch row and a positive is decoded once.
        rows = _to_device(self.feature_rows(np.concatenate([index, np.asarray(positives, dtype=np.int64)])), device)
        labels = self.label_rows(index)
        return TrainingBatch(
            feats=rows[:n].float(),
            feats_pos=rows[n:].float(),
            # Moved as stored (uint8: 8x fewer bytes) and widened on the device.
            labels=None if labels is None else _to_device(labels, device).long(),
        )


def _any_valid_label(labels: zarr.Array, ignore_index: int, n_classes: int) -> bool:
    """Whether any stored label is a class, read one chunk of rows at a time (bounded memory)."""
    step = (labels.shards or labels.chunks)[0]
    for start in range(0, labels.shape[0], step):
        block = labels[start : start + step]
        if ((block < n_classes) & (block != ignore_index)).any():
            return True
    return False


def load_training_data(
    store_path: Path,
    knn_path: Path,
    ignore_index: int,
    n_classes: int,
    in_memory_bytes: int = IN_MEMORY_BYTES,
) -> TrainingData:
    """Open the train split's features, labels and kNN graph.

    Args:
        store_path: the features Zarr store.
        knn_path: the kNN Zarr store.
        ignore_index: label value without a class.
        n_classes: classes of the corpus (labels outside [0, n_classes) are ignored).
        in_memory_bytes: read features and labels into memory when together they take at
            most this many bytes (faster steps); otherwise keep them in the store and read
            each batch's rows (memory independent of the split's size). 0 always streams.

    Returns:
        `TrainingData` (feats float16, labels uint8 as stored); labels None when no
        training crop has a single valid label.
    """
    # Both stores are checked against the digests recorded when they were written (one read
    # of their bytes, no decode), so a deleted or damaged chunk is named here, not trained on.
    group = read_split(store_path, "train", arrays=["feats", "labels"])
    feats, labels = group["feats"], group["labels"]
    knn = open_store(knn_path, "knn", ["train"])["train"][:]
    if knn.shape[0] != feats.shape[0]:
        raise ValueError(
            f"the kNN graph has {knn.shape[0]} rows but the store has {feats.shape[0]} training crops; rerun `stego knn`."
        )
    if feats.nbytes + labels.nbytes <= in_memory_bytes:
        # Read the labels once, and check them in memory rather than in a second pass.
        held = labels[:]
        has_labels = bool(((held < n_classes) & (held != ignore_index)).any())
        in_memory = True
    else:
        held = None
        has_labels = _any_valid_label(labels, ignore_index, n_classes)
        # Without valid labels only the features count against the budget.
        in_memory = not has_labels and feats.nbytes <= in_memory_bytes
    nbytes = feats.nbytes + (labels.nbytes if has_labels else 0)
    identity = {
        "crops": int(feats.shape[0]), "in_dim": int(feats.shape[1]), "labels": has_labels, "knn": _checksum(knn),
        # The digests recorded when the chunks were written: equal digests, equal bytes (to crc32).
        "features": content_identity(group, ["feats", "labels"] if has_labels else ["feats"]),
    }
    if in_memory:
        data = TrainingData(torch.from_numpy(feats[:]), torch.from_numpy(held) if has_labels else None, knn)
    else:
        data = TrainingData(feats, labels if has_labels else None, knn)
    if identity["features"] is None and in_memory:
        identity["features"] = data_identity(data)["features"]  # a store without digests: its values
    data.identity = identity
    log.info("train: %d crops, %.0f MiB of features and labels, %s", data.size, nbytes / 2**20,
             "streamed from the store" if data.streamed else "read into memory")
    return data


def _checksum(values: Any) -> str:
    """crc32 (hex) of an array's values, with its dtype and shape."""
    array = np.ascontiguousarray(values.numpy() if isinstance(values, torch.Tensor) else np.asarray(values))
    return f"{zlib.crc32(memoryview(array).cast('B')):08x}:{array.dtype}:{'x'.join(map(str, array.shape))}"


def data_identity(data: TrainingData) -> dict[str, Any]:
    """What the training data is, for a checkpoint to record and `--resume` to compare.

    `load_training_data` sets it from the store's recorded digests (no extra read); data
    built by hand gets checksums of its values.

    Returns:
        {"crops", "in_dim", "labels" (bool), "knn", "features"}: checksums as hex strings.
    """
    if data.identity is not None:
        return data.identity
    features = _checksum(data.feats if isinstance(data.feats, torch.Tensor) else data.feats[:])
    if data.labels is not None:
        labels = data.labels if isinstance(data.labels, torch.Tensor) else data.labels[:]
        features += "+" + _checksum(labels)
    return {"crops": data.size, "in_dim": data.in_dim, "labels": data.labels is not None, "knn": _checksum(data.knn),
            "features": features}
