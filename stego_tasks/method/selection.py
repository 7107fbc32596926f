"""Checkpoint selection and probe refitting, the two post-hoc choices a training run can make.

- `ValScorer` computes the cluster probe's Hungarian mIoU on the labelled val split, as the
  reference's `validation_step` does every `val_freq` = 100 steps (code upsampled
  bilinearly to the label grid, no flip, no CRF). `train.select: best` keeps the head and
  probes of the best such step; that choice **uses labels**, so it is recorded as such.
- `refit_cluster_probe` replaces the probe learned from randn centroids beside the head
  (some centroids never win a pixel) by one fitted on the final codes from data, with
  restarts (`train.probe_init: codes`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import zarr
from torch.nn import functional as F

from stego_tasks.errors import InvalidInputError
from stego_tasks.method.head import ClusterProbe, SegmentationHead
from stego_tasks.method.metrics import ScoreAccumulator
from stego_tasks.method.probe_fit import best_cluster_probe

# At most this many training crops' codes are held for the refit: [M, D, h, w] float32
# codes of a CocoStuff-sized split would not fit in memory, and a k-means on a few
# thousand crops' pixels is already stable.
REFIT_MAX_CROPS = 2048


class ValScorer:
    """Cluster mIoU of a head + probe on the val split.

    Features stay as stored (float16) and are widened per batch: a split up to
    ``in_memory_bytes`` is read once, a larger one (CocoStuff's val at 320 px
    is about 6 GiB) is read batch by batch at each scoring, so memory does not grow with it.

    Args:
        val: the store's val group (feats [N, C, h, w], labels [N, R, R]).
        n_classes: classes of the corpus; labels outside [0, n_classes) are not counted.
        device: where the head runs.
        in_memory_bytes: the largest feature array held in memory (the train stage passes
            `training_data.IN_MEMORY_BYTES`, the same budget its training split gets).
        batch: val images scored per head call.
    """

    def __init__(
        self, val: zarr.Group, n_classes: int, device: torch.device, *, in_memory_bytes: int, batch: int = 16
    ) -> None:
        feats = val["feats"]
        held = feats.nbytes <= in_memory_bytes
        self.feats: np.ndarray | zarr.Array = np.asarray(feats[:]) if held else feats
        self.labels = np.asarray(val["labels"][:])
        self.n_classes = n_classes
        self.device = device
        self.batch = batch
        if not ((self.labels >= 0) & (self.labels < n_classes)).any():
            raise InvalidInputError(
                "train.select: best scores checkpoints on labelled val images, but the val split has no valid "
                "labels; set train.select: last or add labels/val."
            )

    def feature_batch(self, start: int) -> torch.Tensor:
        """float32 features [b, C, h, w] of val rows `start` to `start + batch`."""
        return torch.from_numpy(np.asarray(self.feats[start : start + self.batch])).float()

    @torch.no_grad()
    def score(self, head: SegmentationHead, probe: ClusterProbe) -> dict[str, float]:
        """{"miou", "accuracy"} in percent; the modules' train/eval mode is restored after."""
        modes = head.training, probe.training
        head.eval(), probe.eval()
        accumulator = ScoreAccumulator(self.n_classes, probe.n_clusters)
        size = self.labels.shape[-1]
        for start in range(0, self.feats.shape[0], self.batch):
            code = head(self.feature_batch(start).to(self.device))
            code = F.interpolate(code, size=(size, size), mode="bilinear", align_corners=False)
            accumulator.update(probe.predict(code).cpu().numpy(), self.labels[start : start + self.batch])
        head.train(modes[0]), probe.train(modes[1])
        scores = accumulator.compute()
        return {"miou": float(scores["miou"]), "accuracy": float(scores["accuracy"])}


class BestCheckpoint:
    """Scores the model at the steps it is shown and keeps a copy of the best one's weights.

    Args:
        scorer: the val scorer.
    """

    def __init__(self, scorer: ValScorer) -> None:
        self.scorer = scorer
        self.history: list[dict[str, float]] = []
        self.best_state: dict[str, dict[str, torch.Tensor]] | None = None
        self.best: dict[str, float] | None = None

    def observe(self, step: int, model: Any) -> None:
        """Score `model` (a `train.StegoModel`) after `step` steps; keep it if it beats the best (ties: earlier)."""
        scores = {"step": step, **self.scorer.score(model.head, model.cluster_probe)}
        self.history.append(scores)
        if self.best is None or scores["miou"] > self.best["miou"]:
            self.best = scores
            self.best_state = {k: {n: t.detach().clone() for n, t in m.state_dict().items()} for k, m in model.modules().items()}

    def restore(self, model: Any) -> None:
        """Load the best weights into `model` and record the choice in `model.info["selection"]`."""
        if self.best is None or self.best_state is None:
            return
        last = self.history[-1]
        for key, module in model.modules().items():
            module.load_state_dict(self.best_state[key])
        model.info["selection"] = {
            "select": "best", "uses_labels": True, "best": self.best, "last": last, "history": self.history,
        }


def sample_rows(size: int, limit: int, seed: int) -> np.ndarray:
    """Sorted row indices of at most `limit` of `size` rows, drawn by `seed` (all rows when few)."""
    if size <= limit:
        return np.arange(size)
    return np.sort(np.random.default_rng([seed, 7]).choice(size, limit, replace=False))


@torch.no_grad()
def training_codes(head: SegmentationHead, feature_rows: Any, rows: np.ndarray, batch: int = 64) -> torch.Tensor:
    """float32 codes [len(rows), D, h, w] of training crops, head in eval mode.

    Args:
        head: the trained head.
        feature_rows: callable giving stored features [b, C, h, w] of row indices.
        rows: the crops to encode.
        batch: crops per forward.
    """
    head.eval()
    device = next(head.parameters()).device
    parts = [head(feature_rows(rows[i : i + batch]).float().to(device)).cpu() for i in range(0, len(rows), batch)]
    return torch.cat(parts)


def refit_cluster_probe(
    head: SegmentationHead, feature_rows: Any, size: int, n_clusters: int, params: Any, seed: int
) -> ClusterProbe:
    """A cluster probe fitted on the final codes from data, the best of `params.probe_restarts`.

    Args:
        head: the trained head.
        feature_rows: callable giving stored features of row indices (`TrainingData.feature_rows`).
        size: training rows M.
        n_clusters: centroids (n_classes + extra_clusters).
        params: the `train` block (steps, batch_size, probe_lr, probe_restarts).
        seed: the run's seed.

    Returns:
        The refitted probe (eval mode, CPU).
    """
    codes = training_codes(head, feature_rows, sample_rows(size, REFIT_MAX_CROPS, seed))
    return best_cluster_probe(
        codes, n_clusters, restarts=params.probe_restarts, steps=params.steps, batch_size=params.batch_size,
        lr=params.probe_lr, seed=seed, init="codes",
    )
