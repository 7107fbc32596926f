"""Segmentation scores: Hungarian-matched (unsupervised) and direct (linear probe, `ScoreAccumulator(matching=False)`).

All scores come from one histogram ``confusion[cluster, class]`` of pixel counts over
pixels whose label lies in [0, n_classes) (reference doc section 8). Scores for class j:

* tp_j = pixels of class j predicted as the cluster assigned to j,
* iou_j = tp_j / (pixels of class j + pixels in j's cluster - tp_j),
* mIoU = 100 * mean of the non-NaN iou_j, accuracy = 100 * sum(tp) / all counted pixels.

With as many clusters as classes these are exactly the reference's numbers (its
``histogram = stats[argsort(col_ind)]``, tp = diag, fp / fn = column / row sums - tp).

Difference from the reference with extra clusters (n_clusters > n_classes): the reference
drops every pixel predicted as a cluster id >= n_classes before counting. Here every pixel
with a valid label counts: a pixel in a cluster left unmatched by the Hungarian step is an
error, so it lowers its true class's IoU and stays in the accuracy denominator.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from stego_tasks.errors import InvalidInputError


class ScoredMethod(NamedTuple):
    """One way a run predicts classes, as evaluate scores it and the tables show it."""

    label: str  # its words in tables (the report, the end-of-run summary, `stego seeds`)
    array: str  # the prediction array in the store below
    store: str  # "cluster" (artifacts/predictions.zarr) or "crf" (artifacts/crf.zarr)
    matched: bool  # Hungarian-matched to the labels (unsupervised) or scored directly (linear probe)


# The methods a run scores, in table order: the one list the evaluate stage, the report, the
# end-of-run table, `stego seeds` and the Prefect artifacts read.
METHODS: dict[str, ScoredMethod] = {
    "cluster": ScoredMethod("cluster", "cluster_pred", "cluster", True),
    "cluster_crf": ScoredMethod("cluster + CRF", "cluster_pred", "crf", True),
    "linear": ScoredMethod("linear", "linear_pred", "cluster", False),
    "linear_crf": ScoredMethod("linear + CRF", "linear_pred", "crf", False),
    "kmeans": ScoredMethod("k-means baseline", "kmeans_pred", "cluster", True),
}


def _as_int_array(values: Any, name: str) -> np.ndarray:
    """Flatten an int array-like (np.ndarray or CPU tensor) to 1-D, rejecting floats."""
    arr = np.asarray(values)
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise InvalidInputError(
            f"{name} must hold integer ids, got dtype {arr.dtype}; take the argmax first."
        )
    return arr.reshape(-1)


def confusion_matrix(
    preds: np.ndarray, labels: np.ndarray, n_classes: int, n_clusters: int | None = None
) -> np.ndarray:
    """Histogram of predicted cluster against true class over validly labelled pixels.

    Args:
        preds: Predicted cluster ids, any shape, int, each in [0, n_clusters).
        labels: True class ids, same shape as ``preds``, int. Values outside
            [0, n_classes) (for example an ignore index such as 255 or -1) are skipped.
        n_classes: Number of true classes.
        n_clusters: Number of predicted ids; defaults to ``n_classes``.

    Returns:
        np.ndarray int64 of shape [n_clusters, n_classes]; entry [c, j] counts pixels
        predicted as c whose label is j.

    Raises:
        ValueError: On mismatched shapes, float inputs, non-positive sizes, or a
            prediction outside [0, n_clusters).
    """
    n_clusters = n_classes if n_clusters is None else n_clusters
    if n_classes < 1 or n_clusters < 1:
        raise InvalidInputError(
            f"need n_classes >= 1 and n_clusters >= 1, got {n_classes} and {n_clusters}."
        )
    if np.shape(preds) != np.shape(labels):
        raise InvalidInputError(
            f"preds shape {np.shape(preds)} differs from labels shape {np.shape(labels)}."
        )
    p = _as_int_array(preds, "preds").astype(np.int64)
    t = _as_int_array(labels, "labels").astype(np.int64)
    if p.size and (p.min() < 0 or p.max() >= n_clusters):
        raise InvalidInputError(
            f"preds hold ids in [{p.min()}, {p.max()}] but n_clusters={n_clusters}; "
            "set n_clusters to the number of clusters the model predicts."
        )
    valid = (t >= 0) & (t < n_classes)
    flat = np.bincount(p[valid] * n_classes + t[valid], minlength=n_clusters * n_classes)
    return flat.reshape(n_clusters, n_classes).astype(np.int64)


def hungarian_assignment(confusion: np.ndarray) -> np.ndarray:
    """Match clusters to classes one-to-one, maximising the matched pixel count.

    Args:
        confusion: Histogram of shape [n_clusters, n_classes].

    Returns:
        np.ndarray int64 of shape [n_clusters]: the class matched to each cluster, or -1
        for clusters left unmatched (when there are more clusters than classes).
    """
    rows, cols = linear_sum_assignment(confusion, maximize=True)
    assignment = np.full(confusion.shape[0], -1, dtype=np.int64)
    assignment[rows] = cols
    return assignment


def scores_from_confusion(confusion: np.ndarray, assignment: np.ndarray) -> dict[str, Any]:
    """Accuracy and IoU from a histogram and a cluster-to-class assignment.

    Args:
        confusion: Histogram of shape [n_clusters, n_classes], int.
        assignment: Class of each cluster, shape [n_clusters], -1 for unmatched clusters;
            each class appears at most once.

    Returns:
        Dict with ``accuracy`` and ``miou`` (float, percent; NaN when no pixel was
        counted), ``iou`` (float64 [n_classes], NaN for a class with no pixels and no
        matched predictions), ``assignment`` (int64 [n_clusters]) and ``confusion``
        (int64 [n_clusters, n_classes]).
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    assignment = np.asarray(assignment, dtype=np.int64)
    n_classes = confusion.shape[1]
    matched = assignment >= 0
    assert len(set(assignment[matched].tolist())) == int(matched.sum()), "class matched twice"

    # Row j of `ordered` is the cluster matched to class j (zeros when j has none).
    ordered = np.zeros((n_classes, n_classes), dtype=np.int64)
    ordered[assignment[matched]] = confusion[matched]
    tp = np.diag(ordered).astype(np.float64)
    class_pixels = confusion.sum(axis=0).astype(np.float64)  # includes unmatched clusters
    cluster_pixels = ordered.sum(axis=1).astype(np.float64)
    total = float(confusion.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (class_pixels + cluster_pixels - tp)
    present = ~np.isnan(iou)
    return {
        "accuracy": 100.0 * float(tp.sum()) / total if total > 0 else float("nan"),
        "miou": 100.0 * float(iou[present].mean()) if present.any() else float("nan"),
        "iou": iou,
        "assignment": assignment,
        "confusion": confusion,
    }


def unsupervised_scores(
    preds: np.ndarray, labels: np.ndarray, n_classes: int, n_clusters: int | None = None
) -> dict[str, Any]:
    """Hungarian-matched accuracy and mIoU of a clustering against true labels.

    With n_clusters == n_classes this gives the reference's numbers. With extra clusters,
    pixels in clusters left unmatched count as errors (the reference drops them); see the
    module docstring.

    Args:
        preds: Predicted cluster ids, any shape, int in [0, n_clusters).
        labels: True class ids, same shape; values outside [0, n_classes) are ignored.
        n_classes: Number of true classes.
        n_clusters: Number of clusters; defaults to ``n_classes``.

    Returns:
        Dict as from :func:`scores_from_confusion`: ``accuracy``, ``miou`` (percent),
        ``iou`` [n_classes], ``assignment`` [n_clusters] (-1 = unmatched) and
        ``confusion`` [n_clusters, n_classes].

    Raises:
        ValueError: As :func:`confusion_matrix`.
    """
    confusion = confusion_matrix(preds, labels, n_classes, n_clusters)
    return scores_from_confusion(confusion, hungarian_assignment(confusion))


def _identity_assignment(n_clusters: int, n_classes: int) -> np.ndarray:
    """Cluster i is class i; ids beyond the classes are unmatched."""
    ids = np.arange(n_clusters, dtype=np.int64)
    return np.where(ids < n_classes, ids, -1)


class ScoreAccumulator:
    """Accumulates the confusion histogram batch by batch, scores it at the end.

    Accumulating batches and calling :meth:`compute` equals scoring the concatenation of
    all batches at once, because the matching is done once on the summed histogram.

    Args:
        n_classes: Number of true classes.
        n_clusters: Number of predicted ids; defaults to ``n_classes``.
        matching: True for Hungarian matching (cluster probe), False to use ids as
            classes directly (linear probe; ids >= n_classes then count as errors).
    """

    def __init__(
        self, n_classes: int, n_clusters: int | None = None, matching: bool = True
    ) -> None:
        self.n_classes = n_classes
        self.n_clusters = n_classes if n_clusters is None else n_clusters
        self.matching = matching
        # Validates the sizes once, up front.
        self.confusion = confusion_matrix(
            np.zeros(0, np.int64), np.zeros(0, np.int64), n_classes, self.n_clusters
        )

    def update(self, preds: np.ndarray, labels: np.ndarray) -> None:
        """Add one batch.

        Args:
            preds: Predicted ids, any shape, int in [0, n_clusters).
            labels: True class ids, same shape; values outside [0, n_classes) ignored.
        """
        self.confusion += confusion_matrix(preds, labels, self.n_classes, self.n_clusters)

    def compute(self) -> dict[str, Any]:
        """Scores of everything added since the last reset.

        Returns:
            Dict as from :func:`scores_from_confusion` (a copy of the histogram).
        """
        confusion = self.confusion.copy()
        if self.matching:
            assignment = hungarian_assignment(confusion)
        else:
            assignment = _identity_assignment(self.n_clusters, self.n_classes)
        return scores_from_confusion(confusion, assignment)

    def reset(self) -> None:
        """Forget all batches added so far."""
        self.confusion[:] = 0


def mapped_scores(confusion: np.ndarray, cluster_to_class: np.ndarray) -> dict[str, Any]:
    """Accuracy and IoU when clusters map to classes by a given table, several clusters to one class allowed.

    For a user's naming (`cluster_names.yaml`) rather than the Hungarian one-to-one match:
    class j's prediction is the union of the clusters mapped to j; a cluster mapped to no
    class (-1, or any value outside [0, n_classes)) predicts nothing, so its pixels are errors.

    Args:
        confusion: Histogram [n_clusters, n_classes], int.
        cluster_to_class: Class of each cluster [n_clusters].

    Returns:
        Dict with ``accuracy`` and ``miou`` (percent) and ``iou`` [n_classes], as
        :func:`scores_from_confusion`.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    n_classes = confusion.shape[1]
    merged = np.zeros((n_classes, n_classes), dtype=np.int64)  # [predicted class, true class]
    for cluster, target in enumerate(np.asarray(cluster_to_class).tolist()):
        if 0 <= target < n_classes:
            merged[target] += confusion[cluster]
    tp = np.diag(merged).astype(np.float64)
    total = float(confusion.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (confusion.sum(axis=0) + merged.sum(axis=1) - tp)
    present = ~np.isnan(iou)
    return {
        "accuracy": 100.0 * float(tp.sum()) / total if total > 0 else float("nan"),
        "miou": 100.0 * float(iou[present].mean()) if present.any() else float("nan"),
        "iou": iou,
    }
