"""A deterministic, labelled synthetic corpus for demos and tests.

Each image is a little outdoor "scene": a sky gradient above a random horizon, buildings
standing on the horizon, a ground class filling the lower part and blobs of other ground
classes on it. Every class has its own colour AND texture, so a segmenter that works on
real photographs has something to find here, and a colour-only or texture-only shortcut
does not solve it alone.

Layout written (the STEGO custom-data layout that `stego_tasks.ingest` reads)::

    root/images/{train,val}/scene_0000.png   RGB, size x size
    root/labels/{train,val}/scene_0000.png   mode L, class index per pixel, 255 = ignore

Output is byte-identical for the same arguments: all randomness comes from numpy
Generators seeded from (seed, split, image index), and PNGs are saved by PIL without
metadata.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from stego_tasks.config import DemoDataParams
from stego_tasks.errors import InvalidInputError

DEMO_CLASS_NAMES: tuple[str, ...] = ("sky", "grass", "road", "building", "water")
DEMO_N_CLASSES: int = len(DEMO_CLASS_NAMES)
DEMO_IGNORE_INDEX: int = 255

SKY, GRASS, ROAD, BUILDING, WATER = range(DEMO_N_CLASSES)
_GROUND = (GRASS, ROAD, WATER)
_SPLIT_CODES = {"train": 0, "val": 1}
_MIN_SIZE = 32
# The demo's published sizes (demo_data block of stego_tasks/presets/defaults.yaml).
_SIZES = DemoDataParams()
_SCENE_NAME = re.compile(r"scene_(\d{4})\.png")


def _foreign_entry(root: Path) -> Path | None:
    """The first thing under `root` that `demo_data` would not have written, if any.

    A demo corpus holds only `images/` and `labels/`, each with only `train/` and `val/`,
    each with only `scene_NNNN.png` files.
    """
    if not root.is_dir():
        return root if root.exists() else None
    for top in sorted(root.iterdir()):
        if top.name not in ("images", "labels") or not top.is_dir() or top.is_symlink():
            return top
        for split in sorted(top.iterdir()):
            if split.name not in _SPLIT_CODES or not split.is_dir() or split.is_symlink():
                return split
            for item in sorted(split.iterdir()):
                if not (_SCENE_NAME.fullmatch(item.name) and item.is_file() and not item.is_symlink()):
                    return item
    return None


def _texture_sky(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Smooth vertical blue gradient, darker at the top, almost no noise."""
    t = yy / max(yy.max(), 1.0)
    top = np.array([60.0, 110.0, 200.0]) + rng.uniform(-15, 15, 3)
    bottom = np.array([175.0, 205.0, 245.0]) + rng.uniform(-10, 10, 3)
    img = top * (1 - t[..., None]) + bottom * t[..., None]
    return img + rng.normal(0.0, 2.0, img.shape)


def _texture_grass(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Green with strong per-pixel noise (high frequency), shared across channels."""
    base = np.array([60.0, 140.0, 45.0]) + rng.uniform(-10, 10, 3)
    noise = rng.normal(0.0, 28.0, yy.shape)[..., None] * np.array([0.5, 1.0, 0.4])
    return base + noise


def _texture_road(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Mid grey with light diagonal stripes and mild noise."""
    period = rng.uniform(9.0, 14.0)
    phase = rng.uniform(0.0, period)
    stripes = ((xx + yy + phase) % period) < period * 0.25
    grey = 110.0 + rng.uniform(-10, 10) + 60.0 * stripes + rng.normal(0.0, 5.0, yy.shape)
    return np.repeat(grey[..., None], 3, axis=2)


def _texture_building(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Red-brown bricks in offset rows separated by pale mortar lines."""
    brick_h, brick_w = 6.0, 14.0
    row = np.floor(yy / brick_h)
    # Alternate rows are shifted by half a brick, like a running bond.
    xs = xx + (row % 2) * brick_w / 2
    mortar = ((yy % brick_h) < 1.0) | ((xs % brick_w) < 1.0)
    brick = np.array([150.0, 65.0, 45.0]) + rng.uniform(-15, 15, 3)
    # Each brick gets its own shade so the pattern is not a flat colour between lines.
    shade = np.sin(row * 12.9898 + np.floor(xs / brick_w) * 78.233) * 12.0
    img = brick + shade[..., None]
    img[mortar] = np.array([205.0, 195.0, 180.0])
    return img + rng.normal(0.0, 4.0, img.shape)


def _texture_water(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Blue-green with smooth horizontal waves whose crests wobble."""
    f1, f2 = rng.uniform(0.25, 0.45), rng.uniform(0.10, 0.25)
    p1, p2 = rng.uniform(0, 2 * np.pi, 2)
    wave = np.sin(yy * f1 + 2.0 * np.sin(xx * f2 + p2) + p1)
    base = np.array([35.0, 115.0, 135.0]) + rng.uniform(-8, 8, 3)
    img = base + wave[..., None] * np.array([10.0, 25.0, 30.0])
    return img + rng.normal(0.0, 3.0, img.shape)


_TEXTURES = {
    SKY: _texture_sky,
    GRASS: _texture_grass,
    ROAD: _texture_road,
    BUILDING: _texture_building,
    WATER: _texture_water,
}


def _scene_labels(rng: np.random.Generator, index: int, size: int) -> np.ndarray:
    """Draw one scene's class map.

    Guarantees, whatever the draw: sky, the base ground class and (for 3 of every 4
    images) a building are visible, plus one or two blobs, so each image has 3 to 5
    classes. The base ground class cycles with `index` so every class reaches every
    split once a split has at least 3 images.

    Args:
        rng: generator for this image.
        index: image index within its split.
        size: side of the square image in pixels.

    Returns:
        [size, size] uint8 class indices in [0, DEMO_N_CLASSES).
    """
    labels = np.full((size, size), SKY, dtype=np.uint8)
    horizon = int(size * rng.uniform(0.25, 0.45))
    base = _GROUND[index % 3]
    labels[horizon:] = base
    yy, xx = np.mgrid[0:size, 0:size]

    # Buildings stand on the horizon; their total width stays under 60% of the image so
    # some sky is always visible.
    if index % 4 != 3:
        x = int(rng.integers(0, size // 4))
        for _ in range(int(rng.integers(1, 4))):
            width = int(size * rng.uniform(0.15, 0.28))
            if x + width > size * 0.95:
                break
            top = int(rng.uniform(0.05, 0.6) * horizon)
            labels[top:horizon, x : x + width] = BUILDING
            x += width + int(size * rng.uniform(0.05, 0.2))

    # Blobs of other ground classes lie fully below the horizon and are smaller than half
    # of the ground in each direction, so the base ground class stays visible.
    others = [c for c in _GROUND if c != base]
    ground_h = size - horizon
    n_blobs = 1 if index % 4 != 3 else 2
    for k in range(n_blobs):
        cls = others[(k + int(rng.integers(0, 2))) % 2]
        ry = ground_h * rng.uniform(0.12, 0.24)
        rx = size * rng.uniform(0.1, 0.22)
        cy = rng.uniform(horizon + ry + 1, size - ry - 1)
        cx = rng.uniform(rx, size - rx)
        labels[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0] = cls
    if n_blobs == 2 and not np.isin(others, labels).all():
        # Both blobs drew the same class; repaint the second so 3 classes remain visible.
        missing = [c for c in others if c not in labels][0]
        labels[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0] = missing
    return labels


def _render(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Paint each class's texture where `labels` has that class.

    Args:
        rng: generator for this image.
        labels: [H, W] class indices.

    Returns:
        [H, W, 3] uint8 RGB image.
    """
    h, w = labels.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3), dtype=np.float64)
    # Draw every texture, present or not, so the generator advances the same way for
    # every scene and one class's draw never shifts another's.
    for cls in range(DEMO_N_CLASSES):
        tex = _TEXTURES[cls](rng, yy, xx)
        mask = labels == cls
        img[mask] = tex[mask]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _mark_borders(labels: np.ndarray, ignore_index: int) -> np.ndarray:
    """Set a 1-px line of `ignore_index` where a pixel's right or lower neighbour differs.

    Args:
        labels: [H, W] class indices.
        ignore_index: value for unlabelled pixels.

    Returns:
        [H, W] copy of `labels` with the region borders unlabelled.
    """
    out = labels.copy()
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    out[edge] = ignore_index
    return out


def _save_png(array: np.ndarray, path: Path) -> None:
    """Save without any metadata chunk so the bytes depend only on the pixels."""
    Image.fromarray(array).save(path, format="PNG", compress_level=6)


def demo_data(
    root: Path,
    n_train: int = _SIZES.n_train,
    n_val: int = _SIZES.n_val,
    size: int = _SIZES.size,
    seed: int = _SIZES.seed,
) -> dict:
    """Write a labelled synthetic corpus of outdoor scenes with 5 classes.

    `root` must be absent, empty, or an earlier demo corpus, which is rewritten whole (its
    scenes beyond `n_train` / `n_val` are removed); a folder holding anything else is
    refused, so no user file is ever overwritten.

    Args:
        root: corpus root; `images/{train,val}` and `labels/{train,val}` are created.
        n_train: number of training images, at least 3 (so every class appears).
        n_val: number of validation images, at least 3.
        size: side of the square images in pixels, at least 32.
        seed: seed of every random draw; the same seed gives byte-identical files.

    Returns:
        Summary dict: `root` (str), `n_train`, `n_val`, `size`, `seed`, `n_classes`,
        `class_names` (list), `ignore_index` (255), `class_pixel_counts`
        ({split: list of n_classes ints, ignore pixels excluded}).

    Raises:
        ValueError: bad counts or size, or `root` holds something other than a demo corpus.
    """
    _check_request(root, n_train, n_val, size)
    root = Path(root)
    counts = {split: _write_split(root, split, n, size, seed) for split, n in (("train", n_train), ("val", n_val))}
    return {
        "root": str(root),
        "n_train": n_train,
        "n_val": n_val,
        "size": size,
        "seed": seed,
        "n_classes": DEMO_N_CLASSES,
        "class_names": list(DEMO_CLASS_NAMES),
        "ignore_index": DEMO_IGNORE_INDEX,
        "class_pixel_counts": counts,
    }


def _check_request(root: Path, n_train: int, n_val: int, size: int) -> None:
    """Refuse bad counts or size, and a folder that holds anything but an earlier demo corpus."""
    if n_train < 3 or n_val < 3:
        raise InvalidInputError(
            f"demo_data needs at least 3 images per split so every class appears, "
            f"got n_train={n_train}, n_val={n_val}."
        )
    if size < _MIN_SIZE:
        raise InvalidInputError(f"demo_data needs size >= {_MIN_SIZE} px, got size={size}.")
    root = Path(root)
    foreign = _foreign_entry(root)
    if foreign is not None:
        what = "is a file" if foreign == root else f"holds {foreign}, which is not part of a demo corpus"
        raise InvalidInputError(
            f"{root} {what}; refusing to write the demo corpus there: pass a new or empty folder "
            "(or the folder of an earlier `stego demo-data`)."
        )


def _write_split(root: Path, split: str, n: int, size: int, seed: int) -> list[int]:
    """Write scenes 0..n-1 of one split (images and labels), remove any beyond n.

    Returns:
        The split's labelled pixels per class (n_classes ints, ignore pixels excluded).
    """
    img_dir = root / "images" / split
    lab_dir = root / "labels" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    hist = np.zeros(DEMO_N_CLASSES, dtype=np.int64)
    for i in range(n):
        # One generator per image: the scene does not depend on how many come before.
        rng = np.random.default_rng([seed, _SPLIT_CODES[split], i])
        labels = _scene_labels(rng, i, size)
        image = _render(rng, labels)
        labels = _mark_borders(labels, DEMO_IGNORE_INDEX)
        _save_png(image, img_dir / f"scene_{i:04d}.png")
        _save_png(labels, lab_dir / f"scene_{i:04d}.png")
        valid = labels[labels != DEMO_IGNORE_INDEX]
        hist += np.bincount(valid, minlength=DEMO_N_CLASSES)
    # Scenes of an earlier, larger corpus in this folder: the corpus is exactly n images.
    for folder in (img_dir, lab_dir):
        for stale in folder.iterdir():
            match = _SCENE_NAME.fullmatch(stale.name)
            if match and int(match.group(1)) >= n:
                stale.unlink()
    return hist.tolist()
