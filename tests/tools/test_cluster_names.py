"""Tests for stego_tasks.tools.cluster_names: the names file and its checks (`stego names init`: `test_names_init.py`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main
from stego_tasks.paths import PATHS
from stego_tasks.tools.cluster_names import IGNORED, load_names
from tests.conftest import REPO


def _names(tmp_path: Path, text: str, n_clusters: int = 6):
    path = tmp_path / "cluster_names.yaml"
    path.write_text(text)
    return load_names(path, n_clusters)


def test_names_merge_and_ignore_into_classes_in_cluster_order(tmp_path: Path) -> None:
    names = _names(tmp_path, "names:\n  4: road\n  1: tree\n  3: tree\nignore: [2]\n")
    assert names.class_names() == ("cluster 0", "tree", "road", "cluster 5")
    assert names.cluster_to_class().tolist() == [0, 1, IGNORED, 1, 2, 3]
    assert names.classes_of() == {"cluster 0": [0], "tree": [1, 3], "road": [4], "cluster 5": [5]}
    assert names.label(2) == "ignored" and names.label(0) == "cluster 0"


def test_the_committed_names_file_and_a_missing_one_name_nothing(tmp_path: Path) -> None:
    assert load_names(REPO / PATHS["cluster_names"], 27).is_empty, "the repository's names file must start empty"
    missing = load_names(tmp_path / "none.yaml", 3)
    assert missing.is_empty and missing.cluster_to_class().tolist() == [0, 1, 2]


@pytest.mark.parametrize("text,message", [
    ("names:\n  6: sky\n", r"names: id 6 is not a cluster of this run \(ids 0..5\)"),
    ("names:\n  -1: sky\n", r"names: id -1 is not a cluster of this run"),
    ("names:\n  sky: 1\n", r"names: id 'sky' is not a cluster id"),
    ("names:\n  1: sky\n  1: road\n", r"key '1' appears a second time"),
    ("names:\n  1: [sky\n", r"line \d+, column \d+"),
    ("names:\n  1: yes\n", r"the name of cluster 1 is True, not text"),
    ("names:\n  1: sky\nignore: [1]\n", r"cluster 1 is both named \('sky'\) and ignored"),
    ("ignore: [2, 2]\n", r"cluster 2 is listed twice under `ignore`"),
    ("names: [sky]\n", r"`names` must map cluster ids to names"),
    ("clusters: {}\n", r"unknown key\(s\) clusters"),
])
def test_bad_names_files_are_refused_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        _names(tmp_path, text)
    assert "cluster_names.yaml" in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_cli_turns_a_bad_names_file_into_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / PATHS["model"]).mkdir(parents=True)
    (tmp_path / PATHS["model"] / "model.json").write_text(json.dumps({"n_classes": 3, "train": {"extra_clusters": 0}}))
    (tmp_path / PATHS["cluster_names"]).write_text("names:\n  7: sky\n")
    assert main(["export", "--run", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "id 7 is not a cluster of this run" in err, err


