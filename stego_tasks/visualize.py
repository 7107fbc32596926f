"""Colours for label maps: palette PNGs (not grey), overlays and side-by-side panels."""

from __future__ import annotations

import numpy as np
from PIL import Image

# A fixed, well-separated palette (PASCAL VOC's bit-interleaving scheme), so class / cluster
# j has the same colour in every run, report and `stego predict` output.


def palette(n: int = 256) -> np.ndarray:
    """Colour of each index 0..n-1.

    Args:
        n: number of colours.

    Returns:
        uint8 [n, 3].
    """
    colours = np.zeros((n, 3), dtype=np.uint8)
    for index in range(n):
        value, r, g, b = index + 1, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        colours[index] = (r, g, b)
    return colours


def colorize(label_map: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """RGB picture of a label map; `ignore_index` pixels are black.

    Args:
        label_map: int [H, W].
        ignore_index: value drawn black, or None.

    Returns:
        uint8 [H, W, 3].
    """
    rgb = palette()[np.clip(label_map, 0, 255).astype(np.int64)]
    if ignore_index is not None:
        rgb[label_map == ignore_index] = 0
    return rgb


def palette_png(label_map: np.ndarray) -> Image.Image:
    """A mode-"P" PIL image whose pixel values are the indices and whose palette colours them."""
    indices = np.ascontiguousarray(label_map.astype(np.uint8))
    image = Image.frombytes("P", (indices.shape[1], indices.shape[0]), indices.tobytes())
    image.putpalette(palette().reshape(-1).tolist())
    return image


def overlay(image: np.ndarray, label_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colourised label map over an RGB image.

    Args:
        image: uint8 [H, W, 3].
        label_map: int [H, W].
        alpha: weight of the colours.

    Returns:
        uint8 [H, W, 3].
    """
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colorize(label_map).astype(np.float32)
    return blended.round().clip(0, 255).astype(np.uint8)


def panel(pictures: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Pictures of equal height side by side with white gaps, uint8 [H, sum(W) + gaps, 3]."""
    height = pictures[0].shape[0]
    spacer = np.full((height, gap, 3), 255, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for picture in pictures:
        parts.extend([picture, spacer])
    return np.concatenate(parts[:-1], axis=1)
