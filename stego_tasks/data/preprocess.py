"""Preprocessing shared by extraction and prediction: resize, centre-crop and five-crop.

Two modes (`extract.preprocess`):
- `reference` reproduces the STEGO reference's inputs bit for bit (reference doc section 11):
  five-crops cut from the original image and sent through a JPEG encode/decode at PIL's
  default quality (`src/crop_datasets.py` saves them so, and training reads those files),
  the shorter side resized with NEAREST and torchvision's integer size arithmetic, then
  torchvision's centre crop (`src/utils.py::get_transform`), for images and labels alike.
- `antialias` resizes images with PIL's antialiased bilinear filter and no JPEG step (labels
  stay NEAREST): smoother inputs, not the reference's.

Everything here works on uint8 numpy arrays with PIL, so a worker that only decodes images
needs neither torch nor the backbone.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from stego_tasks.errors import InvalidInputError

PREPROCESS_MODES: tuple[str, ...] = ("reference", "antialias")


def check_mode(mode: str) -> None:
    """Refuse an unknown preprocessing mode with the allowed ones."""
    if mode not in PREPROCESS_MODES:
        raise InvalidInputError(f"extract.preprocess must be one of {list(PREPROCESS_MODES)}, got {mode!r}.")


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(new_h, new_w) with the shorter side `size`, by torchvision `Resize(int)`'s arithmetic.

    The longer side is `int(size * long / short)` (truncated, not rounded), as
    `torchvision.transforms.functional._compute_resized_output_size` computes it.
    """
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def center_crop_offsets(height: int, width: int, crop_h: int, crop_w: int) -> tuple[int, int]:
    """(top, left) of torchvision's `center_crop`: `int(round(margin / 2))`, half to even."""
    return int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))


def resize_short_side(image: np.ndarray, size: int, nearest: bool = False, mode: str = "antialias") -> np.ndarray:
    """Resize so the shorter side is `size`, keeping the aspect ratio.

    Args:
        image: uint8 [H, W, 3] RGB or [H, W] label.
        size: target shorter side in pixels.
        nearest: nearest-neighbour resampling (labels) instead of bilinear (images); the
            `reference` mode always resamples with NEAREST, as the reference does.
        mode: "antialias" (bilinear, rounded sizes) or "reference" (NEAREST, torchvision's
            truncated sizes).

    Returns:
        uint8 array with min(h, w) == size; a writable copy (pydensecrf refuses read-only images).
    """
    check_mode(mode)
    height, width = image.shape[:2]
    if mode == "reference":
        new_h, new_w = short_side_size(height, width, size)
        resample = Image.NEAREST
    else:
        scale = size / min(height, width)
        new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
        resample = Image.NEAREST if nearest else Image.BILINEAR
    if (new_h, new_w) == (height, width):
        return np.array(image)
    return np.array(Image.fromarray(image).resize((new_w, new_h), resample))


def resize_center_crop(image: np.ndarray, size: int, nearest: bool = False, mode: str = "antialias") -> np.ndarray:
    """Resize the shorter side to `size` (`resize_short_side`), then take the central `size` x `size` square.

    Args:
        image: uint8 [H, W, 3] RGB or [H, W] label.
        size: output side in pixels.
        nearest: NEAREST for labels (see `resize_short_side`).
        mode: "antialias" (floor-halved offsets) or "reference" (torchvision's half-to-even offsets).

    Returns:
        uint8 array [size, size, 3] or [size, size].
    """
    resized = resize_short_side(image, size, nearest, mode)
    new_h, new_w = resized.shape[:2]
    if mode == "reference":
        top, left = center_crop_offsets(new_h, new_w, size, size)
    else:
        top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top : top + size, left : left + size]


def five_crop_boxes(height: int, width: int, ratio: float) -> list[tuple[int, int, int, int]]:
    """Boxes (top, left, h, w) in torchvision's five_crop order: tl, tr, bl, br, centre.

    The crop side is `int(side * ratio)`, as the reference's `crop_datasets.py` computes it.
    """
    crop_h, crop_w = max(1, int(height * ratio)), max(1, int(width * ratio))
    return [
        (0, 0, crop_h, crop_w),
        (0, width - crop_w, crop_h, crop_w),
        (height - crop_h, 0, crop_h, crop_w),
        (height - crop_h, width - crop_w, crop_h, crop_w),
        # torchvision's center_crop rounds half to even; `// 2` is one pixel off for odd margins.
        (*center_crop_offsets(height, width, crop_h, crop_w), crop_h, crop_w),
    ]


def jpeg_round_trip(image: np.ndarray) -> np.ndarray:
    """Encode a uint8 RGB image as JPEG at PIL's default settings and decode it again.

    This is what the reference's `crop_datasets.py` does to every five-crop (`save(..., 'JPEG')`,
    read back with `Image.open(...).convert('RGB')`), so its training inputs carry JPEG artefacts.

    Args:
        image: uint8 [H, W, 3].

    Returns:
        uint8 [H, W, 3], the decoded JPEG.
    """
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, "JPEG")
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def preprocess(
    image: np.ndarray,
    label: np.ndarray | None,
    resolution: int,
    five_crop: bool,
    crop_ratio: float,
    mode: str = "antialias",
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Turn one image (and its label) into the network inputs of one manifest row.

    Args:
        image: uint8 [H, W, 3].
        label: [H, W] class indices or None.
        resolution: side of the square network input; a multiple of the patch size.
        five_crop: cut the four corners and the centre (each `crop_ratio` of the side) first.
        crop_ratio: relative side of a five-crop crop (published: 0.5).
        mode: "reference" or "antialias" (module docstring).

    Returns:
        One (uint8 [R, R, 3], uint8 [R, R] or None) pair per crop (5 or 1), in five_crop order.
    """
    check_mode(mode)
    height, width = image.shape[:2]
    boxes = five_crop_boxes(height, width, crop_ratio) if five_crop else [(0, 0, height, width)]
    out = []
    for top, left, crop_h, crop_w in boxes:
        region = image[top : top + crop_h, left : left + crop_w]
        if five_crop and mode == "reference":
            region = jpeg_round_trip(region)
        crop = resize_center_crop(region, resolution, mode=mode)
        crop_label = None
        if label is not None:
            label_region = label[top : top + crop_h, left : left + crop_w]
            crop_label = resize_center_crop(label_region, resolution, nearest=True, mode=mode)
        out.append((crop, crop_label))
    return out
