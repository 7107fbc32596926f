"""The train split as the `train` stage reads it: held in memory, or streamed from Zarr.

`load_training_data` opens the features store's train split and the kNN graph and picks
how to hold them (see `IN_MEMORY_BYTES`); `TrainingData.batch` gives one step's features,
kNN positives' features and labels on the training device.
"""

from __future__ import annotations

import logging
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from stego_tasks.data.feature_store import read_split
from stego_tasks.data.shard_rows import ShardRows, gather_rows
from stego_tasks.data.store_integrity import content_identity, open_store
from stego_tasks.errors import InvalidInputError

log = logging.getLogger("stego")

# Splits whose features and labels take at most this many bytes are read into memory once;
# larger ones are streamed from Zarr step by step. Why both: a step reads 16 random rows and
# their 16 kNN positives. `extract` stores the train split as one-row inner chunks in one
# shard per extraction chunk (`feature_store.array_layout`), so a row decodes alone
# (`ShardRows`: about 0.9 ms per zstd row at 224 px), and `BatchStream` reads the next steps'
# rows while a step runs: streamed steps measured 0.965x the in-memory step on 2 CPUs
# (0.93x without the read-ahead; benchmarks/results.md). What is left is the decode's CPU
# time itself, which only idle cores can hide. A chunk cache would not help:
# random rows hit a cache of K chunks with probability K / chunks, and a cache big enough
# to matter is the in-memory split again. Holding the split costs RAM growing with the
# corpus (0.62 MiB per 224 px crop, about 150 GiB for a COCO-Stuff-sized split), so above
# 1 GiB (about 1650 such crops) memory is bounded instead.
IN_MEMORY_BYTES = 1 << 30
ArrayLike = torch.Tensor | zarr.Array


def _rows(source: ArrayLike, index: np.ndarray, reader: ShardRows | None = None) -> np.ndarray:
    """Rows `index` [B] of an in-memory tensor or a Zarr array, as a numpy array [B, ...] (stored dtype).

    numpy, not torch: a reader thread must not start torch's intra-op thread pool of its own.
    """
    if isinstance(source, torch.Tensor):
        return source.numpy()[index]
    return gather_rows(source, index, reader)


def _on_device(host: TrainingBatch, device: torch.device) -> TrainingBatch:
    """A batch from `TrainingData.host_batch` on `device` (float32 features, int64 labels)."""
    if device.type == "cpu":
        return host  # widened on the host already
    # On a GPU: copied as stored (float16, uint8: fewer bytes) and widened there. Only a
    # page-locked source lets the copy run as DMA without a staging copy, and only then is
    # non_blocking truly asynchronous; the caching host allocator keeps the pinned block
    # alive until the copy on the current stream has finished.
    blocking = device.type != "cuda"

    def move(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device, non_blocking=not blocking)

    return TrainingBatch(
        feats=move(host.feats).float(),
        feats_pos=move(host.feats_pos).float(),
        labels=None if host.labels is None else move(host.labels).long(),
    )


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
    # Direct readers of the stored arrays (`ShardRows`, None where zarr reads), made on first use.
    _readers: dict[str, ShardRows | None] = field(default_factory=dict, init=False, repr=False, compare=False)

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

    def _reader(self, name: str) -> ShardRows | None:
        if name not in self._readers:
            source = getattr(self, name)
            sharded = isinstance(source, zarr.Array) and source.shards is not None and source.chunks[0] == 1
            self._readers[name] = ShardRows.open(source) if sharded else None  # a race opens it twice, harmlessly
        return self._readers[name]

    def _stored_rows(self, name: str, index: np.ndarray) -> np.ndarray:
        return _rows(getattr(self, name), np.asarray(index, dtype=np.int64).reshape(-1), self._reader(name))

    def feature_rows(self, index: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Features of rows `index` [B] (any order, duplicates allowed): CPU tensor [B, C, h, w], stored dtype."""
        return torch.from_numpy(self._stored_rows("feats", index))

    def label_rows(self, index: np.ndarray | torch.Tensor) -> torch.Tensor | None:
        """Labels of rows `index` [B]: CPU tensor [B, R, R] in the stored dtype (uint8), or None."""
        if self.labels is None:
            return None
        return torch.from_numpy(self._stored_rows("labels", index))

    def host_batch(self, index: np.ndarray | torch.Tensor, positives: np.ndarray, pinned: bool = False) -> TrainingBatch:
        """A step's rows read into CPU memory: what a reader thread of `BatchStream` does.

        Args:
            index: batch rows [B].
            positives: one kNN partner row per batch row [B].
            pinned: for a CUDA device: keep the stored dtypes (float16, uint8) in page-locked
                memory, widened after the copy; else widen here (float32, int64).

        Returns:
            A `TrainingBatch` of CPU tensors; `_on_device` finishes it.
        """
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        n = index.shape[0]
        # One read for both halves: a row that is in the batch and a positive is read once.
        rows = self._stored_rows("feats", np.concatenate([index, np.asarray(positives, dtype=np.int64).reshape(-1)]))
        labels = None if self.labels is None else self._stored_rows("labels", index)
        if pinned:
            both = torch.from_numpy(rows).pin_memory()
            return TrainingBatch(both[:n], both[n:], None if labels is None else torch.from_numpy(labels).pin_memory())
        # numpy's casts run in the calling thread (no torch thread pool per reader); exact for float16 -> float32.
        wide = torch.from_numpy(rows.astype(np.float32))
        return TrainingBatch(wide[:n], wide[n:], None if labels is None else torch.from_numpy(labels.astype(np.int64)))

    def batch(self, index: np.ndarray | torch.Tensor, positives: np.ndarray, device: torch.device) -> TrainingBatch:
        """A step's features, positives' features and labels on `device`.

        Args:
            index: batch rows [B].
            positives: one kNN partner row per batch row [B].
            device: training device.

        Returns:
            `TrainingBatch`: feats and feats_pos float32 [B, C, h, w], labels int64 [B, R, R] or None.
        """
        return _on_device(self.host_batch(index, positives, pinned=device.type == "cuda"), device)


class BatchStream:
    """Training batches read ahead by background threads, handed out in step order.

    `plan` yields each step's (batch rows [B], one kNN positive per row [B]) in step order,
    drawn in the caller's thread from (seed, step) alone (`batching.step_positives`); the
    `readers` threads only read rows, up to `depth` steps ahead, while the training step
    runs. So how many threads read, which one reads a step, and whether the split is held
    in memory or streamed never change what a step gets. `readers` 0 reads each batch in
    the calling thread when it is asked for.

    Why threads: a row read is a `pread` and a decode (`ShardRows`), and torch's kernels
    release the GIL, so reading overlaps the step's compute; decoding rows on threads
    measured the same as on processes (benchmarks/results.md), so processes would add
    copies and start-up for nothing.

    Use as a context manager (or call `close`): it stops the threads and drops batches read ahead.
    """

    def __init__(
        self,
        data: TrainingData,
        plan: Iterator[tuple[np.ndarray, np.ndarray]],
        device: torch.device,
        readers: int = 2,
        depth: int | None = None,
    ) -> None:
        self._data, self._plan, self._device = data, iter(plan), device
        self._pinned = device.type == "cuda"
        self._pool = ThreadPoolExecutor(readers, thread_name_prefix="stego-read") if readers > 0 else None
        self._depth = max(1, depth if depth is not None else 2 * readers)
        self._ahead: deque[Future[TrainingBatch]] = deque()
        self._planned_all = False

    def _fill(self) -> None:
        while self._pool is not None and not self._planned_all and len(self._ahead) < self._depth:
            try:
                index, positives = next(self._plan)
            except StopIteration:
                self._planned_all = True
                return
            self._ahead.append(self._pool.submit(self._data.host_batch, index, positives, self._pinned))

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> TrainingBatch:
        if self._pool is None:
            index, positives = next(self._plan)
            return self._data.batch(index, positives, self._device)
        self._fill()
        if not self._ahead:
            raise StopIteration
        host = self._ahead.popleft().result()
        self._fill()  # keep the readers busy while this step computes
        return _on_device(host, self._device)

    def close(self) -> None:
        """Stop the reader threads; batches read ahead are dropped."""
        for future in self._ahead:
            future.cancel()
        self._ahead.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._planned_all = True

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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
        raise InvalidInputError(
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
