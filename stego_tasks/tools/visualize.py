"""Pictures of a run: palette PNGs for label maps (not grey), overlays, side-by-side panels, loss curves."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from stego_tasks.runtime.atomic import read_csv_rows

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


# Panels of the training-loss figure: the correspondence terms, then the probes.
LOSS_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("correspondence losses", ("total", "intra", "inter", "neg")),
    ("probe losses", ("cluster", "linear")),
)


def read_loss_log(path: Path) -> dict[str, list[float]]:
    """Columns of the training-loss CSV as floats (an unparsable cell becomes NaN).

    Args:
        path: CSV with a `step` column and one column per loss.

    Returns:
        {column: values}, every list as long as the CSV has rows; empty when it has none.
    """
    names, rows = read_csv_rows(path)
    columns: dict[str, list[float]] = {name: [] for name in names}
    for row in rows:
        for name in columns:
            try:
                columns[name].append(float(row.get(name) or "nan"))
            except ValueError:
                columns[name].append(math.nan)
    return columns


def loss_plot_png(columns: dict[str, list[float]]) -> bytes:
    """Loss curves against `step` as PNG bytes (deterministic for equal input).

    Args:
        columns: {"step": [...], loss name: [...]} as from `read_loss_log`.

    Returns:
        The PNG file's bytes.
    """
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    losses = [name for name in columns if name != "step"]
    known = {name for _, names in LOSS_PANELS for name in names}
    panels = [(title, [n for n in names if n in losses]) for title, names in LOSS_PANELS]
    panels = [(title, names) for title, names in panels if names]
    if any(name not in known for name in losses):
        panels.append(("other losses", [name for name in losses if name not in known]))
    buffer = io.BytesIO()
    # The default style, not the user's matplotlibrc: the same CSV gives the same bytes anywhere.
    with matplotlib.style.context("default"):
        figure = Figure(figsize=(5.2 * len(panels), 3.4))
        FigureCanvasAgg(figure)
        for index, (title, names) in enumerate(panels):
            axis = figure.add_subplot(1, len(panels), index + 1)
            for name in names:
                axis.plot(columns["step"], columns[name], label=name, linewidth=1.2)
            axis.set_title(title)
            axis.set_xlabel("step")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(buffer, format="png", dpi=80, metadata={"Software": None})
    return buffer.getvalue()
