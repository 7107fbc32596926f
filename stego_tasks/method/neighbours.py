"""k-nearest-neighbour positives: pooled image features, exact cosine top-k, sampling.

STEGO pairs every training image with a "positive" partner drawn from its nearest
neighbours in pooled backbone-feature space (reference doc section 4). This module keeps
that as three pure steps:

1. :func:`pool_features` averages backbone features over space and L2-normalises them.
2. :func:`knn_graph` finds, for every image, its ``k`` most cosine-similar *other* images
   with an exact faiss inner-product index, searching in query batches so memory stays
   O(N * k) plus the index itself (never an N x N similarity matrix).
3. :func:`sample_positives` draws one partner per image uniformly from the first
   ``n_neighbors`` columns of that graph during training.

Unlike the reference, the stored graph never contains the image itself (the reference keeps
self at rank 0 and samples ranks 1..7; here column 0 is the nearest *other* image), the
features are pooled in eval mode by the caller, and any N >= 2 works.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch

from stego_tasks.errors import InvalidInputError

_NORM_EPS = 1e-12


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation that leaves all-zero rows at zero instead of NaN."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, _NORM_EPS)


def _unit_rows_float32(x: np.ndarray) -> np.ndarray:
    """A float32 copy of ``x`` [N, C] with unit rows, at one input's worth of extra memory.

    The bulk is normalised in place by faiss (float32, multi-threaded) instead of through
    float64 temporaries, which cost four times the float32 input. faiss leaves a row alone
    when its float32 squared norm is 0 (all-zero rows stay zero, as with
    :func:`_l2_normalise`) but also when it underflows, and it zeroes a row whose squared
    norm overflows; such rows (squared norm outside [_NORM_EPS**2, float32 max]) are
    redone from the input in float64 with :func:`_l2_normalise`, so they too get exactly
    the old result.

    Args:
        x: Finite vectors [N, C], any real dtype; not modified.

    Returns:
        np.ndarray float32 [N, C], C-contiguous.

    Raises:
        ValueError: If ``x`` has a NaN or infinite value.
    """
    # Overflow to inf here is expected and handled with the odd rows below.
    with np.errstate(over="ignore"):
        vectors = np.array(x, dtype=np.float32, order="C", copy=True)
        # einsum reduces row by row: no [N, C] temporary, unlike (vectors**2).sum(1).
        squared = np.einsum("ij,ij->i", vectors, vectors)
    # Also catches NaN and inf (their squares are not finite), so the input needs no
    # [N, C] isfinite mask; only these few rows are checked against the input.
    odd = np.flatnonzero(~(np.isfinite(squared) & (squared >= _NORM_EPS**2)))
    redo = np.asarray(x[odd], dtype=np.float64)
    if not np.all(np.isfinite(redo)):
        raise InvalidInputError("knn_graph got NaN or infinite feature values; check the extracted features.")
    faiss.normalize_L2(vectors)
    vectors[odd] = _l2_normalise(redo)
    return vectors


def pool_features(feats: np.ndarray | torch.Tensor) -> np.ndarray:
    """Average feature maps over space and L2-normalise each image's vector.

    Args:
        feats: Backbone features, shape [N, C, H, W], any float dtype (float16 is fine:
            the mean is accumulated in float64). A torch tensor may live on any device.

    Returns:
        np.ndarray float32 of shape [N, C] with unit L2 norm per row (all-zero rows stay
        zero rather than becoming NaN).

    Raises:
        ValueError: If ``feats`` is not 4-D.
    """
    if isinstance(feats, torch.Tensor):
        feats = feats.detach().to("cpu", torch.float32).numpy()
    feats = np.asarray(feats)
    if feats.ndim != 4:
        raise InvalidInputError(
            f"pool_features expects features of shape [N, C, H, W], got shape {feats.shape}; "
            "pass backbone feature maps, not pooled vectors."
        )
    pooled = feats.mean(axis=(2, 3), dtype=np.float64)
    return _l2_normalise(pooled).astype(np.float32)


def knn_graph(
    pooled: np.ndarray,
    k: int,
    batch_size: int = 4096,
    faiss_threads: int | None = None,
) -> np.ndarray:
    """Exact cosine top-k neighbours of every row among the other rows.

    Rows are L2-normalised here (again, defensively), so inner product equals cosine
    similarity. The query itself is removed by index, not by rank: with duplicate rows a
    twin can tie with (or outrank) the query, and it must stay while the query goes.

    Args:
        pooled: Image vectors, shape [N, C], N >= 2 (for example from
            :func:`pool_features`). Must be finite.
        k: Neighbours wanted per image, >= 1. Clipped to N - 1.
        batch_size: Queries searched per faiss call; bounds the temporary memory to
            batch_size * (k + 1) results.
        faiss_threads: OpenMP threads for faiss during this call; None keeps faiss's
            current setting.

    Returns:
        np.ndarray int64 of shape [N, min(k, N - 1)]; row i holds the indices of the
        images most similar to image i, by decreasing cosine similarity, never i itself.

    Raises:
        ValueError: If ``pooled`` is not 2-D, has fewer than 2 rows, is not finite, or if
            ``k`` or ``batch_size`` is below 1.
    """
    pooled = np.asarray(pooled)
    if pooled.ndim != 2:
        raise InvalidInputError(f"knn_graph expects vectors of shape [N, C], got shape {pooled.shape}.")
    n = pooled.shape[0]
    if n < 2:
        raise InvalidInputError(f"knn_graph needs at least 2 images to find neighbours, got N={n}.")
    if k < 1:
        raise InvalidInputError(f"knn_graph needs k >= 1 neighbours, got k={k}.")
    if batch_size < 1:
        raise InvalidInputError(f"knn_graph needs batch_size >= 1, got batch_size={batch_size}.")

    k_eff = min(k, n - 1)
    vectors = _unit_rows_float32(pooled)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)

    previous_threads = faiss.omp_get_max_threads()
    if faiss_threads is not None:
        faiss.omp_set_num_threads(int(faiss_threads))
    try:
        out = np.empty((n, k_eff), dtype=np.int64)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            _, found = index.search(vectors[start:stop], k_eff + 1)
            out[start:stop] = _drop_self(found, np.arange(start, stop))
    finally:
        faiss.omp_set_num_threads(previous_threads)
    return out


def _drop_self(found: np.ndarray, query_ids: np.ndarray) -> np.ndarray:
    """Remove each query's own index from its k+1 results, else its last result.

    Args:
        found: faiss result indices, shape [B, k + 1], each row free of repeats.
        query_ids: The database index of each query, shape [B].

    Returns:
        int64 array of shape [B, k], order of the remaining results kept.
    """
    drop = found == query_ids[:, None]
    # Self can fall outside the k+1 results when more than k twins tie with it.
    drop[~drop.any(axis=1), -1] = True
    assert np.all(drop.sum(axis=1) == 1), "faiss returned a repeated index in one row"
    assert np.all(found >= 0), "faiss returned fewer results than requested"
    return found[~drop].reshape(found.shape[0], found.shape[1] - 1).astype(np.int64)


def sample_positives(
    knn: np.ndarray,
    index: np.ndarray | torch.Tensor,
    generator: torch.Generator,
    n_neighbors: int | None = None,
) -> np.ndarray | torch.Tensor:
    """Draw one positive partner per image, uniformly from its nearest neighbours.

    The graph from :func:`knn_graph` excludes self, so column 0 is the reference's rank 1
    and sampling columns 0..n_neighbors-1 matches the reference's ranks 1..n_neighbors
    (7 by default there).

    Args:
        knn: Neighbour graph, shape [N, k], int.
        index: Dataset indices of the batch, shape [B]; np.ndarray or torch tensor.
        generator: A ``torch.Generator`` (the training loop's, so draws are reproducible
            with the rest of training). Draws are made on the CPU.
        n_neighbors: Sample among this many nearest neighbours; None means all k columns.
            Values above k are clipped to k.

    Returns:
        Partner indices of shape [B], the same type as ``index`` (int64 np.ndarray, or an
        int64 tensor on ``index``'s device).

    Raises:
        TypeError: If ``generator`` is not a ``torch.Generator``.
        ValueError: If ``knn`` is not a non-empty 2-D graph, ``n_neighbors`` < 1, or an
            index lies outside [0, N).
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"sample_positives needs a torch.Generator, got {type(generator).__name__}; "
            "create one with torch.Generator().manual_seed(seed)."
        )
    knn = np.asarray(knn)
    if knn.ndim != 2 or knn.shape[1] < 1:
        raise InvalidInputError(
            f"sample_positives expects a kNN graph of shape [N, k>=1], got {knn.shape}."
        )
    if n_neighbors is not None and n_neighbors < 1:
        raise InvalidInputError(f"sample_positives needs n_neighbors >= 1 or None, got {n_neighbors}.")
    n_cols = knn.shape[1] if n_neighbors is None else min(n_neighbors, knn.shape[1])

    is_tensor = isinstance(index, torch.Tensor)
    idx = index.detach().cpu().numpy() if is_tensor else np.asarray(index)
    shape = idx.shape
    idx = idx.astype(np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= knn.shape[0]):
        raise InvalidInputError(
            f"sample_positives got indices in [{idx.min()}, {idx.max()}] but the kNN graph "
            f"has {knn.shape[0]} rows; was the graph built for this dataset?"
        )
    cols = torch.randint(0, n_cols, (idx.size,), generator=generator).numpy()
    partners = knn[idx, cols].astype(np.int64).reshape(shape)
    if is_tensor:
        return torch.from_numpy(partners).to(index.device)
    return partners
