"""Writing extraction chunks into the features store on several threads at once.

zarr encodes every write on its one event-loop thread, so several threads calling
`array[rows] = values` take turns. Here a chunk's stored objects (one per array: a chunk,
or a shard of one-row chunks) are encoded in the calling thread with each array's own
zarr codecs (`_encode_sync` of the same codec objects zarr uses; zstd, blosc and crc32
release the GIL), then handed to the store whole. The bytes are the ones
`array[rows] = values` would store (tests/data/test_store_writer.py compares them file by
file): fill-valued chunks (and inner chunks of a shard) are left out, a shard's inner
chunks are laid out in zarr's Morton order with its index encoded by the index codecs.
Those codec methods and the shard index are zarr 3.1 internals: an upgrade that changes
them fails those tests rather than changing a store silently.

`SplitWriter.write` is safe to call from many threads, each with its own chunk. The
split's shared bookkeeping (the digests row and the `done` flag, `done` being one zarr
chunk for all) is updated under a lock and only after every object of the chunk is
stored, so a kill at any point leaves only whole chunks marked done.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr
from zarr.abc.codec import Codec
from zarr.codecs.sharding import ShardingCodec, ShardingCodecIndexLocation, _ShardIndex
from zarr.core.array_spec import ArraySpec
from zarr.core.buffer import Buffer, NDBuffer, default_buffer_prototype
from zarr.core.codec_pipeline import codecs_from_list, fill_value_or_default
from zarr.core.indexing import morton_order_iter
from zarr.core.sync import sync

from stego_tasks.data.store_integrity import DIGESTS, chunk_key, object_digest
from stego_tasks.data.store_labels import write_label_keys
from stego_tasks.errors import InvalidInputError


def _encode_with(codecs: Sequence[Codec], value: NDBuffer, spec: ArraySpec) -> Buffer | None:
    """Run `value` through a zarr codec chain (array-array, array-bytes, bytes-bytes) in this thread."""
    array_array, array_bytes, bytes_bytes = codecs_from_list(list(codecs))
    for codec in array_array:
        value = codec._encode_sync(value, spec)
        spec = codec.resolve_metadata(spec)
    if isinstance(array_bytes, ShardingCodec):
        data = _encode_shard(array_bytes, value, spec)
    else:
        data = array_bytes._encode_sync(value, spec)
    spec = array_bytes.resolve_metadata(spec)
    for codec in bytes_bytes:
        if data is None:
            break
        data = codec._encode_sync(data, spec)
        spec = codec.resolve_metadata(spec)
    return data


def is_fill(value: NDBuffer, spec: ArraySpec) -> bool:
    """zarr's `value.all_equal(fill value)`, the test that leaves a chunk unstored, made fast.

    For a fill value whose bytes are all zero (every array of the features store), zarr's
    test (bit patterns for a float zero, values for integers and booleans) is "every byte
    is zero"; real data fails it at its first element, where zarr's own test compares the
    whole chunk (for float16 in software: as long as zstd takes to encode it).
    """
    fill = fill_value_or_default(spec)
    data = value.as_numpy_array()
    if data.dtype.kind in "biuf" and data.flags.c_contiguous and not any(np.asarray(fill, data.dtype).tobytes()):
        raw = data.reshape(-1).view(np.uint8)
        return not (raw[: data.dtype.itemsize].any() or raw.any())
    return value.all_equal(fill)


def encode_object(codecs: Sequence[Codec], value: NDBuffer, spec: ArraySpec) -> Buffer | None:
    """The stored bytes of one whole chunk (or shard), None where zarr stores nothing (all fill value)."""
    if not spec.config.write_empty_chunks and is_fill(value, spec):
        return None
    return _encode_with(codecs, value, spec)


def _encode_shard(codec: ShardingCodec, value: NDBuffer, spec: ArraySpec) -> Buffer | None:
    """A shard as `ShardingCodec` writes it: non-empty inner chunks in Morton order, then (or first) the index."""
    chunks_per_shard = codec._get_chunks_per_shard(spec)
    chunk_spec = codec._get_chunk_spec(spec)
    index = _ShardIndex.create_empty(chunks_per_shard)
    parts: list[Buffer] = []
    offset = 0
    for coords in morton_order_iter(chunks_per_shard):
        selection = tuple(slice(c * size, (c + 1) * size) for c, size in zip(coords, codec.chunk_shape, strict=True))
        data = encode_object(codec.codecs, value[selection], chunk_spec)
        if data is None or len(data) == 0:
            continue
        index.set_chunk_slice(coords, slice(offset, offset + len(data)))
        parts.append(data)
        offset += len(data)
    if not parts:
        return None
    index_spec = codec._get_index_chunk_spec(chunks_per_shard)
    empty = spec.prototype.buffer.create_zero_length()
    if codec.index_location == ShardingCodecIndexLocation.start:
        size = len(_encode_index(codec, index, index_spec))
        index.offsets_and_lengths[index.offsets_and_lengths[..., 0] != np.iinfo(np.uint64).max, 0] += size
        return empty.combine([_encode_index(codec, index, index_spec), *parts])
    return empty.combine([*parts, _encode_index(codec, index, index_spec)])


def _encode_index(codec: ShardingCodec, index: _ShardIndex, spec: ArraySpec) -> Buffer:
    value = spec.prototype.nd_buffer.from_numpy_array(index.offsets_and_lengths)
    return _encode_with(codec.index_codecs, value, spec)


class ArrayEncoder:
    """Encodes extraction chunks of one array into the object zarr would store for them.

    Args:
        array: an array whose stored objects (chunks, or shards) each hold one extraction
            chunk of rows (the features store's layout, `feature_store.array_layout`).
    """

    def __init__(self, array: zarr.Array) -> None:
        async_array = array._async_array
        self.array = array
        self.codecs = tuple(array.metadata.codecs)
        self.spec = array.metadata.get_chunk_spec(
            (0,) * array.ndim, async_array.config, prototype=default_buffer_prototype()
        )
        self.rows = int(self.spec.shape[0])
        self.dtype = np.dtype(array.dtype)

    def key(self, index: int) -> str:
        """The store key of extraction chunk `index`."""
        return chunk_key(self.array, index)

    def encode(self, values: np.ndarray | None) -> Buffer | None:
        """The stored object for one chunk's rows (fewer rows than a chunk: the rest is fill value)."""
        if values is None:
            return None
        values = np.asarray(values, dtype=self.dtype)
        if values.shape[1:] != tuple(self.spec.shape[1:]) or values.shape[0] > self.rows:
            raise InvalidInputError(
                f"{self.array.path}: a chunk holds at most {self.rows} rows of shape {tuple(self.spec.shape[1:])}, "
                f"got {values.shape}."
            )
        if values.shape[0] < self.rows:
            full = np.full(self.spec.shape, fill_value_or_default(self.spec), dtype=self.dtype)
            full[: values.shape[0]] = values
            values = full
        return encode_object(self.codecs, self.spec.prototype.nd_buffer.from_numpy_array(values), self.spec)


async def _store_objects(store: Any, objects: dict[str, Buffer | None]) -> None:
    """Store every object at once (zarr's LocalStore writes each atomically); None deletes the key."""

    async def one(key: str, data: Buffer | None) -> None:
        if data is None:
            await store.delete(key)
        else:
            await store.set(key, data)

    await asyncio.gather(*(one(key, data) for key, data in objects.items()))


class SplitWriter:
    """Writes whole extraction chunks of one split, from any number of threads at once.

    Args:
        group: the split's group, laid out by `feature_store.open_split` (it has digests).
        rows_per_chunk: store rows per extraction chunk.
        row_ids: manifest id of every row of the split [M]; stored in `image_ids`.
        label_keys: what each row's labels are cut from [M] (`store_labels.row_label_keys`),
            recorded once the chunk's data is stored; None records nothing.
    """

    def __init__(
        self, group: zarr.Group, rows_per_chunk: int, row_ids: np.ndarray, label_keys: np.ndarray | None = None
    ) -> None:
        self.group = group
        self.label_keys = label_keys
        self.rows_per_chunk = rows_per_chunk
        self.row_ids = row_ids
        self.digests = group[DIGESTS]
        self.done = group["done"]
        self.names = list(self.digests.attrs["arrays"])
        self.encoders = {name: ArrayEncoder(group[name]) for name in self.names}
        for name, encoder in self.encoders.items():
            if encoder.rows != rows_per_chunk:
                raise InvalidInputError(
                    f"{group.path}/{name} stores {encoder.rows} rows per object, the split's chunks hold {rows_per_chunk}."
                )
        self._bookkeeping = threading.Lock()

    def write(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        """Store chunk `index` (`arrays`: its rows per array; arrays left out are stored as fill value) and mark it done."""
        start = index * self.rows_per_chunk
        values = {**arrays, "image_ids": self.row_ids[start : start + arrays["feats"].shape[0]]}
        objects = {self.encoders[name].key(index): self.encoders[name].encode(values.get(name)) for name in self.names}
        found = [(0, 0) if data is None else object_digest(data.as_numpy_array()) for data in objects.values()]
        sync(_store_objects(self.group.store, objects))
        if self.label_keys is not None:
            # One zarr chunk per extraction chunk: no other writer touches these rows.
            write_label_keys(self.group, index, self.rows_per_chunk, self.label_keys)
        record = np.array(found, dtype=np.int64)
        # Digests, then the flag, only once the data is stored; `done` is one zarr chunk for
        # the whole split, so concurrent writers would lose each other's flags without the lock.
        with self._bookkeeping:
            self.digests[index] = record
            self.done[index] = True
