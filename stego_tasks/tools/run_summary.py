"""The compact table a run ends with: methods by rows, accuracy and mIoU by columns.

`dvc metrics show` prints every number of every metrics file in one row (about 40
columns), which wraps into an unreadable block on a normal terminal; this is what `make
demo` and `stego run` print instead. The numbers are read back from `metrics/scores.json`,
so the table always shows what was recorded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stego_tasks.method.metrics import METHODS
from stego_tasks.paths import PATHS


def _number(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def format_summary(scores: dict[str, Any], report_path: str | None = None) -> str:
    """The run's scores as a fixed-width text table, with preset, weights and report under it.

    Args:
        scores: the evaluate stage's `metrics/scores.json` mapping.
        report_path: where the HTML report is, or None.

    Returns:
        Lines joined by newlines (no trailing newline); at most about 50 characters wide.
    """
    lines = [f"{'method':<18}{'accuracy':>10}{'mIoU':>8}", "-" * 36]
    for key, (label, *_) in METHODS.items():
        entry = scores.get(key)
        if isinstance(entry, dict):
            lines.append(f"{label:<18}{_number(entry.get('accuracy')):>10}{_number(entry.get('miou')):>8}")
    if len(lines) == 2:
        lines.append("(no labelled validation images: nothing scored)")
    protocol = scores.get("protocol") or {}
    lines.append("")
    lines.append(f"preset:   {scores.get('preset', 'custom')}")
    weights = scores.get("weights_source") or scores.get("backbone_weights") or "not recorded"
    lines.append(f"backbone: {scores.get('backbone', '?')} ({weights})")
    if protocol.get("select") == "best":
        lines.append("select:   best checkpoint by val cluster mIoU (USES LABELS)")
    if report_path:
        lines.append(f"report:   {report_path}")
    return "\n".join(lines)


def summary_from_files(scores_path: str | Path = PATHS["scores"], report_path: str | Path = PATHS["report"]) -> str:
    """`format_summary` of the files a run wrote; a one-line note when the scores are missing."""
    scores_path, report_path = Path(scores_path), Path(report_path)
    if not scores_path.is_file():
        return f"no scores yet: {scores_path} is missing (did the evaluate stage run?)"
    try:
        scores = json.loads(scores_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError: not JSON, or not UTF-8
        return f"cannot read {scores_path} ({error}); rerun `dvc repro evaluate`"
    return format_summary(scores if isinstance(scores, dict) else {}, str(report_path) if report_path.is_file() else None)
