"""The features store: the Zarr v3 layout `extract` writes and every later stage reads.

Store layout (one group per split, `train` and `val`):
    feats       float16 [M, C, h, w]   patch features, one chunk = one batch of images
    feats_flip  float16 [M, C, h, w]   features of the horizontally flipped input (val only,
                                       for flip-averaged prediction without the backbone)
    pooled      float32 [M, C]         spatial mean of the float32 features, L2-normalised
    labels      uint8   [M, R, R]      labels cropped/resized like the image (ignore-filled
                                       where an image has none)
    images      uint8   [M, R, R, 3]   the network's RGB input (val only; CRF and overlays)
    image_ids   int64   [M]            manifest id of the source image of each row
    crops       int8    [M]            crop index (0..4 for five-crop, 0 otherwise)
    done        bool    [n_chunks]     chunk finished; set only after its data is written
    integrity/digests int64 [n_chunks, A, 2]  size and crc32 of each of the chunk's A stored
                                       objects (one per array, in `digests.attrs["arrays"]`
                                       order), recorded after the data and before `done`;
                                       -1 = no record

M = N images x crops per image (5 with five-crop on train, 1 otherwise). `done` makes a
killed extraction resumable: a chunk counts only once its data is written, and only for
the image ids it was written for.

Integrity: every array stores one object (a chunk, or a shard of one-row chunks) per
extraction chunk, so a chunk's data is A files. A deleted file reads back as zeros (the
fill value) and a truncated or bit-flipped one as a codec error naming no file, so
`digests` records what was written, and every reader compares the stored objects with it
before it trusts them (`verify_split`: one read and crc32 of the raw bytes, no decode;
see benchmarks/bench_integrity.py). `extract` treats a done chunk whose objects differ as
pending and computes it again. The stores written whole by later stages (knn.zarr,
predictions.zarr, crf.zarr) record the same facts for every chunk in the attributes of
their `integrity` group (`record_store_digests`), checked by `open_store`. Stores written before these
records existed (or by hand) are read unchecked; `extract` adds the records to such a
features store after decoding each done chunk once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from stego_tasks.config import ExtractParams
from stego_tasks.data.store_integrity import (
    BOOKKEEPING,
    DIGESTS,
    EXTRACT_FIX,
    NO_RECORD,
    StoreDamagedError,
    child,
    chunk_key,
    chunk_problems,
    digests_of,
    ensure_digests,
    opens,
    record_chunk,
    verify_split,
)
from stego_tasks.errors import InvalidInputError, MissingInputError
from stego_tasks.runtime.atomic import ZARR_METADATA

# Integrity is its own module (`store_integrity`); its public names are also reached from here,
# where every reader of the features store already imports.

if TYPE_CHECKING:  # an annotation only: reading a store must not load timm
    from stego_tasks.method.backbone import Backbone

log = logging.getLogger("stego")

SPLITS = ("train", "val")


def split_resolution(params: ExtractParams, split: str) -> int:
    """Network input side for a split: `val_resolution` (when set) for val, else `resolution`."""
    if split == "val" and params.val_resolution:
        return params.val_resolution
    return params.resolution


def split_fingerprint(
    backbone: Backbone, params: ExtractParams, split: str, precision: str = "fp32", pos_embed: str = "timm"
) -> dict[str, Any]:
    """The settings that shape a split's stored arrays; a split whose fingerprint differs is rebuilt."""
    five_crop = params.five_crop and split == "train"
    fingerprint = {
        "backbone": backbone.name,
        "timm_name": backbone.timm_name,
        "weights_source": backbone.weights_source,
        "patch_size": backbone.patch_size,
        "embed_dim": backbone.embed_dim,
        "resolution": split_resolution(params, split),
        "five_crop": five_crop,
        "crop_ratio": params.crop_ratio if five_crop else None,
        "flip": params.flip and split == "val",
        "batch_size": params.batch_size,
        "preprocess": params.preprocess,
        "pos_embed": pos_embed,
    }
    if backbone.weights_sha256 is not None:
        # The checkpoint's content, not its path: a file replaced at the same path (a newer
        # download, a fine-tuned backbone) rebuilds the split; the same file moved, or found
        # in the hub cache after it was downloaded, does not.
        del fingerprint["weights_source"]
        fingerprint["weights_sha256"] = backbone.weights_sha256
    if precision != "fp32":
        # Only bf16 features differ; fp32 stores written before this key existed stay valid.
        fingerprint["precision"] = precision
    if params.compression != DEFAULT_COMPRESSION:
        # Lossless, so no value differs, but the arrays' codec is fixed when they are laid
        # out: without this a changed setting would silently keep the old codec. zstd stores
        # written before the key existed stay valid. (`decode_workers` is left out: it only
        # says how many threads decode.)
        fingerprint["compression"] = params.compression
    return fingerprint


# `extract.compression` of the stores written before it existed (zarr's default codec).
DEFAULT_COMPRESSION = "zstd"
# The arrays `extract.compression` applies to: the features, nearly all of a store's bytes.
# Labels, images and the small arrays keep zarr's zstd (labels shrink 10-50x with it).
COMPRESSED_FEATURES = ("feats", "feats_flip")


def feature_compressors(compression: str) -> Any:
    """The zarr `compressors` for `extract.compression` (see benchmarks/results.md for sizes and read costs).

    zstd: zarr's default (level 0, no checksum): about 9 % smaller than raw float16 DINO
    features. none: raw bytes. blosc-lz4: byte-shuffled lz4 (about 12 % smaller, fast to
    decode). blosc-zstd: bit-shuffled zstd level 1 (about 24 % smaller, decodes like zstd).
    """
    from zarr.codecs import BloscCodec, ZstdCodec

    choices = {
        "zstd": (ZstdCodec(level=0, checksum=False),),
        "none": None,
        "blosc-lz4": (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),),
        "blosc-zstd": (BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle"),),
    }
    if compression not in choices:
        raise InvalidInputError(f"extract.compression must be one of {sorted(choices)}, got {compression!r}.")
    return choices[compression]


def array_layout(
    split: str, name: str, rows_per_chunk: int, tail: tuple[int, ...], compression: str = DEFAULT_COMPRESSION
) -> dict[str, Any]:
    """Zarr `chunks` (and `shards`, and for the features `compressors`) of one store array: one file per extraction chunk.

    Training reads random rows of `train/feats` and `train/labels`, so those are stored as
    one shard per extraction chunk made of one-row inner chunks: a row decodes alone, and
    32 random rows took 39 ms instead of 129 ms (224 px ViT-S/8 features, 2 CPUs). The
    other arrays are read whole or in order and keep plain chunks. `compression`
    (`extract.compression`) picks the features' codec (`feature_compressors`); the
    default leaves zarr's own, so a default store's metadata is what it always was.
    """
    layout: dict[str, Any] = {"chunks": (rows_per_chunk, *tail)}
    if split == "train" and name in ("feats", "labels"):
        layout = {"chunks": (1, *tail), "shards": (rows_per_chunk, *tail)}
    if name in COMPRESSED_FEATURES and compression != DEFAULT_COMPRESSION:
        layout["compressors"] = feature_compressors(compression)
    return layout


def split_fix(store_path: Path | str, split: str) -> str:
    """What to do about a split whose own zarr.json is damaged: its settings (fingerprint) are lost with it."""
    return f"move {Path(store_path) / split} away and run `stego extract`, which extracts that split again"


def open_split(root: zarr.Group, split: str, fingerprint: dict[str, Any], n_rows: int, grid: int) -> zarr.Group:
    """Open the split's group, or (re)create it when the settings that shaped it changed."""
    crops = 5 if fingerprint["five_crop"] else 1
    rows_per_chunk = fingerprint["batch_size"] * crops
    specs = _split_specs(split, fingerprint, grid)
    compression = fingerprint.get("compression", DEFAULT_COMPRESSION)
    store_path = getattr(root.store, "root", root.store)  # a LocalStore's folder
    group = child(root, split, store_path, split_fix(store_path, split))
    if group is not None:
        # A split killed while being created has no `done` yet (or no fingerprint): rebuild it.
        if dict(group.attrs).get("fingerprint") == fingerprint and opens(group, "done"):
            for name, (tail, dtype) in specs.items():
                if not opens(group, name):
                    # Its metadata is gone or unreadable: lay the array out again; its chunks
                    # then differ from their digests and are computed again.
                    log.warning("extract %s: the metadata of %s/%s is missing or damaged; recreating it", split, split, name)
                    _create_data_array(group, split, name, tail, dtype, n_rows, rows_per_chunk, compression)
            ensure_digests(group, rows_per_chunk)
            resize_split(group, n_rows)
            return group
        before = dict(group.attrs).get("fingerprint")
        changed = sorted(
            key for key in set(fingerprint) | set(before if isinstance(before, dict) else {})
            if not isinstance(before, dict) or before.get(key) != fingerprint.get(key)
        )
        log.warning("extract %s: %s changed since the split was written; rebuilding it", split, ", ".join(changed) or "its layout")
        del root[split]
    group = root.create_group(split, overwrite=True)
    for name, (tail, dtype) in specs.items():
        _create_data_array(group, split, name, tail, dtype, n_rows, rows_per_chunk, compression)
    n_chunks = -(-n_rows // rows_per_chunk)
    group.create_array("done", shape=(n_chunks,), chunks=(max(n_chunks, 1),), dtype="bool", fill_value=False)
    ensure_digests(group, rows_per_chunk)
    group.attrs["fingerprint"] = fingerprint  # last: only a complete layout is ever reused
    return group


def _split_specs(split: str, fingerprint: dict[str, Any], grid: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """(row shape, dtype) of every data array of a split."""
    res, dim = fingerprint["resolution"], fingerprint["embed_dim"]
    specs: dict[str, tuple[tuple[int, ...], str]] = {
        "feats": ((dim, grid, grid), "float16"),
        "pooled": ((dim,), "float32"),
        "labels": ((res, res), "uint8"),
        "image_ids": ((), "int64"),
        "crops": ((), "int8"),
    }
    if split == "val":
        specs["images"] = ((res, res, 3), "uint8")
    if fingerprint["flip"]:
        specs["feats_flip"] = ((dim, grid, grid), "float16")
    return specs


def _create_data_array(
    group: zarr.Group, split: str, name: str, tail: tuple[int, ...], dtype: str, n_rows: int, rows_per_chunk: int,
    compression: str = DEFAULT_COMPRESSION,
) -> None:
    layout = array_layout(split, name, rows_per_chunk, tail, compression)
    group.create_array(name, shape=(n_rows, *tail), dtype=dtype, fill_value=0, overwrite=True, **layout)


def resize_split(group: zarr.Group, n_rows: int) -> None:
    for name in group.array_keys():
        if name not in BOOKKEEPING and group[name].shape[0] != n_rows:
            group[name].resize((n_rows, *group[name].shape[1:]))
    rows_per_chunk = (group["feats"].shards or group["feats"].chunks)[0]
    n_chunks = -(-n_rows // rows_per_chunk)
    done = group["done"]
    old = done.shape[0]
    if old != n_chunks:
        # Resized in place (never deleted and recreated), so a kill here cannot lose the flags;
        # new entries are cleared explicitly because a shrunk chunk keeps its old values.
        done.resize((n_chunks,))
        if n_chunks > old:
            done[old:] = False
    if DIGESTS in group and group[DIGESTS].shape[0] != n_chunks:
        digests = group[DIGESTS]
        before = digests.shape[0]
        digests.resize((n_chunks, *digests.shape[1:]))
        if n_chunks > before:
            digests[before:] = -1


def pending_chunks(group: zarr.Group, row_ids: np.ndarray, rows_per_chunk: int) -> list[int]:
    """Chunks to compute: not done, done for other images than the manifest now lists, or
    done but with a stored object missing, truncated or changed since it was written.

    "Done" means present and intact, not only flagged: every done chunk's objects are read
    and compared with their digests (one pass over the store's bytes, no decode). A done
    chunk without a record (a store written before records existed) gets one if each of
    its arrays decodes; an unreadable `done` array is rebuilt from the digests.
    """
    ensure_digests(group, rows_per_chunk)
    n_chunks = group["done"].shape[0]
    try:
        done = np.asarray(group["done"][:], dtype=bool)
        repair_done = False
    except Exception as exc:  # noqa: BLE001 - a damaged flag chunk: the digests decide instead
        log.warning("extract %s: the done flags cannot be read (%s); checking every chunk", group.basename, exc)
        done, repair_done = np.ones(n_chunks, dtype=bool), True
    flagged = [int(i) for i in np.flatnonzero(done)]
    problems = chunk_problems(group, flagged)
    for index in [i for i, (_, problem) in problems.items() if problem == NO_RECORD]:
        if _decodes(group, index, rows_per_chunk):
            record_chunk(group, index)
            del problems[index]
    for index, (array, problem) in sorted(problems.items()):
        log.warning("extract %s: chunk %d of %s %s; computing it again", group.basename, index, array, problem)
    stored = _stored_ids(group, [i for i in flagged if i not in problems], rows_per_chunk)
    pending = []
    for index in range(n_chunks):
        rows = slice(index * rows_per_chunk, (index + 1) * rows_per_chunk)
        if not (index in stored and np.array_equal(stored[index], row_ids[rows])):
            pending.append(index)
    if repair_done:
        # A whole-chunk write: the damaged chunk is replaced, never read.
        group["done"][:] = ~np.isin(np.arange(n_chunks), pending)
    return pending


def _stored_ids(group: zarr.Group, indices: list[int], rows_per_chunk: int) -> dict[int, np.ndarray]:
    """The stored image ids of each chunk in `indices` (already checked against its digests)."""
    if not indices:
        return {}
    image_ids = group["image_ids"]
    whole = image_ids[:]
    return {i: whole[i * rows_per_chunk : (i + 1) * rows_per_chunk] for i in indices}


def _decodes(group: zarr.Group, index: int, rows_per_chunk: int) -> bool:
    """Whether every array of a chunk that has no digests decodes, and its features are stored.

    A deleted features object would read as zeros without error, so the objects of `feats`
    and `pooled` (never all zero, hence always stored) must exist; other arrays may be
    legitimately absent (an all-zero chunk of `crops` is never written).
    """
    names = group[DIGESTS].attrs["arrays"]
    keys = [chunk_key(group[name], index) for name in ("feats", "pooled") if name in names]
    if any(digest is None for digest in digests_of(group.store, keys)):
        return False
    rows = slice(index * rows_per_chunk, (index + 1) * rows_per_chunk)
    try:
        for name in names:
            group[name][rows]
    except Exception:  # noqa: BLE001 - any codec error means the chunk is damaged
        return False
    return True


def read_split(store_path: Path, split: str, arrays: Iterable[str] | None = None) -> zarr.Group:
    """Open one split's group of a finished store read-only, checked before it is trusted.

    Args:
        store_path: the features store.
        split: "train" or "val".
        arrays: the arrays the caller will read, checked against their digests (every
            chunk's stored bytes read once and crc32-checked); None checks every data
            array, an empty list none (check rows later with `verify_rows`).

    Returns:
        The split's group.

    Raises:
        ValueError: the split is missing or incomplete, or `StoreDamagedError` naming the
            first missing, truncated or damaged chunk (`stego extract` repairs it).
    """
    root = open_features(store_path)
    group = child(root, split, store_path, split_fix(store_path, split))
    if group is None:
        raise InvalidInputError(f"{store_path} has no '{split}' features; run `stego extract` first.")
    try:
        done = group["done"][:]
    except Exception as exc:  # noqa: BLE001 - a missing or damaged flags array
        raise StoreDamagedError(store_path, f"{split}/done", 0, f"cannot be read ({type(exc).__name__})", EXTRACT_FIX) from None
    if not bool(np.all(done)):
        raise InvalidInputError(f"{store_path}/{split} is incomplete (an extraction was interrupted); rerun `stego extract`.")
    verify_split(group, store_path, arrays)
    return group


def open_features(store_path: Path) -> zarr.Group:
    """The features store's root group, read-only; a damaged root says what to do."""
    try:
        return zarr.open_group(str(store_path), mode="r")
    except FileNotFoundError:
        raise MissingInputError(f"{store_path} does not exist; run `stego extract` first.") from None
    except Exception as exc:  # noqa: BLE001 - unreadable or invalid zarr.json
        raise InvalidInputError(
            f"{store_path} cannot be opened as a Zarr store (its zarr.json: {type(exc).__name__}); "
            "run `stego extract`, which writes it again and keeps the stored chunks."
        ) from None


def open_for_writing(store_path: Path) -> zarr.Group:
    """The features store's root group for `extract`, created if absent.

    A root whose metadata (its zarr.json) is unreadable is given new metadata; the splits
    below it are kept and checked chunk by chunk, and `finish` records the root's
    attributes again.
    """
    try:
        return zarr.open_group(str(store_path), mode="a", zarr_format=3)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - damaged root metadata
        metadata = Path(store_path) / ZARR_METADATA
        if not metadata.is_file():
            raise
        log.warning("extract: %s cannot be read (%s); writing it again", metadata, type(exc).__name__)
        metadata.unlink()
        return zarr.open_group(str(store_path), mode="a", zarr_format=3)


