"""Tests for stego_tasks.data.adapters.potsdam: Potsdam's .mat files -> potsdam3 / potsdam.

Proves that the split lists give train and val (the unlabelled list only on request, without
repeats), images become the RGB channels of the .mat (uint8 as is, floats in [0, 1] scaled
by 255 as torchvision's `to_pil_image`), labels go through STEGO's 3-class lookup or stay
the 6 fine classes, and that a .mat file that is not an image or label is one sentence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from stego_tasks.data import adapters
from stego_tasks.data.adapters import potsdam
from stego_tasks.errors import InvalidInputError
from tests.data.adapters.layouts import (
    POTSDAM3_EXPECTED,
    POTSDAM6_EXPECTED,
    _check_corpus_yaml,
    _expected,
    _ingest,
    _potsdam,
    _read,
)


@pytest.mark.parametrize(
    ("name", "table", "names"),
    [
        ("potsdam3", POTSDAM3_EXPECTED, ["roads and cars", "buildings and clutter", "trees and vegetation"]),
        ("potsdam", POTSDAM6_EXPECTED, ["roads", "buildings", "vegetation", "trees", "cars", "clutter"]),
    ],
)
def test_potsdam_converts_mat_files(tmp_path, name, table, names):
    src, dst = tmp_path / "potsdam", tmp_path / "corpus"
    truth = _potsdam(src)
    summary = adapters.adapt(name, src, dst)

    assert summary.n_images == {"train": 2, "val": 2}, f"unlabelled_train must be left out by default: {summary}"
    assert (summary.n_converted, summary.n_linked) == (8, 0), f"4 images + 4 labels converted: {summary}"
    for (list_name, image_id), (rgb, raw) in truth.items():
        split = {"labelled_train": "train", "labelled_test": "val"}.get(list_name)
        if split is None:
            continue
        with Image.open(dst / "images" / split / f"{image_id}.png") as im:
            got_rgb = np.array(im)
        assert np.array_equal(got_rgb, rgb), f"{image_id}: RGB channels differ from the .mat"
        got = _read(dst / "labels" / split / f"{image_id}.png")
        assert np.array_equal(got, _expected(raw, table)), f"{image_id}: labels {sorted(set(got.ravel()))}"
    _check_corpus_yaml(dst, src, name, len(names), names)

    summary = adapters.adapt(name, src, dst, unlabelled_train=True)
    assert (summary.n_images, summary.n_labels) == ({"train": 3, "val": 2}, {"train": 2, "val": 2}), f"{summary}"
    assert (summary.n_converted, summary.n_skipped) == (1, 8), f"only the new image is converted: {summary}"
    rows, quarantined = _ingest(dst, tmp_path / "out")
    assert quarantined == [], f"ingest quarantined {quarantined}"
    unlabelled = [r for r in rows if r["path"] == "images/train/top_3.png"]
    assert len(rows) == 5 and unlabelled and unlabelled[0]["label_path"] == "", f"manifest rows {rows}"


def _mat(path: Path, **arrays: np.ndarray) -> Path:
    savemat(path, arrays)
    return path


def test_read_mat_image_keeps_uint8_rgb_and_scales_unit_floats(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgbir = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    got = potsdam.read_mat_image(_mat(tmp_path / "u.mat", img=rgbir))
    assert got.dtype == np.uint8 and np.array_equal(got, rgbir[:, :, :3]), "uint8: the first three channels"
    unit = rng.random((5, 7, 3))
    got = potsdam.read_mat_image(_mat(tmp_path / "f.mat", img=unit))
    assert np.array_equal(got, np.floor(unit * 255).astype(np.uint8)), "floats in [0, 1]: x 255, truncated"


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"img": np.zeros((5, 7), np.uint8)}, r"'img' has shape \(5, 7\); expected \[H, W, C\] with C >= 3"),
        ({"img": np.zeros((5, 7, 2), np.uint8)}, r"'img' has shape \(5, 7, 2\)"),
        ({"img": np.full((5, 7, 3), 2.0)}, r"'img' has dtype float64 \(range 2.0..2.0\); expected uint8 or float in \[0, 1\]"),
        ({"picture": np.zeros((5, 7, 3), np.uint8)}, r"has no variable 'img' \(it holds \['picture'\]\)"),
    ],
)
def test_a_mat_file_that_is_no_potsdam_image_is_one_sentence(tmp_path: Path, arrays: dict, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        potsdam.read_mat_image(_mat(tmp_path / "x.mat", **arrays))


def test_a_file_that_is_no_mat_file_is_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "gt.mat"
    path.write_bytes(b"not a mat file at all")
    with pytest.raises(InvalidInputError, match=r"^not a readable \.mat file"):
        potsdam.read_mat_label(path)
    labels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(potsdam.read_mat_label(_mat(tmp_path / "ok.mat", gt=labels)), labels), "gt as stored"


def test_the_plan_adds_the_unlabelled_ids_only_on_request_and_each_once(tmp_path: Path) -> None:
    src = tmp_path / "potsdam"
    _potsdam(src)
    (src / "unlabelled_train.txt").write_text("top_3\ntop_1\n")  # top_1 is also labelled
    plain = [(e.split, e.stem, e.label is not None) for e in potsdam.plan(src)]
    assert plain == [("train", "top_1", True), ("train", "top_2", True), ("val", "top_4", True), ("val", "top_5", True)]
    more = [(e.split, e.stem, e.label is not None) for e in potsdam.plan(src, unlabelled_train=True)]
    assert more == [("train", "top_1", True), ("train", "top_2", True), ("train", "top_3", False),
                    ("val", "top_4", True), ("val", "top_5", True)], f"{more}"
    assert all(e.image == src / "imgs" / f"{e.stem}.mat" for e in potsdam.plan(src)), "images are imgs/<id>.mat"


def test_potsdam3_merges_the_fine_classes_as_stego_does() -> None:
    # roads (0) + cars (4), buildings (1) + clutter (5), vegetation (2) + trees (3).
    want = np.full(256, 255, dtype=np.uint8)
    want[[0, 4]], want[[1, 5]], want[[2, 3]] = 0, 1, 2
    assert np.array_equal(potsdam.POTSDAM3.lut, want), f"{potsdam.POTSDAM3.lut[:8]}"
    fine = np.full(256, 255, dtype=np.uint8)
    fine[:6] = np.arange(6)
    assert np.array_equal(potsdam.POTSDAM.lut, fine), f"{potsdam.POTSDAM.lut[:8]}"
