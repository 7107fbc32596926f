"""Mean ± sd over seeds: the cluster probe's run-to-run spread is large, so one seed proves little.

`stego seeds N` (flows/seeds.py) runs the pipeline once per seed as DVC experiments and
hands each run's `metrics/scores.json` here; `aggregate` reduces them to a table that is
written to `metrics/seeds.json` and shown in the report. Each seed's val cluster map is kept
too (`save_val_map`), and `seed_agreement` says how alike the seeds' partitions are (pairwise
AMI; no labels needed), written under `label_free` in the same file.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stego_tasks.method.label_free import adjusted_mutual_info, contingency
from stego_tasks.method.metrics import METHODS
from stego_tasks.paths import run_path

METRICS = ("accuracy", "miou")


def mean_sd(values: Sequence[float]) -> dict[str, float | None]:
    """Mean and sample standard deviation (n - 1; None for fewer than two values)."""
    values = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return {"mean": None, "sd": None, "n": 0}
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return {"mean": round(mean, 4), "sd": None if sd is None else round(sd, 4), "n": len(values)}


def aggregate(runs: Sequence[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """Reduce (seed, scores) pairs to mean ± sd per method and metric.

    Args:
        runs: one (seed, `metrics/scores.json` mapping) per finished run.

    Returns:
        {"seeds": [...], "n_runs": N, "methods": {method: {metric: {"mean", "sd", "n"}}}, "runs": [...]}.
    """
    methods: dict[str, dict[str, Any]] = {}
    for key in METHODS:
        per_metric = {m: mean_sd([s[key][m] for _, s in runs if isinstance(s.get(key), dict) and s[key].get(m) is not None])
                      for m in METRICS}
        if any(v["n"] for v in per_metric.values()):
            methods[key] = per_metric
    return {
        "seeds": [seed for seed, _ in runs],
        "n_runs": len(runs),
        "methods": methods,
        "runs": [{"seed": seed, **{k: s.get(k) for k in METHODS if k in s}} for seed, s in runs],
    }


def format_table(summary: dict[str, Any]) -> str:
    """Fixed-width text of `aggregate`'s table (methods by rows)."""
    def cell(entry: dict[str, Any]) -> str:
        if entry.get("mean") is None:
            return "-"
        return f"{entry['mean']:.1f}" + ("" if entry.get("sd") is None else f" ± {entry['sd']:.1f}")

    labels = {key: method.label for key, method in METHODS.items()}
    lines = [f"{'method':<18}{'accuracy':>14}{'mIoU':>14}", "-" * 46]
    for key, entry in summary["methods"].items():
        lines.append(f"{labels.get(key, key):<18}{cell(entry['accuracy']):>14}{cell(entry['miou']):>14}")
    lines.append(f"seeds: {', '.join(map(str, summary['seeds']))}")
    return "\n".join(lines)


def save_val_map(repo: Path, target: Path) -> int:
    """Save the run's final val cluster map (after the CRF when it ran) to `target` (.npy); return n_clusters.

    `stego seeds` keeps one per seed: the workspace holds only the last experiment's stores.
    """
    import zarr

    predictions = zarr.open_group(str(run_path(repo, "predictions")), mode="r")
    crf = run_path(repo, "crf_out")
    source = zarr.open_group(str(crf), mode="r") if crf.exists() else predictions
    maps = source["cluster_pred"] if "cluster_pred" in source else predictions["cluster_pred"]
    with open(target, "wb") as handle:
        np.save(handle, maps[:])
    return int(predictions.attrs.get("n_clusters", 256))


def seed_agreement(maps: Sequence[tuple[int, Path]], n_clusters: int, batch: int = 16) -> dict[str, Any]:
    """Pairwise AMI of the seeds' val cluster maps (same images, same pixels), read a few images at a time.

    Args:
        maps: (seed, .npy file of uint8 [N, R, R]) per seed.
        n_clusters: ids are in [0, n_clusters).
        batch: images per read.

    Returns:
        {"pairs": [{"seeds": [a, b], "ami": x}], "mean", "sd", "n"} (`mean_sd` of the pairs; no pairs
        for fewer than two seeds).
    """
    pairs = []
    for (seed_a, path_a), (seed_b, path_b) in itertools.combinations(maps, 2):
        a, b = np.load(path_a, mmap_mode="r"), np.load(path_b, mmap_mode="r")
        table = np.zeros((n_clusters, n_clusters), dtype=np.int64)
        for start in range(0, a.shape[0], batch):
            table += contingency(a[start:start + batch], b[start:start + batch], n_clusters, n_clusters)
        pairs.append({"seeds": [seed_a, seed_b], "ami": round(adjusted_mutual_info(table), 4)})
    return {"pairs": pairs, **mean_sd([pair["ami"] for pair in pairs])}
