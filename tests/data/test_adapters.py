"""Tests for stego_tasks.data.adapters: tiny fixtures in each benchmark's layout, adapted and ingested.

Expected labels come from lookups written here by hand from the reference tables
(mhamilton723/STEGO src/data.py), for the values the fixtures use.
"""

from __future__ import annotations

import argparse
import csv
import errno
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from scipy.io import savemat

from flows.tools import adapt_from_args, add_adapt_arguments
from stego_tasks.config import params_from_dict
from stego_tasks.data import adapters
from stego_tasks.data.adapters import core
from stego_tasks.data.manifest import read_manifest
from stego_tasks.ingest import ingest

H, W = 20, 24  # ingest's minimum side is 16 px

# Fine COCO-Stuff value -> STEGO cocostuff27 class, copied from Coco.fine_to_coarse for
# these values (one or more per coarse class), plus unlisted values that must be ignored.
COCO_EXPECTED = {
    0: 9, 1: 11, 9: 8, 15: 7, 25: 6, 33: 10, 43: 5, 51: 2, 61: 3, 71: 0, 77: 1, 83: 4,
    91: 17, 93: 22, 94: 20, 97: 15, 98: 25, 99: 16, 100: 13, 101: 12, 105: 23, 110: 21,
    119: 26, 120: 14, 170: 18, 179: 19, 181: 24, 255: 255, 182: 255, 254: 255,
}  # fmt: skip
# Cityscapes labelId -> class: ids 0..6 void, 7 'road' .. 33 'bicycle', others void.
CITY_EXPECTED = {0: 255, 1: 255, 6: 255, 7: 0, 8: 1, 11: 4, 20: 13, 24: 17, 26: 19, 33: 26, 34: 255, 255: 255}
POTSDAM3_EXPECTED = {0: 0, 4: 0, 1: 1, 5: 1, 2: 2, 3: 2, 255: 255, 7: 255}
POTSDAM6_EXPECTED = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 255: 255, 7: 255}


def _rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _label(values: list[int], shift: int) -> np.ndarray:
    """An [H, W] map cycling through `values` (every value appears), shifted per image."""
    flat = np.resize(np.roll(np.asarray(values), shift), H * W)
    return flat.reshape(H, W)


def _save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def _expected(raw: np.ndarray, table: dict[int, int]) -> np.ndarray:
    out = np.empty(raw.shape, dtype=np.uint8)
    for (i, j), value in np.ndenumerate(raw):
        out[i, j] = table[int(value)]
    return out


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L", f"{path} has mode {im.mode}, expected single-channel L"
        return np.array(im)


def _coco(src: Path) -> dict:
    """COCO-Stuff fixture; returns {(split, stem): raw label or None}."""
    values = list(COCO_EXPECTED)
    ids = {"train": ["000000000009", "000000000025"], "val": ["000000000139", "000000000285"]}
    lists = {"train": ("train2017", "Coco164kFull_Stuff_Coarse.txt"), "val": ("val2017", "Coco164kFull_Stuff_Coarse_7.txt")}
    truth = {}
    for k, (split, (folder, list_name)) in enumerate(lists.items()):
        (src / "curated" / folder).mkdir(parents=True, exist_ok=True)
        (src / "curated" / folder / list_name).write_text("\n".join(ids[split]) + "\n\n")
        for n, image_id in enumerate(ids[split]):
            _save(src / "images" / folder / f"{image_id}.jpg", _rgb(10 * k + n), quality=95)
            raw = None
            if (split, n) != ("val", 1):  # one val image without annotation
                raw = _label(values, 7 * n + k).astype(np.uint8)
                _save(src / "annotations" / folder / f"{image_id}.png", raw)
            truth[(split, image_id)] = raw
    _save(src / "images" / "train2017" / "000000000030.jpg", _rgb(99))  # not in the curated list
    # The other curated lists must not be read.
    (src / "curated" / "train2017" / "Coco164kFull_Stuff_Coarse_7.txt").write_text("000000000030\n")
    return truth


def _cityscapes(src: Path) -> dict:
    values = list(CITY_EXPECTED)
    layout = {"train": [("aachen", "aachen_000000_000019"), ("bochum", "bochum_000000_000313")],
              "val": [("frankfurt", "frankfurt_000000_000294"), ("lindau", "lindau_000000_000019")]}
    truth = {}
    for k, (split, items) in enumerate(layout.items()):
        for n, (city, stem) in enumerate(items):
            _save(src / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", _rgb(20 + 10 * k + n))
            raw = None
            if (split, n) != ("val", 1):
                raw = _label(values, 5 * n + k).astype(np.uint8)
                gt = src / "gtFine" / split / city
                _save(gt / f"{stem}_gtFine_labelIds.png", raw)
                _save(gt / f"{stem}_gtFine_color.png", _rgb(77))  # other gtFine files are ignored
            truth[(split, stem)] = raw
    return truth


def _potsdam(src: Path) -> dict:
    """Potsdam fixture; returns {(list, id): (rgb, raw label or None)}."""
    values = list(POTSDAM6_EXPECTED)
    lists = {"labelled_train": ["top_1", "top_2"], "unlabelled_train": ["top_3"], "labelled_test": ["top_4", "top_5"]}
    truth = {}
    for folder in ("imgs", "gt"):
        (src / folder).mkdir(parents=True)
    for k, (list_name, ids) in enumerate(lists.items()):
        (src / f"{list_name}.txt").write_text("".join(f"{i}\n" for i in ids))
        for n, image_id in enumerate(ids):
            rng = np.random.default_rng(40 + 10 * k + n)
            rgbir = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
            if image_id == "top_5":  # STEGO's to_pil_image also takes float images in [0, 1]
                rgbir = rng.random((H, W, 4))
            savemat(src / "imgs" / f"{image_id}.mat", {"img": rgbir})
            expected_rgb = rgbir[:, :, :3] if rgbir.dtype == np.uint8 else np.floor(rgbir[:, :, :3] * 255).astype(np.uint8)
            raw = None
            if list_name != "unlabelled_train":
                raw = _label(values, 3 * n + k).astype(np.uint8)
                savemat(src / "gt" / f"{image_id}.mat", {"gt": raw})
            truth[(list_name, image_id)] = (expected_rgb, raw)
    return truth


def _ingest(dst: Path, out: Path) -> tuple[list[dict], list[dict]]:
    ingest(dst, out / "manifest.parquet", out / "quarantine.csv")
    with open(out / "quarantine.csv", newline="") as f:
        quarantined = list(csv.DictReader(f))
    return read_manifest(out / "manifest.parquet").to_dict("records"), quarantined


def _check_corpus_yaml(dst: Path, src: Path, name: str, n_classes: int, names: list[str]) -> None:
    data = yaml.safe_load((dst / "corpus.yaml").read_text())
    expected_block = {"root": str(dst.resolve()), "n_classes": n_classes, "ignore_index": 255,
                      "class_names": names, "demo": False}
    assert data == {"adapter": name, "source": str(src.resolve()), "corpus": expected_block}, f"corpus.yaml: {data}"
    corpus = params_from_dict({"corpus": data["corpus"]}).corpus
    assert (corpus.n_classes, corpus.class_names) == (n_classes, tuple(names)), f"params.yaml rejects it: {corpus}"


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


def _make_city(tmp_path: Path) -> Path:
    src = tmp_path / "cityscapes"
    _cityscapes(src)
    return src


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


def test_cli_prints_params_and_returns_zero(tmp_path, capsys):
    src, dst = _make_city(tmp_path), tmp_path / "corpus"
    parser = argparse.ArgumentParser()
    add_adapt_arguments(parser)
    code = adapt_from_args(parser.parse_args(["cityscapes27", str(src), str(dst)]))
    out = capsys.readouterr().out
    assert code == 0, f"exit code {code}: {out}"
    printed = yaml.safe_load(out[out.index("corpus:"):])
    assert printed["corpus"]["n_classes"] == 27 and printed["corpus"]["class_names"][0] == "road", f"printed {out}"
    assert "linked 4" in out, f"summary line {out}"
    with pytest.raises(SystemExit):
        parser.parse_args(["nope", str(src), str(dst)])
