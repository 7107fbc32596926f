"""Tests for `tools.predict_output`: the output folder of `stego predict` and its rules.

They prove each image gets one unique output stem (sub-paths kept, clashes resolved by the common
folder, then the extension, then a counter), that legend.json's content follows the run's
assignment and names file, that a folder is recognised as predict's only by its legend (files
listed by this version, or named like predict's outputs by an older one, never outside the
folder), that an output folder inside an input, holding an input, a file, or holding foreign
files is one sentence, and that `publish` replaces exactly the previous run's files, removing
the folders that leaves empty.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from stego_tasks.errors import InvalidInputError
from stego_tasks.method.model import MODEL_WEIGHTS
from stego_tasks.tools.cluster_names import ClusterNames
from stego_tasks.tools.predict import collect_images
from stego_tasks.tools.predict_output import (
    LEGEND,
    WRITER,
    check_out_dir,
    legend,
    model_digest,
    output_keys,
    previous_outputs,
    publish,
)
from stego_tasks.tools.trained_run import UNMATCHED
from stego_tasks.tools.visualize import palette


def test_output_keys_keep_sub_paths_on_clashes(tmp_path: Path):
    for name in ("day/x.jpg", "night/x.jpg", "day/y.jpg", "day/y.png", "day/.hidden.png", "day/out/old.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    images, problems = collect_images([tmp_path / "day", tmp_path / "night", tmp_path / "nope"], exclude=tmp_path / "day" / "out")
    assert [p.name for p, _ in problems] == ["nope"], f"problems {problems}"
    keys = {str(path.relative_to(tmp_path)): str(key) for (path, _), key in zip(images, output_keys(images), strict=True)}
    assert keys == {"day/x.jpg": "day/x", "night/x.jpg": "night/x", "day/y.jpg": "y_jpg", "day/y.png": "y_png"}, keys


def test_the_same_file_given_twice_gets_numbered_keys(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_bytes(b"")
    images = [(tmp_path / "x.jpg", Path("x.jpg")), (tmp_path / "x.jpg", Path("x.jpg")), (tmp_path / "z.png", Path("z.png"))]
    assert output_keys(images) == [Path("x_jpg"), Path("x_jpg_2"), Path("z")]


def _fake_run(mapping: list[int] | None, names: ClusterNames | None = None) -> SimpleNamespace:
    """What `legend` reads of a `Run`: 3 clusters, 2 classes."""
    return SimpleNamespace(
        n_clusters=3, cluster_to_class=None if mapping is None else np.array(mapping), class_names=("sky", "road"),
        names=names, model=SimpleNamespace(info={"backbone": "dino_vits8"}),
        backbone=SimpleNamespace(weights_source="file:w.pth"), resolution=224,
    )


def test_the_legend_colours_clusters_and_classes_and_marks_the_unmatched() -> None:
    got = legend(_fake_run([1, -1, 0]))  # type: ignore[arg-type]
    colours = palette()
    assert got["clusters"] == {"0": {"colour": colours[0].tolist(), "class": 1}, "1": {"colour": colours[1].tolist(), "class": None},
                               "2": {"colour": colours[2].tolist(), "class": 0}}, got["clusters"]
    assert got["classes"] == {"0": {"name": "sky", "colour": colours[0].tolist()}, "1": {"name": "road", "colour": colours[1].tolist()},
                              str(UNMATCHED): {"name": "unmatched", "colour": [0, 0, 0]}}, got["classes"]
    assert got["named"] is None
    assert (got["backbone"], got["backbone_weights"], got["resolution"]) == ("dino_vits8", "file:w.pth", 224)
    json.dumps(got)


def test_without_labels_the_legend_has_no_classes_and_a_names_file_gives_named_classes() -> None:
    names = ClusterNames(3, names={0: "water", 2: "water"}, ignore=frozenset({1}))
    got = legend(_fake_run(None, names))  # type: ignore[arg-type]
    assert got["classes"] is None
    assert got["named"] == {"0": {"name": "water", "colour": palette()[0].tolist(), "clusters": [0, 2]},
                            str(UNMATCHED): {"name": "ignored", "colour": [0, 0, 0], "clusters": [1]}}, got["named"]
    assert [got["clusters"][str(c)]["name"] for c in range(3)] == ["water", "ignored", "water"]


def _legend_file(folder: Path, data: object) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LEGEND).write_text(json.dumps(data))


def test_previous_outputs_are_the_files_predict_listed_never_outside_the_folder(tmp_path: Path) -> None:
    _legend_file(tmp_path, {"written_by": WRITER, "files": ["a_clusters.png", "sub/b_overlay.png", "/etc/passwd", "../up.png", "", 3]})
    assert previous_outputs(tmp_path) == ["a_clusters.png", "sub/b_overlay.png"]


def test_an_older_legend_stands_for_the_files_named_like_predicts_outputs(tmp_path: Path) -> None:
    _legend_file(tmp_path, {"clusters": {}, "classes": None, "backbone": "x", "resolution": 8})
    for name in ("a_clusters.png", "sub/b_named.png", "notes.txt", "c.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert previous_outputs(tmp_path) == ["a_clusters.png", "sub/b_named.png"]


@pytest.mark.parametrize("content", ['{"written_by": "someone else", "files": []}', "[1, 2]", "{broken", None])
def test_a_folder_without_predicts_legend_is_not_predicts(tmp_path: Path, content: str | None) -> None:
    if content is not None:
        (tmp_path / LEGEND).write_text(content)
    assert previous_outputs(tmp_path) is None


def test_a_new_or_empty_folder_has_no_previous_files_and_predicts_own_folder_its_files(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    assert check_out_dir([photos], tmp_path / "new") == []
    (tmp_path / "empty").mkdir()
    assert check_out_dir([photos], tmp_path / "empty") == []
    _legend_file(tmp_path / "old", {"written_by": WRITER, "files": ["a_clusters.png"]})
    assert check_out_dir([photos], tmp_path / "old") == ["a_clusters.png"]


def test_an_output_folder_predict_may_not_write_is_one_sentence(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"")
    with pytest.raises(InvalidInputError, match=r"is inside the input folder .*; pass an --out folder outside every input\.$"):
        check_out_dir([photos], photos / "out")
    with pytest.raises(InvalidInputError, match=r"is inside the input folder"):
        check_out_dir([photos], photos)
    with pytest.raises(InvalidInputError, match=r"^the input .*a\.jpg lies inside --out .*; pass an --out folder outside every input\.$"):
        check_out_dir([photos / "a.jpg"], photos)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInputError, match=r"is a file, not a folder; pass a folder \(new, empty, or an earlier predict's\)\.$"):
        check_out_dir([photos], tmp_path / "file")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(InvalidInputError, match=r"already holds files that stego predict did not write .*; pass a new or empty folder\.$"):
        check_out_dir([photos], tmp_path / "mine")


def test_publish_replaces_exactly_the_previous_files_and_removes_emptied_folders(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for name in ("old_clusters.png", "sub/deep/gone_overlay.png", "keep/kept_clusters.png", "user.txt"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("old " + name)
    staging = tmp_path / "staging"
    for name in ("new_clusters.png", "keep/kept_clusters.png"):
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_text("new " + name)
    previous = ["old_clusters.png", "sub/deep/gone_overlay.png", "keep/kept_clusters.png"]
    written = publish(staging, out, previous, {"written_by": WRITER, "run": "r"})
    assert written == ["keep/kept_clusters.png", "new_clusters.png"]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["keep/kept_clusters.png", LEGEND, "new_clusters.png", "user.txt"], files
    assert not (out / "sub").exists(), "a folder emptied by the removal was left behind"
    assert (out / "keep" / "kept_clusters.png").read_text() == "new keep/kept_clusters.png"
    assert json.loads((out / LEGEND).read_text()) == {"written_by": WRITER, "run": "r", "complete": True, "files": written}
    assert previous_outputs(out) == written


def test_the_model_digest_is_the_weights_files_sha256(tmp_path: Path) -> None:
    assert model_digest(SimpleNamespace(model_dir=None)) is None  # type: ignore[arg-type]
    assert model_digest(SimpleNamespace(model_dir=tmp_path)) is None, "no weights file"  # type: ignore[arg-type]
    (tmp_path / MODEL_WEIGHTS).write_bytes(b"weights")
    assert model_digest(SimpleNamespace(model_dir=tmp_path)) == hashlib.sha256(b"weights").hexdigest()  # type: ignore[arg-type]
