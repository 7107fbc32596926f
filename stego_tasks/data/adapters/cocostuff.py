"""COCO-Stuff-27, as STEGO reads it (mhamilton723/STEGO, src/data.py, class `Coco`).

Source layout (STEGO's `cocostuff` folder)::

    SRC/images/{train2017,val2017}/<id>.jpg
    SRC/annotations/{train2017,val2017}/<id>.png       fine labels 0..181, 255 unlabelled
    SRC/curated/train2017/Coco164kFull_Stuff_Coarse.txt     training ids (one per line)
    SRC/curated/val2017/Coco164kFull_Stuff_Coarse_7.txt     validation ids

STEGO's `cocostuff27` uses `subset=None` (the list `Coco164kFull_Stuff_Coarse.txt`) for
train and `subset=7` (`Coco164kFull_Stuff_Coarse_7.txt`) for val. Fine labels go through
`fine_to_coarse` to the 27 classes (12 "things" groups, then 15 "stuff" groups).
"""

from __future__ import annotations

from pathlib import Path

from stego_tasks.data.adapters.core import (
    IGNORE_INDEX,
    DatasetAdapter,
    Entry,
    LabelParams,
    read_id_list,
)

# Split -> (source folder, curated image list), as in STEGO's Coco dataset for cocostuff27.
IMAGE_LISTS: dict[str, tuple[str, str]] = {
    "train": ("train2017", "Coco164kFull_Stuff_Coarse.txt"),
    "val": ("val2017", "Coco164kFull_Stuff_Coarse_7.txt"),
}

# STEGO src/data.py, Coco.fine_to_coarse; 255 (and anything unlisted) -> ignore.
FINE_TO_COARSE: dict[int, int] = {
    0: 9, 1: 11, 2: 11, 3: 11, 4: 11, 5: 11, 6: 11, 7: 11, 8: 11, 9: 8, 10: 8, 11: 8, 12: 8,
    13: 8, 14: 8, 15: 7, 16: 7, 17: 7, 18: 7, 19: 7, 20: 7, 21: 7, 22: 7, 23: 7, 24: 7,
    25: 6, 26: 6, 27: 6, 28: 6, 29: 6, 30: 6, 31: 6, 32: 6, 33: 10, 34: 10, 35: 10, 36: 10,
    37: 10, 38: 10, 39: 10, 40: 10, 41: 10, 42: 10, 43: 5, 44: 5, 45: 5, 46: 5, 47: 5, 48: 5,
    49: 5, 50: 5, 51: 2, 52: 2, 53: 2, 54: 2, 55: 2, 56: 2, 57: 2, 58: 2, 59: 2, 60: 2,
    61: 3, 62: 3, 63: 3, 64: 3, 65: 3, 66: 3, 67: 3, 68: 3, 69: 3, 70: 3, 71: 0, 72: 0,
    73: 0, 74: 0, 75: 0, 76: 0, 77: 1, 78: 1, 79: 1, 80: 1, 81: 1, 82: 1, 83: 4, 84: 4,
    85: 4, 86: 4, 87: 4, 88: 4, 89: 4, 90: 4, 91: 17, 92: 17, 93: 22, 94: 20, 95: 20, 96: 22,
    97: 15, 98: 25, 99: 16, 100: 13, 101: 12, 102: 12, 103: 17, 104: 17, 105: 23, 106: 15,
    107: 15, 108: 17, 109: 15, 110: 21, 111: 15, 112: 25, 113: 13, 114: 13, 115: 13, 116: 13,
    117: 13, 118: 22, 119: 26, 120: 14, 121: 14, 122: 15, 123: 22, 124: 21, 125: 21, 126: 24,
    127: 20, 128: 22, 129: 15, 130: 17, 131: 16, 132: 15, 133: 22, 134: 24, 135: 21, 136: 17,
    137: 25, 138: 16, 139: 21, 140: 17, 141: 22, 142: 16, 143: 21, 144: 21, 145: 25, 146: 21,
    147: 26, 148: 21, 149: 24, 150: 20, 151: 17, 152: 14, 153: 21, 154: 26, 155: 15, 156: 23,
    157: 20, 158: 21, 159: 24, 160: 15, 161: 24, 162: 22, 163: 25, 164: 15, 165: 20, 166: 17,
    167: 17, 168: 22, 169: 14, 170: 18, 171: 18, 172: 18, 173: 18, 174: 18, 175: 18, 176: 18,
    177: 26, 178: 26, 179: 19, 180: 19, 181: 24,
}  # fmt: skip

# STEGO src/train_segmentation.py, get_class_labels("cocostuff27"). "food" and "furniture"
# appear twice on purpose: the things group (2, 3) and the stuff group (14, 15).
CLASS_NAMES: tuple[str, ...] = (
    "electronic", "appliance", "food", "furniture", "indoor",
    "kitchen", "accessory", "animal", "outdoor", "person",
    "sports", "vehicle", "ceiling", "floor", "food",
    "furniture", "rawmaterial", "textile", "wall", "window",
    "building", "ground", "plant", "sky", "solid",
    "structural", "water",
)  # fmt: skip


def plan(src: Path, unlabelled_train: bool = False) -> list[Entry]:
    """Entries for the curated train and val lists; labels where an annotation exists.

    Args:
        src: COCO-Stuff root (see the module docstring).
        unlabelled_train: unused (COCO-Stuff has none); kept for the common interface.

    Returns:
        One Entry per listed id, train first.
    """
    entries = []
    for split, (folder, list_name) in IMAGE_LISTS.items():
        for image_id in read_id_list(src / "curated" / folder / list_name):
            label = src / "annotations" / folder / f"{image_id}.png"
            image = src / "images" / folder / f"{image_id}.jpg"
            entries.append(Entry(split, image_id, image, label if label.is_file() else None))
    return entries


COCOSTUFF27 = DatasetAdapter(
    name="cocostuff27",
    params=LabelParams(n_classes=27, ignore_index=IGNORE_INDEX, class_names=CLASS_NAMES),
    mapping=FINE_TO_COARSE,
    plan=plan,
)
