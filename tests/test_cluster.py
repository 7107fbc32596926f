"""Tests for stego_tasks.cluster: the k-means baseline's centroids and the predictions store, checked
against the inference functions (whose own tests, against a naive NumPy head and upsampler, are in
tests/method/test_inference.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from stego_tasks.cluster import cluster, fit_kmeans
from stego_tasks.config import ClusterParams, TrainParams, params_to_dict
from stego_tasks.method.inference import kmeans_predict, predict_code
from stego_tasks.method.model import build_model, load_model, save_model

C, N_CLASSES = 6, 3
MODEL_PARAMS = TrainParams(n_codes=5, extra_clusters=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(C, N_CLASSES, MODEL_PARAMS).eval()


def test_fit_kmeans_finds_well_separated_directions():
    rng = np.random.default_rng(2)
    directions = np.eye(C)[:3]
    layout = rng.integers(0, 3, (8, 4, 4))
    layout[:, 0, :3] = [0, 1, 2]  # every image holds every direction, whatever rows are sampled
    feats = directions[layout].transpose(0, 3, 1, 2) * 3 + rng.normal(0, 0.05, (8, C, 4, 4))
    centroids = fit_kmeans(zarr.array(feats.astype(np.float16)), 3, ClusterParams(kmeans_iters=20, kmeans_samples=64), 0)
    assert centroids.shape == (3, C) and centroids.dtype == np.float32, f"got {centroids.shape} {centroids.dtype}"
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5, err_msg="centroids not unit norm")
    best = (centroids @ directions.T).max(axis=0)
    assert np.all(best > 0.99), f"a direction has no centroid: best cosines {best}"


# --- the stage -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """A features store (train + val, as `extract` lays it out) and a saved model."""
    tmp = tmp_path_factory.mktemp("cluster")
    rng = np.random.default_rng(3)
    root = zarr.open_group(str(tmp / "features.zarr"), mode="w", zarr_format=3)
    train = root.create_group("train")
    train.create_array("feats", data=rng.normal(size=(12, C, 3, 3)).astype(np.float16), chunks=(5, C, 3, 3))
    train.create_array("done", data=np.ones(3, dtype=bool))
    val = root.create_group("val")
    n_val, size = 10, 12  # more than one prediction batch (8)
    val.create_array("feats", data=rng.normal(size=(n_val, C, 3, 3)).astype(np.float16), chunks=(4, C, 3, 3))
    val.create_array("feats_flip", data=rng.normal(size=(n_val, C, 3, 3)).astype(np.float16), chunks=(4, C, 3, 3))
    val.create_array("labels", data=rng.integers(0, N_CLASSES, (n_val, size, size)).astype(np.uint8))
    val.create_array("image_ids", data=np.arange(100, 100 + n_val, dtype=np.int64))
    val.create_array("done", data=np.ones(3, dtype=bool))
    model = _model(seed=4)
    model.info = {"in_dim": C, "n_classes": N_CLASSES, "train": params_to_dict(MODEL_PARAMS)}
    save_model(model, tmp / "model")
    return tmp


def _run(stage: Path, params: ClusterParams, name: str) -> zarr.Group:
    counts = cluster(stage / "features.zarr", stage / "model", stage / name, params, seed=0)
    assert counts == {"images": 10, "clusters": N_CLASSES + 1}, f"counts {counts}"
    return zarr.open_group(str(stage / name), mode="r")


def test_cluster_stage_store_layout_and_predictions(stage):
    params = ClusterParams(kmeans_iters=10, kmeans_samples=1000)
    out = _run(stage, params, "predictions.zarr")
    n, k, size = 10, N_CLASSES + 1, 12
    layout = {
        "cluster_logits": ((n, k, size, size), np.float16),
        "linear_logits": ((n, N_CLASSES, size, size), np.float16),
        "cluster_pred": ((n, size, size), np.uint8),
        "linear_pred": ((n, size, size), np.uint8),
        "kmeans_pred": ((n, size, size), np.uint8),
        "image_ids": ((n,), np.int64),
    }
    assert set(out.array_keys()) == set(layout), f"arrays {sorted(out.array_keys())}"
    for name, (shape, dtype) in layout.items():
        assert out[name].shape == shape and out[name].dtype == dtype, f"{name}: {out[name].shape} {out[name].dtype}"
    protocol = {"select": "last", "uses_labels": False, "selection": {}, "probe_init": "random", "shifts": None,
                "shifts_setting": "fixed"}  # what a model.json without these facts (an older run) implies
    assert dict(out.attrs) == {"flip": True, "alpha": 2.0, "n_clusters": k, "protocol": protocol}, f"attrs {dict(out.attrs)}"
    val = zarr.open_group(str(stage / "features.zarr"), mode="r")["val"]
    assert np.array_equal(out["image_ids"][:], val["image_ids"][:]), "image ids not carried over"

    model = load_model(stage / "model")
    feats = torch.from_numpy(val["feats"][:]).float()
    with torch.no_grad():
        code = predict_code(model, feats, torch.from_numpy(val["feats_flip"][:]).float(), size)
        cluster_logits = model.cluster_probe.log_probs(code, 2.0).numpy()
        linear_logits = torch.log_softmax(model.linear_probe(code), dim=1).numpy()
    np.testing.assert_allclose(out["cluster_logits"][:].astype(np.float32), cluster_logits, atol=5e-3,
                               err_msg="cluster logits")
    np.testing.assert_allclose(out["linear_logits"][:].astype(np.float32), linear_logits, atol=5e-3,
                               err_msg="linear logits")
    assert np.array_equal(out["cluster_pred"][:], cluster_logits.argmax(1)), "cluster_pred != argmax of the logits"
    assert np.array_equal(out["linear_pred"][:], linear_logits.argmax(1)), "linear_pred != argmax of the logits"
    stored = out["cluster_logits"][:].astype(np.float32)
    top2 = np.sort(stored, axis=1)[:, -2:]
    clear = top2[:, 1] > top2[:, 0]  # float16 may round a near-tie into a tie
    assert clear.mean() > 0.9, f"only {clear.mean():.0%} of pixels have a clear maximum: test is vacuous"
    assert np.array_equal(out["cluster_pred"][:][clear], stored.argmax(1)[clear]), "cluster_pred vs stored logits"
    assert len(np.unique(out["cluster_pred"][:])) > 1, "a single cluster everywhere: test is vacuous"

    centroids = fit_kmeans(zarr.open_group(str(stage / "features.zarr"), mode="r")["train"]["feats"], N_CLASSES,
                           params, 0)
    assert np.array_equal(out["kmeans_pred"][:], kmeans_predict(centroids, feats, size).numpy()), "kmeans_pred"
    assert out["kmeans_pred"][:].max() < N_CLASSES, "k-means must use n_classes centroids"


def test_cluster_stage_without_flip_uses_the_plain_code(stage):
    out = _run(stage, ClusterParams(flip=False, kmeans_iters=5, kmeans_samples=1000), "no_flip.zarr")
    assert out.attrs["flip"] is False, f"attrs {dict(out.attrs)}"
    val = zarr.open_group(str(stage / "features.zarr"), mode="r")["val"]
    model = load_model(stage / "model")
    with torch.no_grad():
        code = predict_code(model, torch.from_numpy(val["feats"][:]).float(), None, 12)
        expected = model.cluster_probe.log_probs(code, 2.0).argmax(1).numpy()
    assert np.array_equal(out["cluster_pred"][:], expected), "cluster_pred without flip averaging"
