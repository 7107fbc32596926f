"""Tests for stego_tasks.data.adapters.cityscapes: Cityscapes' gtFine labelIds -> cityscapes27.

Proves that every `*_leftImg8bit.png` is adapted under its stem without the suffix, labelIds
7..33 become classes 0..26 and every other id is ignored (an expectation computed here from
the reference's `first_nonvoid = 7` rule), other gtFine files are left alone, and that the
corpus ingests cleanly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from stego_tasks.data import adapters
from stego_tasks.data.adapters import cityscapes
from tests.data.adapters.layouts import (
    CITY_EXPECTED,
    _check_corpus_yaml,
    _cityscapes,
    _expected,
    _ingest,
    _read,
)


def test_cityscapes27_maps_label_ids_and_drops_suffixes(tmp_path):
    src, dst = tmp_path / "cityscapes", tmp_path / "corpus"
    truth = _cityscapes(src)
    summary = adapters.adapt("cityscapes27", src, dst)

    assert (summary.n_images, summary.n_labels) == ({"train": 2, "val": 2}, {"train": 2, "val": 1}), f"{summary}"
    for (split, stem), raw in truth.items():
        image = dst / "images" / split / f"{stem}.png"
        city = stem.split("_")[0]
        assert os.path.samefile(image, src / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"), f"{image} not linked"
        label = dst / "labels" / split / f"{stem}.png"
        assert label.exists() == (raw is not None), f"{label} existence wrong"
        if raw is not None:
            assert np.array_equal(_read(label), _expected(raw, CITY_EXPECTED)), f"{label} values wrong"
    names = adapters.get_adapter("cityscapes27").params.class_names
    assert (names[0], names[13], names[17], names[26]) == ("road", "traffic sign", "person", "bicycle"), f"{names}"
    _check_corpus_yaml(dst, src, "cityscapes27", 27, list(names))

    rows, quarantined = _ingest(dst, tmp_path / "out")
    assert quarantined == [], f"ingest quarantined {quarantined}"
    assert sorted(r["path"] for r in rows) == sorted(f"images/{s}/{t}.png" for s, t in truth), f"rows {rows}"


def test_label_ids_7_to_33_become_classes_0_to_26_and_every_other_id_is_ignored() -> None:
    want = np.array([i - 7 if 7 <= i <= 33 else 255 for i in range(256)], dtype=np.uint8)
    lut = cityscapes.CITYSCAPES27.lut
    assert np.array_equal(lut, want), f"lut differs at ids {np.flatnonzero(lut != want).tolist()}"
    assert len(cityscapes.CLASS_NAMES) == 27 == cityscapes.CITYSCAPES27.params.n_classes, "27 names"


def test_the_plan_pairs_each_image_with_its_label_ids_by_city_and_stem(tmp_path: Path) -> None:
    src = tmp_path / "cityscapes"
    truth = _cityscapes(src)
    (src / "leftImg8bit" / "train" / "aachen" / "notes.txt").write_text("not an image")
    entries = cityscapes.plan(src)
    assert sorted((e.split, e.stem) for e in entries) == sorted(truth), f"plan {entries}"
    assert [e.split for e in entries] == ["train", "train", "val", "val"], "train first"
    for entry in entries:
        city = entry.stem.split("_")[0]
        assert entry.image.name == f"{entry.stem}_leftImg8bit.png" and entry.image.parent.name == city, f"{entry}"
        want = None if truth[(entry.split, entry.stem)] is None else (
            src / "gtFine" / entry.split / city / f"{entry.stem}_gtFine_labelIds.png")
        assert entry.label == want, f"{entry}"
