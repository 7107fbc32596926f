"""Stage `evaluate`: Hungarian-matched scores, per-class IoU, confusion matrix, overlays.

Methods scored on the validation split, all on the same pixels:
    cluster      cluster probe, Hungarian-matched          (STEGO, no CRF)
    cluster_crf  cluster probe + dense CRF, matched        (STEGO as published)
    linear       linear probe, no matching                 (supervised upper reference)
    linear_crf   linear probe + dense CRF
    kmeans       k-means on the raw backbone features, matched (the baseline)
    named        the cluster map (CRF) named by `cluster_names.yaml`, when some names are class
                 names: the user's naming scored (merges allowed; not Hungarian-matched)

Outputs: `scores.json` (DVC metrics; also records the backbone, whether its weights were
random, what produced it (versions, GPU, git commit) and the label-free signals under
`label_free`, with or without labels), `per_class_iou.json`, `confusion.png` and
`overlays/`; for `dvc plots show` / `dvc plots diff` the confusion as rows of DVC's
`confusion` template and the per-class IoU as a table (`write_plot_data`); and the cluster
gallery (`tools/gallery.py`), whose clusters carry the names of `cluster_names.yaml`.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from PIL import Image

from stego_tasks.config import CorpusParams, EvaluateParams
from stego_tasks.data.feature_store import read_split
from stego_tasks.data.store_integrity import open_store, same_images
from stego_tasks.errors import InvalidInputError
from stego_tasks.method.metrics import METHODS, ScoreAccumulator, mapped_scores
from stego_tasks.runtime import atomic
from stego_tasks.runtime.provenance import provenance
from stego_tasks.tools.cluster_names import ClusterNames, load_names
from stego_tasks.tools.gallery import cluster_entries, collect, label_free_scores, write_gallery
from stego_tasks.tools.visualize import colorize, panel

log = logging.getLogger("stego")

# The confusion for DVC's `confusion` template: one (actual, predicted) row per this share of
# the labelled validation pixels, so the drawn counts are per CONFUSION_ROWS pixels.
CONFUSION_ROWS = 10_000


def _clean(value: float) -> float | None:
    # JSON has no NaN; DVC and browsers choke on it.
    return None if value is None or math.isnan(value) else round(float(value), 4)


def _labels_for_metrics(labels: np.ndarray, corpus: CorpusParams) -> np.ndarray:
    labels = labels.astype(np.int64)
    # The metrics skip values outside [0, n_classes); move an in-range ignore index out.
    return np.where(labels == corpus.ignore_index, -1, labels)


def score_methods(
    stores: dict[str, zarr.Group], labels: zarr.Array, corpus: CorpusParams, n_clusters: int, batch: int = 16
) -> dict[str, dict[str, Any]]:
    """Accumulate every method's confusion over the validation set, batch by batch.

    Args:
        stores: {"cluster": predictions group, "crf": CRF group}.
        labels: uint8 [N, R, R] ground truth.
        corpus: n_classes and ignore index.
        n_clusters: clusters of the cluster probe (n_classes + extra clusters).
        batch: images per batch (memory stays flat in N).

    Returns:
        {method: scores dict from `ScoreAccumulator.compute`}.
    """
    accumulators = {}
    for method, (_label, array, store, matched) in METHODS.items():
        if array in stores[store]:
            clusters = corpus.n_classes if method in ("linear", "linear_crf", "kmeans") else n_clusters
            accumulators[method] = ScoreAccumulator(corpus.n_classes, clusters, matching=matched)
    for start in range(0, labels.shape[0], batch):
        rows = slice(start, start + batch)
        truth = _labels_for_metrics(labels[rows], corpus)
        for method, accumulator in accumulators.items():
            _label, array, store, _ = METHODS[method]
            accumulator.update(stores[store][array][rows].astype(np.int64), truth)
    return {method: accumulator.compute() for method, accumulator in accumulators.items()}


def plot_confusion(confusion: np.ndarray, assignment: np.ndarray, class_names: list[str], path: Path) -> None:
    """Row-normalised confusion (true class x matched cluster) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_classes = confusion.shape[1]
    # Column j of the plot is the cluster matched to class j; unmatched clusters go last.
    order = [int(np.flatnonzero(assignment == j)[0]) if (assignment == j).any() else None for j in range(n_classes)]
    rows = [confusion[c] if c is not None else np.zeros(n_classes) for c in order]
    matrix = np.asarray(rows, dtype=np.float64).T  # [class, matched cluster]
    matrix = matrix / np.clip(matrix.sum(axis=1, keepdims=True), 1, None)
    figure, axis = plt.subplots(figsize=(1.2 + 0.5 * n_classes, 1.0 + 0.5 * n_classes))
    axis.imshow(matrix, cmap="viridis", vmin=0, vmax=1)
    axis.set_xticks(range(n_classes), class_names, rotation=90)
    axis.set_yticks(range(n_classes), class_names)
    axis.set_xlabel("predicted (matched cluster)")
    axis.set_ylabel("true class")
    figure.tight_layout()
    with atomic.atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=80, metadata={"Software": None})
    plt.close(figure)


def scaled_counts(counts: np.ndarray, total: int) -> np.ndarray:
    """Integers proportional to `counts` that sum to `total` (largest remainders; 0 stays 0)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.sum() <= 0:
        return np.zeros(counts.shape, dtype=np.int64)
    exact = counts / counts.sum() * total
    scaled = np.floor(exact).astype(np.int64)
    remainders = (exact - scaled).ravel()
    short = total - int(scaled.sum())
    flat = scaled.ravel()
    flat[np.argsort(-remainders, kind="stable")[:short]] += 1
    return flat.reshape(counts.shape)


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_plot_data(
    confusion: np.ndarray | None, assignment: np.ndarray, class_names: list[str], per_class: dict[str, dict],
    confusion_csv: Path, per_class_csv: Path,
) -> None:
    """The confusion and the per-class IoU as CSV files DVC draws (`dvc plots show`, `dvc plots diff`).

    `confusion_csv` has columns actual, predicted: one row per 1/CONFUSION_ROWS of the
    labelled pixels (cell counts rounded by largest remainders), the prediction named by the
    class its cluster is matched to ("cluster N" when unmatched). `per_class_csv` has one
    row per class and one IoU column per scored method. Without labels both hold a header only.

    Args:
        confusion: [cluster, class] pixel counts of the matched method, or None without labels.
        assignment: cluster -> class index (-1 unmatched).
        class_names: one name per class.
        per_class: {method: {class name: IoU}}.
        confusion_csv, per_class_csv: files to write, atomically.
    """
    rows: list[list[Any]] = []
    if confusion is not None:
        scaled = scaled_counts(confusion, CONFUSION_ROWS)
        for cluster, label in zip(*np.nonzero(scaled), strict=True):
            matched = int(assignment[cluster]) if cluster < len(assignment) else -1
            predicted = class_names[matched] if matched >= 0 else f"cluster {cluster}"
            rows += [[class_names[label], predicted]] * int(scaled[cluster, label])
    atomic.write_text(confusion_csv, _csv_text(["actual", "predicted"], rows))
    methods = list(per_class)
    table = [[name, *(per_class[m].get(name) for m in methods)] for name in class_names] if methods else []
    atomic.write_text(per_class_csv, _csv_text(["class", *methods], table))


def write_overlays(
    out_dir: Path, images: zarr.Array, labels: zarr.Array, predictions: np.ndarray, assignment: np.ndarray,
    corpus: CorpusParams, n: int, has_labels: bool = True,
) -> list[Path]:
    """Image | ground truth | matched prediction panels for the first `n` images (one folder, atomically).

    Without labels a panel is image | prediction (cluster colours): no empty truth tile.

    Returns:
        The written PNG paths.
    """
    lookup = np.where(assignment >= 0, assignment, 255).astype(np.int64)
    written = []
    with atomic.atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for index in range(min(n, images.shape[0])):
            truth = labels[index].astype(np.int64)
            prediction = lookup[predictions[index].astype(np.int64)]
            truth_tile = [colorize(truth, corpus.ignore_index)] if has_labels else []
            picture = panel([images[index], *truth_tile, colorize(prediction, 255)])
            Image.fromarray(picture).save(tmp / f"{index:04d}.png")
            written.append(out_dir / f"{index:04d}.png")
    return written


def _open_predictions(store_path: Path, cluster_path: Path, crf_path: Path) -> dict[str, Any]:
    """The cluster and crf stages' prediction groups, refused unless they predict the store's val images."""
    stores = {
        "cluster": open_store(cluster_path, "cluster", ["cluster_pred", "linear_pred", "kmeans_pred"]),
        "crf": open_store(crf_path, "crf", ["cluster_pred", "linear_pred"]),
    }
    same_images(stores["cluster"], read_split(store_path, "val", arrays=["image_ids"]), cluster_path, store_path)
    if stores["crf"]["cluster_pred"].shape != stores["cluster"]["cluster_pred"].shape:
        raise InvalidInputError(
            f"{crf_path} refines other predictions than {cluster_path} holds; rerun `stego crf` (or `dvc repro`)."
        )
    return stores


def _run_record(store_path: Path, cluster_store: Any, has_labels: bool, n_images: int, preset: str) -> dict[str, Any]:
    """The scores file's record of the run: the features' backbone and preprocessing, the protocol, provenance."""
    root_attrs = dict(zarr.open_group(str(store_path), mode="r").attrs)
    return {
        "has_labels": has_labels,
        "backbone": root_attrs.get("backbone"),
        "backbone_weights": "random" if root_attrs.get("weights_source") == "random" else "pretrained",
        "n_images": n_images,
        "preset": preset,
        "weights_source": root_attrs.get("weights_source"),
        "preprocess": root_attrs.get("preprocess"),
        "protocol": dict(cluster_store.attrs.get("protocol") or {}),
        "provenance": provenance(),  # what produced these numbers: versions, GPU, git commit
    }


def evaluate(
    store_path: Path,
    cluster_path: Path,
    crf_path: Path,
    scores_path: Path,
    per_class_path: Path,
    confusion_path: Path,
    overlays_dir: Path,
    corpus: CorpusParams,
    params: EvaluateParams,
    assignment_path: Path | None = None,
    preset: str = "custom",
    confusion_csv: Path | None = None,
    per_class_csv: Path | None = None,
    gallery_dir: Path | None = None,
    names_path: Path | None = None,
) -> dict[str, Any]:
    """Score all methods and draw the report plots.

    Args:
        store_path: features store (val labels and images).
        cluster_path: the cluster stage's predictions.
        crf_path: the crf stage's refined predictions.
        scores_path, per_class_path: metric JSON files to write.
        confusion_path: confusion-matrix PNG to write.
        overlays_dir: folder of overlay PNGs to write.
        corpus: classes, names, ignore index.
        params: number of overlays.
        assignment_path: JSON to write the Hungarian cluster -> class map of the cluster
            probe to (`cluster_to_class` null without labels); `stego predict` names classes with it.
        preset: the params file's `preset`, recorded in the scores.
        confusion_csv, per_class_csv: the plot data of `write_plot_data` (skipped when None).
        gallery_dir: folder to write the cluster gallery to (None: not written).
        names_path: the names file (`cluster_names.yaml`); its names label the gallery.

    Returns:
        The scores dict written to `scores_path`.
    """
    val = read_split(store_path, "val", arrays=["labels", "images"])
    stores = _open_predictions(store_path, cluster_path, crf_path)
    n_clusters = int(stores["cluster"].attrs["n_clusters"])
    class_names = list(corpus.class_names) or [f"class_{j}" for j in range(corpus.n_classes)]
    labels = val["labels"]
    has_labels = bool(np.any(_labels_for_metrics(labels[:], corpus) >= 0) and np.any(labels[:] < corpus.n_classes))
    # A bad names file is refused before any work.
    names = load_names(names_path, n_clusters) if names_path is not None else ClusterNames(n_clusters)
    scores = _run_record(store_path, stores["cluster"], has_labels, int(labels.shape[0]), preset)
    per_class: dict[str, dict[str, float | None]] = {}
    best_confusion = None
    if not has_labels:
        log.warning("evaluate: the validation images have no labels; writing predictions only")
        assignment = np.arange(n_clusters)
    else:
        assignment, best_confusion = _score_labelled(stores, labels, corpus, class_names, names, scores, per_class)
        plot_confusion(best_confusion, assignment, class_names, confusion_path)
    source = "crf" if "cluster_pred" in stores["crf"] else "cluster"
    final = stores[source]["cluster_pred"]
    write_overlays(overlays_dir, val["images"], labels, final, assignment, corpus, params.n_overlays, has_labels)
    if not has_labels:
        _blank_confusion(confusion_path)
    if confusion_csv is not None and per_class_csv is not None:
        write_plot_data(best_confusion, assignment, class_names, per_class, confusion_csv, per_class_csv)
    stats = _label_free(stores, final, n_clusters, scores)
    if gallery_dir is not None:
        matched = [class_names[c] if c >= 0 else None for c in assignment] if has_labels else None
        entries = cluster_entries(stats, names, matched, params.gallery_examples)
        write_gallery(gallery_dir, val["images"], final, entries,
                      {"n_images": stats.n_images, "has_labels": has_labels, "map": source, "names_file": names.source})
    atomic.write_json(scores_path, scores)
    atomic.write_json(per_class_path, {**per_class, "provenance": scores["provenance"]})
    if assignment_path is not None:
        mapping = [int(c) for c in assignment] if has_labels else None
        atomic.write_json(assignment_path, {"cluster_to_class": mapping, "class_names": class_names if has_labels else [],
                                            "method": "cluster_crf"})
    return scores


def _score_labelled(
    stores: dict[str, Any], labels: Any, corpus: CorpusParams, class_names: list[str], names: ClusterNames,
    scores: dict[str, Any], per_class: dict[str, dict[str, float | None]],
) -> tuple[np.ndarray, np.ndarray]:
    """Score every method against the labels into `scores` and `per_class` (and the user's naming).

    Returns:
        The best map's Hungarian assignment [K] (cluster -> class) and its confusion matrix.
    """
    results = score_methods(stores, labels, corpus, int(stores["cluster"].attrs["n_clusters"]))
    for method, result in results.items():
        scores[method] = {"accuracy": _clean(result["accuracy"]), "miou": _clean(result["miou"])}
        per_class[method] = {name: _clean(v) for name, v in zip(class_names, result["iou"], strict=True)}
    best = results["cluster_crf"] if "cluster_crf" in results else results["cluster"]
    named = _named_scores(best["confusion"], names, class_names)
    if named is not None:
        scores["named"] = named
    log.info(
        "evaluate: cluster mIoU %.1f (crf %.1f), k-means baseline %.1f, linear %.1f",
        *(scores.get(m, {}).get("miou") or float("nan") for m in ("cluster", "cluster_crf", "kmeans", "linear")),
    )
    return best["assignment"], best["confusion"]


def _label_free(stores: dict[str, Any], final: Any, n_clusters: int, scores: dict[str, Any]) -> Any:
    """Add the label-free signals of the final map to `scores`; return their statistics (for the gallery)."""
    cluster_store = stores["cluster"]
    stats = collect(final, cluster_store.get("cluster_logits"), cluster_store["cluster_pred"],
                    cluster_store.get("kmeans_pred"), n_clusters)
    scores["label_free"] = label_free_scores(stats)
    log.info("evaluate: label-free %s", scores["label_free"])
    return stats


def _named_scores(confusion: np.ndarray, names: ClusterNames, class_names: list[str]) -> dict[str, Any] | None:
    """The user's naming scored against the labels: clusters named like a class predict it (merges allowed).

    None when no name in the names file is a class name. Clusters with other names, unnamed
    or ignored ones predict no class, so their pixels count as errors.
    """
    index = {name: j for j, name in enumerate(class_names)}
    mapping = np.array([index.get(names.names.get(c, ""), -1) if c not in names.ignore else -1
                        for c in range(confusion.shape[0])])
    if not (mapping >= 0).any():
        return None
    result = mapped_scores(confusion, mapping)
    return {"accuracy": _clean(result["accuracy"]), "miou": _clean(result["miou"]),
            "named_clusters": int((mapping >= 0).sum())}


def _blank_confusion(path: Path) -> None:
    # DVC expects every declared output; without labels there is no matrix to draw.
    with atomic.atomic_path(path, suffix=".png") as tmp:
        Image.new("RGB", (200, 40), "white").save(tmp)
