"""Tests for `tools.visualize`: palettes, overlays, panels and the training-loss figure.

They prove the palette is PASCAL VOC's (checked against its published first colours and an
independent bit-by-bit construction) and distinct for all 256 indices, that `colorize`,
`palette_png` and `overlay` colour a label map with it (ignored pixels black, indices kept in the
PNG), that `panel` puts pictures side by side with white gaps, that the loss CSV reader turns bad
cells into NaN, and that the loss figure is a PNG whose bytes depend only on its input.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stego_tasks.tools.visualize import (
    colorize,
    loss_plot_png,
    overlay,
    palette,
    palette_png,
    panel,
    read_loss_log,
)

# PASCAL VOC's colours of classes 1..5 (its colormap skips black, index 0 here is VOC's 1).
VOC_FIRST = [(128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128)]


def _voc_colour(label: int) -> tuple[int, int, int]:
    """VOC's colour of `label`, bit j of the label's bits 3k, 3k+1, 3k+2 going to bit 7-k of r, g, b."""
    bits = [(label >> i) & 1 for i in range(24)]
    return tuple(sum(bits[3 * k + channel] << (7 - k) for k in range(8)) for channel in range(3))  # type: ignore[return-value]


def test_the_palette_is_pascal_vocs_and_distinct_for_every_index() -> None:
    colours = palette()
    assert colours.shape == (256, 3) and colours.dtype == np.uint8
    assert [tuple(c) for c in colours[:5].tolist()] == VOC_FIRST
    assert [tuple(c) for c in colours.tolist()] == [_voc_colour(i + 1) for i in range(256)]
    assert len({tuple(c) for c in colours.tolist()}) == 256, "two indices share a colour"
    assert np.array_equal(palette(7), colours[:7])


def test_colorize_paints_each_label_and_ignored_pixels_black() -> None:
    labels = np.array([[0, 1], [255, 2]])
    rgb = colorize(labels, ignore_index=255)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == list(VOC_FIRST[0]) and rgb[1, 1].tolist() == list(VOC_FIRST[2])
    assert rgb[1, 0].tolist() == [0, 0, 0]
    assert colorize(labels)[1, 0].tolist() == palette()[255].tolist(), "without ignore_index 255 is a colour"
    assert colorize(np.array([[-3, 300]])).tolist() == [[palette()[0].tolist(), palette()[255].tolist()]], "clipped"


def test_a_palette_png_keeps_the_indices_and_colours_them(tmp_path: Path) -> None:
    labels = np.arange(12, dtype=np.int64).reshape(3, 4) * 20
    palette_png(labels).save(tmp_path / "m.png")
    image = Image.open(tmp_path / "m.png")
    assert image.mode == "P" and image.size == (4, 3)
    assert np.array_equal(np.asarray(image), labels.astype(np.uint8))
    assert np.array_equal(np.asarray(image.convert("RGB")), colorize(labels))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 0.3])
def test_an_overlay_is_the_rounded_blend_of_image_and_colours(alpha: float) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, size=(5, 6))
    got = overlay(image, labels, alpha)
    want = np.array([[[round((1 - alpha) * int(image[y, x, c]) + alpha * int(palette()[labels[y, x], c]))
                       for c in range(3)] for x in range(6)] for y in range(5)])
    assert got.dtype == np.uint8 and np.abs(got.astype(int) - want).max() <= 1, "blend differs beyond rounding"
    if alpha in (0.0, 1.0):
        assert np.array_equal(got, image if alpha == 0.0 else colorize(labels))


def test_a_panel_puts_pictures_side_by_side_with_white_gaps() -> None:
    a = np.zeros((3, 2, 3), np.uint8)
    b = np.full((3, 4, 3), 7, np.uint8)
    got = panel([a, b, a], gap=1)
    assert got.shape == (3, 2 + 1 + 4 + 1 + 2, 3)
    assert np.array_equal(got[:, :2], a) and np.array_equal(got[:, 3:7], b) and np.array_equal(got[:, 8:], a)
    assert (got[:, 2] == 255).all() and (got[:, 7] == 255).all()
    assert np.array_equal(panel([b]), b), "one picture: no gap"


def test_the_loss_log_reads_floats_and_bad_cells_as_nan(tmp_path: Path) -> None:
    path = tmp_path / "loss.csv"
    path.write_text("step,total,cluster\n0,1.5,0.25\n10,oops,\n20,0.5,0.125\n")
    columns = read_loss_log(path)
    assert list(columns) == ["step", "total", "cluster"]
    assert columns["step"] == [0.0, 10.0, 20.0] and columns["total"][0] == 1.5 and math.isnan(columns["total"][1])
    assert math.isnan(columns["cluster"][1]) and columns["cluster"][2] == 0.125
    path.write_text("")
    assert read_loss_log(path) == {}, "an empty file has no columns"


def test_the_loss_figure_is_a_png_whose_bytes_depend_only_on_the_input() -> None:
    columns = {"step": [0.0, 1.0, 2.0], "total": [3.0, 2.0, 1.0], "linear": [1.0, 0.9, 0.8], "mystery": [0.1, 0.2, 0.3]}
    first = loss_plot_png(columns)
    assert first.startswith(b"\x89PNG\r\n\x1a\n") and loss_plot_png(columns) == first
    three_panels = Image.open(io.BytesIO(first)).size
    one_panel = Image.open(io.BytesIO(loss_plot_png({"step": [0.0, 1.0], "total": [1.0, 0.5]}))).size
    assert three_panels[0] == pytest.approx(3 * one_panel[0], rel=0.02), (three_panels, one_panel)
    assert loss_plot_png({**columns, "total": [3.0, 2.0, 1.5]}) != first
