"""The benchmarks' source layouts, built tiny in a test's folder, and what adapting them must give.

Shared by the adapter tests (`test_core`, `test_cocostuff`, `test_cityscapes`, `test_potsdam`
and the package's `tests/data/test_adapters.py`). Expected labels come from lookups written
here by hand from the reference tables (mhamilton723/STEGO src/data.py), for the values the
fixtures use.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from scipy.io import savemat

from stego_tasks.config import params_from_dict
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


def _make_city(tmp_path: Path) -> Path:
    src = tmp_path / "cityscapes"
    _cityscapes(src)
    return src
