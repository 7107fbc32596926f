"""Dense CRF refinement of per-pixel class scores (reference doc section 7).

:func:`dense_crf` refines one image's logits with a fully connected CRF (pydensecrf,
published STEGO parameters in :class:`~stego_tasks.config.CRFParams`). :func:`dense_crf_batch`
runs many in-memory images in worker processes; the `crf` stage streams its chunks from the
stores to the same worker entry point, :func:`crf_chunk`.

Why the workers look the way they do: the reference used ``multiprocessing.Pool`` with the
default "fork" start method after torch had started its thread pools; a forked child can
inherit a lock held by one of those threads and wait on it forever, so evaluation hung.
Here workers are started with "spawn" (a fresh interpreter that imports only this module:
numpy and pydensecrf, no torch), and a worker that dies surfaces as a RuntimeError instead
of a hang.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from contextlib import ExitStack

import numpy as np
import pydensecrf.densecrf as dcrf

from stego_tasks.config import CRFParams
from stego_tasks.errors import InvalidInputError
from stego_tasks.runtime.executors import default_chunksize, run_chunks, spawn_pool

PUBLISHED_CRF = CRFParams()

# pydensecrf.utils.unary_from_softmax clips probabilities here, so unaries stay <= 11.5;
# kept to match the reference's energies exactly.
_PROB_CLIP = 1e-5


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
        raise InvalidInputError(
            f"dense_crf needs an RGB image as a uint8 array [H, W, 3], got {dtype} with shape {shape}; "
            "un-normalise the image back to 0..255 first."
        )
    if (
        not isinstance(logits, np.ndarray)
        or logits.ndim != 3
        or not np.issubdtype(logits.dtype, np.floating)
    ):
        shape = getattr(logits, "shape", None)
        raise InvalidInputError(f"dense_crf needs float logits [n_labels, H, W], got shape {shape}.")
    if logits.shape[0] < 1:
        raise InvalidInputError("dense_crf needs at least one label in logits, got n_labels=0.")
    if logits.shape[1:] != image.shape[:2]:
        raise InvalidInputError(
            f"logits have spatial size {logits.shape[1:]} but the image is {image.shape[:2]}; "
            "upsample the logits to the image size (bilinear) before the CRF."
        )
    if not np.all(np.isfinite(logits)):
        raise InvalidInputError("dense_crf got NaN or infinite logits; check the model outputs.")


def _unary(logits: np.ndarray) -> np.ndarray:
    """-log softmax(logits) over labels, clipped like pydensecrf, float32 [n, H*W]."""
    x = logits.astype(np.float64)
    x = np.exp(x - x.max(axis=0, keepdims=True))
    probs = x / x.sum(axis=0, keepdims=True)
    unary = -np.log(np.clip(probs, _PROB_CLIP, 1.0))
    return np.ascontiguousarray(unary.reshape(logits.shape[0], -1), dtype=np.float32)


def dense_crf(image: np.ndarray, logits: np.ndarray, params: CRFParams = PUBLISHED_CRF) -> np.ndarray:
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


def labels(probs: np.ndarray) -> np.ndarray:
    """Argmax label map [H, W] of probabilities [n, H, W]: uint8, or uint16 above 256 labels."""
    dtype = np.uint8 if probs.shape[0] <= 256 else np.uint16
    return probs.argmax(0).astype(dtype)


def crf_chunk(
    images: Sequence[np.ndarray], logits: Sequence[np.ndarray], params: CRFParams, argmax: bool = False
) -> list[np.ndarray]:
    """Worker entry point (module level so spawned processes and Dask workers can import it).

    Returns one float32 [n, H, W] probability array per image, or with ``argmax`` one label
    map [H, W] (see :func:`labels`), which is 44x smaller to send back for 11 labels.
    """
    if argmax:
        return [labels(dense_crf(img, lg, params)) for img, lg in zip(images, logits, strict=True)]
    return [dense_crf(img, lg, params) for img, lg in zip(images, logits, strict=True)]


def dense_crf_batch(
    images: Sequence[np.ndarray],
    logits: Sequence[np.ndarray],
    params: CRFParams = PUBLISHED_CRF,
    workers: int = 1,
    chunksize: int | None = None,
    progress: Callable[[int], None] | None = None,
    argmax: bool = False,
    executor: Executor | None = None,
) -> list[np.ndarray]:
    """Refine many images, optionally in parallel worker processes.

    Args:
        images: uint8 images, each [H_i, W_i, 3].
        logits: Matching float logits, each [n_labels, H_i, W_i].
        params: CRF settings, shared by all images.
        workers: Worker processes; <= 1 runs serially in this process (no pool) unless
            ``executor`` is given. With ``executor``, only sizes the default chunks.
        chunksize: Images sent to a worker per task; None means
            :func:`~stego_tasks.runtime.executors.default_chunksize` (about four tasks per worker).
        progress: Called with the number of images finished so far, after each image
            (serial) or each chunk (parallel) completes; use it to report images/s.
        argmax: Return label maps instead of probabilities; the workers take the argmax,
            so only the labels travel back.
        executor: A running executor to submit to (for example one :func:`spawn_pool`
            shared by several calls, or a Dask client's ``get_executor()``); it is left
            running. None starts a spawn pool of ``workers`` for this call alone.

    Returns:
        One array per image, in input order: refined probabilities, float32
        [n_labels, H_i, W_i]; or with ``argmax`` the label of each pixel, uint8 [H_i, W_i]
        (uint16 above 256 labels), equal to ``dense_crf(...).argmax(0)``.

    Raises:
        ValueError: If the sequences differ in length, ``chunksize`` < 1, or any pair
            fails :func:`dense_crf`'s checks (checked before any work starts).
        RuntimeError: If a worker process dies (for example killed for memory).
    """
    if len(images) != len(logits):
        raise InvalidInputError(
            f"dense_crf_batch got {len(images)} images but {len(logits)} logits; pass one per image."
        )
    if chunksize is not None and chunksize < 1:
        raise InvalidInputError(f"dense_crf_batch needs chunksize >= 1, got {chunksize}.")
    for image, lg in zip(images, logits, strict=True):
        _check_inputs(image, lg)

    if executor is None and (workers <= 1 or len(images) <= 1):
        results = []
        for image, lg in zip(images, logits, strict=True):
            results.append(crf_chunk([image], [lg], params, argmax)[0])
            if progress is not None:
                progress(len(results))
        return results

    size = default_chunksize(len(images), workers) if chunksize is None else chunksize
    starts = range(0, len(images), size)
    results_by_start: dict[int, list[np.ndarray]] = {}
    finished = 0

    def collect(start: int, chunk: list[np.ndarray]) -> None:
        nonlocal finished
        results_by_start[start] = chunk
        finished += len(chunk)
        if progress is not None:
            progress(finished)

    jobs = (
        (s, (list(images[s : s + size]), list(logits[s : s + size]), params, argmax)) for s in starts
    )
    with ExitStack() as stack:
        pool = executor if executor is not None else stack.enter_context(spawn_pool(min(workers, len(starts))))
        # The inputs are already in memory, so every chunk may be queued at once.
        run_chunks(pool, crf_chunk, jobs, max_in_flight=None, on_done=collect)
    return [out for s in starts for out in results_by_start[s]]
