"""Tests for stego_tasks.method.pos_embed: DINO's position-embedding resampling, as the reference computes it.

`tests/golden/dino_pos_embed_golden.npz` was made once, outside the repo, by running the
reference's own `VisionTransformer.interpolate_pos_encoding` (mhamilton723/STEGO,
src/dino/vision_transformer.py; torch.manual_seed(0), img_size 32, patch 8, embed_dim 12,
depth 1) on zero tokens for each grid; only its arrays are kept here.
"""


import numpy as np
import pytest
import timm
import torch

from stego_tasks.method.backbone import create_backbone
from stego_tasks.method.pos_embed import (
    dino_interpolate_pos_embed,
    supports_dino_pos_embed,
    use_dino_pos_embed,
)
from tests.conftest import GOLDEN_DIR

GOLDEN = GOLDEN_DIR / "dino_pos_embed_golden.npz"


@pytest.mark.parametrize("grid", ["4x4", "5x5", "6x6", "5x7", "4x6"])
def test_resampling_equals_the_reference_code(grid: str) -> None:
    golden = np.load(GOLDEN)
    rows, cols = map(int, grid.split("x"))
    got = dino_interpolate_pos_embed(torch.from_numpy(golden["pos_embed"]), rows, cols)
    np.testing.assert_allclose(got.numpy(), golden[f"grid_{grid}"], rtol=0, atol=1e-6, err_msg=grid)


def test_resampling_differs_from_timms_at_a_new_size() -> None:
    from timm.layers import resample_abs_pos_embed

    golden = np.load(GOLDEN)
    table = torch.from_numpy(golden["pos_embed"])
    timm_table = resample_abs_pos_embed(table, new_size=(6, 6), old_size=(4, 4), num_prefix_tokens=1)
    assert not torch.allclose(timm_table, dino_interpolate_pos_embed(table, 6, 6), atol=1e-4), (
        "the two resamplings agree, so the reference mode would change nothing"
    )


def test_backbone_with_dino_pos_embed_equals_a_fixed_size_vit_with_the_resampled_table() -> None:
    torch.manual_seed(0)
    backbone = create_backbone("vit_tiny_patch16_224", weights="random", pos_embed="dino")
    assert backbone.pos_embed == "dino"
    state = backbone.model.state_dict()
    grid = 48 // 16
    fixed = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=48).eval()
    state["pos_embed"] = dino_interpolate_pos_embed(state["pos_embed"], grid, grid)
    fixed.load_state_dict(state)
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        want = fixed.forward_features(images)[:, 1:].reshape(2, grid, grid, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(backbone(images), want, rtol=1e-5, atol=1e-5)
    at_native = create_backbone("vit_tiny_patch16_224", weights="random", pos_embed="timm")
    at_native.model.load_state_dict(backbone.model.state_dict())
    big = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(backbone(big), at_native(big), msg="at the native size both must be the plain table")


def test_registers_are_refused() -> None:
    with torch.device("meta"):
        model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, dynamic_img_size=True)
    assert not supports_dino_pos_embed(model)
    with pytest.raises(ValueError, match="antialias"):
        use_dino_pos_embed(model)
