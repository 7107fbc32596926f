"""Mean ± sd over seeds: the cluster probe's run-to-run spread is large, so one seed proves little.

`stego seeds N` (flows/seeds.py) runs the pipeline once per seed as DVC experiments and
hands each run's `metrics/scores.json` here; `aggregate` reduces them to a table that is
written to `metrics/seeds.json` and shown in the report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from stego_tasks.tools.run_summary import METHODS

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
    for key, _label in METHODS:
        per_metric = {m: mean_sd([s[key][m] for _, s in runs if isinstance(s.get(key), dict) and s[key].get(m) is not None])
                      for m in METRICS}
        if any(v["n"] for v in per_metric.values()):
            methods[key] = per_metric
    return {
        "seeds": [seed for seed, _ in runs],
        "n_runs": len(runs),
        "methods": methods,
        "runs": [{"seed": seed, **{k: s.get(k) for k, _ in METHODS if k in s}} for seed, s in runs],
    }


def format_table(summary: dict[str, Any]) -> str:
    """Fixed-width text of `aggregate`'s table (methods by rows)."""
    def cell(entry: dict[str, Any]) -> str:
        if entry.get("mean") is None:
            return "-"
        return f"{entry['mean']:.1f}" + ("" if entry.get("sd") is None else f" ± {entry['sd']:.1f}")

    labels = dict(METHODS)
    lines = [f"{'method':<18}{'accuracy':>14}{'mIoU':>14}", "-" * 46]
    for key, entry in summary["methods"].items():
        lines.append(f"{labels.get(key, key):<18}{cell(entry['accuracy']):>14}{cell(entry['miou']):>14}")
    lines.append(f"seeds: {', '.join(map(str, summary['seeds']))}")
    return "\n".join(lines)
