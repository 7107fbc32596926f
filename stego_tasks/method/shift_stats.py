"""Shift diagnostics: the three feature-correlation distributions the shifts are set against.

STEGO's loss pushes a pair of code vectors together where the backbone's (spatially
centred) feature correlation F exceeds the shift b, and apart where it falls below. The
reference author's advice for a new dataset is to look at the distributions of F for the
three pair types (intra: an image with itself; kNN: with a neighbour; random: with another
image) and put each b where it splits them usefully. This module draws those F values on
a sample of the training features, before training, exactly as the loss draws them
(`loss.feature_correlations`), and summarises them:

- `correlation_stats` returns quantiles and a histogram per pair type;
- `auto_shifts` puts each shift at a chosen quantile (`train.shifts: auto`);
- `write_histogram_csv` writes the histogram as a DVC plot (plots/shift_stats.csv), and
  `plot_png` draws it with the shifts marked for the report.

On the demo's features with random weights the published shifts sit far below the intra
and kNN correlations (median about 0.7), so every intra pair attracts and each image
collapses to one cluster; `auto` is a diagnostic and an opt-in, not a proven default.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from stego_tasks.errors import InvalidInputError
from stego_tasks.method.loss import feature_correlations
from stego_tasks.method.neighbours import sample_positives
from stego_tasks.runtime import atomic

# The train stage writes the statistics into its model folder under this name; the report reads them.
SHIFT_STATS_FILE = "shift_stats.json"

TERMS = ("intra", "inter", "neg")
LABELS = {"intra": "intra (self)", "inter": "kNN", "neg": "random"}
BINS = np.linspace(-1.0, 1.0, 81)
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def correlation_samples(
    data: Any, *, batches: int = 8, batch_size: int = 16, feature_samples: int = 11, neg_samples: int = 5,
    pointwise: bool = True, seed: int = 0,
) -> dict[str, np.ndarray]:
    """Draw F values of the three pair types on random training batches.

    Args:
        data: a `training_data.TrainingData` (features [M, C, h, w], kNN graph [M, k]).
        batches: batches to draw (each `batch_size` crops, capped at M).
        batch_size: crops per batch (the run's `train.batch_size`).
        feature_samples: S of the loss.
        neg_samples: negative draws per batch.
        pointwise: spatial centring, as the run's loss.
        seed: seeds rows, positives, sample points and derangements.

    Returns:
        {"intra", "inter", "neg"}: float32 arrays of the drawn F values.
    """
    generator = torch.Generator().manual_seed(seed)
    size = min(batch_size, data.size)
    if size < 2:
        raise InvalidInputError(f"shift statistics need at least 2 training crops, found {data.size}.")
    drawn: dict[str, list[np.ndarray]] = {term: [] for term in TERMS}
    for _ in range(batches):
        index = torch.randperm(data.size, generator=generator)[:size].numpy()
        positives = sample_positives(data.knn, index, generator, None)
        batch = data.batch(index, positives, torch.device("cpu"))
        values = feature_correlations(
            batch.feats, batch.feats_pos, feature_samples=feature_samples, neg_samples=neg_samples,
            pointwise=pointwise, generator=generator,
        )
        for term in TERMS:
            drawn[term].append(values[term].numpy().astype(np.float32))
    return {term: np.concatenate(parts) for term, parts in drawn.items()}


def correlation_stats(samples: dict[str, np.ndarray], shifts: Sequence[float]) -> dict[str, Any]:
    """Quantiles, histogram and the share of pairs each shift makes attract, per pair type.

    Args:
        samples: output of `correlation_samples`.
        shifts: the (intra, inter, neg) shifts in use.

    Returns:
        JSON-ready dict: {"shifts": {...}, "terms": {term: {"quantiles": {q: v}, "mean",
        "attract": share of F > b, "counts": histogram over `BINS`}}, "bins": edges}.
    """
    terms = {}
    for term, shift in zip(TERMS, shifts, strict=True):
        values = samples[term]
        counts, _ = np.histogram(np.clip(values, -1, 1), bins=BINS)
        terms[term] = {
            "quantiles": {f"{q:g}": round(float(np.quantile(values, q)), 6) for q in QUANTILES},
            "mean": round(float(values.mean()), 6),
            "attract": round(float((values > shift).mean()), 6),
            "counts": counts.tolist(),
        }
    return {"shifts": dict(zip(TERMS, map(float, shifts), strict=True)), "terms": terms, "bins": BINS.tolist()}


def auto_shifts(samples: dict[str, np.ndarray], quantile: float) -> tuple[float, float, float]:
    """Each shift at the `quantile` of its pair type's F distribution (rounded to 1e-4)."""
    return tuple(round(float(np.quantile(samples[term], quantile)), 4) for term in TERMS)  # type: ignore[return-value]


def write_histogram_csv(path: Any, stats: dict[str, Any]) -> None:
    """Write the histograms as a long-format CSV (bin centre, pair type, share), atomically.

    A DVC plot: `dvc plots show plots/shift_stats.csv` draws one line per pair type.
    """
    edges = np.asarray(stats["bins"])
    centres = (edges[:-1] + edges[1:]) / 2
    lines = ["correlation,pair,share"]
    for term in TERMS:
        counts = np.asarray(stats["terms"][term]["counts"], dtype=np.float64)
        shares = counts / max(counts.sum(), 1.0)
        lines += [f"{c:.4f},{LABELS[term]},{s:.6f}" for c, s in zip(centres, shares, strict=True)]
    atomic.write_text(path, "\n".join(lines) + "\n")


def plot_png(stats: dict[str, Any]) -> bytes:
    """The three histograms with each shift as a dashed line of the same colour, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    edges = np.asarray(stats["bins"])
    centres = (edges[:-1] + edges[1:]) / 2
    figure, axis = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    for term, colour in zip(TERMS, ("tab:blue", "tab:green", "tab:red"), strict=True):
        counts = np.asarray(stats["terms"][term]["counts"], dtype=np.float64)
        axis.plot(centres, counts / max(counts.sum(), 1.0), color=colour, label=LABELS[term])
        axis.axvline(stats["shifts"][term], color=colour, linestyle="--", linewidth=1)
    axis.set_xlabel("feature correlation F (centred); dashed: shift b")
    axis.set_ylabel("share of pairs")
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()
