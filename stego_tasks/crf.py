"""Dense CRF refinement of per-pixel class scores (reference doc section 7).

:func:`dense_crf` refines one image's logits with a fully connected CRF (pydensecrf,
published STEGO parameters in :class:`CRFParams`). :func:`dense_crf_batch` runs many images
in worker processes.

Why the batch runner looks the way it does: the reference used ``multiprocessing.Pool``
with the default "fork" start method after torch had started its thread pools; a forked
child can inherit a lock held by one of those threads and wait on it forever, so evaluation
hung. Here workers are started with "spawn" (a fresh interpreter that imports only this
module: numpy and pydensecrf, no torch), and a worker that dies surfaces as a RuntimeError
instead of a hang.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydensecrf.densecrf as dcrf

# pydensecrf.utils.unary_from_softmax clips probabilities here, so unaries stay <= 11.5;
# kept to match the reference's energies exactly.
_PROB_CLIP = 1e-5


@dataclass(frozen=True)
class CRFParams:
    """Dense CRF settings; the defaults are the published STEGO ones.

    Attributes:
        iterations: Mean-field inference steps.
        gaussian_sxy: Spatial std (pixels) of the smoothness kernel.
        gaussian_compat: Weight of the smoothness kernel.
        bilateral_sxy: Spatial std (pixels) of the appearance kernel.
        bilateral_srgb: Colour std (0..255 units) of the appearance kernel.
        bilateral_compat: Weight of the appearance kernel.
    """

    iterations: int = 10
    gaussian_sxy: float = 1
    gaussian_compat: float = 3
    bilateral_sxy: float = 67
    bilateral_srgb: float = 3
    bilateral_compat: float = 4


def _check_inputs(image: np.ndarray, logits: np.ndarray) -> None:
    """Raise ValueError unless image is uint8 [H, W, 3] and logits finite float [n, H, W]."""
    if (
        not isinstance(image, np.ndarray)
        or image.dtype != np.uint8
        or image.ndim != 3
        or image.shape[2] != 3
    ):
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(
            f"dense_crf needs an RGB image as a uint8 array [H, W, 3], got {dtype} with shape {shape}; "
            "un-normalise the image back to 0..255 first."
        )
    if (
        not isinstance(logits, np.ndarray)
        or logits.ndim != 3
        or not np.issubdtype(logits.dtype, np.floating)
    ):
        shape = getattr(logits, "shape", None)
        raise ValueError(f"dense_crf needs float logits [n_labels, H, W], got shape {shape}.")
    if logits.shape[0] < 1:
        raise ValueError("dense_crf needs at least one label in logits, got n_labels=0.")
    if logits.shape[1:] != image.shape[:2]:
        raise ValueError(
            f"logits have spatial size {logits.shape[1:]} but the image is {image.shape[:2]}; "
            "upsample the logits to the image size (bilinear) before the CRF."
        )
    if not np.all(np.isfinite(logits)):
        raise ValueError("dense_crf got NaN or infinite logits; check the model outputs.")


def _unary(logits: np.ndarray) -> np.ndarray:
    """-log softmax(logits) over labels, clipped like pydensecrf, float32 [n, H*W]."""
    x = logits.astype(np.float64)
    x = np.exp(x - x.max(axis=0, keepdims=True))
    probs = x / x.sum(axis=0, keepdims=True)
    unary = -np.log(np.clip(probs, _PROB_CLIP, 1.0))
    return np.ascontiguousarray(unary.reshape(logits.shape[0], -1), dtype=np.float32)


def dense_crf(image: np.ndarray, logits: np.ndarray, params: CRFParams = CRFParams()) -> np.ndarray:
    """Refine one image's per-pixel scores with a fully connected CRF.

    Args:
        image: The un-normalised image, uint8 [H, W, 3]. (The reference fed BGR; the
            colour kernel treats channels alike, so RGB gives the same result.)
        logits: Class scores already at image size, float [n_labels, H, W]; softmax is
            taken over the first axis.
        params: CRF settings.

    Returns:
        np.ndarray float32 [n_labels, H, W]: refined probabilities, summing to 1 per pixel.

    Raises:
        ValueError: If the image is not uint8 RGB, or the logits are not float
            [n, H, W] at the image's size, or not finite.
    """
    _check_inputs(image, logits)
    n, h, w = logits.shape
    crf = dcrf.DenseCRF2D(w, h, n)
    crf.setUnaryEnergy(_unary(logits))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=np.array(image, dtype=np.uint8, order="C", copy=True),  # pydensecrf needs a writable buffer
        compat=params.bilateral_compat,
    )
    q = crf.inference(params.iterations)
    return np.asarray(q, dtype=np.float32).reshape(n, h, w)


def _crf_chunk(
    images: list[np.ndarray], logits: list[np.ndarray], params: CRFParams
) -> list[np.ndarray]:
    """Worker entry point (module level so spawned processes can import it)."""
    return [dense_crf(img, lg, params) for img, lg in zip(images, logits, strict=True)]


def dense_crf_batch(
    images: Sequence[np.ndarray],
    logits: Sequence[np.ndarray],
    params: CRFParams = CRFParams(),
    workers: int = 1,
    chunksize: int = 1,
    progress: Callable[[int], None] | None = None,
) -> list[np.ndarray]:
    """Refine many images, optionally in parallel worker processes.

    Args:
        images: uint8 images, each [H_i, W_i, 3].
        logits: Matching float logits, each [n_labels, H_i, W_i].
        params: CRF settings, shared by all images.
        workers: Worker processes; <= 1 runs serially in this process (no pool).
        chunksize: Images sent to a worker per task; larger chunks cut transfer overhead
            for small images.
        progress: Called with the number of images finished so far, after each image
            (serial) or each chunk (parallel) completes; use it to report images/s.

    Returns:
        Refined probabilities, one float32 [n_labels, H_i, W_i] array per image, in input
        order.

    Raises:
        ValueError: If the sequences differ in length, ``chunksize`` < 1, or any pair
            fails :func:`dense_crf`'s checks (checked before any work starts).
        RuntimeError: If a worker process dies (for example killed for memory).
    """
    if len(images) != len(logits):
        raise ValueError(
            f"dense_crf_batch got {len(images)} images but {len(logits)} logits; pass one per image."
        )
    if chunksize < 1:
        raise ValueError(f"dense_crf_batch needs chunksize >= 1, got {chunksize}.")
    for image, lg in zip(images, logits, strict=True):
        _check_inputs(image, lg)

    if workers <= 1 or len(images) <= 1:
        results = []
        for image, lg in zip(images, logits, strict=True):
            results.append(dense_crf(image, lg, params))
            if progress is not None:
                progress(len(results))
        return results

    starts = range(0, len(images), chunksize)
    n_workers = min(workers, len(starts))
    results_by_start: dict[int, list[np.ndarray]] = {}
    # "spawn" rather than fork: forking a process whose torch/OpenMP threads hold locks
    # is what made the reference's pool hang.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=context) as pool:
        futures: dict[Future, int] = {
            pool.submit(
                _crf_chunk, list(images[s : s + chunksize]), list(logits[s : s + chunksize]), params
            ): s
            for s in starts
        }
        try:
            _collect(futures, results_by_start, progress)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return [out for s in starts for out in results_by_start[s]]


def _collect(
    futures: dict[Future, int],
    results_by_start: dict[int, list[np.ndarray]],
    progress: Callable[[int], None] | None,
) -> None:
    """Gather finished chunks as they complete, reporting progress; fail fast on errors."""
    pending = set(futures)
    done_images = 0
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            try:
                chunk = future.result()
            except BrokenProcessPool as err:
                raise RuntimeError(
                    "a dense CRF worker process died (killed for memory or crashed); "
                    "retry with fewer workers or smaller images."
                ) from err
            results_by_start[futures[future]] = chunk
            done_images += len(chunk)
            if progress is not None:
                progress(done_images)


# --- pipeline stage ---


def crf_stage(
    store_path: Path, predictions_path: Path, out_path: Path, params: CRFParams, workers: int, chunk: int = 64
) -> dict[str, int]:
    """Stage `crf`: refine the cluster and linear predictions of every validation image.

    Args:
        store_path: features Zarr store (`val/images` uint8 [N, R, R, 3]).
        predictions_path: the cluster stage's store (`cluster_logits`, `linear_logits`).
        out_path: Zarr store to write: `cluster_pred`, `linear_pred` uint8 [N, R, R].
        params: CRF parameters.
        workers: worker processes.
        chunk: images handed to the pool at a time (bounds memory).

    Returns:
        {"images": N}.
    """
    import zarr

    from stego_tasks import atomic
    from stego_tasks.extract import read_split
    from stego_tasks.progress import Progress

    images = read_split(store_path, "val")["images"]
    predictions = zarr.open_group(str(predictions_path), mode="r")
    n_images = images.shape[0]
    with atomic.atomic_path(out_path) as tmp:
        out = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        for name in ("cluster", "linear"):
            logits = predictions[f"{name}_logits"]
            target = out.create_array(
                f"{name}_pred", shape=(n_images, *images.shape[1:3]), chunks=(chunk, *images.shape[1:3]), dtype="uint8"
            )
            with Progress(n_images, f"crf {name}", unit="img") as progress:
                for start in range(0, n_images, chunk):
                    rows = slice(start, min(start + chunk, n_images))
                    batch_images = list(images[rows])
                    batch_logits = [np.asarray(x, dtype=np.float32) for x in logits[rows]]
                    done = [0]

                    def report(finished: int, done: list[int] = done, progress: Progress = progress) -> None:
                        progress.update(finished - done[0])
                        done[0] = finished

                    refined = dense_crf_batch(batch_images, batch_logits, params, workers=workers, progress=report)
                    target[rows] = np.stack([r.argmax(0) for r in refined]).astype(np.uint8)
    return {"images": int(n_images)}
