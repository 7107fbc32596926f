"""Tests for `stego_tasks.paths`: the one file that says where every artifact lives.

They prove `PATHS` is the packaged `paths.yaml` read as a read-only mapping of relative POSIX
paths, that `run_path` joins a run folder with one of them, and that a paths file that is not a
mapping, has an empty or non-string entry, or points outside the project is refused in one
sentence naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
import yaml

from stego_tasks.errors import InvalidInputError
from stego_tasks.paths import PATHS, PATHS_FILE, load_paths, run_path


def test_paths_are_the_packaged_file_read_only_and_relative() -> None:
    assert dict(PATHS) == yaml.safe_load(PATHS_FILE.read_text())["paths"]
    for name, value in PATHS.items():
        assert not PurePosixPath(value).is_absolute() and ".." not in PurePosixPath(value).parts, (name, value)
    with pytest.raises(TypeError):
        PATHS["model"] = "elsewhere"  # type: ignore[index]


def test_run_path_joins_the_run_folder_and_the_artifacts_path(tmp_path: Path) -> None:
    assert run_path(tmp_path, "scores") == tmp_path / "metrics" / "scores.json"
    assert run_path(str(tmp_path), "model") == tmp_path / PATHS["model"]
    with pytest.raises(KeyError):
        run_path(tmp_path, "no_such_artifact")


def test_a_valid_paths_file_elsewhere_is_read_as_written(tmp_path: Path) -> None:
    path = tmp_path / "paths.yaml"
    path.write_text("paths:\n  model: out/model\n  scores: m/s.json\n")
    assert dict(load_paths(path)) == {"model": "out/model", "scores": "m/s.json"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("paths: []\n", r"must hold a mapping `paths:` of artifact names to paths\.$"),
        ("- model\n", r"must hold a mapping `paths:` of artifact names to paths\.$"),
        ("paths: {}\n", r"must hold a mapping `paths:` of artifact names to paths\.$"),
        ("paths:\n  model: '  '\n", r": paths\.model must be a non-empty string, got '  '\.$"),
        ("paths:\n  model: 3\n", r": paths\.model must be a non-empty string, got 3\.$"),
        ("paths:\n  model: /abs/model\n", r": paths\.model must be relative to the project folder, got '/abs/model'\.$"),
        ("paths:\n  model: ../model\n", r": paths\.model must be relative to the project folder, got '\.\./model'\.$"),
    ],
)
def test_a_bad_paths_file_is_one_sentence_naming_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "paths.yaml"
    path.write_text(text)
    with pytest.raises(InvalidInputError, match=f"^{path}.*{message}") as raised:
        load_paths(path)
    assert "\n" not in str(raised.value)
