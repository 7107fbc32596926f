"""Position embeddings at a non-native input size, the way the DINO / STEGO code resamples them.

timm's `dynamic_img_size` resamples the learned [1, 1 + N, C] table to the exact patch grid
with an antialiased bicubic `interpolate(size=...)`. The DINO code that STEGO ships
(`src/dino/vision_transformer.py::interpolate_pos_encoding`) instead calls bicubic
`interpolate(scale_factor=(h0 + 0.1) / sqrt(N), ...)` without antialias: the output grid is
the same, but the sample positions follow the given scale factor, so the embeddings (and
every feature after them) differ by a few percent at 320 px. `preprocess: reference`
swaps the second in, so stored features match the reference's own.
"""

from __future__ import annotations

import math
import types

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from stego_tasks.errors import InvalidInputError


def dino_interpolate_pos_embed(pos_embed: Tensor, grid_h: int, grid_w: int) -> Tensor:
    """Resample a DINO position table to a `grid_h` x `grid_w` patch grid, as the reference does.

    Args:
        pos_embed: [1, 1 + N, C], the class token's entry first, N a square number.
        grid_h: patch rows of the input (image height / patch size).
        grid_w: patch columns of the input.

    Returns:
        [1, 1 + grid_h * grid_w, C]; the input itself when the grid is the native square one.
    """
    n_patches = pos_embed.shape[1] - 1
    if grid_h * grid_w == n_patches and grid_h == grid_w:
        return pos_embed
    side = math.sqrt(n_patches)
    dim = pos_embed.shape[-1]
    patch_pos = pos_embed[:, 1:].reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)
    # The + 0.1 is DINO's guard against float error in the output size (facebookresearch/dino#8).
    patch_pos = F.interpolate(
        patch_pos, scale_factor=((grid_h + 0.1) / side, (grid_w + 0.1) / side), mode="bicubic"
    )
    if patch_pos.shape[-2:] != (grid_h, grid_w):
        raise InvalidInputError(f"position table of {n_patches} patches cannot be resampled to {grid_h}x{grid_w}.")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((pos_embed[:, :1], patch_pos), dim=1)


def supports_dino_pos_embed(model: nn.Module) -> bool:
    """Whether a timm ViT has DINO's layout: one class token, no registers, table incl. the class token."""
    return (
        getattr(model, "pos_embed", None) is not None
        and getattr(model, "cls_token", None) is not None
        and getattr(model, "reg_token", None) is None
        and not getattr(model, "no_embed_class", True)
        and getattr(model, "dynamic_img_size", False)
    )


def _dino_pos_embed(self: nn.Module, x: Tensor) -> Tensor:
    # Replaces timm's VisionTransformer._pos_embed on one instance; x is the NHWC patch grid.
    batch, grid_h, grid_w, dim = x.shape
    pos_embed = dino_interpolate_pos_embed(self.pos_embed, grid_h, grid_w)
    tokens = torch.cat((self.cls_token.expand(batch, -1, -1), x.reshape(batch, -1, dim)), dim=1)
    return self.pos_drop(tokens + pos_embed)


def use_dino_pos_embed(model: nn.Module) -> None:
    """Make one timm ViT instance resample its position table as the DINO reference code does.

    Args:
        model: a timm VisionTransformer built with `dynamic_img_size=True` (see
            `supports_dino_pos_embed`).

    Raises:
        ValueError: the model has registers, no class token, or a fixed input size.
    """
    if not supports_dino_pos_embed(model):
        raise InvalidInputError(
            "the DINO reference position-embedding resampling needs a ViT with one class token, no "
            "register tokens and dynamic image size (DINO v1); use extract.preprocess: antialias for this backbone."
        )
    model._pos_embed = types.MethodType(_dino_pos_embed, model)
