"""Inference with a trained head: flip-averaged codes on the label grid, and the k-means baseline.

Every caller that turns features into codes goes through :func:`predict_code`: the `cluster`
stage, `stego sweep-k` (through :func:`iter_val_codes`, so both see exactly the same codes)
and `stego predict`. The baseline runs spherical k-means (faiss) on the raw backbone
features of the training crops: the same features, without the head.
"""

from __future__ import annotations

from collections.abc import Iterator

import faiss
import numpy as np
import torch
import torch.nn.functional as F
import zarr

from stego_tasks.method.head import flip_averaged
from stego_tasks.method.model import StegoModel

BATCH = 8


def predict_code(
    model: StegoModel, feats: torch.Tensor, feats_flip: torch.Tensor | None, size: int | tuple[int, int]
) -> torch.Tensor:
    """Flip-averaged code upsampled to the label grid.

    Args:
        model: trained model in eval mode.
        feats: backbone features [B, C, h, w].
        feats_flip: features of the mirrored images [B, C, h, w], or None for no averaging.
        size: output side R, or (H, W).

    Returns:
        Code [B, K, R, R] (or [B, K, H, W]).
    """
    code = model.head(feats)
    if feats_flip is not None:
        code = flip_averaged(code, model.head(feats_flip))
    out_size = (size, size) if isinstance(size, int) else tuple(size)
    return F.interpolate(code, size=out_size, mode="bilinear", align_corners=False)


def iter_val_codes(
    model: StegoModel, val: zarr.Group, use_flip: bool, size: int, batch: int = BATCH
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Walk the val split in batches: (rows, features [b, C, h, w], code [b, K, R, R]).

    Shared by `cluster` and `stego sweep-k`, so both predict from exactly the same codes.
    """
    n_images = val["feats"].shape[0]
    for start in range(0, n_images, batch):
        rows = slice(start, min(start + batch, n_images))
        feats = torch.from_numpy(val["feats"][rows]).float()
        flipped = torch.from_numpy(val["feats_flip"][rows]).float() if use_flip else None
        yield rows, feats, predict_code(model, feats, flipped, size)


def spherical_kmeans(vectors: np.ndarray, n_clusters: int, iters: int, seed: int, *, in_place: bool = False) -> np.ndarray:
    """Spherical k-means (faiss) of feature vectors.

    Args:
        vectors: float32 [P, C] patch features, in any norm (normalised here).
        n_clusters: number of centroids.
        iters: k-means iterations.
        seed: faiss's seed.
        in_place: normalise `vectors` itself when it is float32 and C-contiguous (a caller
            that built the array saves a copy of all patch features); else a copy is.

    Returns:
        Unit-norm centroids, float32 [n_clusters, C].
    """
    vectors = np.array(vectors, dtype=np.float32, order="C", copy=None if in_place else True)
    dim = vectors.shape[1]
    faiss.normalize_L2(vectors)
    kmeans = faiss.Kmeans(dim, n_clusters, niter=iters, seed=seed, spherical=True, verbose=False)
    kmeans.train(vectors)
    centroids = kmeans.centroids.astype(np.float32)
    return centroids / np.linalg.norm(centroids, axis=1, keepdims=True).clip(1e-12)


def kmeans_predict(centroids: np.ndarray, feats: torch.Tensor, size: int) -> torch.Tensor:
    """Nearest-centroid labels of features, decided on bilinearly upsampled similarities.

    Args:
        centroids: float32 [k, C], unit norm.
        feats: [B, C, h, w].
        size: output side R.

    Returns:
        LongTensor [B, R, R].
    """
    similarity = torch.einsum("bchw,kc->bkhw", F.normalize(feats, dim=1), torch.from_numpy(centroids))
    return F.interpolate(similarity, size=(size, size), mode="bilinear", align_corners=False).argmax(1)
