"""Tests for stego_tasks.data.images: every bad file is made here, under tmp_path."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from stego_tasks.data import images
from stego_tasks.data.images import ImageDecodeError, ImageInfo, load_label, load_rgb, probe_image


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(arr: np.ndarray, path: Path, **kwargs) -> Path:
    Image.fromarray(arr).save(path, **kwargs)
    return path


def _reason(path: Path, **kwargs) -> str:
    with pytest.raises(ImageDecodeError) as info:
        load_rgb(path, **kwargs)
    assert info.value.path == path, "error does not carry the offending path"
    assert str(path) in str(info.value), "message does not name the file"
    return info.value.reason


def _patch_ihdr(png: bytes, width: int, height: int) -> bytes:
    """Rewrite the IHDR width/height of a PNG and fix its CRC (PNG spec, section 5.3)."""
    assert png[12:16] == b"IHDR", "first chunk of a PNG must be IHDR"
    data = struct.pack(">II", width, height) + png[24:29]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + data) & 0xFFFFFFFF)
    return png[:16] + data + crc + png[33:]


def test_rgb_png_round_trip(tmp_path):
    arr = _noise(20, 30)
    path = _save(arr, tmp_path / "a.png")
    out = load_rgb(path)
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3), f"got {out.dtype} {out.shape}"
    assert np.array_equal(out, arr), "lossless RGB pixels changed"
    assert probe_image(path) == ImageInfo(30, 20, "RGB", "PNG"), "probe header facts wrong"


@pytest.mark.parametrize("suffix,fmt", [(".jpg", "JPEG"), (".png", "PNG")])
def test_truncated_file_is_refused(tmp_path, suffix, fmt):
    good = _save(_noise(64, 64), tmp_path / f"good{suffix}", format=fmt)
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "truncated or corrupt" in _reason(bad), "truncated data not reported as such"
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        probe_image(bad)


def test_text_file_named_jpg_and_empty_file(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture\n")
    assert _reason(text).startswith("not an image file"), "text file not refused as non-image"
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert _reason(empty) == "empty file", "zero-byte file not reported as empty"


def test_formats_outside_the_layout_are_not_opened(tmp_path):
    gif = tmp_path / "anim.png"
    Image.fromarray(_noise(20, 20)).convert("P").save(gif, format="GIF")
    assert _reason(gif).startswith("not an image file"), "GIF renamed .png was decoded"


def test_missing_file_and_directory(tmp_path):
    assert "does not exist" in _reason(tmp_path / "nope.png"), "missing file not reported"
    (tmp_path / "dir.png").mkdir()
    assert _reason(tmp_path / "dir.png") == "not a regular file", "directory not refused"


def test_cmyk_jpeg_is_converted(tmp_path):
    # Four flat quadrants of pure CMYK inks; with K = 0, R = 255 - C etc.
    cmyk = np.zeros((32, 32, 4), dtype=np.uint8)
    cmyk[:16, :16] = (0, 255, 255, 0)  # red
    cmyk[:16, 16:] = (255, 0, 255, 0)  # green
    cmyk[16:, :16] = (255, 255, 0, 0)  # blue
    cmyk[16:, 16:] = (0, 0, 0, 0)  # white
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(cmyk, mode="CMYK").save(path, quality=95)
    assert probe_image(path).mode == "CMYK", "test file is not CMYK"
    out = load_rgb(path).astype(int)
    for (ys, xs), expected in [
        ((slice(2, 14), slice(2, 14)), (255, 0, 0)),
        ((slice(2, 14), slice(18, 30)), (0, 255, 0)),
        ((slice(18, 30), slice(2, 14)), (0, 0, 255)),
        ((slice(18, 30), slice(18, 30)), (255, 255, 255)),
    ]:
        err = np.abs(out[ys, xs] - np.array(expected)).max()
        assert err <= 12, f"CMYK quadrant expected {expected}, max error {err}"


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    gray16 = (np.arange(40 * 50, dtype=np.uint32).reshape(40, 50) * 32).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(gray16).save(path)
    assert probe_image(path).mode.startswith("I"), "test file is not 16-bit"
    out = load_rgb(path)
    expected = (gray16 // 256).astype(np.uint8)
    for c in range(3):
        assert np.array_equal(out[..., c], expected), f"channel {c} is not value // 256"
    assert out.max() > 200, "16-bit range was clipped instead of scaled"


def test_palette_grayscale_and_rgba(tmp_path):
    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    idx = rng.integers(0, 256, (24, 24), dtype=np.uint8)
    pal = Image.fromarray(idx, mode="L").convert("P")
    pal.putpalette(palette.ravel().tolist())
    pal.save(tmp_path / "pal.png")
    assert np.array_equal(load_rgb(tmp_path / "pal.png"), palette[idx]), "palette lookup wrong"

    gray = rng.integers(0, 256, (24, 24), dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    out = load_rgb(tmp_path / "gray.png")
    assert all(np.array_equal(out[..., c], gray) for c in range(3)), "grey not replicated"

    rgba = rng.integers(0, 256, (24, 24, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: compositing would change RGB, dropping must not
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    out = load_rgb(tmp_path / "rgba.png")
    assert out.shape == (24, 24, 3), f"alpha not dropped: {out.shape}"
    assert np.array_equal(out, rgba[..., :3]), "RGB under alpha changed"


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("JPEG", ".jpg")])
def test_exif_orientation_6_transposes_shape(tmp_path, fmt, suffix):
    arr = _noise(24, 40)  # H=24, W=40
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / f"rot{suffix}"
    Image.fromarray(arr).save(path, format=fmt, exif=exif.tobytes())
    out = load_rgb(path)
    assert out.shape == (40, 24, 3), f"orientation 6 should give H=40, W=24, got {out.shape}"
    assert (probe_image(path).width, probe_image(path).height) == (24, 40), (
        "probe_image must report the oriented size"
    )
    if fmt == "PNG":
        # Orientation 6 = display rotated 90 degrees clockwise = np.rot90 with k=-1.
        assert np.array_equal(out, np.rot90(arr, k=-1)), "pixels not rotated clockwise"
        reference = np.array(ImageOps.exif_transpose(Image.open(path)))
        assert np.array_equal(out, reference), "differs from PIL's exif_transpose"


def test_min_size(tmp_path):
    path = _save(_noise(10, 40), tmp_path / "thin.png")
    assert _reason(path) == "image of 40x10 px is smaller than 16 px on a side", "wrong reason"
    assert load_rgb(path, min_size=8).shape == (10, 40, 3), "min_size parameter ignored"


def test_bomb_header_refused_before_decoding(tmp_path):
    png = _save(_noise(16, 16), tmp_path / "tiny.png").read_bytes()
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_patch_ihdr(png, 8000, 8000))
    assert _reason(bomb) == "image of 8000x8000 px exceeds the 50 MP limit", "bomb accepted"
    # Past PIL's own hard limit (2 x 89.5 MP) PIL refuses first; still one clean error.
    huge = tmp_path / "huge.png"
    huge.write_bytes(_patch_ihdr(png, 100000, 100000))
    assert _reason(huge) == "image of 10000 MP exceeds the 50 MP limit", "PIL's error not mapped"


def test_pixel_limit_is_a_module_setting(tmp_path, monkeypatch):
    path = _save(_noise(30, 30), tmp_path / "ok.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 899)
    assert _reason(path) == "image of 30x30 px exceeds the 0.000899 MP limit", "limit ignored"
    assert load_rgb(path, max_pixels=900).shape == (30, 30, 3), "max_pixels argument ignored"


def test_labels(tmp_path):
    rng = np.random.default_rng(2)
    idx = rng.integers(0, 12, (20, 30), dtype=np.uint8)
    Image.fromarray(idx, mode="L").save(tmp_path / "l.png")
    out = load_label(tmp_path / "l.png")
    assert out.dtype == np.uint8 and np.array_equal(out, idx), "mode L label changed"

    pal = Image.fromarray(idx, mode="L").convert("P")
    pal.putpalette([255 - i % 256 for i in range(768)])
    pal.save(tmp_path / "p.png")
    assert np.array_equal(load_label(tmp_path / "p.png"), idx), "palette label not indices"

    wide = (idx.astype(np.uint16) * 1000).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    out = load_label(tmp_path / "w.png")
    assert out.dtype == np.int64 and np.array_equal(out, wide), "16-bit label changed"

    _save(_noise(20, 30), tmp_path / "rgb.png")
    with pytest.raises(ImageDecodeError, match="must be single-channel class-index PNGs"):
        load_label(tmp_path / "rgb.png")
