"""The report's stage timeline, resource table and provenance, from trace files with known numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from stego_tasks.paths import PATHS
from stego_tasks.report import render
from stego_tasks.tools.report_dag import dag_svg, pipeline_graph
from stego_tasks.tools.report_trace import provenance_section, timeline_section, trace_records
from tests.conftest import REPO

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


DVC_YAML = """
stages:
  a:
    cmd: x
    outs: ["${paths.manifest}"]
  b:
    cmd: x
    deps: ["${paths.manifest}", "${corpus.root}/images"]
    outs: [out/b]
  c:
    cmd: x
    deps: [out/b/part.json, "${paths.manifest}"]
    metrics: [m/c.json]
  d:
    cmd: x
    deps: [m/c.json]
"""


def test_the_dag_comes_from_dvc_yaml_with_implied_edges_left_out() -> None:
    names, edges = pipeline_graph(DVC_YAML, {"corpus": {"root": "out/b"}})
    assert names == ["a", "b", "c", "d"]
    # a -> c is implied by a -> b -> c; b -> c holds twice (a file inside b's out folder).
    assert edges == {("a", "b"), ("b", "c"), ("c", "d")}, f"edges {sorted(edges)}"
    svg = dag_svg(names, edges)
    xs = {name: float(x) for name, x in re.findall(r'<g data-stage="(\w)"><rect x="([\d.]+)"', svg)}
    assert xs["a"] < xs["b"] < xs["c"] < xs["d"], f"columns follow the order: {xs}"
    assert svg.count("<line ") == 3


def test_the_repos_own_pipeline_is_one_chain_from_demo_data_to_report_with_the_weights_check() -> None:
    root = REPO
    names, edges = pipeline_graph((root / "dvc.yaml").read_text(), yaml.safe_load((root / "params.yaml").read_text()))
    chain = ["demo_data", "ingest", "validate", "extract", "knn", "train", "cluster", "crf", "evaluate", "report"]
    # The checkpoint's content hash (the always-changed `weights` stage) feeds extract alone.
    expected = set(zip(chain[:-1], chain[1:], strict=True)) | {("weights", "extract")}
    assert edges == expected, f"edges {sorted(edges)}"
