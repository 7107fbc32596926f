"""Frozen DINO / DINOv2 ViT backbones through timm, with explicit weights resolution.

A backbone turns ImageNet-normalised images [B, 3, H, W] into the last block's patch
tokens after the final norm, prefix (CLS and register) tokens dropped, as a feature map
[B, C, H/p, W/p]. Weights come, in this order, from an explicit local checkpoint, the
Hugging Face hub cache, or a hub download; random weights only when asked for.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.models import vision_transformer as timm_vit
from torch import Tensor, nn

from stego_tasks.pos_embed import use_dino_pos_embed

__all__ = [
    "BACKBONES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "BackboneSpec",
    "WeightsNotFoundError",
    "create_backbone",
    "create_seeded_backbone",
    "list_backbones",
    "normalize",
    "read_checkpoint",
    "weights_argument",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# timm hosts its weights as safetensors; older repos only have the pickle file.
_HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")
# Wrappers used by the DINO / DINOv2 training checkpoints, most preferred first: the
# teacher is the model DINO evaluates and publishes.
_WRAPPER_KEYS = ("teacher", "state_dict", "model", "student")
_KEY_PREFIXES = ("module.", "backbone.")


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


class WeightsNotFoundError(RuntimeError):
    """No pretrained weights could be found for a backbone, and random ones were not asked for."""


def list_backbones() -> list[str]:
    """Return the short backbone names of the registry table, sorted.

    Returns:
        Names accepted by `create_backbone` besides plain timm ViT names.
    """
    return sorted(BACKBONES)


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
        raise ValueError(
            f"normalize expects images shaped [..., 3, H, W], got {tuple(images.shape)}."
        )
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    elif images.is_floating_point():
        # Catch the two usual slips: 0-255 floats and already-normalised input.
        lo, hi = (float(images.min()), float(images.max())) if images.numel() else (0.0, 0.0)
        if lo < -1e-3 or hi > 1.0 + 1e-3:
            raise ValueError(
                f"normalize expects float images in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; "
                "divide 0-255 images by 255 or pass uint8, and do not normalise twice."
            )
    else:
        raise ValueError(f"normalize expects uint8 or float images, got dtype {images.dtype}.")
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
        mean: Per-channel normalisation mean the weights expect.
        std: Per-channel normalisation std the weights expect.
    """

    def __init__(self, spec: BackboneSpec, model: nn.Module, weights_source: str) -> None:
        super().__init__()
        self.model = model
        self.name = spec.name
        self.timm_name = spec.timm_name
        self.patch_size = spec.patch_size
        self.embed_dim = spec.embed_dim
        self.hf_repo = spec.hf_repo
        self.weights_source = weights_source
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
            raise ValueError(
                f"Backbone expects images shaped [B, 3, H, W], got {tuple(images.shape)}."
            )
        if not images.is_floating_point():
            raise ValueError(
                f"Backbone expects normalised float images, got {images.dtype}; call normalize() first."
            )
        b, _, h, w = images.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(
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
            `stego_tasks.pos_embed`).

    Returns:
        The frozen `Backbone`, in eval mode, its `weights_source` saying where weights came from.

    Raises:
        ValueError: Unknown name, or a checkpoint that is unsafe or does not fit the model.
        WeightsNotFoundError: No weights found and ``weights`` is not ``"random"``.
    """
    spec = _resolve_spec(name)
    if isinstance(weights, str) and weights == "random":
        msg = f"Backbone {spec.name} uses RANDOM weights (weights='random'); its features mean nothing."
        warnings.warn(msg, UserWarning, stacklevel=2)
        logger.warning(msg)
        return _with_pos_embed(Backbone(spec, _build_model(spec.timm_name), "random"), pos_embed)
    if isinstance(weights, str) and weights == "auto":
        state_dict, source = _state_dict_from_hub(spec)
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsNotFoundError(
                f"Weights file {str(path)!r} for backbone {spec.name} does not exist; "
                "pass an existing checkpoint path, weights='auto' or weights='random'."
            )
        state_dict, source = read_checkpoint(path), f"file:{path}"
    with torch.device("meta"):  # skip the random init: every tensor comes from the checkpoint
        model = _build_model(spec.timm_name)
    _load_into(model, state_dict, f"{spec.name} from {source}")
    return _with_pos_embed(Backbone(spec, model, source), pos_embed)


def create_seeded_backbone(name: str, weights: str | Path = "auto", pos_embed: str = "timm") -> Backbone:
    """`create_backbone` with torch's RNG seeded 0 for the call (and restored after).

    Random weights are then the same net in every process: each extraction worker, every
    rerun, and `stego predict` with a run trained on them. Loaded weights are unaffected.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return create_backbone(name, weights=weights, pos_embed=pos_embed)


def weights_argument(source: str) -> str:
    """The `create_backbone` weights argument that loads again the weights a `weights_source` names.

    Args:
        source: a `Backbone.weights_source`, as stores and model.json record it.

    Returns:
        "<path>" for "file:<path>" (as recorded, maybe relative), "auto" for "hub-cache" and
        "hub-download", "random" for "random".

    Raises:
        ValueError: any other value.
    """
    if isinstance(source, str) and source.startswith("file:"):
        return source[len("file:") :]
    if source in ("hub-cache", "hub-download"):
        return "auto"
    if source == "random":
        return "random"
    raise ValueError(f"unknown weights source {source!r}; expected 'file:<path>', 'hub-cache', 'hub-download' or 'random'.")


def _with_pos_embed(backbone: Backbone, pos_embed: str) -> Backbone:
    if pos_embed == "dino":
        use_dino_pos_embed(backbone.model)
    elif pos_embed != "timm":
        raise ValueError(f"pos_embed must be 'timm' or 'dino', got {pos_embed!r}.")
    backbone.pos_embed = pos_embed
    return backbone


def _build_model(timm_name: str) -> nn.Module:
    return timm.create_model(timm_name, pretrained=False, num_classes=0, dynamic_img_size=True)


def _resolve_spec(name: str) -> BackboneSpec:
    if name in BACKBONES:
        return BACKBONES[name]
    if not timm.is_model(name):
        raise ValueError(
            f"Unknown backbone {name!r}; use one of {list_backbones()} or a timm ViT name "
            "such as 'vit_small_patch16_224'."
        )
    if timm.models.model_entrypoint(name).__module__ != timm_vit.__name__:
        raise ValueError(
            f"timm model {name!r} is not a plain VisionTransformer; use one of "
            f"{list_backbones()} or a timm model from timm.models.vision_transformer."
        )
    with torch.device("meta"):  # geometry only: no memory, no init time
        model = _build_model(name)
    patch = model.patch_embed.patch_size
    if patch[0] != patch[1]:
        raise ValueError(
            f"timm model {name!r} has non-square patches {patch}; use a square-patch ViT."
        )
    cfg = timm.models.get_pretrained_cfg(name)
    hf_repo = cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else None
    return BackboneSpec(name, name, int(patch[0]), int(model.embed_dim), hf_repo)


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Read a checkpoint file safely and unwrap it to a flat state dict.

    Args:
        path: ``.safetensors`` file, or a torch pickle holding only tensors and containers
            (read with ``weights_only=True``). Training checkpoints wrapped under
            ``teacher`` / ``student`` / ``state_dict`` / ``model`` with ``module.`` /
            ``backbone.`` key prefixes are unwrapped (the teacher is preferred); an
            ``argparse.Namespace`` of training args is the one non-tensor class allowed.

    Returns:
        Mapping from parameter name to tensor, in the file's own key format.

    Raises:
        ValueError: one sentence naming the file, for a truncated, corrupt or foreign file,
            or one holding pickled objects other than tensors.
    """
    path = Path(path)
    redo = "download it again, or pass another checkpoint (backbone.weights, or --weights for stego predict)"
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as error:
            raise ValueError(f"{path}: not a readable .safetensors file, truncated or corrupt ({error}); {redo}.") from None
    try:
        # DINO's training checkpoints store their argparse Namespace beside the weights; it is
        # plain data, so allow that one class and nothing else.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except pickle.UnpicklingError as error:
        if "unsupported global" in str(error).lower():
            # torch's own message invites weights_only=False, which would run arbitrary code.
            raise ValueError(
                f"Refused to load {str(path)!r}: it holds pickled objects other than tensors and "
                "containers; re-save only the state dict (or use .safetensors) from a source you trust."
            ) from None
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (corrupt or not a checkpoint); {redo}.") from None
    except Exception as error:  # noqa: BLE001 - EOFError, KeyError, RuntimeError...: all mean a broken file
        reason = "the file is empty" if path.stat().st_size == 0 else "truncated or not a checkpoint"
        raise ValueError(
            f"{path}: not a readable PyTorch checkpoint ({reason}; {type(error).__name__}); {redo}."
        ) from None
    return _unwrap(obj, path)


def _unwrap(obj: object, path: Path) -> dict[str, Tensor]:
    while isinstance(obj, dict) and not any(isinstance(v, Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise ValueError(
                f"Checkpoint {str(path)!r} holds no tensors under its keys {sorted(map(str, obj))[:8]}; "
                f"pass a state dict, possibly wrapped under one of {list(_WRAPPER_KEYS)}."
            )
        obj = inner
    if not isinstance(obj, dict):
        raise ValueError(
            f"Checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state dict of tensors."
        )
    state_dict = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not state_dict:
        raise ValueError(
            f"Checkpoint {str(path)!r} holds no tensors under parameter names; pass a state dict of the backbone."
        )
    for prefix in _KEY_PREFIXES:
        # A DINO training dict mixes 'backbone.*' with the projection 'head.*': keep the backbone.
        if any(k.startswith(prefix) for k in state_dict):
            state_dict = {
                k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)
            }
    return state_dict


def _load_into(model: nn.Module, state_dict: dict[str, Tensor], what: str) -> None:
    # timm's own adapter: DINOv2 (mask_token / register_tokens / SwiGLU w12,w3) and
    # pos_embed / patch_embed resampling when the checkpoint grid differs.
    patch_w = state_dict.get("patch_embed.proj.weight")
    model_patch = tuple(model.patch_embed.proj.weight.shape[-2:])
    if patch_w is not None and patch_w.ndim == 4 and tuple(patch_w.shape[-2:]) != model_patch:
        # timm would silently resample the patch kernel; a /16 checkpoint is not a /8 model.
        raise ValueError(
            f"Checkpoint for backbone {what} has {tuple(patch_w.shape[-2:])} patches but the model "
            f"uses {model_patch}; pass weights made for this backbone."
        )
    state_dict = timm_vit.checkpoint_filter_fn(dict(state_dict), model)
    state_dict = {
        k: v for k, v in state_dict.items() if not k.startswith(("head.", "fc_norm.", "head_drop."))
    }
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(
        k for k in set(expected) & set(state_dict) if expected[k].shape != state_dict[k].shape
    )
    if missing or unexpected or wrong:
        raise ValueError(
            f"Checkpoint for backbone {what} does not fit the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}; pass weights made for this backbone."
        )
    model.load_state_dict(state_dict, strict=True, assign=True)
    assert not any(t.is_meta for t in model.state_dict().values()), (
        "a tensor was left uninitialised"
    )


def _hub_cache_dir() -> str:
    # huggingface_hub reads its env vars once at import: read them again here so a caller
    # (or a test) that sets them later is still honoured.
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return constants.HF_HUB_CACHE


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "")
    return flag.upper() in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def _hub_reachable(timeout: float = 3.0) -> bool:
    # huggingface_hub retries a failed request five times with back-off (about 45 s per
    # file); one quick TCP connect tells an offline machine apart at once.
    from huggingface_hub import constants

    from stego_tasks.official_weights import reachable

    return reachable(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT, timeout)


def _state_dict_from_url(spec: BackboneSpec) -> tuple[dict[str, Tensor], str]:
    from stego_tasks.official_weights import find_or_download, hub_checkpoint_dir

    assert spec.weights_url is not None
    path, source, reason = find_or_download(spec.weights_url)
    if path is not None:
        return read_checkpoint(path), source
    filename = spec.weights_url.rsplit("/", 1)[-1]
    raise WeightsNotFoundError(
        f"No weights for backbone {spec.name} ({reason}): pass the local file {filename} as weights "
        f"(backbone.weights in params.yaml, --weights for stego predict), put it in torch's hub cache "
        f"{hub_checkpoint_dir()}, or go online so it can be downloaded from {spec.weights_url} "
        "(weights 'random' runs on random weights, for smoke tests only)."
    )


def _state_dict_from_hub(spec: BackboneSpec) -> tuple[dict[str, Tensor], str]:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    if spec.weights_url is not None:
        return _state_dict_from_url(spec)
    cache_dir = _hub_cache_dir()
    if spec.hf_repo is not None:
        for filename in _HUB_FILENAMES:
            cached = try_to_load_from_cache(spec.hf_repo, filename, cache_dir=cache_dir)
            if isinstance(cached, str):  # None: not cached; a sentinel: known to be absent
                return read_checkpoint(cached), "hub-cache"
    reason = "offline (HF_HUB_OFFLINE is set)" if _hub_offline() else "no hub repo is known"
    if spec.hf_repo is not None and not _hub_offline() and not _hub_reachable():
        reason = "the hub cannot be reached from this machine"
    elif spec.hf_repo is not None and not _hub_offline():
        for filename in _HUB_FILENAMES:
            try:
                path = hf_hub_download(spec.hf_repo, filename, cache_dir=cache_dir)
            except Exception as err:  # noqa: BLE001 - any hub failure means "not available"
                reason = f"download failed ({type(err).__name__})"
                continue
            return read_checkpoint(path), "hub-download"
    repo = spec.hf_repo or f"timm's repo for {spec.timm_name}"
    raise WeightsNotFoundError(
        f"No weights for backbone {spec.name} ({reason}): pass a local checkpoint path as weights "
        f"(backbone.weights in params.yaml, --weights for stego predict), put the Hugging Face repo {repo} "
        f"({'/'.join(_HUB_FILENAMES)}) in the hub cache {cache_dir}, or go online so it can be downloaded "
        "(weights 'random' runs on random weights, for smoke tests only)."
    )
