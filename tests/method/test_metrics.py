"""Tests for stego_tasks.method.metrics: hand-computed scores and the reference's recorded numbers."""

import math

import numpy as np
import pytest

from stego_tasks.method.metrics import (
    ScoreAccumulator,
    confusion_matrix,
    unsupervised_scores,
)
from tests.conftest import GOLDEN_DIR

# Made once, outside the repo, with the reference's own `UnsupervisedMetrics` (mhamilton723/STEGO
# at commit eb4d6b521740bd4265681b353547f2ffca65d673, src/utils.py; extra_clusters 0) on
# labels / preds [4, 40, 40] for n_classes 6 from np.random.default_rng(seed), seeds 0, 1, 2:
# labels uniform in [0, 6] (6 is ignored), class 3 relabelled 2, preds the labels under a
# random permutation with 40 % replaced by uniform ids. Kept: the arrays and the reference's
# mIoU, accuracy, per-class IoU and matching, with and without Hungarian matching. The reference
# divides in float32, hence the 1e-6 relative tolerance.
# tests/golden/README.md says how to make them again.
GOLDEN = GOLDEN_DIR / "stego_metrics_golden.npz"
N_GOLDEN = 6


def test_permuted_clusters_score_perfectly():
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([1, 1, 2, 2, 0, 0])  # a 3-cycle, not its own inverse
    out = unsupervised_scores(preds, labels, n_classes=3)
    expected_confusion = [[0, 0, 2], [2, 0, 0], [0, 2, 0]]
    np.testing.assert_array_equal(
        out["confusion"], expected_confusion, err_msg="confusion is [cluster, class]"
    )
    np.testing.assert_array_equal(out["assignment"], [2, 0, 1], err_msg="cluster -> class matching")
    assert out["accuracy"] == 100.0 and out["miou"] == 100.0, (
        f"perfect up to relabelling, got {out}"
    )


def test_hand_computed_2x2_with_ignored_labels():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    preds = np.array([1, 1, 0, 0, 0, 0, 0, 1])
    # confusion[cluster, class] = [[1, 4], [2, 1]]; best matching c0->1, c1->0 (6 pixels).
    # class 0: tp 2, 3 pixels, cluster 1 holds 3 -> IoU 2 / 4; class 1: tp 4, 5, 5 -> 4 / 6.
    expected_miou = 100 * (2 / 4 + 4 / 6) / 2
    with_ignored = (np.concatenate([labels, [255, -1, 2]]), np.concatenate([preds, [0, 1, 1]]))
    for lab, pred in [(labels, preds), with_ignored]:
        out = unsupervised_scores(
            pred.reshape(1, -1), lab.reshape(1, -1).astype(np.int16), n_classes=2
        )
        np.testing.assert_array_equal(
            out["confusion"], [[1, 4], [2, 1]], err_msg="ignored labels were counted"
        )
        np.testing.assert_array_equal(out["assignment"], [1, 0], err_msg="wrong matching")
        np.testing.assert_allclose(out["iou"], [0.5, 4 / 6], err_msg="per-class IoU")
        assert math.isclose(out["accuracy"], 75.0), f"accuracy should be 6/8, got {out['accuracy']}"
        assert math.isclose(out["miou"], expected_miou), (
            f"mIoU should be {expected_miou}, got {out['miou']}"
        )


def test_extra_clusters_count_as_errors():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    preds = np.array([0, 0, 0, 2, 1, 1, 1, 2])
    # confusion = [[3, 0], [0, 3], [1, 1]]; cluster 2 is unmatched, its 2 pixels are errors.
    # Each class: tp 3, 4 pixels, matched cluster holds 3 -> IoU 3 / 4. The reference
    # would drop the 2 pixels and report 100 / 100.
    out = unsupervised_scores(preds, labels, n_classes=2, n_clusters=3)
    np.testing.assert_array_equal(out["confusion"], [[3, 0], [0, 3], [1, 1]], err_msg="confusion")
    np.testing.assert_array_equal(
        out["assignment"], [0, 1, -1], err_msg="extra cluster should be -1"
    )
    np.testing.assert_allclose(out["iou"], [0.75, 0.75], err_msg="unmatched pixels must lower IoU")
    assert math.isclose(out["accuracy"], 75.0), f"accuracy should be 6/8, got {out['accuracy']}"
    assert math.isclose(out["miou"], 75.0), f"mIoU should be 75, got {out['miou']}"


def test_absent_class_is_nan_and_left_out_of_miou():
    labels = np.array([0, 0, 1, 1])
    preds = np.array([0, 0, 1, 0])
    # confusion rows [2, 1, 0], [0, 1, 0], [0, 0, 0]; class 2 has no pixels and its
    # cluster no predictions -> NaN. IoU 2 / 3 and 1 / 2 for the others.
    out = unsupervised_scores(preds, labels, n_classes=3)
    assert np.isnan(out["iou"][2]), f"absent class should be NaN, got {out['iou']}"
    np.testing.assert_allclose(out["iou"][:2], [2 / 3, 1 / 2], err_msg="IoU of present classes")
    assert math.isclose(out["miou"], 100 * (2 / 3 + 1 / 2) / 2), (
        f"mIoU must skip NaN, got {out['miou']}"
    )
    assert math.isclose(out["accuracy"], 75.0), f"accuracy 3/4, got {out['accuracy']}"


def test_unmatched_scores_use_the_identity():
    labels = np.array([0, 0, 1, 1, 1])
    preds = np.array([1, 1, 0, 0, 1])
    acc = ScoreAccumulator(n_classes=2, matching=False)
    acc.update(preds, labels)
    out = acc.compute()
    np.testing.assert_array_equal(
        out["assignment"], [0, 1], err_msg="linear scores use the identity"
    )
    # class 0: tp 0 -> IoU 0; class 1: tp 1, 3 pixels, 3 predicted -> 1 / 5.
    np.testing.assert_allclose(out["iou"], [0.0, 0.2], err_msg="per-class IoU without matching")
    assert math.isclose(out["accuracy"], 20.0), f"accuracy 1/5, got {out['accuracy']}"
    assert math.isclose(out["miou"], 10.0), f"mIoU (0 + 0.2) / 2, got {out['miou']}"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_reference_goldens_on_square_case(seed):
    golden = np.load(GOLDEN)
    preds, labels = golden[f"seed{seed}__preds"].astype(np.int64), golden[f"seed{seed}__labels"].astype(np.int64)
    ours = unsupervised_scores(preds, labels, n_classes=N_GOLDEN)
    miou, accuracy = golden[f"seed{seed}__hungarian__miou_accuracy"]
    assert math.isclose(ours["miou"], miou, rel_tol=1e-6), f"mIoU {ours['miou']} vs reference {miou}"
    assert math.isclose(ours["accuracy"], accuracy, rel_tol=1e-6), f"accuracy {ours['accuracy']} vs reference {accuracy}"
    np.testing.assert_allclose(ours["iou"], golden[f"seed{seed}__hungarian__iou"], rtol=1e-6, err_msg="per-class IoU")
    np.testing.assert_array_equal(
        ours["assignment"], golden[f"seed{seed}__hungarian__cluster_to_class"], err_msg="cluster -> class matching"
    )
    # The linear probe's scores: ids taken as classes, no matching (the reference's compute_hungarian=False).
    linear = ScoreAccumulator(n_classes=N_GOLDEN, matching=False)
    linear.update(preds, labels)
    got = linear.compute()
    miou, accuracy = golden[f"seed{seed}__identity__miou_accuracy"]
    assert math.isclose(got["miou"], miou, rel_tol=1e-6) and math.isclose(got["accuracy"], accuracy, rel_tol=1e-6), (
        f"unmatched scores {got['miou']} / {got['accuracy']} vs reference {miou} / {accuracy}"
    )
    np.testing.assert_allclose(got["iou"], golden[f"seed{seed}__identity__iou"], rtol=1e-6, err_msg="unmatched IoU")


def test_accumulator_equals_one_shot():
    rng = np.random.default_rng(7)
    labels = rng.integers(-1, 5, size=(6, 16, 16))
    preds = rng.integers(0, 7, size=(6, 16, 16))
    preds[labels == 2] = 4  # give the matching some structure
    acc = ScoreAccumulator(n_classes=5, n_clusters=7)
    for p, t in zip(preds, labels, strict=True):
        acc.update(p, t)
    batched = acc.compute()
    one_shot = unsupervised_scores(preds, labels, n_classes=5, n_clusters=7)
    np.testing.assert_array_equal(
        batched["confusion"], one_shot["confusion"], err_msg="accumulated histogram"
    )
    np.testing.assert_array_equal(batched["assignment"], one_shot["assignment"], err_msg="matching")
    assert batched["miou"] == one_shot["miou"] and batched["accuracy"] == one_shot["accuracy"], (
        f"batched {batched['miou']}/{batched['accuracy']} vs one-shot {one_shot['miou']}/{one_shot['accuracy']}"
    )

    linear = ScoreAccumulator(n_classes=5, matching=False)
    for p, t in zip(np.minimum(preds, 4), labels, strict=True):
        linear.update(p, t)
    whole = ScoreAccumulator(n_classes=5, matching=False)
    whole.update(np.minimum(preds, 4), labels)
    assert linear.compute()["miou"] == whole.compute()["miou"], (
        "batched unmatched scores differ from one batch"
    )

    acc.reset()
    assert acc.confusion.sum() == 0, "reset should clear the histogram"
    assert math.isnan(acc.compute()["accuracy"]), "scores of nothing should be NaN"


def test_confusion_matrix_by_naive_loop():
    rng = np.random.default_rng(3)
    labels = rng.integers(-2, 5, size=300)
    preds = rng.integers(0, 6, size=300)
    expected = np.zeros((6, 4), np.int64)
    for p, t in zip(preds, labels, strict=True):
        if 0 <= t < 4:
            expected[p, t] += 1
    got = confusion_matrix(preds, labels, n_classes=4, n_clusters=6)
    np.testing.assert_array_equal(got, expected, err_msg="confusion differs from a naive loop")


@pytest.mark.parametrize(
    ("preds", "labels", "match"),
    [
        (np.array([0, 3]), np.array([0, 1]), "n_clusters=3"),
        (np.array([0, -1]), np.array([0, 1]), "n_clusters=3"),
        (np.array([0, 1, 2]), np.array([0, 1]), "shape"),
        (np.array([0.0, 1.0]), np.array([0, 1]), "integer"),
    ],
)
def test_bad_input_raises(preds, labels, match):
    with pytest.raises(ValueError, match=match):
        unsupervised_scores(preds, labels, n_classes=3)


def test_mapped_scores_merge_clusters_into_one_class_against_pixel_counts() -> None:
    from stego_tasks.method.metrics import confusion_matrix, mapped_scores

    rng = np.random.default_rng(7)
    labels = rng.integers(0, 3, 500)
    preds = rng.integers(0, 5, 500)
    mapping = np.array([0, 2, 2, -1, 1])  # clusters 1 and 2 both name class 2; cluster 3 names nothing
    result = mapped_scores(confusion_matrix(preds, labels, 3, 5), mapping)
    predicted = mapping[preds]
    ious = []
    for j in range(3):
        tp = np.sum((predicted == j) & (labels == j))
        ious.append(tp / (np.sum(labels == j) + np.sum(predicted == j) - tp))
    assert result["accuracy"] == pytest.approx(100 * np.mean(predicted == labels))
    assert result["miou"] == pytest.approx(100 * np.mean(ious))
