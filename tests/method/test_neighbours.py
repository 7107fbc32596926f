"""Tests for stego_tasks.method.neighbours: pooled vectors are the spatial mean made unit, the kNN graph
is the exact cosine top-k among the other images (checked against a brute-force float64 matrix)
whatever the batching, scale or duplicates, faiss's thread setting is left as found, and positives
are drawn uniformly from a row's first neighbours, reproducibly, with bad arguments refused in one
sentence.
"""

import faiss
import numpy as np
import pytest
import torch
from scipy.stats import chi2

from stego_tasks.method.neighbours import (
    _l2_normalise,
    _unit_rows_float32,
    knn_graph,
    pool_features,
    sample_positives,
)
from tests.test_knn import _brute_force_sims


def test_pool_features_matches_manual_mean_and_norm():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(4, 6, 3, 5)).astype(np.float32)
    feats[2] = 0.0  # an all-zero image must not become NaN
    expected = feats.reshape(4, 6, -1).mean(axis=2)
    norms = np.linalg.norm(expected, axis=1, keepdims=True)
    expected = np.where(norms > 0, expected / np.where(norms > 0, norms, 1), 0)

    out_np = pool_features(feats)
    out_torch = pool_features(torch.from_numpy(feats).half())
    assert out_np.dtype == np.float32 and out_np.shape == (4, 6), (
        f"got {out_np.dtype} {out_np.shape}"
    )
    np.testing.assert_allclose(
        out_np, expected, atol=1e-6, err_msg="numpy input: wrong pooled vectors"
    )
    np.testing.assert_allclose(
        out_torch, expected, atol=2e-3, err_msg="float16 tensor input: wrong pooled vectors"
    )
    assert np.all(out_np[2] == 0), f"zero features should pool to zeros, got {out_np[2]}"


def test_pool_features_rejects_pooled_input():
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        pool_features(np.zeros((3, 4), np.float32))


@pytest.mark.parametrize("k", [1, 5, 12])
def test_knn_graph_matches_brute_force(k):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(150, 24)).astype(np.float32) * rng.uniform(0.1, 10, size=(150, 1)).astype(
        np.float32
    )
    knn = knn_graph(x, k=k, batch_size=64)
    sims = _brute_force_sims(x)
    assert knn.shape == (150, k) and knn.dtype == np.int64, f"got {knn.shape} {knn.dtype}"
    got = np.take_along_axis(sims, knn, axis=1)
    expected = -np.sort(-sims, axis=1)[:, :k]
    # Similarity values, not indices, so near-ties in either order both pass.
    np.testing.assert_allclose(
        got, expected, atol=1e-5, err_msg="neighbour similarities differ from brute force"
    )
    assert np.all(np.diff(got, axis=1) <= 1e-6), (
        "neighbours are not ordered by decreasing similarity"
    )
    assert not np.any(knn == np.arange(150)[:, None]), "a query appears among its own neighbours"


def test_knn_graph_two_images():
    x = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
    knn = knn_graph(x, k=7)
    np.testing.assert_array_equal(
        knn, [[1], [0]], err_msg="with N=2 each image's only neighbour is the other"
    )


def test_knn_graph_clips_k_to_n_minus_one():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 3)).astype(np.float32)
    knn = knn_graph(x, k=30)
    assert knn.shape == (6, 5), f"k=30 on 6 images should give 5 columns, got shape {knn.shape}"
    for i, row in enumerate(knn):
        assert sorted(row.tolist()) == [j for j in range(6) if j != i], (
            f"row {i} is not all other images: {row}"
        )


def test_knn_graph_excludes_self_among_duplicates():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(3, 8)).astype(np.float32)
    # Rows 0..4 identical, rows 5..7 distinct: ties with self at similarity 1.
    x = np.concatenate([np.repeat(base[:1], 5, axis=0), base[1:], -base[:1]], axis=0)
    for k in (2, 4, 6):
        knn = knn_graph(x, k=k, batch_size=3)
        assert not np.any(knn == np.arange(len(x))[:, None]), f"k={k}: self present in {knn}"
        for i in range(5):
            twins = set(range(5)) - {i}
            row = set(knn[i].tolist())
            # The 4 twins are the most similar images: fewer columns hold only twins,
            # 4 or more hold all of them.
            ok = row <= twins if k < 4 else twins <= row
            assert ok, f"k={k}: row {i} = {knn[i]} does not fit twins {sorted(twins)}"


def test_knn_graph_batched_equals_unbatched():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    full = knn_graph(x, k=7, batch_size=10_000)
    for batch_size in (5, 32, 299):
        np.testing.assert_array_equal(
            knn_graph(x, k=7, batch_size=batch_size),
            full,
            err_msg=f"batch_size={batch_size} changed the graph",
        )


@pytest.mark.parametrize(
    ("shape", "k", "match"),
    [((1, 4), 3, "at least 2"), ((5, 4), 0, "k >= 1"), ((5,), 3, r"\[N, C\]")],
)
def test_knn_graph_rejects_bad_input(shape, k, match):
    with pytest.raises(ValueError, match=match):
        knn_graph(np.ones(shape, np.float32), k=k)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_knn_graph_rejects_nan(bad):
    x = np.ones((4, 3), np.float32)
    x[1, 2] = bad
    with pytest.raises(ValueError, match="NaN"):
        knn_graph(x, k=2)


def test_float32_normalisation_matches_float64_and_keeps_edge_rows():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 24)) * rng.uniform(0.01, 100, size=(40, 1))
    x[3] = 0.0  # all zero: must stay zero, not NaN
    x[7] = 1e-30  # squares underflow in float32: faiss would leave the row as is
    x[11] = 1e25  # squares overflow in float32: faiss would zero the row
    x[13] = 1e60  # beyond float32 altogether (inf once cast)
    before = x.copy()
    got = _unit_rows_float32(x)
    want = _l2_normalise(x).astype(np.float32)
    assert got.dtype == np.float32 and got.flags.c_contiguous, f"got {got.dtype}, contiguous={got.flags.c_contiguous}"
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg="float32 rows differ from the float64 normalisation")
    assert np.all(got[3] == 0), f"an all-zero row became {got[3]}"
    np.testing.assert_array_equal(got[[7, 11, 13]], want[[7, 11, 13]], err_msg="edge rows differ from _l2_normalise")
    np.testing.assert_array_equal(x, before, err_msg="the input was modified")
    np.testing.assert_allclose(np.linalg.norm(got[[11, 13]], axis=1), 1.0, rtol=1e-6, err_msg="huge rows are not unit")


def test_knn_graph_neighbours_unchanged_by_float32_normalisation():
    """The graph equals one built from float64-normalised vectors (the previous method)."""
    rng = np.random.default_rng(6)
    x = (rng.normal(size=(500, 32)) * rng.uniform(0.1, 10, size=(500, 1))).astype(np.float32)
    x[10] = 0.0
    previous = _l2_normalise(x.astype(np.float64)).astype(np.float32)
    got, want = knn_graph(x, k=7), knn_graph(previous, k=7)
    np.testing.assert_array_equal(np.sort(got, axis=1)[np.arange(500) != 10], np.sort(want, axis=1)[np.arange(500) != 10])


def test_sample_positives_is_uniform_over_first_columns():
    knn = np.array([[10, 11, 12, 13, 14, 15, 16], [20, 21, 22, 23, 24, 25, 26]], np.int64)
    gen = torch.Generator().manual_seed(0)
    draws = np.concatenate(
        [sample_positives(knn, np.zeros(7000, np.int64), gen) for _ in range(10)]
    )
    counts = np.array([(draws == v).sum() for v in range(10, 17)])
    assert counts.sum() == 70_000, f"draws outside row 0's neighbours: {np.unique(draws)}"
    expected = 10_000
    stat = float(((counts - expected) ** 2 / expected).sum())
    limit = chi2.ppf(0.999, df=6)
    assert stat < limit, f"counts {counts} are not uniform: chi-square {stat:.1f} >= {limit:.1f}"

    few = sample_positives(knn, np.ones(5000, np.int64), gen, n_neighbors=3)
    assert set(np.unique(few).tolist()) == {20, 21, 22}, (
        f"n_neighbors=3 should draw columns 0..2, got {np.unique(few)}"
    )
    clipped = sample_positives(knn, np.ones(5000, np.int64), gen, n_neighbors=100)
    assert set(np.unique(clipped).tolist()) == set(range(20, 27)), (
        f"n_neighbors=100 should use all 7 columns, got {np.unique(clipped)}"
    )


def test_sample_positives_types_and_reproducibility():
    knn = np.arange(40, dtype=np.int64).reshape(8, 5)
    index = torch.tensor([0, 3, 7, 3])
    a = sample_positives(knn, index, torch.Generator().manual_seed(5))
    b = sample_positives(knn, index.numpy(), torch.Generator().manual_seed(5))
    assert isinstance(a, torch.Tensor) and a.dtype == torch.int64, (
        f"tensor in should give int64 tensor, got {a!r}"
    )
    assert isinstance(b, np.ndarray), f"array in should give array out, got {type(b)}"
    np.testing.assert_array_equal(a.numpy(), b, err_msg="same seed, different draws")
    rows = np.asarray(a) // 5
    np.testing.assert_array_equal(
        rows, index.numpy(), err_msg="a partner was taken from another image's row"
    )


def test_sample_positives_rejects_bad_arguments():
    knn = np.zeros((4, 3), np.int64)
    with pytest.raises(TypeError, match="torch.Generator"):
        sample_positives(knn, np.array([0]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="4 rows"):
        sample_positives(knn, np.array([4]), torch.Generator())
    with pytest.raises(ValueError, match="n_neighbors"):
        sample_positives(knn, np.array([0]), torch.Generator(), n_neighbors=0)


def test_pooled_vectors_and_the_graph_ignore_each_image_s_scale():
    rng = np.random.default_rng(7)
    feats = rng.normal(size=(20, 8, 2, 3)).astype(np.float32)
    scale = rng.uniform(0.01, 100, size=(20, 1, 1, 1)).astype(np.float32)
    pooled, scaled = pool_features(feats), pool_features(feats * scale)
    np.testing.assert_allclose(scaled, pooled, atol=1e-5, err_msg="a positive factor changed the pooled vector")
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-6, err_msg="pooled rows are not unit")
    sims = _brute_force_sims(pooled)
    got = np.take_along_axis(sims, knn_graph(pooled * scale[:, :, 0, 0], k=4), axis=1)
    np.testing.assert_allclose(got, -np.sort(-sims, axis=1)[:, :4], atol=1e-5, err_msg="scaled rows, other neighbours")


def test_the_graph_leaves_faiss_s_thread_setting_as_it_found_it():
    x = np.random.default_rng(8).normal(size=(30, 4)).astype(np.float32)
    before = faiss.omp_get_max_threads()
    try:
        faiss.omp_set_num_threads(2)
        one_thread = knn_graph(x, k=3, faiss_threads=1)
        assert faiss.omp_get_max_threads() == 2, f"faiss left at {faiss.omp_get_max_threads()} threads, was 2"
        np.testing.assert_array_equal(one_thread, knn_graph(x, k=3), err_msg="the thread count changed the graph")
    finally:
        faiss.omp_set_num_threads(before)


def test_a_batch_size_below_one_is_refused_in_one_sentence():
    with pytest.raises(ValueError, match=r"^knn_graph needs batch_size >= 1, got batch_size=0\.$"):
        knn_graph(np.ones((4, 3), np.float32), k=2, batch_size=0)


def test_positives_keep_the_shape_of_a_two_dimensional_index():
    knn = np.arange(30, dtype=np.int64).reshape(6, 5) + 100
    index = np.array([[0, 5, 2], [2, 2, 4]])
    got = sample_positives(knn, index, torch.Generator().manual_seed(1), n_neighbors=2)
    assert got.shape == (2, 3) and got.dtype == np.int64, f"got {got.shape} {got.dtype}"
    for i, partner in np.ndenumerate(got):
        assert partner in knn[index[i], :2], f"position {i}: {partner} is not among row {index[i]}'s first two"


def test_a_negative_index_is_refused_in_one_sentence():
    with pytest.raises(ValueError, match=r"^sample_positives got indices in \[-1, 2\] but the kNN graph has 4 rows"):
        sample_positives(np.zeros((4, 3), np.int64), np.array([2, -1]), torch.Generator())
