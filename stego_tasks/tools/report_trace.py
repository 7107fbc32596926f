"""Report sections on what a run cost and what produced it: stage timeline, resources, provenance.

Reads the stages' trace files (`metrics/trace/<stage>.json`, `stego_tasks/runtime/trace.py`)
and the provenance the evaluate stage recorded in `metrics/scores.json`. The report's own
trace is left out: the page is written while that stage runs.
"""

from __future__ import annotations

import datetime
from html import escape
from pathlib import Path
from typing import Any

from stego_tasks.paths import PATHS
from stego_tasks.runtime.atomic import read_json

TRACE_DIR = PATHS["trace"]
PROVENANCE = "provenance"  # the key of what-produced-this in every metrics file
OWN_STAGE = "report"
# (field, column heading, decimals); None decimals: shown as text.
RESOURCE_COLUMNS: tuple[tuple[str, str, int | None], ...] = (
    ("wall_s", "wall (s)", 1), ("cpu_s", "CPU (s)", 1), ("cpu_percent", "CPU %", 0),
    ("children_cpu_s", "child CPU (s)", 1), ("peak_rss_mb", "peak RSS (MiB)", 0),
    ("read_bytes", "read (MiB)", 1), ("write_bytes", "written (MiB)", 1),
    ("device", "device", None), ("gpu_peak_mb", "peak GPU (MiB)", 0),
)
_BYTES = {"read_bytes", "write_bytes"}


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _time(text: Any) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(str(text))
    except ValueError:
        return None


def trace_records(run_dir: Path) -> list[dict[str, Any]]:
    """The stage traces of a run, in the order the stages started (the report's own left out).

    Raises:
        ValueError: a trace file is not valid JSON (one sentence naming it and the fix).
    """
    records = []
    for path in sorted((Path(run_dir) / TRACE_DIR).glob("*.json")):
        record = read_json(path, "rerun its stage to rewrite it")
        if isinstance(record, dict) and record.get("stage") != OWN_STAGE and _time(record.get("started")):
            records.append(record)
    return sorted(records, key=lambda r: _time(r["started"]))


def _cell(record: dict[str, Any], field: str, digits: int | None) -> str:
    value = record.get(field)
    if digits is None:
        return f"<td>{escape(str(value)) if value is not None else '&ndash;'}</td>"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return '<td class="num">&ndash;</td>'
    shown = value / 2**20 if field in _BYTES else value
    return f'<td class="num">{shown:.{digits}f}</td>'


def _counts(record: dict[str, Any]) -> str:
    counts = record.get("counts") or {}
    return escape(", ".join(f"{key} {value:g}" for key, value in counts.items() if isinstance(value, int | float)))


def timeline_section(records: list[dict[str, Any]]) -> str:
    """A Gantt-style bar per stage (start and length on one time axis), then the resource table."""
    head = "<h2>Stage timeline and resources</h2>"
    if not records:
        return head + _note(f"No stage traces: {TRACE_DIR}/ is empty (run `dvc repro`; each stage writes one).")
    starts = [_time(r["started"]) for r in records]
    origin = min(starts)
    ends = [s + datetime.timedelta(seconds=float(r.get("wall_s") or 0)) for s, r in zip(starts, records, strict=True)]
    span = max((max(ends) - origin).total_seconds(), 1e-9)
    bars = []
    for start, end, record in zip(starts, ends, records, strict=True):
        left = 100 * (start - origin).total_seconds() / span
        width = max(100 * (end - start).total_seconds() / span, 0.3)
        bars.append(
            f'<tr data-stage="{escape(record["stage"])}"><th>{escape(record["stage"])}</th><td class="barcell" '
            f'style="width:30rem"><span class="bar stego" style="margin-left:{left:.2f}%;width:{width:.2f}%"></span></td>'
            f'<td class="num">{float(record.get("wall_s") or 0):.1f} s</td></tr>'
        )
    heading = "".join(f"<th>{escape(label)}</th>" for _, label, _ in RESOURCE_COLUMNS)
    rows = "".join(
        f'<tr data-stage="{escape(r["stage"])}"><th>{escape(r["stage"])}</th>'
        + "".join(_cell(r, field, digits) for field, _, digits in RESOURCE_COLUMNS)
        + f"<td>{_counts(r)}</td></tr>"
        for r in records
    )
    return (
        head + f'<p>From {escape(origin.isoformat(timespec="seconds"))}, {span:.1f} s from the first stage\'s start '
        "to the last one's end (a stage DVC found up to date keeps the trace of the run that made it).</p>"
        + f'<table id="timeline">{"".join(bars)}</table>'
        + f'<table id="resources"><tr><th>stage</th>{heading}<th>processed</th></tr>{rows}</table>'
        + _note("CPU % above 100 means threads ran in parallel. Peak RSS is the stage process's high-water mark; "
                "child CPU counts only child processes that ended inside the stage (not Dask workers elsewhere). "
                "Read and written count every byte through system calls, page cache included.")
    )


def provenance_section(scores: dict[str, Any] | None, records: list[dict[str, Any]]) -> str:
    """What produced the scores: versions, CUDA and GPU, project version, git commit."""
    head = "<h2>Provenance</h2>"
    origin = (scores or {}).get(PROVENANCE) or next((r.get(PROVENANCE) for r in reversed(records) if r.get(PROVENANCE)), None)
    if not isinstance(origin, dict):
        return head + _note(f"No provenance recorded ({PATHS['scores']} predates it, and no stage trace has it).")
    commit = origin.get("git_commit")
    facts = [
        ("project version", origin.get("project")),
        ("git commit", f"{commit}{' (uncommitted changes)' if origin.get('git_dirty') else ''}" if commit else
         "none (not a git work tree)"),
        ("python", origin.get("python")), ("platform", origin.get("platform")),
        ("CUDA", origin.get("cuda") or "not used"), ("GPU", origin.get("gpu") or "not used"),
        *sorted((name, version or "not installed") for name, version in (origin.get("packages") or {}).items()),
    ]
    rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>" for k, v in facts)
    source = f"{PATHS['scores']} (the evaluate stage)" if (scores or {}).get(PROVENANCE) else "the latest stage trace"
    return head + f'<table id="provenance">{rows}</table>' + _note(f"Recorded by {source}.")
