"""The report's stage timeline, resource table and provenance, from trace files with known numbers
(the pipeline DAG has its own tests, `test_report_dag.py`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from stego_tasks.paths import PATHS
from stego_tasks.report import render
from stego_tasks.tools.report_trace import provenance_section, timeline_section, trace_records

ORIGIN = {"project": "0.1.0", "python": "3.11.7", "platform": "Linux", "packages": {"torch": "2.14.1", "zarr": "3.1.0"},
          "cuda": None, "gpu": None, "git_commit": "a" * 40, "git_dirty": True}


def _trace(stage: str, started: str, wall: float, **extra: object) -> dict:
    return {"stage": stage, "started": started, "wall_s": wall, "cpu_s": wall / 2, "cpu_percent": 50.0,
            "peak_rss_mb": 321.0, "read_bytes": 3 * 2**20, "write_bytes": 2**20, "device": "cpu", "gpu_peak_mb": None,
            "counts": {"rows.train": 12}, "provenance": ORIGIN, **extra}


def _write(run: Path, records: list[dict]) -> None:
    folder = run / PATHS["trace"]
    folder.mkdir(parents=True)
    for record in records:
        (folder / f"{record['stage']}.json").write_text(json.dumps(record))


def test_timeline_places_each_stage_on_one_time_axis(tmp_path: Path) -> None:
    _write(tmp_path, [
        _trace("knn", "2026-12-05T10:00:10.000+00:00", 10.0),
        _trace("extract", "2026-12-05T10:00:00.000+00:00", 10.0),
        _trace("report", "2026-12-05T10:00:30.000+00:00", 1.0),  # the page's own stage: left out
    ])
    records = trace_records(tmp_path)
    assert [r["stage"] for r in records] == ["extract", "knn"], "ordered by start, the report's own trace left out"
    html = timeline_section(records)
    bars = re.findall(r'data-stage="(\w+)".*?margin-left:([\d.]+)%;width:([\d.]+)%', html)
    assert bars == [("extract", "0.00", "50.00"), ("knn", "50.00", "50.00")], f"bars {bars}"
    row = re.search(r'<table id="resources">.*?<tr data-stage="knn">(.*?)</tr>', html).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    assert cells[:3] == ["10.0", "5.0", "50"], f"wall, CPU, CPU % of knn: {cells}"
    assert cells[5:7] == ["3.0", "1.0"], f"read and written MiB: {cells}"
    assert "rows.train 12" in row


def test_provenance_section_names_versions_and_the_dirty_commit() -> None:
    html = provenance_section({"provenance": ORIGIN}, [])
    assert "a" * 40 + " (uncommitted changes)" in html
    assert "<th>torch</th><td>2.14.1</td>" in html and "<th>GPU</th><td>not used</td>" in html
    assert "No provenance" in provenance_section(None, [])


def test_the_page_holds_timeline_and_provenance_and_a_broken_trace_is_one_sentence(tmp_path: Path) -> None:
    _write(tmp_path, [_trace("train", "2026-12-05T10:00:00.000+00:00", 4.0)])
    (tmp_path / PATHS["scores"]).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / PATHS["scores"]).write_text(json.dumps({"provenance": ORIGIN}))
    page = render(tmp_path)
    assert 'id="timeline"' in page and 'id="resources"' in page and 'id="provenance"' in page
    assert "No dvc.yaml in the run folder" in page, "the DAG section says why it is empty"
    (tmp_path / PATHS["trace"] / "knn.json").write_text("{not json")
    with pytest.raises(ValueError, match="knn.json is not valid JSON"):
        render(tmp_path)


