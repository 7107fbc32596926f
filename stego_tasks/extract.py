"""Stage `extract`: run the frozen backbone once per image and store features in Zarr.

The store's layout is in `stego_tasks/data/feature_store.py`. Work is cut into chunks (one
chunk = `extract.batch_size` images = one Zarr chunk); `plan_extraction` opens the store
and lists the chunks not yet done, a runner computes them (in this process, on a local
Dask cluster, on the cluster at `dask.address`, or as Prefect tasks on a DaskTaskRunner),
and this process writes each result as it arrives. A rerun skips chunks that are done,
hold the same image ids and whose stored files still match the digests recorded when they
were written, so a killed run resumes, a grown manifest extracts only the new images, and
a deleted or damaged chunk is computed again. A change of backbone or preprocessing rebuilds.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from stego_tasks.config import (
    BackboneParams,
    CorpusParams,
    DaskParams,
    ExtractParams,
    RuntimeParams,
)
from stego_tasks.data.embed import (
    ChunkJob,
    assemble_chunk,
    backbone_precision,
    decode_image,
    embed_chunk,
    extract_chunk,
    load_backbone,
    load_chunk,
    pos_embed_mode,
    resolve_device,
)
from stego_tasks.data.feature_store import (
    SPLITS,
    open_for_writing,
    open_split,
    pending_chunks,
    split_fingerprint,
    split_resolution,
)
from stego_tasks.data.manifest import read_manifest, resolve_in_corpus
from stego_tasks.data.store_labels import (
    ensure_label_keys,
    row_label_keys,
    stale_label_chunks,
    write_labels,
)
from stego_tasks.data.store_writer import SplitWriter
from stego_tasks.errors import InvalidInputError
from stego_tasks.method.backbone import Backbone
from stego_tasks.method.weights import weights_argument
from stego_tasks.runtime.dask_cluster import dask_client, torch_threads_per_worker
from stego_tasks.runtime.locking import artifact_lock
from stego_tasks.runtime.memory import check_fits, image_batch_bytes
from stego_tasks.runtime.progress import Progress
from stego_tasks.runtime.room import room_guard

log = logging.getLogger("stego")

# Thread counts when a caller gives none (the stage passes the params file's `runtime` block).
DEFAULT_RUNTIME = RuntimeParams()


def resolve_writers(writers: int | str) -> int:
    """`runtime.writers` as a thread count: "auto" is the cores this process may run on."""
    if writers == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return int(writers)  # a positive integer: `RuntimeParams` refuses anything else


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
    # Chunks whose labels alone were re-read (the label files changed, the images did not).
    labels_reread: dict[str, int] = field(default_factory=dict)


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
        writers: chunks encoded and written at once (`runtime.writers`, resolved).
        split_writers: each split's `SplitWriter` (made when the split is laid out).
    """

    root: zarr.Group
    groups: dict[str, zarr.Group]
    row_ids: dict[str, np.ndarray]
    rows_per_chunk: dict[str, int]
    jobs: list[ChunkJob]
    summary: ExtractSummary
    attrs: dict[str, Any]
    relabel: list[ChunkJob] = field(default_factory=list)
    label_keys: dict[str, np.ndarray] = field(default_factory=dict)
    store_path: str = "the features store"
    writers: int = 1
    split_writers: dict[str, SplitWriter] = field(default_factory=dict)

    def write(self, job: ChunkJob, arrays: dict[str, np.ndarray]) -> None:
        """Store one finished chunk and mark it done (safe from several threads, one chunk each).

        Out of room: one `OutOfRoomError` sentence naming the chunk; finished chunks are kept.
        """
        split = job.split
        with room_guard(
            f"chunk {job.index} of {split} into {self.store_path}", sum(a.nbytes for a in arrays.values()),
            "every chunk finished before it is kept", "rerun `stego extract`, which computes only the missing chunks",
        ):
            self.split_writers[split].write(job.index, arrays)

    def write_labels(self, job: ChunkJob, labels: np.ndarray) -> None:
        """Replace the labels of a done chunk whose label files changed."""
        split = job.split
        write_labels(self.groups[split], job.index, self.rows_per_chunk[split], labels, self.label_keys[split])

    def finish(self) -> None:
        """Record backbone and resolutions on the root, once every chunk is written."""
        for key, value in self.attrs.items():
            self.root.attrs[key] = value


def _jobs_for_split(
    manifest, split: str, corpus: CorpusParams, params: ExtractParams, backbone: Backbone, device: str,
    torch_threads: int | None, decode_workers: int,
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
            backbone_weights=weights_argument(backbone.weights_source),
            resolution=split_resolution(params, split),
            five_crop=params.five_crop and split == "train",
            crop_ratio=params.crop_ratio,
            flip=params.flip and split == "val",
            ignore_index=corpus.ignore_index,
            device=device,
            torch_threads=torch_threads,
            amp=params.amp,
            compile_model=params.compile,
            preprocess=params.preprocess,
            pos_embed=pos_embed_mode(backbone, params.preprocess),
            decode_workers=decode_workers,
            weights_sha256=backbone.weights_sha256,
        )


def _check_memory(params: ExtractParams) -> None:
    """Refuse a resolution whose input batch alone cannot fit in memory (one sentence, before any work)."""
    for split in SPLITS:
        side = split_resolution(params, split)
        crops = 5 if params.five_crop and split == "train" else 1
        key = "val_resolution" if split == "val" and params.val_resolution else "resolution"
        check_fits(f"extract.{key} {side} (batch_size {params.batch_size}, {crops} crop{'s' if crops > 1 else ''} each)",
                   image_batch_bytes(params.batch_size * crops, side, side), f"lower extract.{key} or extract.batch_size")


def _check_patch_multiples(params: ExtractParams, backbone: Backbone) -> None:
    """Refuse an extract resolution the backbone's patches do not tile (one sentence with a fix)."""
    for key in ("resolution", "val_resolution"):
        value = getattr(params, key)
        if value and value % backbone.patch_size:
            raise InvalidInputError(
                f"extract.{key} {value} is not a multiple of the backbone's patch size "
                f"{backbone.patch_size}; use e.g. {max(1, value // backbone.patch_size) * backbone.patch_size}."
            )


def _store_attrs(backbone: Backbone, params: ExtractParams, precision: str) -> dict:
    """The store's attributes: how its features were made (the backbone, sizes, preprocessing)."""
    return {
        "backbone": backbone.name,
        "weights_source": backbone.weights_source,
        # "resolution" is what inference uses (the evaluation side); training crops are recorded apart.
        "resolution": split_resolution(params, "val"),
        "train_resolution": params.resolution,
        "precision": precision,
        "preprocess": params.preprocess,
        "pos_embed": pos_embed_mode(backbone, params.preprocess),
        # Only for a checkpoint file (random weights have no file), so the features a
        # model was trained on name the exact checkpoint (model.json, `stego predict`).
        **({"weights_sha256": backbone.weights_sha256} if backbone.weights_sha256 else {}),
    }


def _plan_split(plan: ExtractionPlan, manifest, split: str, jobs: list[ChunkJob], corpus: CorpusParams,
                params: ExtractParams, backbone: Backbone, precision: str) -> None:
    """Open one split's group and add its pending chunks (and chunks whose labels changed) to `plan`."""
    fingerprint = split_fingerprint(backbone, params, split, precision, pos_embed_mode(backbone, params.preprocess))
    crops = 5 if fingerprint["five_crop"] else 1
    rows = manifest[manifest["split"] == split].sort_values("id")
    row_ids = np.repeat(rows["id"].to_numpy(), crops).astype(np.int64)
    grid = split_resolution(params, split) // backbone.patch_size
    group = open_split(plan.root, split, fingerprint, len(row_ids), grid)
    rows_per_chunk = params.batch_size * crops
    label_keys = row_label_keys(rows, crops, corpus.ignore_index)
    ensure_label_keys(group, len(row_ids), rows_per_chunk)
    pending = set(pending_chunks(group, row_ids, rows_per_chunk))
    done = [job.index for job in jobs if job.index not in pending]
    stale = set(stale_label_chunks(group, label_keys, rows_per_chunk, done))
    todo = [job for job in jobs if job.index in pending]
    plan.groups[split], plan.row_ids[split], plan.rows_per_chunk[split] = group, row_ids, rows_per_chunk
    plan.label_keys[split] = label_keys
    plan.split_writers[split] = SplitWriter(group, rows_per_chunk, row_ids, label_keys)
    plan.jobs.extend(todo)
    plan.relabel.extend(job for job in jobs if job.index in stale)
    plan.summary.rows[split] = len(row_ids)
    plan.summary.chunks_total[split] = len(jobs)
    plan.summary.chunks_computed[split] = len(todo)
    plan.summary.labels_reread[split] = len(stale)


def plan_extraction(
    manifest_path: Path,
    store_path: Path,
    corpus: CorpusParams,
    backbone_params: BackboneParams,
    params: ExtractParams,
    dask: DaskParams,
    runtime: RuntimeParams = DEFAULT_RUNTIME,
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
    _check_memory(params)
    manifest = read_manifest(manifest_path)
    backbone = load_backbone(backbone_params, allow_random_fallback=corpus.demo)  # seeded: see create_seeded_backbone
    _check_patch_multiples(params, backbone)
    device = str(resolve_device(params.device))
    precision = backbone_precision(device, params.amp)
    threads = torch_threads_per_worker(dask)
    # Resolving every path first refuses a manifest that escapes the corpus before anything starts.
    jobs_by_split = {
        split: list(_jobs_for_split(manifest, split, corpus, params, backbone, device, threads,
                                     runtime.decode_workers)) for split in SPLITS
    }
    writers = resolve_writers(runtime.writers)
    root = open_for_writing(store_path)
    plan = ExtractionPlan(
        root=root, groups={}, row_ids={}, rows_per_chunk={}, jobs=[], store_path=str(store_path), writers=writers,
        summary=ExtractSummary(rows={}, chunks_computed={}, chunks_total={}, weights_source=backbone.weights_source),
        attrs=_store_attrs(backbone, params, precision),
    )
    for split in SPLITS:
        _plan_split(plan, manifest, split, jobs_by_split[split], corpus, params, backbone, precision)
    return plan


def run_in_process(jobs: list[ChunkJob]) -> ChunkResults:
    """Run chunks in this process; `decode_workers` threads decode images ahead of the backbone.

    One local worker needs no cluster: this skips the scheduler, the worker's imports and the
    result transfer (about 4.5 s of fixed cost and 10-20 % of the steady rate on 2 cores).
    Images are decoded one per task on a pool of `job.decode_workers` threads (PIL releases
    the GIL), queued ahead of the forward by at least two chunks and two images per thread,
    so a fast backbone (a GPU) never waits for a single decoder; chunks are assembled in
    image order, so the store is the same for any number of decoders.
    """
    previous_threads = torch.get_num_threads()
    workers = max([1, *(job.decode_workers for job in jobs)])
    decoder = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stego-decode")
    queued: deque[list[Future]] = deque()
    submitted = 0

    def top_up() -> None:
        nonlocal submitted
        while submitted < len(jobs) and (len(queued) < 2 or sum(len(q) for q in queued) < 2 * workers):
            job = jobs[submitted]
            queued.append([decoder.submit(decode_image, job, i) for i in range(len(job.image_paths))])
            submitted += 1

    try:
        for job in jobs:
            top_up()
            decoded = assemble_chunk([future.result() for future in queued.popleft()])
            top_up()  # the decoders work on the next chunks while this one runs through the backbone
            yield job, embed_chunk(job, decoded)
    finally:
        decoder.shutdown(wait=True, cancel_futures=True)
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
        if not pending[split] and not any(job.split == split for job in plan.relabel):
            log.info("extract %s: all %d images already in the store", split, len(np.unique(plan.row_ids[split])))
    bars: dict[str, Progress] = {}
    # A split's rate counts from the previous result (the stage start for the first): a
    # bar created at its first result would divide that chunk by almost no time.
    previous = time.monotonic()

    def written(future: Future, job: ChunkJob) -> None:
        nonlocal previous
        future.result()  # a failed write stops the stage here
        if job.split not in bars:
            bars[job.split] = Progress(pending[job.split], f"extract {job.split}", unit="img", started_at=previous)
        bars[job.split].update(len(job.image_paths))
        previous = time.monotonic()

    try:
        if plan.jobs:
            # Only this process writes, on `plan.writers` threads of its own: each result is
            # encoded and written as it arrives (zstd, blosc and crc32 release the GIL, so
            # writers scale with cores) while the next chunks run through the backbone. At
            # most `writers` chunks wait or are written at once (memory); a failed write stops
            # the stage once the writes in flight finish. Each chunk's done flag is set after
            # its data (`SplitWriter`), so a kill still leaves only whole chunks marked done.
            with ThreadPoolExecutor(max_workers=plan.writers, thread_name_prefix="stego-write") as pool:
                writing: dict[Future, ChunkJob] = {}
                for job, arrays in runner(plan.jobs):
                    while len(writing) >= plan.writers:
                        for future in wait(writing, return_when=FIRST_COMPLETED).done:
                            written(future, writing.pop(future))
                    writing[pool.submit(plan.write, job, arrays)] = job
                while writing:
                    for future in wait(writing, return_when=FIRST_COMPLETED).done:
                        written(future, writing.pop(future))
    finally:
        for bar in bars.values():
            bar.close()
    reread_labels(plan)
    plan.finish()


def reread_labels(plan: ExtractionPlan) -> None:
    """Cut the labels of `plan.relabel`'s chunks again and store them; the backbone does not run.

    The chunk's images are decoded too, since labels are cut exactly as their image is
    (same resize, crop and five-crop); decoding runs on `decode_workers` threads.
    """
    for split in SPLITS:
        jobs = [job for job in plan.relabel if job.split == split]
        if not jobs:
            continue
        images = sum(len(job.image_paths) for job in jobs)
        log.warning("extract %s: the labels of %d images changed; re-reading them (features kept)", split, images)
        workers = max(1, max(job.decode_workers for job in jobs))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stego-labels") as pool:
            for job in jobs:
                plan.write_labels(job, load_chunk(job, pool).labels)


def extract(
    manifest_path: Path,
    store_path: Path,
    corpus: CorpusParams,
    backbone_params: BackboneParams,
    params: ExtractParams,
    dask: DaskParams,
    runner: ChunkRunner | None = None,
    runtime: RuntimeParams = DEFAULT_RUNTIME,
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
        runtime: the decode and writer thread counts (the store is the same for any).

    Returns:
        An `ExtractSummary` of rows and chunks per split.
    """
    with artifact_lock(store_path), ExitStack() as stack:
        if runner is None and dask.address:
            # Connect before touching the store: a wrong address must leave nothing behind.
            runner = dask_runner(stack.enter_context(dask_client(dask)))
        # Chunk writes name their chunk (`ExtractionPlan.write`); this names the rest (layout, labels, attributes).
        with room_guard(str(store_path), 0, "every chunk finished before it is kept",
                        "rerun `stego extract`, which computes only the missing chunks"):
            plan = plan_extraction(manifest_path, store_path, corpus, backbone_params, params, dask, runtime)
            if runner is None:
                runner = stack.enter_context(local_runner(dask, has_work=bool(plan.jobs)))
            run_plan(plan, runner)
    return plan.summary


