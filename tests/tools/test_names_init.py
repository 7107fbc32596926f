"""Tests for `tools.names_init` (`stego names init`): a starting names file from a run's gallery.

They prove each cluster gets its matched class's name when the run had labels and `cluster <id>`
otherwise (a mapping of the wrong length, an unmatched cluster or an index past the class names
suggests nothing), that a user's file naming clusters is kept unless `force`, that an empty or
unreadable file does not block a first init only when it names nothing, and that a run without a
gallery or with a damaged one is one sentence naming the command to run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from stego_tasks.errors import InvalidInputError, MissingInputError
from stego_tasks.paths import PATHS
from stego_tasks.tools.cluster_names import load_names
from stego_tasks.tools.names_init import write_init


def _gallery(run: Path, shares: list[float]) -> None:
    folder = run / PATHS["gallery"]
    folder.mkdir(parents=True)
    clusters = [{"id": k, "pixel_share": s, "image_share": 0.5} for k, s in enumerate(shares)]
    (folder / "gallery.json").write_text(json.dumps({"clusters": clusters}))


def test_names_init_suggests_the_matched_classes_and_keeps_the_users_file(tmp_path: Path) -> None:
    _gallery(tmp_path, [0.5, 0.3, 0.2])
    (tmp_path / PATHS["assignment"]).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / PATHS["assignment"]).write_text(json.dumps({"cluster_to_class": [1, -1, 0], "class_names": ["sky", "road"]}))
    out = tmp_path / PATHS["cluster_names"]
    result = write_init(tmp_path, out)
    assert result == {"out": str(out), "clusters": 3, "suggested": 2}
    names = load_names(out, 3)
    assert names.names == {0: "road", 1: "cluster 1", 2: "sky"} and not names.ignore
    assert "50.0 % of pixels" in out.read_text(), out.read_text()
    with pytest.raises(ValueError, match="already names clusters; edit it, or pass --force"):
        write_init(tmp_path, out)
    write_init(tmp_path, out, force=True)


def test_names_init_without_labels_names_every_cluster_by_id(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _gallery(tmp_path, [0.6, 0.4])
    (tmp_path / PATHS["cluster_names"]).write_text("names: {}\nignore: []\n")  # the committed empty file is replaced
    assert main(["names", "init", "--run", str(tmp_path)]) == 0
    names = load_names(tmp_path / PATHS["cluster_names"], 2)
    assert names.names == {0: "cluster 0", 1: "cluster 1"}
    assert np.array_equal(names.cluster_to_class(), [0, 1])
    assert "wrote" in capsys.readouterr().out
    empty = tmp_path / "fresh"
    empty.mkdir()
    assert main(["names", "init", "--run", str(empty)]) == 2, "no gallery yet: one sentence, status 2"


def _assignment(run: Path, mapping: object, class_names: list[str]) -> None:
    path = run / PATHS["assignment"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cluster_to_class": mapping, "class_names": class_names}))


def test_a_class_index_past_the_names_or_not_an_integer_suggests_nothing(tmp_path: Path) -> None:
    _gallery(tmp_path, [0.4, 0.3, 0.2, 0.1])
    _assignment(tmp_path, [0, 5, "1", 1], ["sky", "road"])
    result = write_init(tmp_path, tmp_path / "names.yaml")
    assert result["suggested"] == 2, result
    assert load_names(tmp_path / "names.yaml", 4).names == {0: "sky", 1: "cluster 1", 2: "cluster 2", 3: "road"}


def test_an_assignment_for_another_number_of_clusters_is_ignored(tmp_path: Path) -> None:
    _gallery(tmp_path, [0.5, 0.5])
    _assignment(tmp_path, [0, 1, 1], ["sky", "road"])
    result = write_init(tmp_path, tmp_path / "names.yaml")
    assert result == {"out": str(tmp_path / "names.yaml"), "clusters": 2, "suggested": 0}, result
    assert load_names(tmp_path / "names.yaml", 2).names == {0: "cluster 0", 1: "cluster 1"}


def test_a_file_that_only_ignores_clusters_is_kept_too(tmp_path: Path) -> None:
    _gallery(tmp_path, [0.5, 0.5])
    out = tmp_path / "names.yaml"
    out.write_text("names: {}\nignore: [1]\n")
    with pytest.raises(InvalidInputError, match=r"already names clusters; edit it, or pass --force to replace it with a fresh one\.$"):
        write_init(tmp_path, out)
    assert out.read_text() == "names: {}\nignore: [1]\n", "the user's file was changed"


def test_an_unreadable_existing_file_is_kept_without_force_and_replaced_with_it(tmp_path: Path) -> None:
    _gallery(tmp_path, [1.0])
    out = tmp_path / "names.yaml"
    out.write_text("names: [unclosed\n")
    with pytest.raises(InvalidInputError, match="already names clusters"):
        write_init(tmp_path, out)
    write_init(tmp_path, out, force=True)
    assert load_names(out, 1).names == {0: "cluster 0"}


def test_a_run_without_a_gallery_or_with_a_damaged_one_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match=rf"has no {PATHS['gallery']}/gallery\.json; run `dvc repro` "
                                                 r"\(its evaluate stage writes it\) before `stego names init`\.$"):
        write_init(tmp_path, tmp_path / "names.yaml")
    (tmp_path / PATHS["gallery"]).mkdir(parents=True)
    (tmp_path / PATHS["gallery"] / "gallery.json").write_text("[]")
    with pytest.raises(InvalidInputError, match=r"holds a JSON list, not the mapping evaluate writes; rerun `stego evaluate`\.$"):
        write_init(tmp_path, tmp_path / "names.yaml")
    assert not (tmp_path / "names.yaml").exists()


def test_every_cluster_gets_its_sizes_as_a_comment(tmp_path: Path) -> None:
    _gallery(tmp_path, [0.75, 0.25])
    write_init(tmp_path, tmp_path / "names.yaml")
    lines = [line for line in (tmp_path / "names.yaml").read_text().splitlines() if line.startswith("  ")]
    assert len(lines) == 2 and "75.0 % of pixels" in lines[0] and "25.0 % of pixels" in lines[1], lines
    assert all("50.0 % of images" in line for line in lines), lines
    assert np.array_equal(load_names(tmp_path / "names.yaml", 2).cluster_to_class(), [0, 1])


@pytest.mark.parametrize("gallery", [{"clusters": "x"}, {"clusters": [1, 2]}, {}, {"clusters": []}])
def test_a_gallery_without_a_list_of_clusters_is_one_sentence(tmp_path: Path, gallery: dict) -> None:
    """'x' or [1, 2] was an AttributeError traceback; {} wrote a names file of no clusters."""
    (tmp_path / PATHS["gallery"]).mkdir(parents=True)
    (tmp_path / PATHS["gallery"] / "gallery.json").write_text(json.dumps(gallery))
    with pytest.raises(InvalidInputError, match=r"gallery\.json: `clusters` must list one mapping per cluster, as evaluate "
                                                r"writes it; rerun `stego evaluate`\.$"):
        write_init(tmp_path, tmp_path / "names.yaml")
    assert not (tmp_path / "names.yaml").exists()


def test_class_names_that_are_not_text_suggest_nothing(tmp_path: Path) -> None:
    _gallery(tmp_path, [0.5, 0.5])
    _assignment(tmp_path, [0, 1], [3, "road"])
    assert write_init(tmp_path, tmp_path / "names.yaml")["suggested"] == 1
    assert load_names(tmp_path / "names.yaml", 2).names == {0: "cluster 0", 1: "road"}
