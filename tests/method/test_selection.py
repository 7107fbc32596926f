"""Tests for stego_tasks.method.selection: best-checkpoint selection on val, and the probe refit from codes."""

from __future__ import annotations

import numpy as np
import torch
import zarr

from stego_tasks.config import TrainParams
from stego_tasks.method.head import ClusterProbe, SegmentationHead
from stego_tasks.method.model import build_model
from stego_tasks.method.selection import BestCheckpoint, ValScorer, refit_cluster_probe


class _Scripted:
    """A scorer that returns the given mIoUs in turn."""

    def __init__(self, values: list[float]) -> None:
        self.values = iter(values)

    def score(self, head, probe) -> dict[str, float]:
        return {"miou": next(self.values), "accuracy": 0.0}


def test_best_checkpoint_keeps_the_weights_of_the_best_step() -> None:
    model = build_model(4, 2, TrainParams(n_codes=3))
    selector = BestCheckpoint(_Scripted([10.0, 30.0, 20.0]))
    snapshots = []
    for step in (100, 200, 300):
        with torch.no_grad():
            for param in model.head.parameters():
                param.add_(1.0)
        snapshots.append({k: v.clone() for k, v in model.head.state_dict().items()})
        selector.observe(step, model)
    selector.restore(model)
    for key, value in model.head.state_dict().items():
        assert torch.equal(value, snapshots[1][key]), f"{key}: not the weights of step 200"
    selection = model.info["selection"]
    assert selection["best"]["step"] == 200 and selection["last"]["step"] == 300
    assert selection["uses_labels"] is True and [h["miou"] for h in selection["history"]] == [10.0, 30.0, 20.0]


def _val_group(feats: np.ndarray, labels: np.ndarray) -> zarr.Group:
    group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    group.create_array("feats", data=feats)
    group.create_array("labels", data=labels)
    return group


def test_val_scorer_scores_a_probe_that_recovers_the_labels_at_100() -> None:
    # Two classes whose features point along e0 and e1; an identity head maps them to codes
    # along e0 / e1, and centroids there recover the labels under any cluster permutation.
    labels = np.zeros((4, 8, 8), np.uint8)
    labels[:, :, 4:] = 1
    feats = np.zeros((4, 2, 8, 8), np.float32)
    feats[:, 0, :, :4] = 1.0
    feats[:, 1, :, 4:] = 1.0
    head = SegmentationHead(2, 2, dropout=0.0)
    probe = ClusterProbe(2, 2)
    with torch.no_grad():
        for param in head.parameters():
            param.zero_()
        head.linear.weight.copy_(torch.eye(2)[:, :, None, None])  # code = features
        probe.clusters.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # cluster 0 = class 1, cluster 1 = class 0
    scorer = ValScorer(_val_group(feats, labels), n_classes=2, device=torch.device("cpu"), in_memory_bytes=1 << 30)
    scores = scorer.score(head, probe)
    assert scores["miou"] == 100.0 and scores["accuracy"] == 100.0, scores


def test_refit_gives_every_centroid_pixels_where_randn_centroids_leave_some_dead() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 6)) * 3
    assignment = rng.integers(0, 4, size=(40, 3, 3))
    feats = (centres[assignment] + rng.normal(scale=0.1, size=(40, 3, 3, 6))).transpose(0, 3, 1, 2).astype(np.float32)
    head = SegmentationHead(6, 6, dropout=0.0).eval()
    params = TrainParams(steps=200, batch_size=8, probe_restarts=3)
    probe = refit_cluster_probe(head, lambda rows: torch.from_numpy(feats[rows]), 40, 4, params, seed=0)
    with torch.no_grad():
        codes = head(torch.from_numpy(feats))
        used = set(probe.predict(codes).unique().tolist())
    assert used == {0, 1, 2, 3}, f"refitted probe uses clusters {used}"
