"""What each cluster found, without labels: per-cluster statistics, the label-free scores, the gallery files.

The evaluate stage passes over the val predictions once (`collect`), then writes:

* the `label_free` block of `metrics/scores.json` (`label_free_scores`): size balance, mean
  confidence, clusters used, agreement (AMI, ARI) with the k-means baseline;
* `plots/gallery/` (`write_gallery`): `gallery.json` (per cluster: share of pixels and of
  images, mean confidence, the runner-up cluster, example images, its name and, with labels,
  its matched class) and one `cluster_<id>.png` per cluster: the images where it is most
  present, its region tinted and outlined.

Which map each number uses: shares and examples use the final map (after the CRF when it
ran: what `stego predict` and `stego export` give); confidence is the cluster probe's
max softmax probability at the run's alpha, before the CRF; the k-means agreement compares
the probe's map before the CRF with the baseline's, both unrefined, on the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from PIL import Image

from stego_tasks.method.label_free import (
    adjusted_mutual_info,
    adjusted_rand_index,
    contingency,
    runner_up,
    size_balance,
)
from stego_tasks.runtime import atomic
from stego_tasks.tools.cluster_names import ClusterNames
from stego_tasks.tools.visualize import palette

# The gallery's record, beside its strips (the report and `stego names init` read it).
GALLERY_JSON = "gallery.json"
THUMB = 112  # px: the side of each example in a cluster's strip
ELEMENTS_PER_BATCH = 8_000_000  # float32 probabilities held at once (images x clusters x pixels)


@dataclass
class ClusterStats:
    """Sums over the val split, per cluster k of the probe (K clusters, N images).

    Attributes:
        pixels: int64 [K] pixels of k in the final map.
        per_image: float64 [N, K] share of each image's pixels in k (final map).
        confidence: float64 [K] sum over k's pixels of the probe's max probability (None
            without the probe's probabilities).
        prob_mass: float64 [K, K] row k: the probe's probabilities summed over k's pixels.
        kmeans_table: int64 [K, 256] probe map (before CRF) against the k-means map.
        confidence_total: sum of the max probability over all pixels.
    """

    pixels: np.ndarray
    per_image: np.ndarray
    confidence: np.ndarray | None
    prob_mass: np.ndarray
    kmeans_table: np.ndarray | None
    confidence_total: float = 0.0

    @property
    def n_images(self) -> int:
        return self.per_image.shape[0]


def collect(
    final: zarr.Array, logits: zarr.Array | None, probe: zarr.Array, kmeans: zarr.Array | None, n_clusters: int
) -> ClusterStats:
    """One pass over the val maps, a few images at a time.

    Args:
        final: uint8 [N, R, R] the final cluster map (CRF when it ran).
        logits: float16 [N, K, R, R] the probe's log-probabilities (cluster stage), or None
            (then no confidence and no runner-up).
        probe: uint8 [N, R, R] the probe's argmax before the CRF.
        kmeans: uint8 [N, R, R] the k-means baseline, or None.
        n_clusters: K.
    """
    n_images, k = final.shape[0], n_clusters
    pixels_per_image = int(np.prod(final.shape[1:]))
    stats = ClusterStats(
        pixels=np.zeros(k, np.int64), per_image=np.zeros((n_images, k)),
        confidence=np.zeros(k) if logits is not None else None,
        prob_mass=np.zeros((k, k)), kmeans_table=np.zeros((k, 256), np.int64) if kmeans is not None else None,
    )
    batch = max(1, ELEMENTS_PER_BATCH // (k * pixels_per_image))
    for start in range(0, n_images, batch):
        rows = slice(start, min(start + batch, n_images))
        labels = final[rows].astype(np.int64)
        flat = labels.reshape(-1)
        stats.pixels += np.bincount(flat, minlength=k)
        for offset, image in enumerate(labels):
            stats.per_image[start + offset] = np.bincount(image.reshape(-1), minlength=k) / pixels_per_image
        if logits is not None:
            probs = np.exp(logits[rows].astype(np.float32)).transpose(0, 2, 3, 1).reshape(-1, k)
            best = probs.max(1)
            stats.confidence += np.bincount(flat, weights=best, minlength=k)
            stats.confidence_total += float(best.sum(dtype=np.float64))
            for column in range(k):
                stats.prob_mass[:, column] += np.bincount(flat, weights=probs[:, column], minlength=k)
        if stats.kmeans_table is not None:
            stats.kmeans_table += contingency(probe[rows], kmeans[rows], k, 256)
    return stats


def _round(value: float) -> float:
    return round(float(value), 4)


def label_free_scores(stats: ClusterStats) -> dict[str, Any]:
    """The `label_free` block of scores.json (DVC metrics)."""
    total = int(stats.pixels.sum())
    scores: dict[str, Any] = {
        "n_clusters": int(stats.pixels.size),
        "used_clusters": int((stats.pixels > 0).sum()),
        "size_balance": _round(size_balance(stats.pixels)),
        "largest_share": _round(stats.pixels.max() / total),
    }
    if stats.confidence is not None:
        scores["mean_confidence"] = _round(stats.confidence_total / total)
    if stats.kmeans_table is not None:
        scores["kmeans_ami"] = _round(adjusted_mutual_info(stats.kmeans_table))
        scores["kmeans_ari"] = _round(adjusted_rand_index(stats.kmeans_table))
    return scores


def cluster_entries(stats: ClusterStats, names: ClusterNames, matched: list[str | None] | None, n_examples: int) -> list[dict]:
    """Per cluster: id, name, shares, mean confidence, runner-up, example images (most present first)."""
    total = max(int(stats.pixels.sum()), 1)
    nearest = runner_up(stats.prob_mass) if stats.confidence is not None else np.full(stats.pixels.size, -1)
    entries = []
    for k in range(stats.pixels.size):
        shares = stats.per_image[:, k]
        # The images where k covers most of the picture; ties by image order; never an image without k.
        order = [int(i) for i in np.argsort(-shares, kind="stable")[:n_examples] if shares[i] > 0]
        entries.append({
            "id": k,
            "name": names.label(k),
            "named": k in names.names,
            "ignored": k in names.ignore,
            "matched_class": matched[k] if matched is not None else None,
            "pixel_share": _round(stats.pixels[k] / total),
            "image_share": _round((shares > 0).mean()) if stats.n_images else 0.0,
            "images_with": int((shares > 0).sum()),
            "mean_confidence": (_round(stats.confidence[k] / stats.pixels[k])
                                if stats.confidence is not None and stats.pixels[k] else None),
            "nearest": int(nearest[k]) if nearest[k] >= 0 and stats.pixels[k] else None,  # none for an empty cluster
            "examples": order,
            "example_shares": [_round(shares[i]) for i in order],
            "file": f"cluster_{k:03d}.png",
        })
    return entries


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` with a 4-neighbour outside it: the region's edge (the image border is not one)."""
    padded = np.pad(mask, 1, mode="edge")
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def example_picture(image: np.ndarray, labels: np.ndarray, cluster: int) -> np.ndarray:
    """The image with `cluster`'s region tinted in its palette colour and outlined in white, uint8 [THUMB, THUMB, 3]."""
    mask = labels == cluster
    colour = palette()[cluster].astype(np.float32)
    picture = image.astype(np.float32)
    picture[mask] = 0.45 * picture[mask] + 0.55 * colour
    # Outlines at the thumbnail's scale, so they stay one visible pixel wide.
    small = np.asarray(Image.fromarray(picture.round().astype(np.uint8)).resize((THUMB, THUMB), Image.BILINEAR)).copy()
    small_mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((THUMB, THUMB), Image.NEAREST)) > 0
    small[outline(small_mask)] = 255
    return small


def _strip(pictures: list[np.ndarray], gap: int = 4) -> np.ndarray:
    if not pictures:
        return np.full((THUMB, THUMB, 3), 235, dtype=np.uint8)
    parts = []
    for picture in pictures:
        parts += [picture, np.full((THUMB, gap, 3), 255, dtype=np.uint8)]
    return np.concatenate(parts[:-1], axis=1)


def write_gallery(out_dir: Path, images: zarr.Array, final: zarr.Array, entries: list[dict], info: dict) -> Path:
    """Write `out_dir/gallery.json` and one example strip PNG per cluster (one folder, atomically).

    Args:
        out_dir: the gallery folder (replaced as a whole).
        images: uint8 [N, R, R, 3] val images.
        final: uint8 [N, R, R] the final cluster map.
        entries: from `cluster_entries`.
        info: run facts stored beside the entries (n_images, has_labels, map used).

    Returns:
        The path of gallery.json.
    """
    with atomic.atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for entry in entries:
            pictures = [example_picture(images[i], final[i], entry["id"]) for i in entry["examples"]]
            Image.fromarray(_strip(pictures)).save(tmp / entry["file"], optimize=True)
        atomic.write_json(tmp / GALLERY_JSON, {**info, "clusters": entries})
        atomic.mark_folder(tmp, "gallery")  # so the next evaluate may replace it
    return out_dir / GALLERY_JSON
