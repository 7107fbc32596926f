"""Stable import path of the segmentation scores (public API); the code is `stego_tasks.method.metrics`."""

from stego_tasks.method.metrics import (
    ScoreAccumulator,
    confusion_matrix,
    hungarian_assignment,
    scores_from_confusion,
    unsupervised_scores,
)

__all__ = ["ScoreAccumulator", "confusion_matrix", "hungarian_assignment", "scores_from_confusion", "unsupervised_scores"]
