"""Preprocessing shared by extraction and prediction: resize, centre-crop and five-crop.

Everything here works on uint8 numpy arrays with PIL resampling, so a worker that only
decodes images needs neither torch nor the backbone.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_center_crop(image: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """Resize the shorter side to `size`, then take the central `size` x `size` square.

    Args:
        image: uint8 [H, W, 3] RGB or [H, W] label.
        size: output side in pixels.
        nearest: nearest-neighbour resampling (labels) instead of bilinear (images).

    Returns:
        uint8 array [size, size, 3] or [size, size].
    """
    height, width = image.shape[:2]
    scale = size / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resample = Image.NEAREST if nearest else Image.BILINEAR
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), resample))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top : top + size, left : left + size]


def five_crop_boxes(height: int, width: int, ratio: float) -> list[tuple[int, int, int, int]]:
    """Boxes (top, left, h, w) of the four corner crops and the centre crop, as torchvision's five_crop."""
    crop_h, crop_w = max(1, int(height * ratio)), max(1, int(width * ratio))
    return [
        (0, 0, crop_h, crop_w),
        (0, width - crop_w, crop_h, crop_w),
        (height - crop_h, 0, crop_h, crop_w),
        (height - crop_h, width - crop_w, crop_h, crop_w),
        # torchvision's center_crop rounds half to even; `// 2` is one pixel off for odd margins.
        (int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0)), crop_h, crop_w),
    ]


def preprocess(
    image: np.ndarray, label: np.ndarray | None, resolution: int, five_crop: bool, crop_ratio: float
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Turn one image (and its label) into the network inputs of one manifest row.

    Args:
        image: uint8 [H, W, 3].
        label: [H, W] class indices or None.
        resolution: side of the square network input; a multiple of the patch size.
        five_crop: cut the four corners and the centre (each `crop_ratio` of the side) first.
        crop_ratio: relative side of a five-crop crop (published: 0.5).

    Returns:
        One (uint8 [R, R, 3], uint8 [R, R] or None) pair per crop (5 or 1).
    """
    height, width = image.shape[:2]
    boxes = five_crop_boxes(height, width, crop_ratio) if five_crop else [(0, 0, height, width)]
    out = []
    for top, left, crop_h, crop_w in boxes:
        crop = resize_center_crop(image[top : top + crop_h, left : left + crop_w], resolution)
        crop_label = None
        if label is not None:
            region = label[top : top + crop_h, left : left + crop_w]
            crop_label = resize_center_crop(region, resolution, nearest=True)
        out.append((crop, crop_label))
    return out
