"""Tests for stego_tasks.data.corpus_layout: the scan of ROOT/images/{train,val} and ROOT/labels/{train,val}.

Proves that `scan` returns the image candidates of both splits in name order and one row
per other entry (quarantined ones with their reason, skipped ones prefixed `skipped: `,
entries beside the split folders included), that labels no image uses are listed, that
labels are grouped by stem, that names which are not UTF-8 are shown escaped, and that an
empty corpus or a folder that cannot be listed is one sentence saying what to do. Every
corpus is made here, under tmp_path; nothing is decoded.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stego_tasks.data import corpus_layout
from stego_tasks.data.corpus_layout import (
    EmptyCorpusError,
    empty_corpus_error,
    is_utf8,
    labels_by_stem,
    list_dir,
    scan,
    shown_path,
    unused_labels,
)
from stego_tasks.errors import InvalidInputError

EXTENSIONS = ".bmp, .jpeg, .jpg, .png, .tif, .tiff, .webp"


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_scan_finds_images_in_name_order_and_lists_every_other_entry(tmp_path: Path) -> None:
    root = tmp_path
    for rel in ("images/train/b.png", "images/train/a.jpg", "images/train/.DS_Store", "images/train/notes.txt",
                "images/train/sub/deep.png", "images/val/c.png", "images/extra.txt", "images/test/d.png"):
        _touch(root / rel)
    os.mkfifo(root / "images" / "val" / "pipe.png")

    found, listed = scan(root)
    assert found == [("train", root / "images/train/a.jpg"), ("train", root / "images/train/b.png"),
                     ("val", root / "images/val/c.png")], f"found {found}"
    assert sorted(listed) == sorted([
        ("images/train/.DS_Store", "train", "skipped: hidden file"),
        ("images/train/notes.txt", "train", f"skipped: not an image file name (.txt); images end in {EXTENSIONS}"),
        ("images/train/sub", "train", "skipped: sub-folder (images must lie directly in the split folder)"),
        ("images/val/pipe.png", "val", "a named pipe (FIFO), not a regular file"),
        ("images/extra.txt", "", "skipped: not in images/train or images/val"),
        ("images/test", "", "skipped: not in images/train or images/val"),
    ]), f"listed {listed}"


def test_entries_beside_the_splits_are_listed_only_once_images_were_found(tmp_path: Path) -> None:
    _touch(tmp_path / "images" / "flat.png")
    assert scan(tmp_path) == ([], []), "a corpus without split images lists nothing (the empty-corpus error says why)"


def test_labels_no_image_uses_are_listed_as_skipped(tmp_path: Path) -> None:
    for rel in ("labels/train/a.png", "labels/train/z.png", "labels/train/notes.txt", "labels/val/.hidden.png"):
        _touch(tmp_path / rel)
    rows = unused_labels(tmp_path, used={"labels/train/a.png"})
    assert sorted(rows) == sorted([
        ("labels/train/z.png", "train", "skipped: label without an image named z.* in images/train"),
        ("labels/train/notes.txt", "train", f"skipped: not an image file name (.txt); images end in {EXTENSIONS}"),
        ("labels/val/.hidden.png", "val", "skipped: hidden file"),
    ]), f"{rows}"
    assert unused_labels(tmp_path / "nothing", used=set()) == [], "no labels folder, no rows"


def test_labels_are_grouped_by_stem_per_split(tmp_path: Path) -> None:
    for rel in ("labels/train/a.png", "labels/train/a.PNG", "labels/train/b.png"):
        _touch(tmp_path / rel)
    assert labels_by_stem(tmp_path) == {"train": {"a": ["a.PNG", "a.png"], "b": ["b.png"]}, "val": {}}


def test_names_that_are_not_utf8_are_shown_escaped(tmp_path: Path) -> None:
    name = os.fsdecode(b"bad\xff.png")  # undecodable bytes arrive as a lone surrogate
    assert not is_utf8(name) and is_utf8("caf\u00e9.png"), "only the surrogate name is not UTF-8"
    assert shown_path(f"images/train/{name}") == "images/train/bad\\xff.png", shown_path(name)
    assert shown_path("images/train/caf\u00e9.png") == "images/train/caf\u00e9.png", "UTF-8 names are kept"


def test_a_folder_that_cannot_be_listed_is_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulated: the tests run as root, which lists any folder whatever its mode.
    def refuse(path: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(corpus_layout.os, "scandir", refuse)
    with pytest.raises(InvalidInputError, match=r"images cannot be listed \(Permission denied\); make it readable and rerun ingest\.$"):
        list_dir(tmp_path / "images")


def test_the_empty_corpus_error_says_where_it_looked_and_what_is_wrong(tmp_path: Path) -> None:
    layout = ("ROOT/images/{train,val}/*.{bmp,jpeg,jpg,png,tif,tiff,webp} "
              "with optional ROOT/labels/{train,val}/<same stem>.png")
    missing = empty_corpus_error(tmp_path / "nowhere")
    assert isinstance(missing, EmptyCorpusError) and isinstance(missing, InvalidInputError), type(missing)
    assert str(missing) == (f"no images found in {tmp_path}/nowhere/images/train or {tmp_path}/nowhere/images/val "
                            f"(the root folder does not exist); expected the layout {layout}."), str(missing)
    _touch(tmp_path / "images" / "flat.jpg")
    assert f"(images lie directly in {tmp_path}/images; move them into images/train)" in str(empty_corpus_error(tmp_path))
    (tmp_path / "images" / "flat.jpg").unlink()
    plain = str(empty_corpus_error(tmp_path))
    assert plain == f"no images found in {tmp_path}/images/train or {tmp_path}/images/val; expected the layout {layout}.", plain
