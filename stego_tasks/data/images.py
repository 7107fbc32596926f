"""Safe decoding of corpus images and label masks.

Every way a file can be unusable (missing, empty, not an image, truncated, too big, too
small, unreadable, wrong label mode) raises one exception type, `ImageDecodeError`,
whose `reason` is a short sentence fit for a quarantine list. Ingest uses `probe_image`
to decide what enters the manifest; later stages use `load_rgb` and `load_label`.

Safety choices:
- Files are opened only through `corpus_files.open_regular`, which refuses anything but a
  regular file without blocking on it.
- Only raster formats of the corpus layout are opened (`ALLOWED_FORMATS`), so a file
  named .jpg that is really EPS never reaches a PIL plugin that runs Ghostscript.
- Pixel counts are checked from the header, before anything is decoded.
- Image sizes are reported after EXIF orientation, i.e. the shape `load_rgb` returns.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from stego_tasks.data.corpus_files import (
    ImageDecodeError,
    open_regular,
)
from stego_tasks.params_schema import MIN_IMAGE_SIZE

# Largest width * height accepted. PIL itself refuses over 2 x Image.MAX_IMAGE_PIXELS
# (179 MP by default) before our check runs, so raising this past that has no effect.
MAX_PIXELS: int = 50_000_000
# Written once, beside the range check of `ingest.min_size` (the configuration layer).
DEFAULT_MIN_SIZE: int = MIN_IMAGE_SIZE
# PIL's opener names; a camera JPEG with an embedded preview frame opens through "JPEG"
# and then reports its format as "MPO".
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")

_EXIF_ORIENTATION = 0x0112
# Same table as PIL.ImageOps.exif_transpose; kept here so probe_image (which only needs
# the resulting size) and load_rgb apply exactly the same rule.
_ORIENTATION_OPS: dict[int, tuple[Image.Transpose, ...]] = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_LABEL_8BIT_MODES = frozenset({"L", "P", "1"})


@dataclass(frozen=True)
class ImageInfo:
    """Header facts of a fully decodable image.

    Attributes:
        width: width in pixels after EXIF orientation.
        height: height in pixels after EXIF orientation.
        mode: the original PIL mode, e.g. "RGB", "L", "I;16", "CMYK".
        format: the PIL format name, e.g. "PNG".
    """

    width: int
    height: int
    mode: str
    format: str


@contextmanager
def _open(path: Path, *, min_size: int, max_pixels: int | None) -> Iterator[Image.Image]:
    """Open lazily (header only) and check size limits; yields the open PIL image."""
    path = Path(path)
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    with open_regular(path) as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise ImageDecodeError(path, "empty file")
        with _open_image(handle, path, limit, min_size) as im:
            yield im


@contextmanager
def _open_image(handle: BinaryIO, path: Path, limit: int, min_size: int) -> Iterator[Image.Image]:
    """PIL's lazy open of an already opened regular file, with one error type."""
    # Register every plugin: with `formats=` PIL only looks among the loaded ones and a
    # format not yet loaded (TIFF, WebP) would fail with a KeyError. Idempotent.
    Image.init()
    try:
        with warnings.catch_warnings():
            # Our own limit below is the one that counts; PIL's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(handle, formats=ALLOWED_FORMATS)
    except PermissionError:
        raise ImageDecodeError(path, "file is not readable (permission denied)") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            path, "not an image file (or not JPEG, PNG, BMP, TIFF or WebP)"
        ) from None
    except Image.DecompressionBombError as exc:
        # PIL refuses past twice its own limit before we see the size; its message
        # carries the pixel count.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)) / 1e6:g} MP" if found else "over the limit"
        raise ImageDecodeError(
            path, f"image of {size} exceeds the {limit / 1e6:g} MP limit"
        ) from None
    except Exception as exc:  # PIL raises many types on hostile headers
        raise ImageDecodeError(
            path, f"truncated or corrupt image header ({type(exc).__name__}: {exc})"
        ) from None
    with im:
        w, h = im.size
        if w * h > limit:
            raise ImageDecodeError(
                path, f"image of {w}x{h} px exceeds the {limit / 1e6:g} MP limit"
            )
        if min(w, h) < min_size:
            raise ImageDecodeError(
                path, f"image of {w}x{h} px is smaller than {min_size} px on a side"
            )
        yield im


def _decode(im: Image.Image, path: Path) -> None:
    """Decode all pixel data, turning PIL's many failure types into one error."""
    try:
        im.load()
    except Exception as exc:  # OSError, SyntaxError, zlib.error, struct.error, ...
        raise ImageDecodeError(
            path, f"truncated or corrupt image data ({type(exc).__name__}: {exc})"
        ) from None


def _orientation(im: Image.Image) -> int:
    """EXIF orientation 1..8; 1 when absent or unreadable (a broken tag is not fatal)."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # corrupt EXIF blocks are common in the wild
        return 1
    return value if value in _ORIENTATION_OPS else 1


def _to_rgb_array(im: Image.Image, path: Path) -> np.ndarray:
    """Convert any supported mode to [H, W, 3] uint8 RGB; alpha is dropped, not composited."""
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES:
        # 16-bit grey: keep the top 8 bits so the full range maps to 0..255 (clipping
        # at 255 would turn almost every pixel white).
        gray = (np.clip(np.asarray(im, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        raise ImageDecodeError(path, "32-bit float pixels are not supported; save as 8-bit")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in im.info):
        return np.array(im.convert("RGBA"))[..., :3].copy()
    try:
        return np.array(im.convert("RGB"))
    except ValueError:
        raise ImageDecodeError(path, f"pixel mode {mode} cannot be converted to RGB") from None


def probe_image(
    path: Path, *, min_size: int = DEFAULT_MIN_SIZE, max_pixels: int | None = None
) -> ImageInfo:
    """Read an image's header and decode it fully, so truncation is caught now.

    Args:
        path: image file.
        min_size: smallest allowed width and height in pixels.
        max_pixels: largest allowed width * height; None means `MAX_PIXELS`.

    Returns:
        ImageInfo with the size after EXIF orientation and the original mode.

    Raises:
        ImageDecodeError: the file is not a usable image (see `.reason`).
    """
    path = Path(path)
    with _open(path, min_size=min_size, max_pixels=max_pixels) as im:
        _decode(im, path)
        w, h = im.size
        # Orientations 5-8 rotate by 90 degrees, so width and height swap.
        if _orientation(im) in (5, 6, 7, 8):
            w, h = h, w
        return ImageInfo(width=w, height=h, mode=im.mode, format=str(im.format))


def load_rgb(
    path: Path, *, min_size: int = DEFAULT_MIN_SIZE, max_pixels: int | None = None
) -> np.ndarray:
    """Decode an image to 8-bit RGB with its EXIF orientation applied.

    Grey, palette, CMYK and YCbCr images are converted; 16-bit grey is scaled by >> 8;
    alpha channels are dropped.

    Args:
        path: image file.
        min_size: smallest allowed width and height in pixels.
        max_pixels: largest allowed width * height; None means `MAX_PIXELS`.

    Returns:
        [H, W, 3] uint8 array, H and W as displayed (after orientation).

    Raises:
        ImageDecodeError: the file is not a usable image (see `.reason`).
    """
    path = Path(path)
    with _open(path, min_size=min_size, max_pixels=max_pixels) as im:
        _decode(im, path)
        out: Image.Image = im
        for op in _ORIENTATION_OPS.get(_orientation(im), ()):
            out = out.transpose(op)
        rgb = _to_rgb_array(out, path)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, rgb.shape
    return rgb


def load_label(path: Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode a single-channel label mask of class indices, exactly.

    Only PNG is accepted: a lossy format (JPEG, lossy WebP) changes class ids along every
    edge, and the corpus layout names labels <stem>.png. Modes L, P (palette indices, not
    colours, transparency or not) and 1 give uint8. 16-bit (I;16, I;16B, ...) and 32-bit
    (I) integer labels give uint8 when every value fits 0..255, converted exactly;
    otherwise their raw values as int64 (for an adapter's remapping table; ingest
    quarantines such a label, see `label_fits_uint8`). No orientation is applied: label
    PNGs carry none.

    Args:
        path: label file (PNG).
        max_pixels: largest allowed width * height; None means `MAX_PIXELS`.

    Returns:
        [H, W] array of class indices: uint8, or int64 when a value exceeds 255.

    Raises:
        ImageDecodeError: unreadable file, not a PNG, or a colour/alpha/float label.
    """
    path = Path(path)
    with _open(path, min_size=1, max_pixels=max_pixels) as im:
        if im.format != "PNG":
            raise ImageDecodeError(path, _label_format_reason(str(im.format)))
        mode = im.mode
        if mode not in _LABEL_8BIT_MODES and mode not in _SIXTEEN_BIT_MODES:
            raise ImageDecodeError(
                path,
                f"label has mode {mode} with {len(im.getbands())} channel(s); labels must "
                "be single-channel class-index PNGs (mode L or P), not colour masks",
            )
        _decode(im, path)
        if mode in _LABEL_8BIT_MODES:
            return np.array(im, dtype=np.uint8)
        values = np.array(im, dtype=np.int64)
    if values.size and values.min() < 0:
        raise ImageDecodeError(path, f"label has negative value {values.min()}")
    if not values.size or values.max() <= 255:
        return values.astype(np.uint8)  # exact: every value fits
    return values


def _label_format_reason(image_format: str) -> str:
    if image_format in ("JPEG", "MPO"):
        return "labels must be lossless PNG: JPEG compression changes class ids"
    if image_format == "WEBP":
        return "labels must be lossless PNG: WebP is often lossy, which changes class ids"
    return f"labels must be lossless PNG files, not {image_format}; save it as an 8-bit PNG"


def label_fits_uint8(values: np.ndarray) -> str | None:
    """None when `load_label`'s result holds class ids of 0..255, else the quarantine reason."""
    if values.dtype == np.uint8:
        return None
    return (
        f"label values reach {int(values.max())}, above 255: class ids must fit 0..255 "
        "(uint8); remap them to 0..n_classes-1 plus an ignore value such as 255"
    )




