"""Tests for stego_tasks.evaluate: scores against a brute-force matching, ignore labels, reports.

The features, predictions and CRF stores are written here by hand, so every expected number
comes from a naive count over pixels and a search over all cluster-to-class matchings.
"""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from stego_tasks.config import CorpusParams, EvaluateParams
from stego_tasks.evaluate import evaluate
from stego_tasks.method.metrics import METHODS
from stego_tasks.tools.visualize import palette

N_IMAGES, SIZE = 5, 8


def _noisy(labels: np.ndarray, mapping: np.ndarray, n_ids: int, rng, keep: float) -> np.ndarray:
    """Predictions: `mapping[label]` on a `keep` fraction of pixels, random ids elsewhere."""
    pred = mapping[np.clip(labels, 0, len(mapping) - 1)]
    noise = rng.random(labels.shape) > keep
    pred[noise] = rng.integers(0, n_ids, int(noise.sum()))
    return pred.astype(np.uint8)


def _write_stores(tmp: Path, corpus: CorpusParams, n_clusters: int, weights_source: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = corpus.n_classes
    labels = rng.integers(0, n, (N_IMAGES, SIZE, SIZE))
    labels[:, :2, :] = corpus.ignore_index  # ignored pixels, whatever is predicted there
    labels = labels.astype(np.uint8)
    features = zarr.open_group(str(tmp / "features.zarr"), mode="w", zarr_format=3)
    features.attrs.update({"backbone": "vit_tiny_patch16_224", "weights_source": weights_source, "resolution": SIZE})
    val = features.create_group("val")
    val.create_array("labels", data=labels)
    val.create_array("images", data=rng.integers(0, 256, (N_IMAGES, SIZE, SIZE, 3), dtype=np.uint8))
    val.create_array("done", data=np.ones(1, dtype=bool))
    cluster_map = rng.permutation(n_clusters)[:n]  # class j -> cluster cluster_map[j]
    preds = {
        "cluster": {
            "cluster_pred": _noisy(labels, cluster_map, n_clusters, rng, 0.7),
            "linear_pred": _noisy(labels, np.arange(n), n, rng, 0.6),
            "kmeans_pred": _noisy(labels, rng.permutation(n), n, rng, 0.4),
        },
        "crf": {
            "cluster_pred": _noisy(labels, cluster_map, n_clusters, rng, 0.8),
            "linear_pred": _noisy(labels, np.arange(n), n, rng, 0.75),
        },
    }
    for name, arrays in preds.items():
        group = zarr.open_group(str(tmp / f"{name}.zarr"), mode="w", zarr_format=3)
        for array, values in arrays.items():
            group.create_array(array, data=values)
        if name == "cluster":
            group.attrs["n_clusters"] = n_clusters
    return labels, preds


def _brute_force(pred: np.ndarray, labels: np.ndarray, corpus: CorpusParams, n_ids: int, matched: bool):
    """Accuracy, mIoU (percent), per-class IoU and class -> id map, by exhaustive search."""
    n = corpus.n_classes
    valid = (labels != corpus.ignore_index) & (labels < n)
    p, t = pred[valid].astype(int), labels[valid].astype(int)

    def tp_of(mapping):
        return [int(((p == mapping[j]) & (t == j)).sum()) for j in range(n)]

    if matched:
        mapping = max(itertools.permutations(range(n_ids), n), key=lambda m: sum(tp_of(m)))
    else:
        mapping = tuple(range(n))
    tps = tp_of(mapping)
    ious = []
    for j in range(n):
        union = int((t == j).sum()) + int((p == mapping[j]).sum()) - tps[j]
        ious.append(float("nan") if union == 0 else tps[j] / union)
    return 100 * sum(tps) / t.size, 100 * float(np.nanmean(ious)), ious, mapping


def _run(tmp: Path, corpus: CorpusParams, n_overlays: int = 2) -> tuple[dict, dict, Path]:
    out = tmp / "reports"
    scores = evaluate(
        tmp / "features.zarr", tmp / "cluster.zarr", tmp / "crf.zarr", out / "scores.json", out / "per_class_iou.json",
        out / "confusion.png", out / "overlays", corpus, EvaluateParams(n_overlays=n_overlays),
        out / "assignment.json", confusion_csv=out / "confusion.csv", per_class_csv=out / "per_class_iou.csv",
    )
    on_disk = json.loads((out / "scores.json").read_text())
    assert on_disk == scores, "scores.json differs from the returned scores"
    return on_disk, json.loads((out / "per_class_iou.json").read_text()), out


CASES = {
    # name: (n_classes, ignore_index, extra clusters)
    "ignore-255-extra-cluster": (4, 255, 1),
    "camvid-void-equals-n-classes": (4, 4, 0),
    "ignore-inside-class-range": (4, 3, 0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_scores_equal_a_brute_force_matching(tmp_path, case):
    n_classes, ignore, extra = CASES[case]
    names = ("sky", "grass", "road", "water")
    corpus = CorpusParams(root="unused", n_classes=n_classes, ignore_index=ignore, class_names=names)
    labels, preds = _write_stores(tmp_path, corpus, n_classes + extra, "random")
    scores, per_class, _ = _run(tmp_path, corpus)

    assert scores["backbone"] == "vit_tiny_patch16_224", f"backbone {scores['backbone']}"
    assert scores["backbone_weights"] == "random", f"backbone_weights {scores['backbone_weights']}"
    assert scores["n_images"] == N_IMAGES, f"n_images {scores['n_images']}"
    assert set(per_class) == set(METHODS) | {"provenance"}, f"methods {sorted(per_class)}"
    assert per_class["provenance"] == scores["provenance"], "both metrics files name what produced them"
    with (tmp_path / "reports" / "per_class_iou.csv").open() as handle:
        plotted = list(csv.DictReader(handle))
    assert [row["class"] for row in plotted] == list(names[:n_classes]), "one plot row per class"
    for row in plotted:
        for method in METHODS:
            want = per_class[method][row["class"]]
            assert (row[method] == "" if want is None else float(row[method]) == want), f"plot {method}/{row['class']}"
    for method, (_label, array, store, matched) in METHODS.items():
        n_ids = n_classes + extra if method.startswith("cluster") else n_classes
        accuracy, miou, ious, _ = _brute_force(preds[store][array], labels, corpus, n_ids, matched)
        assert scores[method]["accuracy"] == pytest.approx(accuracy, abs=1e-4), f"{method} accuracy"
        assert scores[method]["miou"] == pytest.approx(miou, abs=1e-4), f"{method} mIoU"
        assert set(per_class[method]) == set(names), f"{method} class names {list(per_class[method])}"
        for name, want in zip(names, ious, strict=True):
            got = per_class[method][name]
            if np.isnan(want):
                assert got is None, f"{method}/{name}: NaN IoU must be written as null, got {got}"
            else:
                assert got == pytest.approx(want, abs=1e-4), f"{method}/{name} IoU {got} != {want}"
    # The written assignment is a matching as good as the exhaustive one (ties may differ).
    assignment = json.loads((tmp_path / "reports" / "assignment.json").read_text())
    mapping = np.asarray(assignment["cluster_to_class"])
    assert mapping.shape == (n_classes + extra,), f"one entry per cluster, got {mapping.shape}"
    assert sorted(mapping[mapping >= 0].tolist()) == list(range(n_classes)), f"not a matching: {mapping}"
    assert assignment["class_names"] == list(names), f"class names {assignment['class_names']}"
    pred, valid = preds["crf"]["cluster_pred"], (labels != ignore) & (labels < n_classes)
    tp = int((mapping[pred[valid].astype(int)] == labels[valid]).sum())
    best_accuracy, _, _, _ = _brute_force(pred, labels, corpus, n_classes + extra, True)
    assert 100 * tp / valid.sum() == pytest.approx(best_accuracy, abs=1e-6), "assignment is not an optimal matching"


def test_ignored_pixels_do_not_count(tmp_path):
    corpus = CorpusParams(root="unused", n_classes=4, ignore_index=255)
    labels, preds = _write_stores(tmp_path, corpus, 4, "random")
    before, _, _ = _run(tmp_path, corpus)
    group = zarr.open_group(str(tmp_path / "cluster.zarr"), mode="a")
    changed = group["cluster_pred"][:]
    changed[labels == 255] = (changed[labels == 255] + 1) % 4  # other predictions on ignored pixels only
    group["cluster_pred"][:] = changed
    after, _, _ = _run(tmp_path, corpus)
    assert after["cluster"] == before["cluster"], f"ignored pixels changed the scores: {before} -> {after}"
    assert list(zarr.open_group(str(tmp_path / "cluster.zarr"))["cluster_pred"][:].ravel()) != list(
        preds["cluster"]["cluster_pred"].ravel()
    ), "the predictions were not changed: test is vacuous"


def test_pretrained_weights_are_recorded_as_pretrained(tmp_path):
    corpus = CorpusParams(root="unused", n_classes=4, ignore_index=255)
    _write_stores(tmp_path, corpus, 4, "hub-cache")
    scores, per_class, _ = _run(tmp_path, corpus)
    assert scores["backbone_weights"] == "pretrained", f"backbone_weights {scores['backbone_weights']}"
    assert set(per_class["cluster"]) == {f"class_{j}" for j in range(4)}, "default class names"


def test_confusion_plot_and_overlays_are_written_and_decodable(tmp_path):
    corpus = CorpusParams(root="unused", n_classes=4, ignore_index=255)
    labels, preds = _write_stores(tmp_path, corpus, 5, "random")
    _, _, out = _run(tmp_path, corpus, n_overlays=3)
    with Image.open(out / "confusion.png") as image:
        image.load()
        assert image.format == "PNG" and min(image.size) > 50, f"confusion plot {image.format} {image.size}"
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == ["0000.png", "0001.png", "0002.png"], f"overlays {overlays}"
    images = zarr.open_group(str(tmp_path / "features.zarr"))["val"]["images"][:]
    crf = preds["crf"]["cluster_pred"]
    _, _, _, mapping = _brute_force(crf, labels, corpus, 5, matched=True)  # overlays show the CRF clusters
    to_class = np.full(256, 255)
    to_class[list(mapping)] = np.arange(4)
    colours = palette()
    for index, name in enumerate(overlays):
        picture = np.asarray(Image.open(out / "overlays" / name).convert("RGB"))
        assert picture.shape == (SIZE, 3 * SIZE + 2 * 4, 3), f"{name} shape {picture.shape}"
        image, truth, predicted = (picture[:, k * (SIZE + 4) : k * (SIZE + 4) + SIZE] for k in range(3))
        assert np.array_equal(image, images[index]), f"{name}: left tile is not the image"
        want_truth = np.where((labels[index] == 255)[..., None], 0, colours[labels[index]])
        assert np.array_equal(truth, want_truth), f"{name}: middle tile is not the coloured ground truth"
        matched = to_class[crf[index]]
        want_pred = np.where((matched == 255)[..., None], 0, colours[np.minimum(matched, 255)])
        assert np.array_equal(predicted, want_pred), f"{name}: right tile is not the matched prediction"


def test_unlabelled_validation_set_writes_predictions_only(tmp_path):
    corpus = CorpusParams(root="unused", n_classes=4, ignore_index=255)
    _write_stores(tmp_path, corpus, 4, "random")
    group = zarr.open_group(str(tmp_path / "features.zarr"), mode="a")["val"]
    group["labels"][:] = 255
    scores, per_class, out = _run(tmp_path, corpus)
    assert set(scores) == {"backbone", "backbone_weights", "n_images", "preset", "weights_source", "preprocess", "protocol",
                           "provenance", "has_labels", "label_free"}, f"scores without labels {scores}"
    assert scores["has_labels"] is False, "a run without labels must say so"
    assert per_class == {"provenance": scores["provenance"]}, f"per-class IoU without labels {per_class}"
    assert (out / "confusion.csv").read_text() == "actual,predicted\n", "no labels: a confusion plot without rows"
    assignment = json.loads((out / "assignment.json").read_text())
    assert assignment["cluster_to_class"] is None, f"no labels, no assignment: {assignment}"
    with Image.open(out / "confusion.png") as image:
        image.load()
    assert len(list((out / "overlays").iterdir())) == 2, "overlays must still be drawn"
    assert assignment["class_names"] == [], f"no labels, no class names (the params' may be the demo's): {assignment}"
    with Image.open(out / "overlays" / "0000.png") as picture:
        # image | clusters: no black ground-truth tile between them.
        assert picture.size == (2 * SIZE + 4, SIZE), f"overlay without labels is {picture.size}"
