"""Tests for stego_tasks.method.inference: the flip-averaged code upsampled to the label grid, square or
not, the val split walked in batches giving those same codes, spherical k-means finding directions
whatever the vectors' norms, and the k-means baseline's labels.

Expected values come from a naive NumPy head and a naive loop-based bilinear upsampler
(PyTorch's align_corners=False convention), not from the functions under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from stego_tasks.method.inference import (
    iter_val_codes,
    kmeans_predict,
    predict_code,
    spherical_kmeans,
)
from tests.test_cluster import MODEL_PARAMS, C, _model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bilinear(x: np.ndarray, size: int) -> np.ndarray:
    """Naive bilinear resize [B, K, h, w] -> [B, K, size, size], half-pixel centres, edges clamped."""

    def taps(n_in: int, i: int) -> tuple[int, int, float]:
        src = max((i + 0.5) * n_in / size - 0.5, 0.0)
        low = min(int(np.floor(src)), n_in - 1)
        return low, min(low + 1, n_in - 1), src - low

    out = np.zeros((*x.shape[:2], size, size))
    for i in range(size):
        y0, y1, wy = taps(x.shape[2], i)
        for j in range(size):
            x0, x1, wx = taps(x.shape[3], j)
            out[:, :, i, j] = (
                (1 - wy) * ((1 - wx) * x[:, :, y0, x0] + wx * x[:, :, y0, x1])
                + wy * ((1 - wx) * x[:, :, y1, x0] + wx * x[:, :, y1, x1])
            )
    return out


def _head(model, feats: np.ndarray) -> np.ndarray:
    """The head in eval mode, by hand: W x + b + W2 relu(W1 x + b1) + b2 at every position."""
    p = {k: v.detach().double().numpy() for k, v in model.head.state_dict().items()}
    x = feats.astype(np.float64)

    def conv(w, b, v):
        return np.einsum("oc,bchw->bohw", w[:, :, 0, 0], v) + b[None, :, None, None]

    hidden = np.maximum(conv(p["nonlinear.0.weight"], p["nonlinear.0.bias"], x), 0)
    return conv(p["linear.weight"], p["linear.bias"], x) + conv(p["nonlinear.2.weight"], p["nonlinear.2.bias"], hidden)


def test_predict_code_averages_with_the_mirrored_code_then_upsamples():
    model = _model()
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(2, C, 3, 4)).astype(np.float32)
    flipped = rng.normal(size=(2, C, 3, 4)).astype(np.float32)
    with torch.no_grad():
        got = predict_code(model, torch.from_numpy(feats), torch.from_numpy(flipped), 8).numpy()
        plain = predict_code(model, torch.from_numpy(feats), None, 8).numpy()
    expected = _bilinear((_head(model, feats) + _head(model, flipped)[..., ::-1]) / 2, 8)
    assert got.shape == (2, MODEL_PARAMS.n_codes, 8, 8), f"shape {got.shape}"
    np.testing.assert_allclose(got, expected, atol=1e-5, err_msg="flip-averaged code")
    np.testing.assert_allclose(plain, _bilinear(_head(model, feats), 8), atol=1e-5, err_msg="code without flip")


def test_kmeans_predict_is_the_argmax_of_upsampled_cosine_similarities():
    rng = np.random.default_rng(1)
    centroids = rng.normal(size=(4, C)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    feats = rng.normal(size=(3, C, 3, 3)).astype(np.float32) * rng.uniform(0.1, 5, (3, 1, 3, 3)).astype(np.float32)
    got = kmeans_predict(centroids, torch.from_numpy(feats), 7).numpy()
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    expected = _bilinear(np.einsum("bchw,kc->bkhw", unit.astype(np.float64), centroids), 7).argmax(1)
    assert got.shape == (3, 7, 7), f"shape {got.shape}"
    assert np.array_equal(got, expected), f"{(got != expected).sum()} of {got.size} labels differ"


def test_a_code_at_a_non_square_size_has_that_height_and_width():
    model = _model(1)
    vector = np.random.default_rng(2).normal(size=(1, C, 1, 1)).astype(np.float32)
    feats = np.broadcast_to(vector, (1, C, 3, 4)).copy()  # the same vector everywhere: a constant code
    with torch.no_grad():
        got = predict_code(model, torch.from_numpy(feats), torch.from_numpy(feats), (5, 9)).numpy()
    assert got.shape == (1, MODEL_PARAMS.n_codes, 5, 9), f"size (5, 9) gave {got.shape}"
    expected = np.broadcast_to(_head(model, vector), got.shape)
    np.testing.assert_allclose(got, expected, atol=1e-5, err_msg="a constant code must stay constant when upsampled")


@pytest.mark.parametrize("use_flip", [True, False])
def test_the_val_split_is_walked_in_batches_of_the_codes_of_each_row(use_flip):
    model = _model(3)
    rng = np.random.default_rng(4)
    val = zarr.open_group(zarr.storage.MemoryStore(), mode="w", zarr_format=3)
    feats = rng.normal(size=(11, C, 3, 3)).astype(np.float16)
    val.create_array("feats", data=feats, chunks=(3, C, 3, 3))
    if use_flip:  # without flip averaging the walk must not need the mirrored features at all
        val.create_array("feats_flip", data=rng.normal(size=(11, C, 3, 3)).astype(np.float16))
    with torch.no_grad():
        walked = list(iter_val_codes(model, val, use_flip, size=6, batch=4))
    assert [rows for rows, _, _ in walked] == [slice(0, 4), slice(4, 8), slice(8, 11)], "rows of the batches"
    for rows, batch_feats, code in walked:
        np.testing.assert_array_equal(batch_feats.numpy(), feats[rows].astype(np.float32), err_msg=f"features {rows}")
        plain = _head(model, feats[rows])
        head = (plain + _head(model, val["feats_flip"][rows])[..., ::-1]) / 2 if use_flip else plain
        np.testing.assert_allclose(code.numpy(), _bilinear(head, 6), atol=1e-4, err_msg=f"code of rows {rows}")


def test_spherical_kmeans_finds_directions_whatever_the_vectors_norms():
    rng = np.random.default_rng(5)
    directions = np.eye(C)[:3]
    members = np.repeat(np.arange(3), 60)
    # Norms from 0.01 to 100 in every cluster: plain k-means would split by norm, not direction.
    norms = np.exp(rng.uniform(np.log(0.01), np.log(100), size=(len(members), 1)))
    vectors = (directions[members] + rng.normal(0, 0.05, (len(members), C))) * norms
    centroids = spherical_kmeans(vectors.astype(np.float32), 3, iters=20, seed=0)
    assert centroids.shape == (3, C) and centroids.dtype == np.float32, f"got {centroids.shape} {centroids.dtype}"
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5, err_msg="centroids not unit norm")
    best = (centroids @ directions.T).max(axis=0)
    assert np.all(best > 0.99), f"a direction has no centroid: best cosines {best}"


def test_spherical_kmeans_leaves_the_callers_vectors_alone_unless_asked() -> None:
    vectors = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32) * 5
    before = vectors.copy()
    centroids = spherical_kmeans(vectors, 3, iters=5, seed=0)
    np.testing.assert_array_equal(vectors, before, err_msg="the input was normalised in place")
    again = spherical_kmeans(vectors, 3, iters=5, seed=0, in_place=True)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-6, err_msg="in_place must normalise the input")
    np.testing.assert_allclose(again, centroids, atol=1e-6, err_msg="normalising in place must not change the result")
