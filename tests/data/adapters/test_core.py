"""Tests for stego_tasks.data.adapters.core: a plan of entries in, a corpus folder out.

Proves that images are hard-linked (copied where a link is impossible) and labels written
through the lookup table, that reruns touch only what changed and prune what the plan no
longer names, that a bad source file skips its entry alone, and that every bad request (a
foreign or non-folder destination, a missing source or list, a plan that names a stem twice
or lacks a split, a label map that is not 2-D integer class indices) is one sentence. The
generic tests use a made-up two-folder layout defined here; the others the COCO-Stuff and
Cityscapes layouts of `layouts.py`.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from stego_tasks.data import adapters
from stego_tasks.data.adapters import core
from stego_tasks.errors import InvalidInputError, MissingInputError
from tests.data.adapters.layouts import H, W, _cityscapes, _coco, _make_city, _read, _save


def _snapshot(dst: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(dst)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(dst.rglob("*")) if p.is_file()}


def test_rerun_skips_up_to_date_files_and_follows_the_source(tmp_path):
    src, dst = tmp_path / "cocostuff", tmp_path / "corpus"
    truth = _coco(src)
    adapters.adapt("cocostuff27", src, dst)
    before = _snapshot(dst)

    again = adapters.adapt("cocostuff27", src, dst)
    assert (again.n_linked, again.n_converted, again.n_removed, again.n_skipped) == (0, 0, 0, 7), f"rerun {again}"
    after = _snapshot(dst)
    assert after == before, "rerun rewrote files (corpus.yaml included)"

    # A changed annotation is converted again, alone.
    stem = "000000000009"
    changed = np.full((H, W), 100, dtype=np.uint8)
    annotation = src / "annotations" / "train2017" / f"{stem}.png"
    _save(annotation, changed)
    os.utime(annotation, ns=(1, before[f"labels/train/{stem}.png"][1] + 10**9))
    third = adapters.adapt("cocostuff27", src, dst)
    assert (third.n_converted, third.n_skipped) == (1, 6), f"third run {third}"
    assert np.array_equal(_read(dst / "labels" / "train" / f"{stem}.png"), np.full((H, W), 13)), "fine 100 -> floor (13)"

    # An id dropped from the list disappears from the corpus, image and label.
    (src / "curated" / "train2017" / "Coco164kFull_Stuff_Coarse.txt").write_text("000000000025\n")
    fourth = adapters.adapt("cocostuff27", src, dst)
    assert fourth.n_removed == 2 and fourth.n_images["train"] == 1, f"fourth run {fourth}"
    assert not (dst / "images" / "train" / f"{stem}.jpg").exists(), "stale image kept"
    assert len(truth) == 4, "fixture size"


def test_copies_when_hard_links_are_impossible(tmp_path, monkeypatch):
    src, dst = tmp_path / "cityscapes", tmp_path / "corpus"
    _cityscapes(src)

    def no_link(a, b):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(core.os, "link", no_link)
    summary = adapters.adapt("cityscapes27", src, dst)
    assert (summary.n_linked, summary.n_copied) == (0, 4), f"summary {summary}"
    image = dst / "images" / "train" / "aachen_000000_000019.png"
    source = src / "leftImg8bit" / "train" / "aachen" / "aachen_000000_000019_leftImg8bit.png"
    assert not os.path.samefile(image, source), "expected a copy, got the same inode"
    assert image.read_bytes() == source.read_bytes(), "copy differs from its source"
    assert adapters.adapt("cityscapes27", src, dst).n_skipped == 7, "copies should be up to date on a rerun"


def test_read_only_source_is_still_linked(tmp_path):
    src, dst = tmp_path / "cityscapes", tmp_path / "corpus"
    _cityscapes(src)
    sources = list((src / "leftImg8bit").rglob("*.png"))
    for path in sources:
        path.chmod(0o444)
    summary = adapters.adapt("cityscapes27", src, dst)
    assert summary.n_linked == 4, f"read-only sources should still be hard-linked: {summary}"


def test_unreadable_source_files_are_skipped_and_reported(tmp_path):
    src, dst = tmp_path / "cocostuff", tmp_path / "corpus"
    _coco(src)
    bad = src / "annotations" / "train2017" / "000000000025.png"
    bad.write_bytes(b"not a png")
    (src / "images" / "val2017" / "000000000285.jpg").unlink()
    summary = adapters.adapt("cocostuff27", src, dst)
    failed = {Path(p).name for p, _ in summary.failed}
    assert failed == {"000000000025.png", "000000000285.jpg"}, f"failed {summary.failed}"
    assert not (dst / "images" / "train" / "000000000025.jpg").exists(), "image of a bad label was written"
    assert summary.n_images == {"train": 1, "val": 1}, f"images {summary.n_images}"


def test_bad_requests_raise_clear_errors(tmp_path):
    src = tmp_path / "cocostuff"
    _coco(src)
    with pytest.raises(ValueError, match="cityscapes27, cocostuff27, potsdam, potsdam3"):
        adapters.get_adapter("coco")
    with pytest.raises(ValueError, match="no unlabelled training images"):
        adapters.adapt("cocostuff27", src, tmp_path / "a", unlabelled_train=True)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        adapters.adapt("cocostuff27", src, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me", "a foreign folder was touched"
    adapters.adapt("cocostuff27", src, tmp_path / "out")
    city = _make_city(tmp_path)
    with pytest.raises(ValueError, match="written by adapter 'cocostuff27'"):
        adapters.adapt("cityscapes27", city, tmp_path / "out")
    (src / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt").unlink()
    with pytest.raises(FileNotFoundError, match="Coco164kFull_Stuff_Coarse_7.txt"):
        adapters.adapt("cocostuff27", src, tmp_path / "out")
    with pytest.raises(ValueError, match="no train images"):
        adapters.adapt("cityscapes27", tmp_path / "mine", tmp_path / "empty")


def test_remap_labels_matches_a_naive_loop():
    rng = np.random.default_rng(3)
    raw = rng.integers(-3, 400, (9, 11))
    lut = core.build_lut({5: 0, 6: -1, 300 % 256: 2, 7: 1})
    got = core.remap_labels(raw, lut)
    want = np.array([[lut[v] if 0 <= v < 256 else 255 for v in row] for row in raw.tolist()], dtype=np.uint8)
    assert np.array_equal(got, want), "remap differs from the naive loop"
    assert lut[6] == 255 and lut[44] == 2 and lut[8] == 255, f"lut {lut[:10]}"
    with pytest.raises(ValueError, match="non-integral"):
        core.remap_labels(np.full((2, 2), 0.5), lut)


# --- a made-up layout: SRC/img/<split>/<stem>.png, SRC/gt/<split>/<stem>.png ---------------


def _tiny_plan(src: Path, unlabelled_train: bool = False) -> list[core.Entry]:
    entries = []
    for split in core.SPLITS:
        for image in sorted((src / "img" / split).glob("*.png")):
            label = src / "gt" / split / image.name
            entries.append(core.Entry(split, image.stem, image, label if label.is_file() else None))
    return entries


def _tiny_adapter(plan: Callable[[Path, bool], list[core.Entry]] = _tiny_plan) -> core.DatasetAdapter:
    """Fine 1 -> class 0, 2 -> class 1, 3 -> ignore (negative); every other value ignored."""
    params = core.LabelParams(n_classes=2, ignore_index=core.IGNORE_INDEX, class_names=("a", "b"))
    return core.DatasetAdapter(name="tiny", params=params, mapping={1: 0, 2: 1, 3: -1}, plan=plan)


def _tiny_source(src: Path) -> dict[tuple[str, str], np.ndarray | None]:
    """Two train images (one without label) and one val image; returns the raw labels."""
    raws: dict[tuple[str, str], np.ndarray | None] = {}
    for n, (split, stem, labelled) in enumerate([("train", "a", True), ("train", "b", False), ("val", "c", True)]):
        rng = np.random.default_rng(n)
        _save(src / "img" / split / f"{stem}.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        raw = rng.integers(0, 6, (H, W)).astype(np.uint8) if labelled else None
        if raw is not None:
            _save(src / "gt" / split / f"{stem}.png", raw)
        raws[(split, stem)] = raw
    return raws


def test_an_adapter_links_each_planned_image_and_writes_its_label_through_the_lookup(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    raws = _tiny_source(src)
    summary = _tiny_adapter()(src, dst)

    assert summary.n_images == {"train": 2, "val": 1} and summary.n_labels == {"train": 1, "val": 1}, f"{summary}"
    assert (summary.n_linked, summary.n_converted, summary.n_copied, summary.failed) == (3, 2, 0, ()), f"{summary}"
    table = {1: 0, 2: 1}
    for (split, stem), raw in raws.items():
        image = dst / "images" / split / f"{stem}.png"
        assert os.path.samefile(image, src / "img" / split / f"{stem}.png"), f"{image} is not a hard link"
        label = dst / "labels" / split / f"{stem}.png"
        if raw is None:
            assert not label.exists(), f"{label} written for an image without a label"
            continue
        want = np.vectorize(lambda v: table.get(int(v), 255))(raw).astype(np.uint8)
        assert np.array_equal(_read(label), want), f"{label}: {np.unique(_read(label))}"
        source = src / "gt" / split / f"{stem}.png"
        assert label.stat().st_mtime_ns == source.stat().st_mtime_ns, "a converted label carries its source's mtime"
    written = yaml.safe_load((dst / core.CORPUS_FILE).read_text())
    assert written["adapter"] == "tiny" and written["corpus"]["class_names"] == ["a", "b"], f"{written}"
    assert sorted(p.name for p in dst.rglob("*") if p.is_file() and p.name.startswith(".")) == [], "temporary files left"


def test_build_lut_sends_unlisted_and_negative_values_to_the_ignore_index() -> None:
    lut = core.build_lut({0: 2, 4: -1, 255: 1}, ignore_index=9)
    want = np.full(256, 9, dtype=np.uint8)
    want[0], want[255] = 2, 1
    assert lut.dtype == np.uint8 and np.array_equal(lut, want), f"lut differs at {np.flatnonzero(lut != want)}"


def test_remap_labels_takes_integral_floats_and_refuses_other_maps_in_one_sentence() -> None:
    lut = core.build_lut({1: 0, 2: 1})
    ints = np.array([[0, 1], [2, 300]])
    assert np.array_equal(core.remap_labels(ints.astype(np.float64), lut), core.remap_labels(ints, lut)), "floats 1.0 == 1"
    assert np.array_equal(core.remap_labels(ints, lut), [[255, 0], [1, 255]]), "values past the table are ignored"
    with pytest.raises(InvalidInputError, match=r"must be 2-D, got shape \(2, 2, 3\)"):
        core.remap_labels(np.zeros((2, 2, 3), dtype=np.uint8), lut)
    with pytest.raises(InvalidInputError, match="has dtype <U1; labels must be integer class indices"):
        core.remap_labels(np.array([["a", "b"]]), lut)
    with pytest.raises(InvalidInputError, match="non-integral"):
        core.remap_labels(np.array([[np.nan, 1.0]]), lut)


def test_read_id_list_keeps_file_order_without_blanks_or_repeats(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_text("b\n\n a \nb\nc\n  \n")
    assert core.read_id_list(path) == ["b", "a", "c"], core.read_id_list(path)
    with pytest.raises(MissingInputError, match=r"image list .*missing\.txt is missing; the dataset root must hold it"):
        core.read_id_list(tmp_path / "missing.txt")
    path.write_bytes(b"a\n\xff\xfe\n")
    with pytest.raises(InvalidInputError, match=r"image list .*ids\.txt is not UTF-8 text \(byte 2\)"):
        core.read_id_list(path)


def test_a_plan_naming_a_stem_twice_in_a_split_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _tiny_source(src)

    def twice(src: Path, unlabelled_train: bool = False) -> list[core.Entry]:
        entries = _tiny_plan(src)
        return [*entries, entries[0]]

    with pytest.raises(InvalidInputError, match="would write two images with stem 'a' into train"):
        _tiny_adapter(twice)(src, dst)
    assert not dst.exists(), "a refused plan created the destination"


def test_a_destination_that_is_a_file_and_a_missing_source_are_one_sentence(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tiny_source(src)
    file = tmp_path / "file"
    file.write_text("mine")
    with pytest.raises(InvalidInputError, match="exists and is not a folder; pass a new or empty folder"):
        _tiny_adapter()(src, file)
    with pytest.raises(MissingInputError, match="source folder .*nowhere does not exist; pass the tiny dataset root"):
        _tiny_adapter()(tmp_path / "nowhere", tmp_path / "dst")


def test_a_destination_with_an_unreadable_corpus_yaml_is_foreign(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _tiny_source(src)
    dst.mkdir()
    (dst / core.CORPUS_FILE).write_text("adapter: [unclosed\n")
    with pytest.raises(InvalidInputError, match="was written by adapter None, not 'tiny'"):
        _tiny_adapter()(src, dst)
    assert (dst / core.CORPUS_FILE).read_text() == "adapter: [unclosed\n", "the foreign marker was overwritten"
    (dst / core.CORPUS_FILE).write_bytes(b"adapter: \xff\n")
    with pytest.raises(InvalidInputError, match="was written by adapter None, not 'tiny'"):
        _tiny_adapter()(src, dst)


def test_the_corpus_block_holds_the_absolute_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = core.LabelParams(n_classes=2, ignore_index=7, class_names=("a", "b"))
    block = params.as_block(Path("corpus"))
    assert block == {"root": str(tmp_path.resolve() / "corpus"), "n_classes": 2, "ignore_index": 7,
                     "class_names": ["a", "b"], "demo": False}, f"{block}"


def test_an_adapter_whose_lookup_reaches_past_its_classes_cannot_be_built() -> None:
    params = core.LabelParams(n_classes=2, ignore_index=255, class_names=("a", "b"))
    with pytest.raises(AssertionError):
        core.DatasetAdapter(name="bad", params=params, mapping={1: 2}, plan=_tiny_plan)
