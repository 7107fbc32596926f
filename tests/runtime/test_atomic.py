"""Crash-safe writes: the target is either the old content or the complete new one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stego_tasks.runtime import atomic


def test_write_json_is_sorted_and_complete(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "scores.json"
    atomic.write_json(target, {"b": 1, "a": [1.5, 2]})
    assert target.read_text() == '{\n  "a": [\n    1.5,\n    2\n  ],\n  "b": 1\n}\n', "unexpected JSON layout"
    assert [p.name for p in target.parent.iterdir()] == ["scores.json"], "temporary file left behind"


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "manifest.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old", "a failed write must leave the previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv"], "temporary file left behind"


def test_own_directory_target_is_replaced_whole_and_a_foreign_one_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "overlays"
    target.mkdir()
    (target / "0007.png").write_text("old")  # what evaluate writes: overlays named NNNN.png
    with atomic.atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "0000.png").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["0000.png"], "old directory content must be gone"
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="overlays"), atomic.atomic_path(target) as tmp:
        tmp.mkdir()
    assert (target / "notes.txt").read_text() == "mine", "a folder with the user's file must be left alone"
    assert json.loads(json.dumps(sorted(p.name for p in tmp_path.iterdir()))) == ["overlays"], "temp dir left behind"


def test_read_csv_rows_refuses_damage_in_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("step,loss\n1,0.5\n")
    assert atomic.read_csv_rows(path) == (["step", "loss"], [{"step": "1", "loss": "0.5"}])
    path.write_text("")
    assert atomic.read_csv_rows(path) == ([], [])
    for content in (b"\xe6\x00 not utf-8", b"step,loss\n1,\"" + b"9" * 200_000 + b"\"\n"):  # a field over csv's limit
        path.write_bytes(content)
        with pytest.raises(ValueError, match=r"log\.csv is not a readable CSV file \(.*\); rerun `stego train`") as error:
            atomic.read_csv_rows(path, redo="rerun `stego train`")
        assert "\n" not in str(error.value)
