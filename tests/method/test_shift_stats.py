"""Tests for stego_tasks.method.shift_stats and loss.feature_correlations: the distributions the shifts face."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stego_tasks.data.training_data import TrainingData
from stego_tasks.method.loss import feature_correlations
from stego_tasks.method.neighbours import knn_graph, pool_features
from stego_tasks.method.shift_stats import (
    BINS,
    auto_shifts,
    correlation_samples,
    correlation_stats,
    plot_png,
    write_histogram_csv,
)


def _flat_images(vectors: np.ndarray, side: int = 4) -> torch.Tensor:
    """Images whose every position holds the image's one vector: [B, C, side, side]."""
    return torch.from_numpy(vectors).float()[:, :, None, None].expand(-1, -1, side, side).contiguous()


def test_correlations_of_spatially_constant_features_are_the_cosines_of_their_vectors() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(4, 6))
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosine = unit @ unit.T
    positives = np.array([1, 2, 3, 0])
    values = feature_correlations(
        _flat_images(vectors), _flat_images(vectors[positives]), feature_samples=3, neg_samples=2,
        pointwise=False, generator=torch.Generator().manual_seed(0),
    )
    np.testing.assert_allclose(values["intra"].numpy(), 1.0, atol=1e-5, err_msg="an image with itself")
    inter = values["inter"].numpy().reshape(4, -1)
    for image in range(4):
        np.testing.assert_allclose(inter[image], cosine[image, positives[image]], atol=1e-5)
    off_diagonal = {round(float(v), 4) for v in cosine[~np.eye(4, dtype=bool)]}
    assert {round(float(v), 4) for v in values["neg"].numpy()} <= off_diagonal, "random pairs never pair an image with itself"
    assert values["neg"].numel() == 2 * 4 * 3**4


def test_pointwise_centring_keeps_the_global_mean_and_removes_each_query_mean() -> None:
    torch.manual_seed(0)
    feats, pos = torch.randn(3, 5, 6, 6), torch.randn(3, 5, 6, 6)
    raw = feature_correlations(feats, pos, feature_samples=4, neg_samples=1, pointwise=False,
                               generator=torch.Generator().manual_seed(1))["inter"].reshape(3, 4, 4, 4, 4)
    centred = feature_correlations(feats, pos, feature_samples=4, neg_samples=1, pointwise=True,
                                   generator=torch.Generator().manual_seed(1))["inter"].reshape(3, 4, 4, 4, 4)
    want = raw - raw.mean(dim=(3, 4), keepdim=True) + raw.mean()
    want = want - want.mean() + raw.mean()
    torch.testing.assert_close(centred, want, atol=1e-6, rtol=1e-6)


def _data(rows: int = 12) -> TrainingData:
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(rows, 8, 4, 4)).astype(np.float16)
    return TrainingData(torch.from_numpy(feats), None, knn_graph(pool_features(feats), 3))


def test_auto_shifts_are_the_chosen_quantiles_and_stats_count_what_attracts(tmp_path: Path) -> None:
    samples = correlation_samples(_data(), batches=3, batch_size=4, feature_samples=3, neg_samples=2, seed=0)
    assert set(samples) == {"intra", "inter", "neg"} and all(v.size for v in samples.values())
    shifts = auto_shifts(samples, 0.25)
    for term, shift in zip(("intra", "inter", "neg"), shifts, strict=True):
        assert shift == pytest.approx(np.quantile(samples[term], 0.25), abs=1e-4), term
    stats = correlation_stats(samples, shifts)
    for term, shift in zip(("intra", "inter", "neg"), shifts, strict=True):
        entry = stats["terms"][term]
        assert entry["attract"] == pytest.approx((samples[term] > shift).mean(), abs=1e-6)
        assert sum(entry["counts"]) == samples[term].size
        assert entry["quantiles"]["0.5"] == pytest.approx(np.median(samples[term]), abs=1e-5)
    again = correlation_samples(_data(), batches=3, batch_size=4, feature_samples=3, neg_samples=2, seed=0)
    assert all(np.array_equal(samples[t], again[t]) for t in samples), "the same seed draws the same pairs"
    csv = tmp_path / "shift_stats.csv"
    write_histogram_csv(csv, stats)
    lines = csv.read_text().splitlines()
    assert lines[0] == "correlation,pair,share" and len(lines) == 1 + 3 * (len(BINS) - 1)
    shares = [float(line.split(",")[2]) for line in lines[1:] if ",kNN," in line]
    assert sum(shares) == pytest.approx(1.0, abs=1e-4)
    assert plot_png(stats).startswith(b"\x89PNG")
