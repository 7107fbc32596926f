"""`stego sweep-k`: how many clusters? Refit the cluster probe for several K and compare.

In STEGO only the cluster probe depends on the number of clusters K; the head does not.
So a finished run's head turns the stored training features (never the backbone) into
codes once, and for every K a fresh `ClusterProbe` with K centroids is fitted on those
codes with the `train` stage's update: the probe's own loss (minus the mean best cosine
similarity, a spherical k-means), Adam at `train.probe_lr`, `train.steps` steps on
shuffled batches of `train.batch_size` crops, seeded. Two additions, both because a
centroid that starts far from every code never moves and silently turns K into a smaller
K: the centroids start at random training codes (`--init random` for the training's own
N(0, 1) start), and the best of a few restarts, judged on the training codes, is kept.
Each probe then labels the val split as `stego cluster` does (flip-averaged code
upsampled to the label grid).

Per K it reports the unsupervised criterion, the mean over val pixels of the cosine
similarity between the code and its nearest centroid (the probe's objective; higher means
tighter clusters), the same on the training codes, and, when the val split has labels,
Hungarian-matched mIoU and accuracy. The training criterion keeps growing with K, so look
for the K after which it stops improving much (an elbow), not for its maximum.

Outputs: `<out>.json` (one row per K) and `<out>.png` (criterion and mIoU against K).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from stego_tasks.data.feature_store import read_split
from stego_tasks.errors import InvalidInputError
from stego_tasks.method.head import ClusterProbe
from stego_tasks.method.inference import BATCH, iter_val_codes
from stego_tasks.method.metrics import ScoreAccumulator
from stego_tasks.method.model import MODEL_JSON, StegoModel, check_trained_on, load_model
from stego_tasks.method.probe_fit import INITS, best_cluster_probe, probe_objective
from stego_tasks.params_schema import INT_LIMIT
from stego_tasks.runtime import atomic

ROW_KEYS = ("k", "criterion", "train_criterion", "miou", "accuracy")


def parse_ks(text: str) -> list[int]:
    """Parse a comma-separated K list such as "3,5,8,12".

    Args:
        text: the `--ks` value.

    Returns:
        The Ks in the given order.

    Raises:
        ValueError: empty list, a non-integer, a K below 1 or a repeated K.
    """
    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    if not parts:
        raise InvalidInputError(f"--ks {text!r} holds no number of clusters; pass e.g. --ks 3,5,8,12.")
    try:
        ks = [int(part) for part in parts]
    except ValueError:
        raise InvalidInputError(f"--ks {text!r} must be comma-separated integers, e.g. --ks 3,5,8,12.") from None
    check_ks(ks)
    return ks


def check_ks(ks: list[int]) -> None:
    """Raise a ValueError unless `ks` is a non-empty list of distinct integers >= 1."""
    if not ks:
        raise InvalidInputError("the list of cluster counts is empty; give at least one K, e.g. 3,5,8,12.")
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= INT_LIMIT]
    if bad:
        raise InvalidInputError(f"every K must be an integer >= 1 (and at most {INT_LIMIT}), got {bad}; give e.g. 3,5,8,12.")
    if len(set(ks)) != len(ks):
        raise InvalidInputError(f"the K list {list(ks)} repeats a value; give each K once.")


def training_codes(model: StegoModel, feats: zarr.Array | np.ndarray, batch: int = 64) -> torch.Tensor:
    """Codes of the training crops from stored features, head in eval mode (no dropout).

    Args:
        model: trained model (its head is used).
        feats: stored backbone features [M, C, h, w] (float16 in the store).
        batch: crops per head forward pass.

    Returns:
        float32 codes [M, D, h, w], D = the head's n_codes.
    """
    model.eval()
    rows = feats.shape[0]
    chunks = []
    with torch.no_grad():
        for start in range(0, rows, batch):
            chunk = torch.from_numpy(np.asarray(feats[start : min(start + batch, rows)])).float()
            chunks.append(model.head(chunk))
    return torch.cat(chunks)


def evaluate_probes(
    model: StegoModel,
    val: zarr.Group,
    probes: list[ClusterProbe],
    *,
    flip: bool = True,
    alpha: float = 2.0,
) -> list[dict[str, Any]]:
    """Criterion and Hungarian scores of each probe on the val split.

    Args:
        model: the run's model (head used; class count and ignore index from its info).
        val: the store's val group (feats, optional feats_flip, labels [N, R, R]).
        probes: fitted probes, one per K.
        flip: average with the mirrored code when the store holds `feats_flip`.
        alpha: cluster-stage temperature; predictions are argmax of
            log_softmax(alpha * similarity) as in `stego cluster` (the same for any alpha > 0).

    Returns:
        One row per probe: k, criterion (mean best cosine over all val pixels), and miou /
        accuracy in percent (None when no val pixel has a valid label).
    """
    n_classes = int(model.info["n_classes"])
    ignore = model.info.get("ignore_index")
    size = val["labels"].shape[1]
    use_flip = flip and "feats_flip" in val
    sums = [0.0] * len(probes)
    scores = [ScoreAccumulator(n_classes, probe.n_clusters) for probe in probes]
    pixels = 0
    with torch.no_grad():
        for rows, _, code in iter_val_codes(model, val, use_flip, size, BATCH):
            labels = val["labels"][rows].astype(np.int64)
            if ignore is not None:
                labels[labels == ignore] = -1
            pixels += code.shape[0] * size * size
            for index, probe in enumerate(probes):
                sums[index] += float(probe.similarity(code).amax(1).double().sum())
                preds = probe.log_probs(code, alpha).argmax(1).numpy()
                scores[index].update(preds, labels)
    rows_out = []
    for probe, total, accumulator in zip(probes, sums, scores, strict=True):
        labelled = int(accumulator.confusion.sum()) > 0
        result = accumulator.compute() if labelled else {}
        rows_out.append({
            "k": probe.n_clusters,
            "criterion": total / pixels,
            "miou": float(result["miou"]) if labelled else None,
            "accuracy": float(result["accuracy"]) if labelled else None,
        })
    return rows_out


def sweep_k(
    store_path: Path,
    model_dir: Path,
    ks: list[int],
    out_json: Path,
    out_png: Path,
    *,
    seed: int | None = 0,
    steps: int | None = None,
    alpha: float = 2.0,
    flip: bool = True,
    restarts: int = 3,
    init: str = "codes",
) -> list[dict[str, Any]]:
    """Refit the cluster probe for each K on the run's training codes and score it on val.

    Scores are Hungarian-matched with n_clusters = K: with K > n_classes the pixels of
    clusters left unmatched count as errors (unlike the reference, which drops them), and
    with K < n_classes some classes cannot be matched at all and score IoU 0. The row for
    the run's own K is a refit on eval-mode codes without CRF, so it differs somewhat from
    `metrics/scores.json`. Runs on the CPU.

    Args:
        store_path: features Zarr store (train feats for fitting, val split for scoring).
        model_dir: the train stage's model folder.
        ks: numbers of clusters to try, distinct, each >= 1.
        out_json: JSON file to write: the rows, sorted by K.
        out_png: PNG plot to write: criterion and mIoU against K.
        seed: seeds every probe (each K is fitted with the same seed, whatever the list); None for
            the seed the run's model.json records.
        steps: optimiser steps per probe; None for the run's `train.steps`.
        alpha: cluster-stage temperature (see `evaluate_probes`).
        flip: flip-average the val codes when the store has mirrored features.
        restarts: probes fitted per K from different initial centroids; the one with the
            best objective on the training codes is kept (see `best_cluster_probe`).
        init: initial centroids: "codes" (default; K random training code vectors) or
            "random" (the probe's N(0, 1) draw, as in training; see `fit_cluster_probe`).

    Returns:
        Rows sorted by K, each with the keys `ROW_KEYS`: k; criterion, the mean best
        cosine over val pixels; train_criterion, the same over the training codes the probe
        was fitted on (it grows with K when no centroid is dead); miou and accuracy in
        percent, None when the val split has no labels.

    Raises:
        ValueError: invalid K list, steps or alpha, or features that do not fit the model.
        FileNotFoundError: no trained model in `model_dir`.
    """
    check_ks(list(ks))
    if not (alpha > 0 and math.isfinite(alpha)):
        raise InvalidInputError(f"alpha must be a finite number > 0, got {alpha}.")
    model = load_model(model_dir)
    check_trained_on(model.info, dict(zarr.open_group(str(store_path), mode="r").attrs), model_dir, store_path)
    train_params = model.info.get("train", {})
    seed = model.info.get("seed", 0) if seed is None else seed
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InvalidInputError(f"{model_dir}: {MODEL_JSON} records the seed {seed!r}, not an integer; "
                                "pass --seed, or rerun `stego train` to write the model again.")
    steps = int(train_params.get("steps", 5000)) if steps is None else steps
    if steps < 1:
        raise InvalidInputError(f"steps must be >= 1, got {steps}.")
    if restarts < 1:
        raise InvalidInputError(f"restarts must be >= 1, got {restarts}.")
    if init not in INITS:
        raise InvalidInputError(f"init must be one of {INITS}, got {init!r}.")
    train_feats = read_split(store_path, "train")["feats"]
    val = read_split(store_path, "val")
    in_dim = int(model.info["in_dim"])
    if train_feats.shape[1] != in_dim or val["feats"].shape[1] != in_dim:
        raise InvalidInputError(
            f"{store_path} holds {train_feats.shape[1]}-d features but the model in {model_dir} expects "
            f"{in_dim}-d ones; pass the features store the run was trained on."
        )
    if train_feats.shape[0] < 1 or val["feats"].shape[0] < 1:
        raise InvalidInputError(
            f"{store_path} holds {train_feats.shape[0]} training and {val['feats'].shape[0]} val crops; "
            "the sweep needs at least one of each."
        )
    codes = training_codes(model, train_feats)
    fit = {"steps": steps, "batch_size": int(train_params.get("batch_size", 16)),
           "lr": float(train_params.get("probe_lr", 5e-3)), "init": init}
    probes = [best_cluster_probe(codes, int(k), restarts=restarts, seed=seed, **fit) for k in sorted(ks)]
    rows = evaluate_probes(model, val, probes, flip=flip, alpha=alpha)
    for row, probe in zip(rows, probes, strict=True):
        row["train_criterion"] = probe_objective(probe, codes)
    rows = [{key: row[key] for key in ROW_KEYS} for row in rows]
    atomic.write_json(out_json, rows)
    with atomic.atomic_path(out_png, suffix=".png") as tmp:
        tmp.write_bytes(plot_png(rows, int(model.info["n_classes"])))
    return rows


def plot_png(rows: list[dict[str, Any]], n_classes: int) -> bytes:
    """Criterion and (when present) mIoU / accuracy against K, as PNG bytes.

    Args:
        rows: rows as from `sweep_k`, sorted by K.
        n_classes: marked with a dashed line.

    Returns:
        The PNG file's bytes (no Software metadata, default style: byte-stable).
    """
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ks = [row["k"] for row in rows]
    scored = [row for row in rows if row["miou"] is not None and not math.isnan(row["miou"])]
    buffer = io.BytesIO()
    with matplotlib.style.context("default"):
        figure = Figure(figsize=(9.0, 3.4))
        FigureCanvasAgg(figure)
        left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
        left.plot(ks, [row["criterion"] for row in rows], marker="o", label="val pixels")
        left.plot(ks, [row["train_criterion"] for row in rows], marker="s", label="training codes")
        left.set_title("mean best cosine to a centroid")
        left.set_ylabel("criterion (higher = tighter)")
        left.legend(fontsize=8)
        if scored:
            right.plot([r["k"] for r in scored], [r["miou"] for r in scored], marker="o", label="mIoU")
            right.plot([r["k"] for r in scored], [r["accuracy"] for r in scored], marker="s", label="accuracy")
            right.set_ylabel("percent (Hungarian-matched)")
            right.legend(fontsize=8)
        else:
            right.text(0.5, 0.5, "no val labels", ha="center", va="center", transform=right.transAxes)
        right.set_title("val scores")
        for axis in (left, right):
            axis.axvline(n_classes, color="grey", linestyle="--", linewidth=0.8)
            axis.set_xlabel(f"K (dashed: n_classes = {n_classes})")
            axis.set_xticks(ks)
            axis.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(buffer, format="png", dpi=80, metadata={"Software": None})
    return buffer.getvalue()


def out_paths(out: Path) -> tuple[Path, Path]:
    """`plots/k_sweep` (or `.json` / `.png`) -> (plots/k_sweep.json, plots/k_sweep.png)."""
    out = Path(out)
    if out.suffix in (".json", ".png"):
        out = out.with_suffix("")
    return Path(f"{out}.json"), Path(f"{out}.png")
