"""Random rows of the features store's training arrays, read fast.

`extract` stores `train/feats` and `train/labels` as one shard per extraction chunk of
one-row inner chunks (`feature_store.array_layout`), so a row decodes alone. `ShardRows`
reads such rows straight from the shard files; `gather_rows` picks it, or zarr for any other
layout, and returns the rows in the order asked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from stego_tasks.errors import InvalidInputError

# Chunks a streamed gather decodes at once. zarr's default (10) holds up to 10 compressed
# plus 10 decoded chunks (about 440 MiB at 224 px), so the step's memory would still grow
# with the split until it has 10 chunks; 2 in flight measured 352 MiB peak and 410 ms for
# 32 rows on 2 CPUs against 633 MiB and 618 ms with 10. More CPUs can decode more at once.
_READ_CONCURRENCY = min(8, max(2, os.cpu_count() or 2))

# The sharding format's "no chunk here" entry (an inner chunk never written: all fill value).
_NO_CHUNK = 2**64 - 1


class ShardRows:
    """Rows of a sharded Zarr v3 array of one-row inner chunks, read straight from its files.

    Why: zarr 3.1 spends about 1-2 ms of Python per single-row read (a round trip through
    its event loop, which runs every read of the process on one thread, and two file reads:
    the shard's index and the row), so a 224 px row cost 3 ms through zarr against 0.9 ms
    here with zstd and 0.13 ms uncompressed (benchmarks/results.md). The layout is the Zarr v3 sharding codec
    ("sharding_indexed", index at the end: [n, 2] little-endian uint64 offset and length per
    inner chunk, then a crc32c of them). Here each shard's index is read once and cached
    (16 bytes per row), and a row is one `pread` of its bytes decoded into the caller's
    buffer; uncompressed rows are read into it directly. The values are exactly zarr's (a
    test compares them for every codec `extract.compression` offers).

    `open` returns None for anything else (another store, layout or codec), and the caller
    reads through zarr.
    """

    def __init__(self, root: Path, array: zarr.Array, decode: Any) -> None:
        self._root, self._array, self._decode = root, array, decode
        self.rows_per_shard = int(array.shards[0])
        self.fill = array.metadata.fill_value
        self._index_bytes = 16 * self.rows_per_shard + 4
        self._indices: dict[int, tuple[str, np.ndarray] | None] = {}

    @classmethod
    def open(cls, array: zarr.Array) -> ShardRows | None:
        """A direct reader of `array`, or None when its store, layout or codecs are not the ones handled here."""
        from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
        from zarr.codecs.sharding import ShardingCodecIndexLocation

        root = getattr(array.store, "root", None)
        if root is None or array.shards is None or array.chunks[0] != 1 or tuple(array.chunks[1:]) != tuple(array.shape[1:]):
            return None
        if tuple(array.shards[1:]) != tuple(array.shape[1:]) or array.metadata.zarr_format != 3:
            return None
        codecs = array.metadata.codecs
        if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
            return None
        sharding = codecs[0]
        index_ok = (
            sharding.index_location == ShardingCodecIndexLocation.end
            and len(sharding.index_codecs) == 2
            and isinstance(sharding.index_codecs[0], BytesCodec)
            and isinstance(sharding.index_codecs[1], Crc32cCodec)
        )
        inner = sharding.codecs
        dtype = np.dtype(array.dtype)
        native = dtype.itemsize == 1 or dtype.byteorder in ("=", "<" if np.little_endian else ">")
        if not (index_ok and inner and isinstance(inner[0], BytesCodec) and native and np.little_endian):
            return None
        if len(inner) == 1:
            decode = None
        elif len(inner) == 2 and isinstance(inner[1], ZstdCodec):
            from numcodecs import Zstd

            decode = Zstd().decode
        elif len(inner) == 2 and isinstance(inner[1], BloscCodec):
            from numcodecs import Blosc

            decode = Blosc().decode  # a blosc frame describes its own compressor and shuffle
        else:
            return None
        return cls(Path(root), array, decode)

    def _index(self, shard: int) -> tuple[str, np.ndarray] | None:
        """(file path, [rows_per_shard, 2] offsets and lengths) of a shard, None when it has no file."""
        if shard in self._indices:
            return self._indices[shard]
        key = self._array.metadata.encode_chunk_key((shard, *[0] * (self._array.ndim - 1)))
        path = str(self._root / self._array.path / key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            entry = None
        else:
            try:
                size = os.fstat(fd).st_size
                raw = os.pread(fd, self._index_bytes, size - self._index_bytes) if size >= self._index_bytes else b""
            finally:
                os.close(fd)
            entry = (path, self._parse_index(raw, path))
        self._indices[shard] = entry  # a race only computes the same entry twice
        return entry

    def _parse_index(self, raw: bytes, path: str) -> np.ndarray:
        import google_crc32c

        if len(raw) != self._index_bytes:
            raise InvalidInputError(f"{path} is too short to hold a shard index; run `stego extract` to repair the store.")
        body, crc = raw[:-4], raw[-4:]
        if np.uint32(google_crc32c.value(body)).tobytes() != crc:
            raise InvalidInputError(f"{path}: the shard index does not match its checksum; run `stego extract` to repair the store.")
        return np.frombuffer(body, dtype="<u8").reshape(self.rows_per_shard, 2)

    def read_into(self, row: int, out: np.ndarray) -> None:
        """Decode row `row` into `out` (C-contiguous, the array's row shape and dtype)."""
        shard, local = divmod(int(row), self.rows_per_shard)
        entry = self._index(shard)
        if entry is None or int(entry[1][local, 0]) == _NO_CHUNK:
            out[...] = self.fill
            return
        path, index = entry
        offset, length = int(index[local, 0]), int(index[local, 1])
        fd = os.open(path, os.O_RDONLY)
        try:
            if self._decode is None:
                if length != out.nbytes or os.preadv(fd, [memoryview(out).cast("B")], offset) != length:
                    raise InvalidInputError(f"{path}: row {row} is truncated; run `stego extract` to repair the store.")
            else:
                data = os.pread(fd, length, offset)
                if len(data) != length:
                    raise InvalidInputError(f"{path}: row {row} is truncated; run `stego extract` to repair the store.")
                self._decode(data, out=out)
        finally:
            os.close(fd)

    def gather(self, index: np.ndarray) -> np.ndarray:
        """Rows `index` [B] (any order, duplicates allowed) as a new array [B, ...]."""
        out = np.empty((len(index), *self._array.shape[1:]), dtype=self._array.dtype)
        done: dict[int, int] = {}
        for position, row in enumerate(np.asarray(index, dtype=np.int64).tolist()):
            if row in done:
                out[position] = out[done[row]]
            else:
                self.read_into(row, out[position])
                done[row] = position
        return out


def gather_rows(array: zarr.Array, index: np.ndarray, reader: ShardRows | None = None) -> np.ndarray:
    """Read rows `index` of a Zarr array, in that order, reading each needed chunk once.

    Args:
        array: Zarr array [M, ...].
        index: row numbers [B] in [0, M), any order, duplicates allowed.
        reader: the array's `ShardRows` (keeps its shard indices between calls); None opens
            one for a sharded array of one-row chunks, where the layout allows.

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
    if reader is None and array.shards is not None and array.chunks[0] == 1:
        reader = ShardRows.open(array)
    if reader is not None:
        return reader.gather(index)  # in order, each distinct row read once, no second copy
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
