"""Cityscapes-27, as STEGO reads it (mhamilton723/STEGO, src/data.py, class `CityscapesSeg`).

Source layout (the official one, read by torchvision's `Cityscapes(mode="fine",
target_type="semantic")`)::

    SRC/leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png
    SRC/gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png

STEGO subtracts `first_nonvoid = 7` from the labelIds and sets negatives to -1: ids 0..6
(unlabeled, ego vehicle, ..., ground) are ignored and ids 7..33 ('road' .. 'bicycle')
become classes 0..26. Ids above 33 (not in labelIds, e.g. 255) are ignored here too.
Output stems drop the suffixes, so image and label share `<stem>`.
"""

from __future__ import annotations

from pathlib import Path

from stego_tasks.data.adapters.core import IGNORE_INDEX, DatasetAdapter, Entry, LabelParams

FIRST_NONVOID = 7
LAST_ID = 33
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"

# STEGO src/train_segmentation.py, get_class_labels("cityscapes"): labelIds 7..33 in order.
CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "parking", "rail track", "building",
    "wall", "fence", "guard rail", "bridge", "tunnel",
    "pole", "polegroup", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "caravan", "trailer", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

LABEL_ID_TO_CLASS: dict[int, int] = {i: i - FIRST_NONVOID for i in range(FIRST_NONVOID, LAST_ID + 1)}


def plan(src: Path, unlabelled_train: bool = False) -> list[Entry]:
    """Entries for every `*_leftImg8bit.png` of train and val, with its labelIds when present.

    Args:
        src: Cityscapes root (see the module docstring).
        unlabelled_train: unused; kept for the common interface.

    Returns:
        Entries sorted by split, city and stem.
    """
    entries = []
    for split in ("train", "val"):
        for image in sorted((src / "leftImg8bit" / split).glob(f"*/*{IMAGE_SUFFIX}")):
            stem = image.name[: -len(IMAGE_SUFFIX)]
            label = src / "gtFine" / split / image.parent.name / f"{stem}{LABEL_SUFFIX}"
            entries.append(Entry(split, stem, image, label if label.is_file() else None))
    return entries


CITYSCAPES27 = DatasetAdapter(
    name="cityscapes27",
    params=LabelParams(n_classes=27, ignore_index=IGNORE_INDEX, class_names=CLASS_NAMES),
    mapping=LABEL_ID_TO_CLASS,
    plan=plan,
)
