"""Stage `cluster`: predictions for every validation image, and the k-means baseline.

For each validation image the head's code is flip-averaged (code of the image plus the
code of its mirror, mirrored back), upsampled bilinearly to the label resolution, and
turned into cluster-probe log-probabilities, log_softmax(alpha * cosine similarity), and
linear-probe log-probabilities (reference doc section 6). The baseline runs spherical
k-means (faiss) with n_classes centroids on the raw backbone features of the training
crops and assigns every validation patch to its nearest centroid: the same features,
without the head.

Output Zarr store (written to a temporary folder, then renamed into place):
    cluster_logits  float16 [N, n_clusters, R, R]
    linear_logits   float16 [N, n_classes, R, R]
    cluster_pred    uint8   [N, R, R]
    linear_pred     uint8   [N, R, R]
    kmeans_pred     uint8   [N, R, R]
    image_ids       int64   [N]
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import zarr

from stego_tasks.config import ClusterParams
from stego_tasks.data.feature_store import read_split
from stego_tasks.data.store_integrity import record_store_digests, verify_rows, verify_split
from stego_tasks.method.inference import BATCH, iter_val_codes, kmeans_predict, spherical_kmeans
from stego_tasks.method.model import check_trained_on, load_model
from stego_tasks.runtime import atomic

log = logging.getLogger("stego")


def fit_kmeans(train_feats: zarr.Array, n_clusters: int, params: ClusterParams, seed: int) -> np.ndarray:
    """Spherical k-means centroids of raw training patch features.

    Args:
        train_feats: features [M, C, h, w] of the training crops.
        n_clusters: number of centroids (the corpus' n_classes).
        params: sample budget and iterations.
        seed: the run's seed.

    Returns:
        Unit-norm centroids, float32 [n_clusters, C].
    """
    rng = np.random.default_rng(seed)
    rows, dim, height, width = train_feats.shape
    per_row = height * width
    n_rows = min(rows, max(1, params.kmeans_samples // per_row))
    chosen = np.sort(rng.choice(rows, size=n_rows, replace=False))
    verify_rows(train_feats, chosen)
    vectors = np.asarray(train_feats.get_orthogonal_selection((chosen,)), dtype=np.float32)
    vectors = vectors.transpose(0, 2, 3, 1).reshape(-1, dim)
    if vectors.shape[0] > params.kmeans_samples:
        vectors = vectors[rng.choice(vectors.shape[0], params.kmeans_samples, replace=False)]
    return spherical_kmeans(vectors, n_clusters, params.kmeans_iters, seed, in_place=True)  # its own array


def protocol_of(info: dict) -> dict:
    """The run's protocol facts from `model.json`: selection (and whether it used labels), probe init, shifts."""
    selection = info.get("selection") or {"select": "last", "uses_labels": False}
    return {
        "select": selection.get("select", "last"),
        "uses_labels": bool(selection.get("uses_labels", False)),
        "selection": {k: selection[k] for k in ("best", "last", "refit") if k in selection},
        "probe_init": info.get("probe_init", "random"),
        "shifts": info.get("shifts_used"),
        "shifts_setting": info.get("shifts_setting", "fixed"),
    }


def cluster(store_path: Path, model_dir: Path, out_path: Path, params: ClusterParams, seed: int) -> dict[str, int]:
    """Predict clusters, linear classes and the k-means baseline for the val split.

    Args:
        store_path: features Zarr store.
        model_dir: the train stage's model folder.
        out_path: the predictions Zarr store to write.
        params: flip averaging, probe temperature, k-means budget.
        seed: the run's seed (k-means initialisation and sampling).

    Returns:
        Counts: images and clusters.
    """
    torch.manual_seed(seed)
    model = load_model(model_dir)
    check_trained_on(model.info, dict(zarr.open_group(str(store_path), mode="r").attrs), model_dir, store_path)
    val = read_split(store_path, "val", arrays=[])
    use_flip = params.flip and "feats_flip" in val
    # Only what is read is checked: the val arrays here, the sampled training rows in fit_kmeans.
    verify_split(val, store_path, ["feats", "labels", "image_ids", *(["feats_flip"] if use_flip else [])])
    train_feats = read_split(store_path, "train", arrays=[])["feats"]
    n_images, size = val["labels"].shape[0], val["labels"].shape[1]
    n_classes, n_clusters = model.info["n_classes"], model.cluster_probe.n_clusters
    centroids = fit_kmeans(train_feats, n_classes, params, seed)
    with atomic.atomic_path(out_path) as tmp:
        out = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        arrays = {
            "cluster_logits": out.create_array("cluster_logits", shape=(n_images, n_clusters, size, size), chunks=(1, n_clusters, size, size), dtype="float16"),
            "linear_logits": out.create_array("linear_logits", shape=(n_images, n_classes, size, size), chunks=(1, n_classes, size, size), dtype="float16"),
        }
        for name in ("cluster_pred", "linear_pred", "kmeans_pred"):
            arrays[name] = out.create_array(name, shape=(n_images, size, size), chunks=(BATCH, size, size), dtype="uint8")
        out.create_array("image_ids", data=val["image_ids"][:])
        with torch.no_grad():
            for rows, feats, code in iter_val_codes(model, val, use_flip, size):
                cluster_logits = model.cluster_probe.log_probs(code, params.alpha)
                linear_logits = torch.log_softmax(model.linear_probe(code), dim=1)
                arrays["cluster_logits"][rows] = cluster_logits.numpy().astype(np.float16)
                arrays["linear_logits"][rows] = linear_logits.numpy().astype(np.float16)
                arrays["cluster_pred"][rows] = cluster_logits.argmax(1).numpy().astype(np.uint8)
                arrays["linear_pred"][rows] = linear_logits.argmax(1).numpy().astype(np.uint8)
                arrays["kmeans_pred"][rows] = kmeans_predict(centroids, feats, size).numpy().astype(np.uint8)
        out.attrs["flip"] = use_flip
        out.attrs["alpha"] = params.alpha
        out.attrs["n_clusters"] = n_clusters
        # How the model was chosen and fitted, for evaluate's scores and the report.
        out.attrs["protocol"] = protocol_of(model.info)
        record_store_digests(out)
    log.info("cluster: %d validation images, %d clusters", n_images, n_clusters)
    return {"images": n_images, "clusters": n_clusters}
