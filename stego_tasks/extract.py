"""Stage `extract`: run the frozen backbone once per image and store features in Zarr.

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

M = N images x crops per image (5 with five-crop on train, 1 otherwise). A rerun skips
chunks that are done and hold the same image ids, so a killed run resumes and a grown
manifest extracts only the new images. A change of backbone or preprocessing rebuilds.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from PIL import Image

from stego_tasks.backbone import Backbone, WeightsNotFoundError, create_backbone, normalize
from stego_tasks.config import BackboneParams, CorpusParams, DaskParams, ExtractParams
from stego_tasks.dask_cluster import dask_client, torch_threads_per_worker
from stego_tasks.images import load_label, load_rgb
from stego_tasks.ingest import read_manifest, resolve_in_corpus
from stego_tasks.locking import artifact_lock
from stego_tasks.progress import Progress

log = logging.getLogger("stego")

SPLITS = ("train", "val")


# --- preprocessing -----------------------------------------------------------------


def resize_center_crop(image: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """Resize the shorter side to `size`, then take the central `size` x `size` square.

    Args:
        image: uint8 [H, W, 3] RGB or [H, W] label.
        size: output side in pixels.
        nearest: nearest-neighbour resampling (labels) instead of bilinear (images).

    Returns:
        uint8 array [size, size, 3] or [size, size].
    """
    height, width = image.shape[:2]
    scale = size / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resample = Image.NEAREST if nearest else Image.BILINEAR
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), resample))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top : top + size, left : left + size]


def five_crop_boxes(height: int, width: int, ratio: float) -> list[tuple[int, int, int, int]]:
    """Boxes (top, left, h, w) of the four corner crops and the centre crop, as torchvision's five_crop."""
    crop_h, crop_w = max(1, int(height * ratio)), max(1, int(width * ratio))
    return [
        (0, 0, crop_h, crop_w),
        (0, width - crop_w, crop_h, crop_w),
        (height - crop_h, 0, crop_h, crop_w),
        (height - crop_h, width - crop_w, crop_h, crop_w),
        # torchvision's center_crop rounds half to even; `// 2` is one pixel off for odd margins.
        (int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0)), crop_h, crop_w),
    ]


def preprocess(
    image: np.ndarray, label: np.ndarray | None, resolution: int, five_crop: bool, crop_ratio: float
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Turn one image (and its label) into the network inputs of one manifest row.

    Args:
        image: uint8 [H, W, 3].
        label: [H, W] class indices or None.
        resolution: side of the square network input; a multiple of the patch size.
        five_crop: cut the four corners and the centre (each `crop_ratio` of the side) first.
        crop_ratio: relative side of a five-crop crop (published: 0.5).

    Returns:
        One (uint8 [R, R, 3], uint8 [R, R] or None) pair per crop (5 or 1).
    """
    height, width = image.shape[:2]
    boxes = five_crop_boxes(height, width, crop_ratio) if five_crop else [(0, 0, height, width)]
    out = []
    for top, left, crop_h, crop_w in boxes:
        crop = resize_center_crop(image[top : top + crop_h, left : left + crop_w], resolution)
        crop_label = None
        if label is not None:
            region = label[top : top + crop_h, left : left + crop_w]
            crop_label = resize_center_crop(region, resolution, nearest=True)
        out.append((crop, crop_label))
    return out


# --- backbone ------------------------------------------------------------------------


def resolve_device(device: str) -> torch.device:
    """Map "auto" to CUDA when present, else CPU; refuse "cuda" on a machine without it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' was asked for but this machine has no CUDA GPU; set it to 'auto' or 'cpu'.")
    return torch.device(device)


def load_backbone(backbone: BackboneParams, allow_random_fallback: bool) -> Backbone:
    """Create the frozen backbone; on the demo corpus only, fall back to random weights loudly.

    Args:
        backbone: name and weights source.
        allow_random_fallback: True only for the bundled demo corpus.

    Returns:
        The frozen `Backbone` (its `weights_source` says where the weights came from).
    """
    try:
        return create_backbone(backbone.name, weights=backbone.weights)
    except WeightsNotFoundError as error:
        if not allow_random_fallback:
            raise
        banner = "=" * 78
        log.warning(
            "%s\nDEMO ONLY: no weights for backbone '%s' (%s).\n"
            "Falling back to a RANDOMLY INITIALISED ViT; metrics are recorded with "
            "backbone_weights: random.\n%s",
            banner, backbone.name, error, banner,
        )
        return create_backbone(backbone.name, weights="random")


@lru_cache(maxsize=2)
def _cached_backbone(name: str, weights: str, device: str) -> Backbone:
    # One backbone per worker process, reused by every chunk that process runs. Random
    # weights are seeded so that every worker, and every rerun, embeds with the same net.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_backbone(name, weights=weights)
    return model.to(resolve_device(device))


# --- one chunk -----------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkJob:
    """Everything a (possibly remote) worker needs to extract one chunk."""

    index: int
    image_paths: tuple[str, ...]
    label_paths: tuple[str | None, ...]
    backbone_name: str
    backbone_weights: str
    resolution: int
    five_crop: bool
    crop_ratio: float
    flip: bool
    ignore_index: int
    device: str
    torch_threads: int | None = None


def extract_chunk(job: ChunkJob) -> dict[str, np.ndarray]:
    """Decode, preprocess and embed one chunk of images (runs on a Dask worker).

    Args:
        job: the chunk's absolute image/label paths and the preprocessing settings.

    Returns:
        Arrays for the chunk's rows: feats float16 [m, C, h, w], pooled float32 [m, C],
        labels uint8 [m, R, R], images uint8 [m, R, R, 3], crops int8 [m], and
        feats_flip float16 [m, C, h, w] when `job.flip`.
    """
    torch.set_grad_enabled(False)
    if job.torch_threads:
        torch.set_num_threads(job.torch_threads)
    model = _cached_backbone(job.backbone_name, job.backbone_weights, job.device)
    inputs, labels, crops = [], [], []
    for image_path, label_path in zip(job.image_paths, job.label_paths, strict=True):
        label = load_label(Path(label_path)) if label_path else None
        pieces = preprocess(load_rgb(Path(image_path)), label, job.resolution, job.five_crop, job.crop_ratio)
        for crop_index, (crop, crop_label) in enumerate(pieces):
            inputs.append(crop)
            fill = np.full(crop.shape[:2], job.ignore_index, dtype=np.uint8)
            labels.append(fill if crop_label is None else np.clip(crop_label, 0, 255).astype(np.uint8))
            crops.append(crop_index)
    images = np.stack(inputs)
    device = next(model.parameters()).device
    batch = normalize(torch.from_numpy(images).permute(0, 3, 1, 2).to(device), model.mean, model.std)
    feats = model(batch).float()
    out = {
        "feats": feats.cpu().numpy().astype(np.float16),
        "pooled": torch.nn.functional.normalize(feats.mean(dim=(2, 3)), dim=1).cpu().numpy(),
        "labels": np.stack(labels),
        "images": images,
        "crops": np.asarray(crops, dtype=np.int8),
    }
    if job.flip:
        out["feats_flip"] = model(batch.flip(-1)).float().cpu().numpy().astype(np.float16)
    return out


# --- the store -----------------------------------------------------------------------


def split_resolution(params: ExtractParams, split: str) -> int:
    """Network input side for a split: `val_resolution` (when set) for val, else `resolution`."""
    if split == "val" and params.val_resolution:
        return params.val_resolution
    return params.resolution


def _fingerprint(backbone: Backbone, params: ExtractParams, split: str) -> dict[str, Any]:
    five_crop = params.five_crop and split == "train"
    return {
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


def _open_split(root: zarr.Group, split: str, fingerprint: dict[str, Any], n_rows: int, grid: int) -> zarr.Group:
    """Open the split's group, or (re)create it when the settings that shaped it changed."""
    if split in root:
        group = root[split]
        # A split killed while being created has no `done` yet (or no fingerprint): rebuild it.
        if dict(group.attrs).get("fingerprint") == fingerprint and "done" in group:
            _resize_split(group, n_rows)
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
        group.create_array(name, shape=(n_rows, *tail), chunks=(rows_per_chunk, *tail), dtype=dtype, fill_value=0)
    n_chunks = -(-n_rows // rows_per_chunk)
    group.create_array("done", shape=(n_chunks,), chunks=(max(n_chunks, 1),), dtype="bool", fill_value=False)
    group.attrs["fingerprint"] = fingerprint  # last: only a complete layout is ever reused
    return group


def _resize_split(group: zarr.Group, n_rows: int) -> None:
    for name in group.array_keys():
        if name != "done" and group[name].shape[0] != n_rows:
            group[name].resize((n_rows, *group[name].shape[1:]))
    rows_per_chunk = group["feats"].chunks[0]
    n_chunks = -(-n_rows // rows_per_chunk)
    done = group["done"]
    old = done.shape[0]
    if old != n_chunks:
        # Resized in place (never deleted and recreated), so a kill here cannot lose the flags;
        # new entries are cleared explicitly because a shrunk chunk keeps its old values.
        done.resize((n_chunks,))
        if n_chunks > old:
            done[old:] = False


def _pending_chunks(group: zarr.Group, row_ids: np.ndarray, rows_per_chunk: int) -> list[int]:
    """Chunks that are not done, or done for other images than the manifest now lists."""
    done = group["done"][:]
    stored = group["image_ids"][:]
    pending = []
    for index in range(done.shape[0]):
        rows = slice(index * rows_per_chunk, (index + 1) * rows_per_chunk)
        if not (done[index] and np.array_equal(stored[rows], row_ids[rows])):
            pending.append(index)
    return pending


def _write_chunk(group: zarr.Group, index: int, rows_per_chunk: int, row_ids: np.ndarray, arrays: dict) -> None:
    start = index * rows_per_chunk
    rows = slice(start, start + arrays["feats"].shape[0])
    for name, values in arrays.items():
        if name in group:
            group[name][rows] = values
    group["image_ids"][rows] = row_ids[rows]
    # Mark done last: a kill before this line leaves the chunk pending, never half-trusted.
    group["done"][index] = True


# --- the stage -----------------------------------------------------------------------


@dataclass(frozen=True)
class ExtractSummary:
    """What a run did, per split: rows in the store and chunks (re)computed."""

    rows: dict[str, int]
    chunks_computed: dict[str, int]
    chunks_total: dict[str, int]
    weights_source: str


def _jobs_for_split(
    manifest, split: str, corpus: CorpusParams, params: ExtractParams, backbone: Backbone, device: str,
    torch_threads: int | None,
) -> Iterator[ChunkJob]:
    rows = manifest[manifest["split"] == split].sort_values("id")
    root = Path(corpus.root)
    for index, start in enumerate(range(0, len(rows), params.batch_size)):
        part = rows.iloc[start : start + params.batch_size]
        yield ChunkJob(
            index=index,
            image_paths=tuple(str(resolve_in_corpus(root, p)) for p in part["path"]),
            label_paths=tuple(str(resolve_in_corpus(root, p)) if p else None for p in part["label_path"]),
            backbone_name=backbone.name,
            backbone_weights="random" if backbone.weights_source == "random" else _weights_arg(backbone),
            resolution=split_resolution(params, split),
            five_crop=params.five_crop and split == "train",
            crop_ratio=params.crop_ratio,
            flip=params.flip and split == "val",
            ignore_index=corpus.ignore_index,
            device=device,
            torch_threads=torch_threads,
        )


def _weights_arg(backbone: Backbone) -> str:
    source = backbone.weights_source
    return source[len("file:") :] if source.startswith("file:") else "auto"


def extract(
    manifest_path: Path,
    store_path: Path,
    corpus: CorpusParams,
    backbone_params: BackboneParams,
    params: ExtractParams,
    dask: DaskParams,
) -> ExtractSummary:
    """Extract (or resume extracting) features of every manifest image into the Zarr store.

    Args:
        manifest_path: the ingest stage's Parquet manifest.
        store_path: the Zarr v3 store to create or complete.
        corpus: corpus root, ignore index, demo flag.
        backbone_params: backbone name and weights source.
        params: resolution, five-crop, batch size (= one chunk), flip.
        dask: local cluster size or the address of an existing scheduler.

    Returns:
        An `ExtractSummary` of rows and chunks per split.
    """
    manifest = read_manifest(manifest_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        backbone = load_backbone(backbone_params, allow_random_fallback=corpus.demo)
    for key in ("resolution", "val_resolution"):
        value = getattr(params, key)
        if value and value % backbone.patch_size:
            raise ValueError(
                f"extract.{key} {value} is not a multiple of the backbone's patch size "
                f"{backbone.patch_size}; use e.g. {max(1, value // backbone.patch_size) * backbone.patch_size}."
            )
    device = str(resolve_device(params.device))
    summary = ExtractSummary(rows={}, chunks_computed={}, chunks_total={}, weights_source=backbone.weights_source)
    # Resolving every path first refuses a manifest that escapes the corpus before anything starts.
    threads = torch_threads_per_worker(dask)
    jobs_by_split = {
        split: list(_jobs_for_split(manifest, split, corpus, params, backbone, device, threads)) for split in SPLITS
    }
    with artifact_lock(store_path), dask_client(dask) as client:
        root = zarr.open_group(str(store_path), mode="a", zarr_format=3)
        for split in SPLITS:
            jobs = jobs_by_split[split]
            fingerprint = _fingerprint(backbone, params, split)
            crops = 5 if fingerprint["five_crop"] else 1
            ids = manifest[manifest["split"] == split].sort_values("id")["id"].to_numpy()
            row_ids = np.repeat(ids, crops).astype(np.int64)
            grid = split_resolution(params, split) // backbone.patch_size
            group = _open_split(root, split, fingerprint, len(row_ids), grid)
            rows_per_chunk = params.batch_size * crops
            pending = set(_pending_chunks(group, row_ids, rows_per_chunk))
            todo = [job for job in jobs if job.index in pending]
            summary.rows[split] = len(row_ids)
            summary.chunks_total[split] = len(jobs)
            summary.chunks_computed[split] = len(todo)
            _run_jobs(client, todo, group, rows_per_chunk, row_ids, split, len(ids))
        root.attrs["backbone"] = backbone.name
        root.attrs["weights_source"] = backbone.weights_source
        # "resolution" is what inference uses (the evaluation side); training crops are recorded apart.
        root.attrs["resolution"] = split_resolution(params, "val")
        root.attrs["train_resolution"] = params.resolution
    return summary


def _run_jobs(client, jobs: list[ChunkJob], group, rows_per_chunk: int, row_ids, split: str, n_images: int) -> None:
    if not jobs:
        log.info("extract %s: all %d images already in the store", split, n_images)
        return
    from dask.distributed import as_completed

    n_new = sum(len(job.image_paths) for job in jobs)
    with Progress(n_new, f"extract {split}", unit="img") as progress:
        # Workers decode and embed; this process only writes, so writing overlaps compute.
        futures = {client.submit(extract_chunk, job, pure=False): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            _write_chunk(group, job.index, rows_per_chunk, row_ids, future.result())
            progress.update(len(job.image_paths))


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
