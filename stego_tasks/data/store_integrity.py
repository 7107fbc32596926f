"""Integrity records of the pipeline's Zarr stores: what was written, checked before it is read.

Each chunk's stored objects get their size and crc32 recorded when written (the features
store: `<split>/integrity/digests`, one row per extraction chunk; knn, predictions and crf
stores: the attributes of an `integrity` subgroup, written once by the stage). Readers compare
the raw bytes of what they read with the record, without decoding, and raise
`StoreDamagedError` naming the store, array and chunk and the command that repairs it.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from stego_tasks.errors import InvalidInputError, MissingInputError
from stego_tasks.runtime.atomic import ZARR_METADATA

log = logging.getLogger("stego")


def opens(group: zarr.Group, name: str) -> bool:
    """Whether `group[name]` exists and its metadata can be read."""
    try:
        group[name]
    except Exception:  # noqa: BLE001 - missing (KeyError) or damaged metadata (JSON, validation errors)
        return False
    return True


def child(group: zarr.Group, name: str, store_path: Path | str, fix: str) -> zarr.Group | zarr.Array | None:
    """`group[name]`, or None when absent; a member whose zarr.json is damaged is one sentence with `fix`.

    zarr reads a member's metadata already to answer `name in group`, so both go through here.
    """
    try:
        return group.get(name)
    except Exception as exc:  # noqa: BLE001 - damaged metadata (JSON, validation errors)
        where = f"{group.path}/{name}".strip("/")
        raise StoreDamagedError(store_path, where, None, f"cannot be opened (its {ZARR_METADATA}: {type(exc).__name__})",
                                fix) from None


# The records live in a subgroup, so that they are no array of the split (or store) itself.
INTEGRITY_GROUP = "integrity"
DIGESTS = f"{INTEGRITY_GROUP}/digests"
BOOKKEEPING = frozenset({"done"})
INTEGRITY = "crc32"
NO_RECORD = "has no integrity record"
EXTRACT_FIX = "run `stego extract` to re-compute damaged chunks"
# Stored objects read (and held) at once while checking; bounds memory to a few chunks.
_CONCURRENT_READS = 4


class StoreDamagedError(InvalidInputError):
    """A chunk of a Zarr store is missing, truncated or not what was written.

    Attributes:
        store: the store's path.
        array: the array's path inside the store, e.g. "train/feats".
        chunk: the chunk's index along the rows (None for the array as a whole).
        problem: what is wrong, e.g. "is missing (no file train/feats/c/3/0/0/0)".
    """

    def __init__(self, store: Path | str, array: str, chunk: int | None, problem: str, fix: str) -> None:
        self.store, self.array, self.chunk, self.problem = str(store), array, chunk, problem
        where = f"chunk {chunk} of {array}" if chunk is not None else array
        super().__init__(f"{store}: {where} {problem}; {fix}.")


def stage_fix(stage: str) -> str:
    """The repair advice for a store that stage `stage` writes whole."""
    return f"rerun `stego {stage}` (or `dvc repro {stage}`) to write it again"


def _storage_key(array: zarr.Array, coords: Sequence[int]) -> str:
    """The store key of one stored object (a chunk, or a shard when the array is sharded)."""
    key = array.metadata.encode_chunk_key(tuple(int(c) for c in coords))
    return f"{array.path}/{key}" if array.path else key


def chunk_key(array: zarr.Array, index: int) -> str:
    """The object holding extraction chunk `index` of a features-store array."""
    return _storage_key(array, (index, *[0] * (array.ndim - 1)))


def _storage_grid(array: zarr.Array) -> list[tuple[int, ...]]:
    """Coordinates of every stored object of an array, in row-major order."""
    size = array.shards or array.chunks
    grid = [-(-extent // step) for extent, step in zip(array.shape, size, strict=True)]
    return [tuple(int(c) for c in coords) for coords in np.ndindex(*grid)] if grid else [()]


def object_digest(data: Any) -> tuple[int, int]:
    """(size, crc32) of one stored object's bytes, as the digests record it."""
    view = memoryview(data).cast("B")
    return len(view), zlib.crc32(view)


async def _digest_all(store: Any, keys: Sequence[str]) -> list[tuple[int, int] | None]:
    prototype = default_buffer_prototype()
    limit = asyncio.Semaphore(_CONCURRENT_READS)

    async def one(key: str) -> tuple[int, int] | None:
        async with limit:
            buffer = await store.get(key, prototype=prototype)
            return None if buffer is None else object_digest(buffer.as_numpy_array())

    return list(await asyncio.gather(*(one(key) for key in keys)))


def digests_of(store: Any, keys: Sequence[str]) -> list[tuple[int, int] | None]:
    """(size, crc32) of each stored object, None where it is absent."""
    return sync(_digest_all(store, list(keys))) if keys else []


def _problem(key: str, found: tuple[int, int] | None, recorded: Sequence[int]) -> str | None:
    """What differs between a stored object and its record ([size, crc32]; size 0: never
    written, because zarr stores no chunk that is all fill value; -1: no record)."""
    size, crc = int(recorded[0]), int(recorded[1])
    if size < 0:
        return NO_RECORD
    if found is None:
        return None if size == 0 else f"is missing (no file {key})"
    if size == 0:
        return f"was never written but a file {key} exists"
    if found[0] != size:
        return f"is truncated or damaged (file {key} has {found[0]} bytes, {size} were written)"
    if found[1] != crc:
        return f"is damaged (file {key} does not match the checksum recorded when it was written)"
    return None


class _UnreadableDigests(Exception):
    """The split's digests array exists but its metadata cannot be read."""


def _digests(group: zarr.Group) -> zarr.Array | None:
    """The split's digests array, None when it has none.

    Raises:
        _UnreadableDigests: its zarr.json is damaged or lacks the attributes written with it.
    """
    try:
        digests = group[DIGESTS]
    except KeyError:
        return None
    except Exception as exc:  # noqa: BLE001 - a damaged zarr.json (JSON, metadata or codec errors)
        raise _UnreadableDigests(f"its {ZARR_METADATA} cannot be read ({type(exc).__name__})") from None
    if not {"arrays", "rows_per_chunk"} <= set(digests.attrs):
        raise _UnreadableDigests(f"its {ZARR_METADATA} lacks the attributes written with it")
    return digests


def ensure_digests(group: zarr.Group, rows_per_chunk: int) -> None:
    """Give a writable split a `digests` array (fill -1: no record yet) if it has none.

    A digests array whose metadata is damaged is made again empty: the done chunks then get
    records again where each of their arrays decodes (`feature_store.pending_chunks`).
    """
    try:
        if _digests(group) is not None:
            return
    except _UnreadableDigests as damaged:
        log.warning("%s/%s: %s; recording the chunks' digests again", group.path, DIGESTS, damaged)
    names = sorted(set(group.array_keys()) - BOOKKEEPING)
    n_chunks = group["done"].shape[0]
    digests = group.require_group(INTEGRITY_GROUP).create_array(
        "digests", shape=(n_chunks, len(names), 2), chunks=(1, len(names), 2), dtype="int64", fill_value=-1,
        overwrite=True,
    )
    digests.attrs.update({"arrays": names, "rows_per_chunk": rows_per_chunk, "algorithm": INTEGRITY})
    group.attrs["integrity"] = INTEGRITY


def record_chunk(group: zarr.Group, index: int) -> None:
    """Record size and crc32 of every stored object of extraction chunk `index` (after its data is written)."""
    digests = group[DIGESTS]
    keys = [chunk_key(group[name], index) for name in digests.attrs["arrays"]]
    found = digests_of(group.store, keys)
    digests[index] = np.array([(0, 0) if f is None else f for f in found], dtype=np.int64)


def _records(digests: zarr.Array, indices: Sequence[int]) -> dict[int, np.ndarray]:
    """The digest rows of `indices`; a row that cannot be read counts as no record (-1)."""
    if not indices:
        return {}
    try:
        whole = digests[:]
        return {i: whole[i] for i in indices}
    except Exception:  # noqa: BLE001 - one damaged record chunk: read the others one by one
        out = {}
        for i in indices:
            try:
                out[i] = digests[i]
            except Exception:  # noqa: BLE001
                out[i] = np.full(digests.shape[1:], -1, dtype=np.int64)
        return out


def chunk_problems(
    group: zarr.Group, indices: Iterable[int], names: Iterable[str] | None = None
) -> dict[int, tuple[str, str]]:
    """Compare the stored objects of extraction chunks with their digests.

    Args:
        group: a split group that has a `digests` array.
        indices: extraction chunks to check.
        names: arrays to check (None: every recorded array).

    Returns:
        {chunk index: (array path, problem)} for each chunk with a difference (the first
        array that differs); chunks that are intact are absent.
    """
    digests = group[DIGESTS]
    recorded = list(digests.attrs["arrays"])
    wanted = recorded if names is None else [n for n in names if n in recorded]
    indices = sorted(set(int(i) for i in indices))
    problems: dict[int, tuple[str, str]] = {}
    arrays = {}
    for name in wanted:
        if not opens(group, name):
            # Without its metadata no chunk of the array can be read.
            return {i: (f"{group.path}/{name}", f"has lost its metadata ({ZARR_METADATA})") for i in indices}
        arrays[name] = group[name]
    records = _records(digests, indices)
    # Checked in slices of chunks, so a huge store never holds all keys' results at once.
    for start in range(0, len(indices), 256):
        part = indices[start : start + 256]
        keys = [(i, name, chunk_key(arrays[name], i)) for i in part for name in wanted]
        found = digests_of(group.store, [key for _, _, key in keys])
        for (index, name, key), digest in zip(keys, found, strict=True):
            if index in problems:
                continue
            problem = _problem(key, digest, records[index][recorded.index(name)])
            if problem is not None:
                problems[index] = (f"{group.path}/{name}", problem)
    return problems


def _checked_digests(group: zarr.Group, store_path: Path | str) -> zarr.Array | None:
    """The split's digests for a reader: None for a split written before records existed.

    Raises:
        StoreDamagedError: the split records integrity but its digests are gone or unreadable.
    """
    try:
        digests = _digests(group)
    except _UnreadableDigests as damaged:
        raise StoreDamagedError(store_path, f"{group.path}/{DIGESTS}", None, str(damaged), EXTRACT_FIX) from None
    if digests is None and dict(group.attrs).get("integrity"):
        raise StoreDamagedError(store_path, f"{group.path}/{DIGESTS}", None, "is missing", EXTRACT_FIX)
    return digests


def verify_split(
    group: zarr.Group, store_path: Path | str, arrays: Iterable[str] | None = None, chunks: Iterable[int] | None = None
) -> None:
    """Raise `StoreDamagedError` for the first chunk of `arrays` (None: all) that differs
    from its digests; `chunks` limits the check to those extraction chunks.

    A split written before digests existed (no `integrity` attribute) is not checked.
    """
    digests = _checked_digests(group, store_path)
    if digests is None:
        return
    names = None if arrays is None else list(arrays)
    if names == []:
        return
    indices = range(digests.shape[0]) if chunks is None else chunks
    problems = chunk_problems(group, indices, names)
    if problems:
        index = min(problems)
        array, problem = problems[index]
        raise StoreDamagedError(store_path, array, index, problem, EXTRACT_FIX)


def verify_rows(array: zarr.Array, rows: np.ndarray, store_path: Path | str | None = None) -> None:
    """Check the chunks holding `rows` of a features-store array (see `verify_split`)."""
    if "/" not in array.path:
        return  # not an array of a split group (e.g. an in-memory array)
    parent = array.path.rsplit("/", 1)[0]
    group = zarr.open_group(array.store, path=parent, mode="r")
    digests = _checked_digests(group, store_path or getattr(array.store, "root", array.store))
    if digests is None:
        return
    rows_per_chunk = int(digests.attrs["rows_per_chunk"])
    chunks = np.unique(np.asarray(rows, dtype=np.int64) // rows_per_chunk).tolist()
    name = array.path.rsplit("/", 1)[-1]
    verify_split(group, store_path or getattr(array.store, "root", array.store), [name], chunks)


def record_store_digests(group: zarr.Group) -> None:
    """Record size and crc32 of every stored object of a flat store's arrays in its attributes.

    For stores written whole by one stage (knn, cluster, crf): call once every array is
    written, before the store is moved into place; `open_store` checks the records.
    """
    chunks: dict[str, dict[str, list[int]]] = {}
    for name in sorted(group.array_keys()):
        array = group[name]
        keys = [_storage_key(array, coords) for coords in _storage_grid(array)]
        found = digests_of(group.store, keys)
        # Chunks never written (all fill value) are left out: they read as the fill value.
        chunks[name] = {key: list(digest) for key, digest in zip(keys, found, strict=True) if digest is not None}
    group.create_group(INTEGRITY_GROUP, attributes={"algorithm": INTEGRITY, "chunks": chunks})


def open_store(store_path: Path, stage: str, arrays: Iterable[str] | None = None) -> zarr.Group:
    """Open a store written whole by stage `stage`, read-only, after checking `arrays`.

    Args:
        store_path: the store (knn.zarr, predictions.zarr, crf.zarr).
        stage: the stage that writes it, named in the advice.
        arrays: arrays to check (None: every recorded one; absent ones are skipped).

    Returns:
        The store's root group.

    Raises:
        FileNotFoundError: there is no store.
        StoreDamagedError: a chunk is missing, truncated or changed since it was written.
        ValueError: the store's metadata cannot be read.
    """
    fix = stage_fix(stage)
    try:
        group = zarr.open_group(str(store_path), mode="r")
    except FileNotFoundError:
        raise MissingInputError(f"{store_path} does not exist; run `stego {stage}` first.") from None
    except Exception as exc:  # noqa: BLE001 - unreadable or invalid zarr.json
        raise InvalidInputError(f"{store_path} cannot be opened as a Zarr store ({type(exc).__name__}); {fix}.") from None
    records = child(group, INTEGRITY_GROUP, store_path, fix)
    if records is None:
        return group  # written before records existed (or by hand): nothing to check against
    integrity = dict(records.attrs)
    recorded = integrity["chunks"]
    for name in recorded if arrays is None else [n for n in arrays if n in recorded]:
        if not opens(group, name):
            raise StoreDamagedError(store_path, name, None, f"has lost its metadata ({ZARR_METADATA})", fix)
        array = group[name]
        coords = _storage_grid(array)
        keys = [_storage_key(array, c) for c in coords]
        for start in range(0, len(keys), 256):
            found = digests_of(group.store, keys[start : start + 256])
            for offset, digest in enumerate(found):
                key = keys[start + offset]
                problem = _problem(key, digest, recorded[name].get(key, (0, 0)))
                if problem is not None:
                    raise StoreDamagedError(store_path, name, coords[start + offset][0], problem, fix)
    return group


def content_identity(group: zarr.Group, arrays: Sequence[str]) -> str | None:
    """A checksum of the digests recorded for `arrays` of a split: it changes whenever a
    chunk of them is written again with other bytes. None for a split without digests."""
    if DIGESTS not in group:
        return None
    digests = group[DIGESTS]
    recorded = list(digests.attrs["arrays"])
    table = np.ascontiguousarray(digests[:][:, [recorded.index(name) for name in arrays if name in recorded], :])
    return f"{zlib.crc32(memoryview(table).cast('B')):08x}:{table.shape[0]}x{table.shape[1]}"


def same_images(predictions: zarr.Group, val: zarr.Group, predictions_path: Path | str, store_path: Path | str) -> None:
    """Refuse predictions made for other val images than the features store now holds.

    The features store is updated in place (images added, removed or changed); predictions
    written before that would be scored against labels of other images.

    Raises:
        ValueError: one sentence naming both stores and the command that predicts again.
    """
    if "image_ids" not in predictions:
        return  # written before predictions recorded their images
    if not np.array_equal(np.asarray(predictions["image_ids"][:]), np.asarray(val["image_ids"][:])):
        raise InvalidInputError(
            f"{predictions_path} holds predictions for other images than {store_path} now holds; "
            "rerun `stego cluster` and `stego crf` (or `dvc repro`)."
        )
