"""The backbone table: short names (``dino_vits8``, ``dinov2_vitb14_reg``, ...) to timm models and geometry.

`stego_tasks.method.backbone.create_backbone` accepts these names or any plain timm ViT name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone entry: the short name, the timm model it maps to, and its geometry.

    Attributes:
        name: Short name used in params, e.g. ``"dino_vits8"``.
        timm_name: timm model name with pretrained tag, e.g. ``"vit_small_patch8_224.dino"``.
        patch_size: Side of a square patch in pixels.
        embed_dim: Channels C of the output features.
        hf_repo: Hugging Face repo holding timm's weights, or None when timm has none.
        weights_url: Official download address of weights timm does not host (DINO's own
            releases), looked up in torch's hub cache; None for hub-hosted weights.
    """

    name: str
    timm_name: str
    patch_size: int
    embed_dim: int
    hf_repo: str | None
    weights_url: str | None = None


def _entry(name: str, timm_name: str, patch_size: int, embed_dim: int) -> BackboneSpec:
    return BackboneSpec(name, timm_name, patch_size, embed_dim, f"timm/{timm_name}")


DINO_VITS8_300EP_URL = (
    "https://dl.fbaipublicfiles.com/dino/dino_deitsmall8_300ep_pretrain/dino_deitsmall8_300ep_pretrain.pth"
)

_DINOV2_SIZES = {
    "s": ("small", 384),
    "b": ("base", 768),
    "l": ("large", 1024),
    "g": ("giant", 1536),
}

BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        _entry("dino_vits8", "vit_small_patch8_224.dino", 8, 384),
        _entry("dino_vits16", "vit_small_patch16_224.dino", 16, 384),
        _entry("dino_vitb8", "vit_base_patch8_224.dino", 8, 768),
        _entry("dino_vitb16", "vit_base_patch16_224.dino", 16, 768),
        # STEGO's own ViT-S/8 (reference doc section 11): the 300-epoch DINO release, which
        # timm does not host. The `.dino` tag only supplies DINO's ImageNet mean and std.
        BackboneSpec("dino_vits8_300ep", "vit_small_patch8_224.dino", 8, 384, None, DINO_VITS8_300EP_URL),
        *[
            _entry(f"dinov2_vit{s}14", f"vit_{size}_patch14_dinov2.lvd142m", 14, dim)
            for s, (size, dim) in _DINOV2_SIZES.items()
        ],
        *[
            _entry(f"dinov2_vit{s}14_reg", f"vit_{size}_patch14_reg4_dinov2.lvd142m", 14, dim)
            for s, (size, dim) in _DINOV2_SIZES.items()
        ],
    ]
}


def list_backbones() -> list[str]:
    """Return the short backbone names of the registry table, sorted.

    Returns:
        Names accepted by `create_backbone` besides plain timm ViT names.
    """
    return sorted(BACKBONES)
