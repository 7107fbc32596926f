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
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from stego_tasks.backbone import Backbone
from stego_tasks.config import BackboneParams, CorpusParams, DaskParams, ExtractParams
from stego_tasks.dask_cluster import dask_client, torch_threads_per_worker
from stego_tasks.embed import (
    ChunkJob,
    backbone_precision,
    embed_chunk,
    extract_chunk,
    load_backbone,
    load_chunk,
    resolve_device,
)
from stego_tasks.ingest import read_manifest, resolve_in_corpus
from stego_tasks.locking import artifact_lock
from stego_tasks.progress import Progress

log = logging.getLogger("stego")

SPLITS = ("train", "val")


# --- the store -----------------------------------------------------------------------


def split_resolution(params: ExtractParams, split: str) -> int:
    """Network input side for a split: `val_resolution` (when set) for val, else `resolution`."""
    if split == "val" and params.val_resolution:
        return params.val_resolution
    return params.resolution


def _fingerprint(backbone: Backbone, params: ExtractParams, split: str, precision: str = "fp32") -> dict[str, Any]:
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
        layout = array_layout(split, name, rows_per_chunk, tail)
        group.create_array(name, shape=(n_rows, *tail), dtype=dtype, fill_value=0, **layout)
    n_chunks = -(-n_rows // rows_per_chunk)
    group.create_array("done", shape=(n_chunks,), chunks=(max(n_chunks, 1),), dtype="bool", fill_value=False)
    group.attrs["fingerprint"] = fingerprint  # last: only a complete layout is ever reused
    return group


def _resize_split(group: zarr.Group, n_rows: int) -> None:
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

ChunkResults = Iterator[tuple[ChunkJob, dict[str, np.ndarray]]]
ChunkRunner = Callable[[list[ChunkJob]], ChunkResults]
"""Takes the pending chunks and yields (job, arrays of `extract_chunk`) in any order."""


@dataclass(frozen=True)
class ExtractSummary:
    """What a run did, per split: rows in the store and chunks (re)computed."""

    rows: dict[str, int]
    chunks_computed: dict[str, int]
    chunks_total: dict[str, int]
    weights_source: str


@dataclass
class ExtractionPlan:
    """An opened store and the chunks still to compute; `write` stores a finished chunk.

    Attributes:
        root: the store's root group (open for writing; the caller holds its lock).
        groups: the split groups, laid out and resized to the manifest.
        row_ids: manifest id of every row of each split (repeated per crop) [M].
        rows_per_chunk: store rows per chunk of each split (batch_size x crops).
        jobs: pending chunks of both splits, train first.
        summary: rows and chunk counts per split.
        attrs: what `finish` records on the root (backbone, weights, resolutions).
    """

    root: zarr.Group
    groups: dict[str, zarr.Group]
    row_ids: dict[str, np.ndarray]
    rows_per_chunk: dict[str, int]
    jobs: list[ChunkJob]
    summary: ExtractSummary
    attrs: dict[str, Any]

    def write(self, job: ChunkJob, arrays: dict[str, np.ndarray]) -> None:
        """Store one finished chunk and mark it done."""
        _write_chunk(self.groups[job.split], job.index, self.rows_per_chunk[job.split], self.row_ids[job.split], arrays)

    def finish(self) -> None:
        """Record backbone and resolutions on the root, once every chunk is written."""
        for key, value in self.attrs.items():
            self.root.attrs[key] = value


def _jobs_for_split(
    manifest, split: str, corpus: CorpusParams, params: ExtractParams, backbone: Backbone, device: str,
    torch_threads: int | None,
) -> Iterator[ChunkJob]:
    rows = manifest[manifest["split"] == split].sort_values("id")
    root = Path(corpus.root)
    for index, start in enumerate(range(0, len(rows), params.batch_size)):
        part = rows.iloc[start : start + params.batch_size]
        yield ChunkJob(
            split=split,
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
            amp=params.amp,
            compile_model=params.compile,
        )


def _weights_arg(backbone: Backbone) -> str:
    source = backbone.weights_source
    return source[len("file:") :] if source.startswith("file:") else "auto"


def plan_extraction(
    manifest_path: Path,
    store_path: Path,
    corpus: CorpusParams,
    backbone_params: BackboneParams,
    params: ExtractParams,
    dask: DaskParams,
) -> ExtractionPlan:
    """Check the settings, open (or lay out) the store and list the chunks still to compute.

    The caller must hold `artifact_lock(store_path)` from here until the last `write`.

    Args:
        manifest_path: the ingest stage's Parquet manifest.
        store_path: the Zarr v3 store to create or complete.
        corpus: corpus root, ignore index, demo flag.
        backbone_params: backbone name and weights source.
        params: resolution, five-crop, batch size (= one chunk), flip, device, amp, compile.
        dask: sizes the torch threads of each local worker.

    Returns:
        An `ExtractionPlan` whose `jobs` are the pending chunks.
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
    precision = backbone_precision(device, params.amp)
    threads = torch_threads_per_worker(dask)
    # Resolving every path first refuses a manifest that escapes the corpus before anything starts.
    jobs_by_split = {
        split: list(_jobs_for_split(manifest, split, corpus, params, backbone, device, threads)) for split in SPLITS
    }
    root = zarr.open_group(str(store_path), mode="a", zarr_format=3)
    plan = ExtractionPlan(
        root=root, groups={}, row_ids={}, rows_per_chunk={}, jobs=[],
        summary=ExtractSummary(rows={}, chunks_computed={}, chunks_total={}, weights_source=backbone.weights_source),
        attrs={
            "backbone": backbone.name,
            "weights_source": backbone.weights_source,
            # "resolution" is what inference uses (the evaluation side); training crops are recorded apart.
            "resolution": split_resolution(params, "val"),
            "train_resolution": params.resolution,
            "precision": precision,
        },
    )
    for split in SPLITS:
        fingerprint = _fingerprint(backbone, params, split, precision)
        crops = 5 if fingerprint["five_crop"] else 1
        ids = manifest[manifest["split"] == split].sort_values("id")["id"].to_numpy()
        row_ids = np.repeat(ids, crops).astype(np.int64)
        grid = split_resolution(params, split) // backbone.patch_size
        group = _open_split(root, split, fingerprint, len(row_ids), grid)
        rows_per_chunk = params.batch_size * crops
        pending = set(_pending_chunks(group, row_ids, rows_per_chunk))
        todo = [job for job in jobs_by_split[split] if job.index in pending]
        plan.groups[split], plan.row_ids[split], plan.rows_per_chunk[split] = group, row_ids, rows_per_chunk
        plan.jobs.extend(todo)
        plan.summary.rows[split] = len(row_ids)
        plan.summary.chunks_total[split] = len(jobs_by_split[split])
        plan.summary.chunks_computed[split] = len(todo)
    return plan


def run_in_process(jobs: list[ChunkJob]) -> ChunkResults:
    """Run chunks in this process, decoding the next chunk in a thread while the backbone runs.

    One local worker needs no cluster: this skips the scheduler, the worker's imports and the
    result transfer (about 4.5 s of fixed cost and 10-20 % of the steady rate on 2 cores).
    """
    previous_threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stego-decode") as decoder:
            ahead = decoder.submit(load_chunk, jobs[0]) if jobs else None
            for position, job in enumerate(jobs):
                decoded = ahead.result()
                if position + 1 < len(jobs):
                    ahead = decoder.submit(load_chunk, jobs[position + 1])
                yield job, embed_chunk(job, decoded)
    finally:
        torch.set_num_threads(previous_threads)


def dask_runner(client: Any) -> ChunkRunner:
    """A runner that submits every chunk (both splits at once) to a Dask client's workers."""

    def run(jobs: list[ChunkJob]) -> ChunkResults:
        from dask.distributed import as_completed

        futures = {client.submit(extract_chunk, job, pure=False): job for job in jobs}
        for future in as_completed(futures):
            yield futures[future], future.result()

    return run


@contextmanager
def local_runner(dask: DaskParams, has_work: bool = True) -> Iterator[ChunkRunner]:
    """The runner for `dask.address: null`: in-process for one worker, else a local cluster.

    The cluster starts only when there is work, so an up-to-date store costs no start-up.
    """
    if has_work and dask.n_workers > 1:
        with dask_client(dask) as client:
            yield dask_runner(client)
    else:
        yield run_in_process


def run_plan(plan: ExtractionPlan, runner: ChunkRunner) -> None:
    """Compute the plan's pending chunks with `runner`, write each as it arrives, then `finish`."""
    pending = {split: sum(len(job.image_paths) for job in plan.jobs if job.split == split) for split in SPLITS}
    for split in SPLITS:
        if not pending[split]:
            log.info("extract %s: all %d images already in the store", split, len(np.unique(plan.row_ids[split])))
    bars: dict[str, Progress] = {}
    # A split's rate counts from the previous result (the stage start for the first): a
    # bar created at its first result would divide that chunk by almost no time.
    previous = time.monotonic()
    try:
        if plan.jobs:
            for job, arrays in runner(plan.jobs):
                # Only this process writes, so writing overlaps the workers' compute.
                plan.write(job, arrays)
                if job.split not in bars:
                    bars[job.split] = Progress(pending[job.split], f"extract {job.split}", unit="img", started_at=previous)
                bars[job.split].update(len(job.image_paths))
                previous = time.monotonic()
    finally:
        for bar in bars.values():
            bar.close()
    plan.finish()


def extract(
    manifest_path: Path,
    store_path: Path,
    corpus: CorpusParams,
    backbone_params: BackboneParams,
    params: ExtractParams,
    dask: DaskParams,
    runner: ChunkRunner | None = None,
) -> ExtractSummary:
    """Extract (or resume extracting) features of every manifest image into the Zarr store.

    Args:
        manifest_path: the ingest stage's Parquet manifest.
        store_path: the Zarr v3 store to create or complete.
        corpus: corpus root, ignore index, demo flag.
        backbone_params: backbone name and weights source.
        params: resolution, five-crop, batch size (= one chunk), flip, device, amp, compile.
        dask: an existing scheduler's address, or the local worker count (1: in-process).
        runner: where the chunks run; default from `dask`: `dask.address` connects to that
            scheduler first, else `local_runner` (the Prefect flow passes one that submits
            Prefect tasks to a `DaskTaskRunner`).

    Returns:
        An `ExtractSummary` of rows and chunks per split.
    """
    with artifact_lock(store_path), ExitStack() as stack:
        if runner is None and dask.address:
            # Connect before touching the store: a wrong address must leave nothing behind.
            runner = dask_runner(stack.enter_context(dask_client(dask)))
        plan = plan_extraction(manifest_path, store_path, corpus, backbone_params, params, dask)
        if runner is None:
            runner = stack.enter_context(local_runner(dask, has_work=bool(plan.jobs)))
        run_plan(plan, runner)
    return plan.summary


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
