"""Stage `crf`: dense CRF refinement of the cluster and linear predictions of every val image.

The CRF itself is :mod:`stego_tasks.method.dense_crf`. This stage starts one executor for
both branches and all chunks (a local spawn pool, or a Dask scheduler when `dask.address`
is set), has the workers send back uint8 label maps rather than float32 probabilities, and
reads a chunk from the stores only when a slot frees up, so memory stays bounded however
large the validation set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stego_tasks.config import CRFParams
from stego_tasks.errors import InvalidInputError
from stego_tasks.method.dense_crf import crf_chunk
from stego_tasks.runtime.executors import default_chunksize, run_chunks, stage_executor

if TYPE_CHECKING:
    from stego_tasks.config import DaskParams

# The two maps refined: the cluster probe's and the linear probe's.
BRANCHES = ("cluster", "linear")


def crf(
    store_path: Path,
    predictions_path: Path,
    out_path: Path,
    params: CRFParams,
    workers: int,
    chunk: int = 64,
    dask: DaskParams | None = None,
) -> dict[str, int]:
    """Stage `crf`: refine the cluster and linear predictions of every validation image.

    Both branches' chunks go to one executor, started once: a Dask cluster when
    ``dask.address`` is set, else a local spawn pool of ``workers``. Chunks are read from
    the stores only when a slot frees up, so memory stays bounded for any N.

    Args:
        store_path: features Zarr store (`val/images` uint8 [N, R, R, 3]).
        predictions_path: the cluster stage's store (`cluster_logits`, `linear_logits`
            float16 [N, n, R, R]).
        out_path: Zarr store to write: `cluster_pred`, `linear_pred` uint8 [N, R, R].
        params: CRF parameters.
        workers: local worker processes (ignored when ``dask.address`` is set).
        chunk: most images per task (bounds memory: at most 2 tasks per slot are held).
        dask: the `dask` params block; only ``address`` is used. None or no address
            keeps the work on this machine.

    Returns:
        {"images": N}.
    """
    import zarr

    from stego_tasks.data.feature_store import read_split
    from stego_tasks.data.store_integrity import open_store, record_store_digests, same_images
    from stego_tasks.runtime import atomic
    from stego_tasks.runtime.progress import Progress

    if chunk < 1:
        raise InvalidInputError(f"crf needs chunk >= 1, got {chunk}.")
    images = read_split(store_path, "val", arrays=["images"])["images"]
    predictions = open_store(predictions_path, "cluster", ["cluster_logits", "linear_logits"])
    same_images(predictions, read_split(store_path, "val", arrays=["image_ids"]), predictions_path, store_path)
    n_images = images.shape[0]
    with atomic.atomic_path(out_path) as tmp, stage_executor(workers, dask) as (executor, slots):
        size = min(chunk, default_chunksize(len(BRANCHES) * n_images, slots))
        out = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        # Zarr chunks equal to the tasks' chunks: each result is one whole-chunk write.
        targets = {
            name: out.create_array(
                f"{name}_pred", shape=(n_images, *images.shape[1:3]), chunks=(size, *images.shape[1:3]), dtype="uint8"
            )
            for name in BRANCHES
        }
        with Progress(len(BRANCHES) * n_images, "crf cluster+linear", unit="img") as progress:

            def write(key: tuple[str, slice], labels: list[np.ndarray]) -> None:
                name, rows = key
                targets[name][rows] = np.stack(labels)
                progress.update(len(labels))

            run_chunks(executor, crf_chunk, _jobs(images, predictions, params, size),
                       max_in_flight=2 * slots, on_done=write)
        # What this run refined with, for `stego predict` on the run (`trained_run.run_settings`).
        out.attrs["crf"] = {f.name: getattr(params, f.name) for f in dataclasses.fields(CRFParams)}
        record_store_digests(out)
    return {"images": int(n_images)}


def _jobs(images: Any, predictions: Any, params: CRFParams, size: int) -> Iterator[tuple[tuple[str, slice], tuple]]:
    """One task per branch and `size` images: ((branch, rows), crf_chunk's arguments), read lazily."""
    n_images = images.shape[0]
    for name in BRANCHES:
        logits = predictions[f"{name}_logits"]
        for start in range(0, n_images, size):
            rows = slice(start, min(start + size, n_images))
            # float16 as stored: the unary is computed in float64 either way, so the
            # result equals that of float32 logits, and half the bytes travel.
            yield (name, rows), (list(images[rows]), list(logits[rows]), params, True)
