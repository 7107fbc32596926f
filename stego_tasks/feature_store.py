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

M = N images x crops per image (5 with five-crop on train, 1 otherwise). `done` makes a
killed extraction resumable: a chunk counts only once its data is written, and only for
the image ids it was written for.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from stego_tasks.backbone import Backbone
from stego_tasks.config import ExtractParams

log = logging.getLogger("stego")

SPLITS = ("train", "val")


def split_resolution(params: ExtractParams, split: str) -> int:
    """Network input side for a split: `val_resolution` (when set) for val, else `resolution`."""
    if split == "val" and params.val_resolution:
        return params.val_resolution
    return params.resolution


def split_fingerprint(backbone: Backbone, params: ExtractParams, split: str, precision: str = "fp32") -> dict[str, Any]:
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
    }
    if precision != "fp32":
        # Only bf16 features differ; fp32 stores written before this key existed stay valid.
        fingerprint["precision"] = precision
    return fingerprint


def array_layout(split: str, name: str, rows_per_chunk: int, tail: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Zarr `chunks` (and `shards`) of one store array: one file per extraction chunk.

    Training reads random rows of `train/feats` and `train/labels`, so those are stored as
    one shard per extraction chunk made of one-row inner chunks: a row decodes alone, and
    32 random rows took 39 ms instead of 129 ms (224 px ViT-S/8 features, 2 CPUs). The
    other arrays are read whole or in order and keep plain chunks.
    """
    if split == "train" and name in ("feats", "labels"):
        return {"chunks": (1, *tail), "shards": (rows_per_chunk, *tail)}
    return {"chunks": (rows_per_chunk, *tail)}


def open_split(root: zarr.Group, split: str, fingerprint: dict[str, Any], n_rows: int, grid: int) -> zarr.Group:
    """Open the split's group, or (re)create it when the settings that shaped it changed."""
    if split in root:
        group = root[split]
        # A split killed while being created has no `done` yet (or no fingerprint): rebuild it.
        if dict(group.attrs).get("fingerprint") == fingerprint and "done" in group:
            resize_split(group, n_rows)
            return group
        log.info("extract %s: backbone or preprocessing changed; rebuilding the split", split)
        del root[split]
    group = root.create_group(split)
    crops = 5 if fingerprint["five_crop"] else 1
    rows_per_chunk = fingerprint["batch_size"] * crops
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
    for name, (tail, dtype) in specs.items():
        layout = array_layout(split, name, rows_per_chunk, tail)
        group.create_array(name, shape=(n_rows, *tail), dtype=dtype, fill_value=0, **layout)
    n_chunks = -(-n_rows // rows_per_chunk)
    group.create_array("done", shape=(n_chunks,), chunks=(max(n_chunks, 1),), dtype="bool", fill_value=False)
    group.attrs["fingerprint"] = fingerprint  # last: only a complete layout is ever reused
    return group


def resize_split(group: zarr.Group, n_rows: int) -> None:
    for name in group.array_keys():
        if name != "done" and group[name].shape[0] != n_rows:
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


def pending_chunks(group: zarr.Group, row_ids: np.ndarray, rows_per_chunk: int) -> list[int]:
    """Chunks that are not done, or done for other images than the manifest now lists."""
    done = group["done"][:]
    stored = group["image_ids"][:]
    pending = []
    for index in range(done.shape[0]):
        rows = slice(index * rows_per_chunk, (index + 1) * rows_per_chunk)
        if not (done[index] and np.array_equal(stored[rows], row_ids[rows])):
            pending.append(index)
    return pending


def write_chunk(group: zarr.Group, index: int, rows_per_chunk: int, row_ids: np.ndarray, arrays: dict) -> None:
    start = index * rows_per_chunk
    rows = slice(start, start + arrays["feats"].shape[0])
    for name, values in arrays.items():
        if name in group:
            group[name][rows] = values
    group["image_ids"][rows] = row_ids[rows]
    # Mark done last: a kill before this line leaves the chunk pending, never half-trusted.
    group["done"][index] = True


def read_split(store_path: Path, split: str) -> zarr.Group:
    """Open one split's group of a finished store read-only, with a clear error if it is incomplete."""
    root = zarr.open_group(str(store_path), mode="r")
    if split not in root:
        raise ValueError(f"{store_path} has no '{split}' features; run `stego extract` first.")
    group = root[split]
    if not bool(np.all(group["done"][:])):
        raise ValueError(f"{store_path}/{split} is incomplete (an extraction was interrupted); rerun `stego extract`.")
    return group


def store_info(store_path: Path) -> dict[str, Any]:
    """The store's recorded backbone name, weights source and resolution."""
    root = zarr.open_group(str(store_path), mode="r")
    return json.loads(json.dumps(dict(root.attrs)))


def remove_store(store_path: Path) -> None:
    """Delete a store (used when the user asks for a clean re-extraction)."""
    shutil.rmtree(store_path, ignore_errors=True)
