"""What the flows publish on Prefect's Artifacts page, under stable keys.

Per stage flow run:
    `<stage>-summary`    markdown: the numbers the stage returned and its trace (wall, CPU,
                         memory, I/O, device), e.g. `extract-summary`
    `<bar>-progress`     progress (0 to 100) of each progress bar the stage counts with,
                         moving while it runs: `extract-train-progress`, `extract-val-progress`,
                         `train-progress`, `crf-cluster-linear-progress`
Per run of the parent flow `stego` (deployment `stego/full`):
    `stego-scores`       table: accuracy and mIoU per method, from the scores file
    `stego-report`       link: the HTML report on the machine the flow ran on
    `stego-trace`        table: what each stage cost, from the trace files

Artifacts live in the Prefect API only; the files on disk stay the record DVC versions.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from pathlib import Path
from typing import Any

from prefect.artifacts import (
    ProgressArtifact,
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.utilities.context import get_task_and_flow_run_ids

from stego_tasks.method.metrics import METHODS
from stego_tasks.runtime.trace import numeric_leaves

log = logging.getLogger("stego")

# Trace fields shown in the markdown and the `stego-trace` table, with their labels.
TRACE_FIELDS: tuple[tuple[str, str], ...] = (
    ("wall_s", "wall (s)"), ("cpu_s", "CPU (s)"), ("cpu_percent", "CPU %"), ("children_cpu_s", "child CPU (s)"),
    ("peak_rss_mb", "peak RSS (MiB)"), ("read_bytes", "read (bytes)"), ("write_bytes", "written (bytes)"),
    ("device", "device"), ("gpu_peak_mb", "peak GPU (MiB)"),
)


def artifact_key(*words: str) -> str:
    """A Prefect artifact key from words: lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(words).lower()).strip("-")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "–" if value is None else str(value)


def stage_markdown(stage: str, summary: Any, record: dict[str, Any]) -> str:
    """The markdown summary of one stage run: what it processed, then what it cost."""
    lines = [f"# Stage `{stage}`", "", "| processed | value |", "|---|---|"]
    lines += [f"| {key} | {_cell(value)} |" for key, value in numeric_leaves(summary).items()]
    if isinstance(summary, dict):
        lines += [f"| {key} | {value} |" for key, value in summary.items() if isinstance(value, str)]
    lines += ["", "| cost | value |", "|---|---|"]
    lines += [f"| {label} | {_cell(record.get(field))} |" for field, label in TRACE_FIELDS]
    origin = record.get("provenance") or {}
    commit = origin.get("git_commit")
    lines += ["", f"Started {record.get('started', '?')}; torch {origin.get('packages', {}).get('torch')}, "
              f"commit {commit[:10] + (' (dirty)' if origin.get('git_dirty') else '') if commit else 'none'}."]
    return "\n".join(lines)


def publish_stage(stage: str, summary: Any, record: dict[str, Any]) -> None:
    """Publish `<stage>-summary` (call inside the stage's flow run)."""
    create_markdown_artifact(markdown=stage_markdown(stage, summary, record), key=artifact_key(stage, "summary"),
                             description=f"what stage {stage} did and what it cost")


class ProgressPublisher:
    """A `progress_listener` callback that mirrors each progress bar as a Prefect progress artifact.

    The first count of a bar creates `<desc>-progress` linked to the flow run this object was
    made in (so a bar counted on another thread is still that run's); later counts update
    it at most every `every_s` seconds, and always at 100 %.

    Args:
        every_s: least seconds between two updates of one artifact.
    """

    def __init__(self, every_s: float = 2.0) -> None:
        self.every_s = every_s
        self.task_run_id, self.flow_run_id = get_task_and_flow_run_ids()
        self._artifacts: dict[str, Any] = {}
        self._last: dict[str, float] = {}

    def __call__(self, desc: str, count: int, total: int) -> None:
        percent = 100.0 if total <= 0 else round(100.0 * min(count, total) / total, 1)
        now = time.monotonic()
        try:
            if desc not in self._artifacts:
                artifact = ProgressArtifact(key=artifact_key(desc, "progress"), progress=percent,
                                            description=f"{desc}: {count}/{total}", flow_run_id=self.flow_run_id)
                self._artifacts[desc] = artifact.create().id
            elif now - self._last[desc] >= self.every_s or count >= total:
                update_progress_artifact(self._artifacts[desc], percent, description=f"{desc}: {count}/{total}")
            else:
                return
        except Exception as error:  # noqa: BLE001 - a lost API call must not stop the stage's work
            log.warning("could not publish progress of %s: %s", desc, error)
        self._last[desc] = now


def _read(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def scores_table(scores: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per scored method: method, accuracy (%), mIoU (%)."""
    return [{"method": label, "accuracy": scores[key].get("accuracy"), "mIoU": scores[key].get("miou")}
            for key, (label, *_) in METHODS.items() if isinstance(scores.get(key), dict)]


def trace_table(trace_dir: Path) -> list[dict[str, Any]]:
    """One row per stage trace in `trace_dir`, in the order the stages started."""
    records = [r for r in (_read(p) for p in sorted(trace_dir.glob("*.json"))) if r and "stage" in r]
    records.sort(key=lambda r: str(r.get("started")))
    return [{"stage": r["stage"], **{label: r.get(field) for field, label in TRACE_FIELDS}} for r in records]


def publish_run(repo: Path, scores_path: Path, report_path: Path, trace_dir: Path, ran: list[str]) -> list[str]:
    """Publish `stego-scores`, `stego-report` and `stego-trace` for a finished run (call inside its flow run).

    Returns:
        The keys published; a file that is missing is skipped with a log line.
    """
    published = []
    scores = _read(repo / scores_path)
    if scores is not None and scores_table(scores):
        create_table_artifact(table=scores_table(scores), key="stego-scores",
                              description=f"scores of {scores_path} (preset {scores.get('preset')}, "
                                          f"backbone {scores.get('backbone')}, weights {scores.get('backbone_weights')})")
        published.append("stego-scores")
    else:
        log.info("no scores to publish: %s is missing or has no labelled methods", scores_path)
    report = (repo / report_path).resolve()
    if report.is_file():
        create_link_artifact(link=report.as_uri(), link_text=f"{report_path} on {socket.gethostname()}",
                             key="stego-report", description="the run's HTML report (one self-contained page)")
        published.append("stego-report")
    rows = trace_table(repo / trace_dir)
    if rows:
        stages = ", ".join(ran) if ran else "none (everything up to date)"
        create_table_artifact(table=rows, key="stego-trace", description=f"what each stage cost; this run ran: {stages}")
        published.append("stego-trace")
    return published
