"""Tests for stego_tasks.data.adapters.cocostuff: COCO-Stuff in its curated-list layout -> cocostuff27.

Proves that the curated train and val lists (and only those) are adapted, fine labels go
through STEGO's `fine_to_coarse` to the 27 classes (checked against values copied by hand
from the reference, and against the things / stuff split the reference's order implies),
and that the corpus ingests cleanly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from stego_tasks.data import adapters
from stego_tasks.data.adapters import cocostuff
from stego_tasks.errors import MissingInputError
from tests.data.adapters.layouts import (
    COCO_EXPECTED,
    _check_corpus_yaml,
    _coco,
    _expected,
    _ingest,
    _read,
)


def test_cocostuff27_maps_links_and_ingests(tmp_path):
    src, dst = tmp_path / "cocostuff", tmp_path / "corpus"
    truth = _coco(src)
    summary = adapters.adapt("cocostuff27", src, dst)

    assert summary.n_images == {"train": 2, "val": 2}, f"images per split {summary.n_images}"
    assert summary.n_labels == {"train": 2, "val": 1}, f"labels per split {summary.n_labels}"
    assert (summary.n_linked, summary.n_converted, summary.failed) == (4, 3, ()), f"summary {summary}"
    for (split, stem), raw in truth.items():
        image, source = dst / "images" / split / f"{stem}.jpg", src / "images" / f"{split}2017" / f"{stem}.jpg"
        assert os.stat(image).st_ino == os.stat(source).st_ino, f"{image} is not a hard link to {source}"
        assert not image.is_symlink(), f"{image} is a symlink"
        label = dst / "labels" / split / f"{stem}.png"
        if raw is None:
            assert not label.exists(), f"{label} written for an image without annotation"
            continue
        got = _read(label)
        assert np.array_equal(got, _expected(raw, COCO_EXPECTED)), f"{label}: {sorted(set(got.ravel()))}"
    assert not (dst / "images" / "train" / "000000000030.jpg").exists(), "an image outside the curated list was adapted"
    covered = {v for v in COCO_EXPECTED.values() if v != 255}
    assert covered == set(range(27)), f"fixture should cover all 27 classes, covers {sorted(covered)}"

    names = ["electronic", "appliance", "food", "furniture", "indoor", "kitchen", "accessory", "animal",
             "outdoor", "person", "sports", "vehicle", "ceiling", "floor", "food", "furniture", "rawmaterial",
             "textile", "wall", "window", "building", "ground", "plant", "sky", "solid", "structural", "water"]
    _check_corpus_yaml(dst, src, "cocostuff27", 27, names)

    rows, quarantined = _ingest(dst, tmp_path / "out")
    assert quarantined == [], f"ingest quarantined {quarantined}"
    got_rows = {(r["split"], r["path"], r["label_path"]) for r in rows}
    want = {(s, f"images/{s}/{i}.jpg", "" if raw is None else f"labels/{s}/{i}.png") for (s, i), raw in truth.items()}
    assert got_rows == want, f"manifest rows {got_rows}"


def test_the_plan_lists_the_curated_ids_once_each_with_labels_where_annotated(tmp_path: Path) -> None:
    src = tmp_path / "cocostuff"
    truth = _coco(src)
    train_list = src / "curated" / "train2017" / "Coco164kFull_Stuff_Coarse.txt"
    train_list.write_text(train_list.read_text() + "000000000009\n")  # listed twice
    entries = cocostuff.plan(src)
    assert [(e.split, e.stem) for e in entries] == list(truth), f"plan {[(e.split, e.stem) for e in entries]}"
    for entry in entries:
        folder = f"{entry.split}2017"
        assert entry.image == src / "images" / folder / f"{entry.stem}.jpg", f"{entry}"
        want = None if truth[(entry.split, entry.stem)] is None else src / "annotations" / folder / f"{entry.stem}.png"
        assert entry.label == want, f"{entry}"


def test_a_missing_curated_list_names_the_file(tmp_path: Path) -> None:
    src = tmp_path / "cocostuff"
    _coco(src)
    (src / "curated" / "train2017" / "Coco164kFull_Stuff_Coarse.txt").unlink()
    with pytest.raises(MissingInputError, match="Coco164kFull_Stuff_Coarse.txt is missing"):
        cocostuff.plan(src)


def test_things_map_to_the_first_12_classes_and_stuff_to_the_other_15() -> None:
    # COCO-Stuff's fine ids: 0..90 are things, 91..181 stuff; STEGO orders its 27 classes
    # the same way (12 things groups, then 15 stuff groups), and every class is reached.
    lut = cocostuff.COCOSTUFF27.lut
    assert set(lut[:91].tolist()) == set(range(12)), f"things reach {sorted(set(lut[:91].tolist()))}"
    assert set(lut[91:182].tolist()) == set(range(12, 27)), f"stuff reaches {sorted(set(lut[91:182].tolist()))}"
    assert set(lut[182:].tolist()) == {255}, "values past 181 (255: unlabelled) are ignored"
    names = cocostuff.CLASS_NAMES
    assert len(names) == 27 and names[2] == names[14] == "food" and names[3] == names[15] == "furniture", f"{names}"
