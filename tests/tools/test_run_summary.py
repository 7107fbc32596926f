"""Tests for stego_tasks.tools.run_summary: the compact table a run ends with."""

from __future__ import annotations

import json
from pathlib import Path

from stego_tasks.tools.run_summary import format_summary, summary_from_files

SCORES = {
    "backbone": "dino_vits8", "backbone_weights": "pretrained", "weights_source": "hub-cache", "preset": "cocostuff27_vits8",
    "cluster": {"accuracy": 48.31, "miou": 24.46}, "cluster_crf": {"accuracy": 50.0, "miou": 25.04},
    "linear": {"accuracy": 74.4, "miou": 38.3}, "kmeans": {"accuracy": 34.2, "miou": 9.5},
    "protocol": {"select": "best", "uses_labels": True},
}


def test_table_has_a_row_per_method_and_fits_a_terminal() -> None:
    text = format_summary(SCORES, "reports/report.html")
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = {line[:18].strip(): line[18:].split() for line in lines[2:6]}
    assert rows == {"cluster": ["48.3", "24.5"], "cluster + CRF": ["50.0", "25.0"], "linear": ["74.4", "38.3"],
                    "k-means baseline": ["34.2", "9.5"]}
    assert "preset:   cocostuff27_vits8" in lines
    assert "backbone: dino_vits8 (hub-cache)" in lines
    assert "report:   reports/report.html" in lines
    assert any("USES LABELS" in line for line in lines)


def test_missing_or_broken_scores_give_one_line(tmp_path: Path) -> None:
    assert "missing" in summary_from_files(tmp_path / "scores.json")
    (tmp_path / "scores.json").write_text("{")
    assert summary_from_files(tmp_path / "scores.json").startswith("cannot read")
    (tmp_path / "scores.json").write_bytes(b"\x8a\x00 not utf-8")  # once a UnicodeDecodeError after a whole run
    assert summary_from_files(tmp_path / "scores.json").startswith("cannot read")
    (tmp_path / "scores.json").write_text(json.dumps({"preset": "custom"}))
    assert "nothing scored" in summary_from_files(tmp_path / "scores.json")
