"""Frozen DINO / DINOv2 ViT backbones through timm, with explicit weights resolution.

A backbone turns ImageNet-normalised images [B, 3, H, W] into the last block's patch
tokens after the final norm, prefix (CLS and register) tokens dropped, as a feature map
[B, C, H/p, W/p]. Weights come, in this order, from an explicit local checkpoint, the
Hugging Face hub cache, or a hub download; random weights only when asked for.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import timm
import torch
from timm.models import vision_transformer as timm_vit
from torch import Tensor, nn

from stego_tasks.errors import InvalidInputError
from stego_tasks.method.pos_embed import use_dino_pos_embed
from stego_tasks.method.registry import (
    BACKBONES,
    BackboneSpec,
    list_backbones,
)
from stego_tasks.method.weights import (
    load_weights_into,
    read_checkpoint,
    weights_file,
)
from stego_tasks.runtime.content_hash import cached_sha256

__all__ = [
    "BACKBONES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "BackboneSpec",
    "create_backbone",
    "create_seeded_backbone",
    "list_backbones",
    "normalize",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)



def normalize(
    images: Tensor,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> Tensor:
    """Scale images to [0, 1] if needed and normalise them per channel.

    Args:
        images: uint8 in [0, 255] or float in [0, 1], shape [..., 3, H, W].
        mean: Per-channel mean, ImageNet's by default.
        std: Per-channel standard deviation, ImageNet's by default.

    Returns:
        float32 (or the input's float dtype) tensor of the same shape, (x - mean) / std.
    """
    if images.ndim < 3 or images.shape[-3] != 3:
        raise InvalidInputError(
            f"normalize expects images shaped [..., 3, H, W], got {tuple(images.shape)}."
        )
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    elif images.is_floating_point():
        # Catch the two usual slips: 0-255 floats and already-normalised input.
        lo, hi = (float(images.min()), float(images.max())) if images.numel() else (0.0, 0.0)
        if lo < -1e-3 or hi > 1.0 + 1e-3:
            raise InvalidInputError(
                f"normalize expects float images in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; "
                "divide 0-255 images by 255 or pass uint8, and do not normalise twice."
            )
    else:
        raise InvalidInputError(f"normalize expects uint8 or float images, got dtype {images.dtype}.")
    shape = (3, 1, 1)
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(shape)
    return (images - mean_t) / std_t


class Backbone(nn.Module):
    """A frozen timm ViT returning its last-block patch tokens as a feature map.

    Attributes:
        name: The name it was created by (short table name or timm name).
        timm_name: The timm model name.
        patch_size: Patch side p in pixels.
        embed_dim: Feature channels C.
        weights_source: ``"file:<path>"``, ``"hub-cache"``, ``"hub-download"`` or ``"random"``.
        weights_sha256: SHA-256 of the checkpoint file's content (None for random weights):
            what the features are valid for, since a file may be replaced at the same path.
        mean: Per-channel normalisation mean the weights expect.
        std: Per-channel normalisation std the weights expect.
    """

    def __init__(
        self, spec: BackboneSpec, model: nn.Module, weights_source: str, weights_sha256: str | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.name = spec.name
        self.timm_name = spec.timm_name
        self.patch_size = spec.patch_size
        self.embed_dim = spec.embed_dim
        self.hf_repo = spec.hf_repo
        self.weights_source = weights_source
        self.weights_sha256 = weights_sha256
        self.pos_embed = "timm"
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.mean: tuple[float, ...] = tuple(cfg.get("mean", IMAGENET_MEAN))
        self.std: tuple[float, ...] = tuple(cfg.get("std", IMAGENET_STD))
        for param in self.parameters():
            param.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Backbone:
        """Keep the backbone in eval mode whatever is asked: it is frozen by design.

        Args:
            mode: Ignored.

        Returns:
            self, still in eval mode.
        """
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """Compute patch features.

        Args:
            images: Normalised images [B, 3, H, W] (see `normalize`), H and W multiples of
                `patch_size`.

        Returns:
            Patch tokens after the final norm, [B, C, H/p, W/p], prefix tokens dropped.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise InvalidInputError(
                f"Backbone expects images shaped [B, 3, H, W], got {tuple(images.shape)}."
            )
        if not images.is_floating_point():
            raise InvalidInputError(
                f"Backbone expects normalised float images, got {images.dtype}; call normalize() first."
            )
        b, _, h, w = images.shape
        p = self.patch_size
        if h % p or w % p:
            raise InvalidInputError(
                f"Image size {h}x{w} is not divisible by the patch size {p} of {self.name}; "
                f"resize or crop to a multiple of {p}."
            )
        dtype = next(self.model.parameters()).dtype
        tokens = self.model.forward_features(images.to(dtype))  # [B, prefix + h*w, C]
        patches = tokens[:, self.model.num_prefix_tokens :]
        assert patches.shape[1] == (h // p) * (w // p), "token count does not match the patch grid"
        return patches.reshape(b, h // p, w // p, -1).permute(0, 3, 1, 2).contiguous()


def create_backbone(name: str, weights: str | Path = "auto", pos_embed: str = "timm") -> Backbone:
    """Build a frozen backbone and load its weights.

    Args:
        name: A table name (see `list_backbones`) or a timm ViT name such as
            ``"vit_tiny_patch16_224"``.
        weights: A local checkpoint path (DINO / DINOv2 official ``.pth``, timm ``.pth`` or
            ``.safetensors``), ``"auto"`` (hub cache, then hub download unless offline), or
            ``"random"`` (random initialisation, with a warning).
        pos_embed: How the position table is resampled at a non-native input size:
            ``"timm"`` (timm's antialiased bicubic to the exact grid) or ``"dino"`` (the
            DINO reference code's `scale_factor` bicubic; DINO v1 layouts only, see
            `stego_tasks.method.pos_embed`).

    Returns:
        The frozen `Backbone`, in eval mode, its `weights_source` saying where weights came from.

    Raises:
        ValueError: Unknown name, or a checkpoint that is unsafe or does not fit the model.
        WeightsNotFoundError: No weights found and ``weights`` is not ``"random"``.
    """
    spec = backbone_spec(name)
    if isinstance(weights, str) and weights == "random":
        msg = f"Backbone {spec.name} uses RANDOM weights (weights='random'); its features mean nothing."
        warnings.warn(msg, UserWarning, stacklevel=2)
        logger.warning(msg)
        return _with_pos_embed(Backbone(spec, _build_model(spec.timm_name), "random"), pos_embed)
    path, source = weights_file(spec, weights)
    assert path is not None
    # Hashed before it is read: a file replaced in between gives a hash that matches no
    # store, so the worst case is one extraction too many, never features of the wrong net.
    sha256 = cached_sha256(path)
    state_dict = read_checkpoint(path)
    with torch.device("meta"):  # skip the random init: every tensor comes from the checkpoint
        model = _build_model(spec.timm_name)
    load_weights_into(model, state_dict, f"{spec.name} from {source}")
    return _with_pos_embed(Backbone(spec, model, source, sha256), pos_embed)


def create_seeded_backbone(name: str, weights: str | Path = "auto", pos_embed: str = "timm") -> Backbone:
    """`create_backbone` with torch's RNG seeded 0 for the call (and restored after).

    Random weights are then the same net in every process: each extraction worker, every
    rerun, and `stego predict` with a run trained on them. Loaded weights are unaffected.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return create_backbone(name, weights=weights, pos_embed=pos_embed)


def _with_pos_embed(backbone: Backbone, pos_embed: str) -> Backbone:
    if pos_embed == "dino":
        use_dino_pos_embed(backbone.model)
    elif pos_embed != "timm":
        raise InvalidInputError(f"pos_embed must be 'timm' or 'dino', got {pos_embed!r}.")
    backbone.pos_embed = pos_embed
    return backbone


def _build_model(timm_name: str) -> nn.Module:
    return timm.create_model(timm_name, pretrained=False, num_classes=0, dynamic_img_size=True)


def backbone_spec(name: str) -> BackboneSpec:
    """The `BackboneSpec` of a table name or a timm ViT name (ValueError for anything else)."""
    if name in BACKBONES:
        return BACKBONES[name]
    if not timm.is_model(name):
        raise InvalidInputError(
            f"Unknown backbone {name!r}; use one of {list_backbones()} or a timm ViT name "
            "such as 'vit_small_patch16_224'."
        )
    if timm.models.model_entrypoint(name).__module__ != timm_vit.__name__:
        raise InvalidInputError(
            f"timm model {name!r} is not a plain VisionTransformer; use one of "
            f"{list_backbones()} or a timm model from timm.models.vision_transformer."
        )
    with torch.device("meta"):  # geometry only: no memory, no init time
        model = _build_model(name)
    patch = model.patch_embed.patch_size
    if patch[0] != patch[1]:
        raise InvalidInputError(
            f"timm model {name!r} has non-square patches {patch}; use a square-patch ViT."
        )
    cfg = timm.models.get_pretrained_cfg(name)
    hf_repo = cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else None
    return BackboneSpec(name, name, int(patch[0]), int(model.embed_dim), hf_repo)


