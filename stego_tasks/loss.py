"""Stable import path of the correspondence loss (public API); the code is `stego_tasks.method.loss`."""

from stego_tasks.method.loss import (
    CorrespondenceTerms,
    correspondence_loss,
    feature_correlations,
    random_derangements,
)

__all__ = ["CorrespondenceTerms", "correspondence_loss", "feature_correlations", "random_derangements"]
