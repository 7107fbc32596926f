"""Potsdam, as STEGO reads it (mhamilton723/STEGO, src/data.py, class `Potsdam`).

Source layout (STEGO's `potsdam` folder, prepared by IIC)::

    SRC/imgs/<id>.mat      key "img": [H, W, 4] RGB + IR
    SRC/gt/<id>.mat        key "gt":  [H, W] classes 0..5, 255 unlabelled
    SRC/labelled_train.txt  SRC/unlabelled_train.txt  SRC/labelled_test.txt   (ids)

Train = labelled_train (+ unlabelled_train on request), val = labelled_test, as STEGO's
split files say. Images become RGB PNGs (the IR channel is dropped, as STEGO does); a gt
file is converted wherever one exists.

- `potsdam3`: STEGO's `fine_to_coarse` (roads and cars / buildings and clutter / trees and
  vegetation), the benchmark STEGO reports.
- `potsdam`: the 6 fine classes as they are (not a STEGO benchmark; the names follow the
  comments of STEGO's mapping).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stego_tasks.data.adapters.core import (
    IGNORE_INDEX,
    DatasetAdapter,
    Entry,
    LabelParams,
    read_id_list,
)
from stego_tasks.errors import InvalidInputError

# Split -> list files, as STEGO's Potsdam.split_files ("train", "val"); the second train
# list only with --unlabelled-train.
SPLIT_FILES: dict[str, str] = {"train": "labelled_train.txt", "val": "labelled_test.txt"}
UNLABELLED_TRAIN_FILE = "unlabelled_train.txt"

# STEGO src/data.py, Potsdam.fine_to_coarse (255 -> -1 = ignore).
FINE_TO_COARSE: dict[int, int] = {0: 0, 4: 0, 1: 1, 5: 1, 2: 2, 3: 2, 255: -1}
# STEGO src/train_segmentation.py, get_class_labels("potsdam").
COARSE_NAMES: tuple[str, ...] = ("roads and cars", "buildings and clutter", "trees and vegetation")
# The fine classes, named after the comments on STEGO's fine_to_coarse.
FINE_NAMES: tuple[str, ...] = ("roads", "buildings", "vegetation", "trees", "cars", "clutter")


def _loadmat(path: Path, key: str) -> np.ndarray:
    from scipy.io import loadmat  # only Potsdam needs scipy.io; keep other imports light

    try:
        data = loadmat(path)
    except Exception as exc:  # scipy raises MatReadError (an Exception), ValueError, ...
        raise InvalidInputError(f"not a readable .mat file ({exc})") from exc
    if key not in data:
        keys = sorted(k for k in data if not k.startswith("__"))
        raise InvalidInputError(f"has no variable {key!r} (it holds {keys})")
    return np.asarray(data[key])


def read_mat_image(path: Path) -> np.ndarray:
    """RGB channels of a Potsdam image .mat.

    Args:
        path: .mat file with "img" of shape [H, W, C], C >= 3 (RGB first), uint8 or float
            in [0, 1] (scaled by 255 as torchvision's `to_pil_image`, which STEGO uses).

    Returns:
        [H, W, 3] uint8.

    Raises:
        ValueError: missing key, wrong shape or an unsupported dtype.
    """
    img = _loadmat(path, "img")
    if img.ndim != 3 or img.shape[2] < 3:
        raise InvalidInputError(f"'img' has shape {img.shape}; expected [H, W, C] with C >= 3")
    rgb = img[:, :, :3]
    if rgb.dtype == np.uint8:
        return np.ascontiguousarray(rgb)
    if rgb.dtype.kind == "f" and np.isfinite(rgb).all() and rgb.min() >= 0 and rgb.max() <= 1:
        return (rgb * 255).astype(np.uint8)
    raise InvalidInputError(f"'img' has dtype {rgb.dtype} (range {rgb.min()}..{rgb.max()}); expected uint8 or float in [0, 1]")


def read_mat_label(path: Path) -> np.ndarray:
    """The [H, W] class values of a Potsdam gt .mat (key "gt"), not yet remapped."""
    return _loadmat(path, "gt")


def plan(src: Path, unlabelled_train: bool = False) -> list[Entry]:
    """Entries for the split files' ids; labels where SRC/gt/<id>.mat exists.

    Args:
        src: Potsdam root (see the module docstring).
        unlabelled_train: also list the ids of unlabelled_train.txt under train.

    Returns:
        Entries, train first, in list order.
    """
    lists = {split: [name] for split, name in SPLIT_FILES.items()}
    if unlabelled_train:
        lists["train"].append(UNLABELLED_TRAIN_FILE)
    entries = []
    for split, names in lists.items():
        ids = dict.fromkeys(i for name in names for i in read_id_list(src / name))
        for image_id in ids:
            label = src / "gt" / f"{image_id}.mat"
            entries.append(Entry(split, image_id, src / "imgs" / f"{image_id}.mat", label if label.is_file() else None))
    return entries


POTSDAM3 = DatasetAdapter(
    name="potsdam3",
    params=LabelParams(n_classes=3, ignore_index=IGNORE_INDEX, class_names=COARSE_NAMES),
    mapping=FINE_TO_COARSE,
    plan=plan,
    read_label=read_mat_label,
    read_image=read_mat_image,
    has_unlabelled_train=True,
)
POTSDAM = DatasetAdapter(
    name="potsdam",
    params=LabelParams(n_classes=6, ignore_index=IGNORE_INDEX, class_names=FINE_NAMES),
    mapping={i: i for i in range(len(FINE_NAMES))},
    plan=plan,
    read_label=read_mat_label,
    read_image=read_mat_image,
    has_unlabelled_train=True,
)
