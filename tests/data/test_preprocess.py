"""Tests for stego_tasks.data.preprocess: the `reference` mode equals the STEGO reference's inputs.

The expected inputs are built independently, with torchvision's own transforms in the order
the reference applies them (reference doc section 11): `ToTensor` + `five_crop` on the
original image, each crop back to uint8 by `mul(255).add(0.5).clamp(0, 255)`, saved as a
JPEG file with PIL's defaults and read back, then `Resize(res, NEAREST)` + `CenterCrop(res)`.
The five-crop boxes, and the crops `preprocess` cuts from an image and its label alike, are
compared with torchvision's `five_crop`; the resize and centre crop keep the centre of the
long side, for labels (nearest) and images (bilinear).
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF
from torchvision.transforms.functional import five_crop

from stego_tasks.data.preprocess import (
    five_crop_boxes,
    jpeg_round_trip,
    preprocess,
    resize_center_crop,
    short_side_size,
)

SIZES = [(97, 131), (131, 97), (120, 160), (75, 75), (61, 203)]


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth image with edges and noise, so JPEG and NEAREST both have work to do."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) % 64 * 4], axis=-1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def _torchvision_val(image: np.ndarray, res: int, label: bool = False) -> np.ndarray:
    transform = T.Compose([T.Resize(res, Image.NEAREST), T.CenterCrop(res)])
    return np.asarray(transform(Image.fromarray(image)))


def _torchvision_train(image: np.ndarray, res: int, tmp_path: Path) -> list[np.ndarray]:
    tensor = T.ToTensor()(Image.fromarray(image))
    size = [int(tensor.shape[1] * 0.5), int(tensor.shape[2] * 0.5)]
    out = []
    for index, crop in enumerate(TF.five_crop(tensor, size)):
        array = crop.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
        path = tmp_path / f"{index}.jpg"
        Image.fromarray(array).save(path, "JPEG")
        out.append(_torchvision_val(np.asarray(Image.open(path).convert("RGB")), res))
    return out


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_reference_val_input_equals_torchvision_nearest_resize_and_centre_crop(height: int, width: int) -> None:
    image = _photo(height, width)
    for res in (32, 40, 56):
        got = resize_center_crop(image, res, mode="reference")
        assert np.array_equal(got, _torchvision_val(image, res)), f"{height}x{width} -> {res}: pixels differ"


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_reference_five_crops_equal_the_reference_jpeg_crops(height: int, width: int, tmp_path: Path) -> None:
    image = _photo(height, width, seed=1)
    label = (np.arange(height * width).reshape(height, width) % 7).astype(np.uint8)
    pieces = preprocess(image, label, 24, five_crop=True, crop_ratio=0.5, mode="reference")
    want = _torchvision_train(image, 24, tmp_path)
    label_tensor = torch.from_numpy(label)[None]
    size = [int(height * 0.5), int(width * 0.5)]
    want_labels = [_torchvision_val(crop[0].numpy(), 24, label=True) for crop in TF.five_crop(label_tensor, size)]
    for index, ((crop, crop_label), expected, expected_label) in enumerate(zip(pieces, want, want_labels, strict=True)):
        assert np.array_equal(crop, expected), f"{height}x{width} crop {index}: image pixels differ from the reference's"
        assert np.array_equal(crop_label, expected_label), f"{height}x{width} crop {index}: labels differ"


def test_reference_crops_carry_jpeg_artefacts_and_antialias_does_not() -> None:
    image = _photo(80, 80, seed=2)
    region = image[:40, :40]
    assert not np.array_equal(jpeg_round_trip(region), region), "JPEG round trip returned the input unchanged"
    reference = preprocess(image, None, 40, five_crop=True, crop_ratio=0.5, mode="reference")[0][0]
    antialias = preprocess(image, None, 40, five_crop=True, crop_ratio=0.5, mode="antialias")[0][0]
    assert np.array_equal(reference, jpeg_round_trip(region)), "40 px crop at 40 px: only the JPEG step should apply"
    assert np.array_equal(antialias, region), "antialias mode must not JPEG-compress"


def test_short_side_size_truncates_like_torchvision() -> None:
    for height, width in [(375, 500), (500, 375), (333, 1000), (224, 224), (481, 640)]:
        want = TF.resize(Image.new("RGB", (width, height)), 224).size[::-1]
        assert short_side_size(height, width, 224) == want, f"{height}x{width}"


def test_five_crop_boxes_follow_torchvision_order() -> None:
    tensor = torch.arange(35 * 46).reshape(1, 35, 46)
    crops = TF.five_crop(tensor, [17, 23])
    for (top, left, h, w), crop in zip(five_crop_boxes(35, 46, 0.5), crops, strict=True):
        assert torch.equal(tensor[:, top : top + h, left : left + w], crop), (top, left)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="reference"):
        preprocess(_photo(32, 32), None, 16, five_crop=False, crop_ratio=0.5, mode="bicubic")


def test_predict_resizes_new_images_like_the_runs_val_images() -> None:
    from stego_tasks.data.preprocess import resize_short_side

    image = _photo(97, 131, seed=3)
    want = np.asarray(T.Resize(40, Image.NEAREST)(Image.fromarray(image)))
    assert np.array_equal(resize_short_side(image, 40, mode="reference"), want), "reference run: NEAREST, torchvision sizes"
    assert resize_short_side(image, 40, mode="antialias").shape == (40, 54, 3)


@pytest.mark.parametrize("height,width", [(64, 64), (37, 50), (45, 31), (101, 77), (9, 9)])
def test_five_crop_boxes_equal_torchvision_five_crop(height, width):
    image = torch.arange(height * width * 3).reshape(3, height, width)
    size = [int(height * 0.5), int(width * 0.5)]
    expected = five_crop(image, size)
    boxes = five_crop_boxes(height, width, 0.5)
    assert len(boxes) == 5, f"expected 5 boxes, got {len(boxes)}"
    for index, ((top, left, h, w), crop) in enumerate(zip(boxes, expected, strict=True)):
        ours = image[:, top : top + h, left : left + w]
        assert torch.equal(ours, crop), f"crop {index} of a {height}x{width} image differs from torchvision's"


def test_preprocess_five_crop_cuts_the_torchvision_crops_of_image_and_label():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)
    label = rng.integers(0, 5, (37, 50), dtype=np.uint8)
    pieces = preprocess(image, label, 16, five_crop=True, crop_ratio=0.5)
    crops = five_crop(torch.from_numpy(image).permute(2, 0, 1), [18, 25])
    label_crops = five_crop(torch.from_numpy(label)[None], [18, 25])
    for index, ((crop, crop_label), expected, expected_label) in enumerate(zip(pieces, crops, label_crops, strict=True)):
        want = resize_center_crop(expected.permute(1, 2, 0).numpy(), 16)
        want_label = resize_center_crop(expected_label[0].numpy(), 16, nearest=True)
        assert np.array_equal(crop, want), f"image crop {index} is not the resized torchvision crop"
        assert np.array_equal(crop_label, want_label), f"label crop {index} is not cut like its image"


@pytest.mark.parametrize("transpose", [False, True])
def test_resize_center_crop_keeps_the_centre_of_the_long_side(transpose):
    # 40 x 80 label whose value is the 4-px band of the column: the 40 central columns
    # (20..59) are bands 5..14; halving maps each band onto 2 output columns.
    label = np.repeat((np.arange(80) // 4)[None, :], 40, axis=0).astype(np.uint8)
    label = label.T if transpose else label
    out = resize_center_crop(label, 20, nearest=True)
    expected = np.repeat((5 + np.arange(20) // 2)[None, :], 20, axis=0)
    expected = expected.T if transpose else expected
    assert out.shape == (20, 20), f"shape {out.shape}"
    assert np.array_equal(out, expected), f"nearest resize did not keep the central square:\n{out}"


def test_resize_center_crop_bilinear_shape_and_centre():
    image = np.zeros((40, 80, 3), dtype=np.uint8)
    image[:, 20:60] = 200  # the central 40 x 40 square (of the 80 columns) is bright
    out = resize_center_crop(image, 20)
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8, f"got {out.shape} {out.dtype}"
    assert resize_center_crop(np.zeros((50, 70, 3), np.uint8), 32).shape == (32, 32, 3), "non-integer scale shape"
    # Away from the two borders, where bilinear weights reach the dark margin, all bright.
    assert np.all(out[:, 2:-2] == 200), f"centre columns not kept: {np.unique(out[:, 2:-2])}"
    assert np.all(out[:, [0, -1]] < 200), "the border columns should blend in the dark margin"
