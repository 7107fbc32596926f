"""Tests for stego_tasks.method.backbone: checkpoint formats give the original model's features, DINOv2
registers are dropped, geometry and frozen eval mode, names, normalisation, and the 300-epoch
ViT-S/8 loaded from its file. The registry, weights resolution and official-URL weights have their
own files (test_registry, test_weights, test_official_weights), which share this file's fixtures.

No test touches the network: the hub is offline and its cache lives in tmp_path; checkpoints
are random timm models saved in the official DINO / DINOv2 / timm formats.
"""

import argparse
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from stego_tasks.method.backbone import Backbone, create_backbone, normalize


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Offline hub whose cache is an empty folder in tmp_path; returns the cache folder."""
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def vits16() -> torch.nn.Module:
    """A random ViT-S/16 (DINO architecture) at its native 224 input, no dynamic size."""
    torch.manual_seed(0)
    return timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).eval()


@pytest.fixture(scope="module")
def images224() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 224, 224)


def _reference_patches(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Patch tokens placed one grid cell at a time: [B, C, H/p, W/p]."""
    with torch.no_grad():
        tokens = model.forward_features(images)
    p = model.patch_embed.patch_size[0]
    gh, gw = images.shape[2] // p, images.shape[3] // p
    n_prefix = model.num_prefix_tokens
    out = torch.empty(images.shape[0], tokens.shape[2], gh, gw)
    for i in range(gh):
        for j in range(gw):
            out[:, :, i, j] = tokens[:, n_prefix + i * gw + j]
    return out


def _official_dino(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # DINO's hub .pth keys coincide with timm's ViT keys (cls_token, pos_embed, blocks.N...).
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("fmt", ["plain", "wrapped", "safetensors"])
def test_local_checkpoint_matches_original_model(
    fmt: str, vits16: torch.nn.Module, images224: torch.Tensor, tmp_path: Path
) -> None:
    state = _official_dino(vits16)
    if fmt == "safetensors":
        path = tmp_path / "model.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "dino.pth"
        if fmt == "wrapped":
            # DINO training checkpoint: teacher under 'backbone.', a projection head beside it,
            # and a different student that must not be picked.
            teacher = {f"backbone.{k}": v for k, v in state.items()}
            teacher["head.mlp.0.weight"] = torch.randn(8, 384)
            student = {f"module.backbone.{k}": v + 1.0 for k, v in state.items()}
            args = argparse.Namespace(arch="vit_small", patch_size=16)
            state = {"student": student, "teacher": teacher, "epoch": 100, "args": args}
        torch.save(state, path)
    backbone = create_backbone("dino_vits16", weights=path)
    out = backbone(images224)
    expected = _reference_patches(vits16, images224)
    assert backbone.weights_source == f"file:{path}", f"got source {backbone.weights_source}"
    assert out.shape == (2, 384, 14, 14), f"got shape {tuple(out.shape)}"
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5, msg=f"{fmt}: features differ")


def test_dinov2_registers_official_checkpoint_drops_prefix_tokens(tmp_path: Path) -> None:
    torch.manual_seed(2)
    ref = timm.create_model(
        "vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0, dynamic_img_size=True
    ).eval()
    with torch.no_grad():  # layer scale 1e-5 and near-zero tokens would hide a wrong conversion
        for name, param in ref.named_parameters():
            if name.endswith("gamma"):
                param.fill_(1.0)
            elif name in {"cls_token", "reg_token", "pos_embed"}:
                param.normal_()
    # Back to DINOv2's layout: the CLS position is part of pos_embed, registers have their own key.
    state = {
        k: v.clone()
        for k, v in ref.state_dict().items()
        if k not in {"reg_token", "cls_token", "pos_embed"}
    }
    cls_pos = torch.randn(1, 1, 384)
    state["cls_token"] = ref.cls_token.detach() - cls_pos
    state["pos_embed"] = torch.cat([cls_pos, ref.pos_embed.detach()], dim=1)
    state["register_tokens"] = ref.reg_token.detach().clone()
    state["mask_token"] = torch.zeros(1, 384)
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(state, path)

    backbone = create_backbone("dinov2_vits14_reg", weights=path)
    images = torch.randn(2, 3, 28, 42)
    out = backbone(images)
    assert ref.num_prefix_tokens == 5, f"expected CLS + 4 registers, got {ref.num_prefix_tokens}"
    assert out.shape == (2, 384, 2, 3), f"28x42 at patch 14 should give 2x3, got {tuple(out.shape)}"
    torch.testing.assert_close(
        out, _reference_patches(ref, images), atol=1e-4, rtol=1e-4, msg="features differ"
    )


def test_random_weights_warn_and_say_so() -> None:
    with pytest.warns(UserWarning, match="RANDOM"):
        backbone = create_backbone("vit_tiny_patch16_224", weights="random")
    assert backbone.weights_source == "random", f"got source {backbone.weights_source}"
    assert (backbone.patch_size, backbone.embed_dim) == (16, 192), (
        f"timm name geometry read as {backbone.patch_size}, {backbone.embed_dim}"
    )


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    with pytest.warns(UserWarning):
        return create_backbone("vit_tiny_patch16_224", weights="random")


def test_non_square_shape_and_indivisible_size(tiny: Backbone) -> None:
    out = tiny(torch.randn(2, 3, 32, 80))
    assert out.shape == (2, 192, 2, 5), f"32x80 at patch 16 should give 2x5, got {tuple(out.shape)}"
    with pytest.raises(ValueError, match="multiple of 16"):
        tiny(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="normalize"):
        tiny(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_frozen_and_stays_in_eval(tiny: Backbone) -> None:
    tiny.train()
    assert not any(m.training for m in tiny.modules()), (
        "train() switched a submodule out of eval mode"
    )
    assert not any(p.requires_grad for p in tiny.parameters()), "a parameter requires grad"
    out = tiny(torch.randn(1, 3, 32, 32, requires_grad=True))
    assert not out.requires_grad, "forward built an autograd graph"


def test_unknown_and_non_vit_names_raise() -> None:
    with pytest.raises(ValueError, match="dino_vits8") as info:
        create_backbone("dino_vits9")
    assert "dinov2_vitg14_reg" in str(info.value), f"valid names not listed: {info.value}"
    with pytest.raises(ValueError, match="not a plain VisionTransformer"):
        create_backbone("resnet18", weights="random")


def test_normalize_against_manual_values() -> None:
    images = (
        torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(2, 3, 1, 2).contiguous()
    )
    out = normalize(images)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for c in range(3):
        assert abs(out[1, c, 0, 0].item() - (0 - mean[c]) / std[c]) < 1e-6, (
            f"channel {c}, black pixel"
        )
        assert abs(out[1, c, 0, 1].item() - (1 - mean[c]) / std[c]) < 1e-6, (
            f"channel {c}, white pixel"
        )
    torch.testing.assert_close(
        normalize(images.float() / 255), out, msg="uint8 and float01 inputs differ"
    )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        normalize(images.float())


# --- dino_vits8_300ep: STEGO's own ViT-S/8, from DINO's download URL -----------------------

OFFICIAL_300EP = "dino_deitsmall8_300ep_pretrain.pth"


@pytest.fixture
def vits8_300ep_state() -> dict[str, torch.Tensor]:
    """A random ViT-S/8 saved as DINO's official backbone file (a plain state dict)."""
    torch.manual_seed(3)
    model = timm.create_model("vit_small_patch8_224", pretrained=False, num_classes=0).eval()
    return _official_dino(model)


def _features_of(state: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    model = timm.create_model("vit_small_patch8_224", pretrained=False, num_classes=0, img_size=32).eval()
    state = dict(state, pos_embed=timm.layers.resample_abs_pos_embed(state["pos_embed"], (4, 4), num_prefix_tokens=1))
    model.load_state_dict(state)
    return _reference_patches(model, images)


def test_300ep_name_loads_the_named_local_file(vits8_300ep_state, tmp_path: Path) -> None:
    path = tmp_path / OFFICIAL_300EP
    torch.save(vits8_300ep_state, path)
    backbone = create_backbone("dino_vits8_300ep", weights=path)
    assert (backbone.patch_size, backbone.embed_dim) == (8, 384)
    assert backbone.mean == (0.485, 0.456, 0.406), "DINO weights expect ImageNet normalisation"
    images = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(backbone(images), _features_of(vits8_300ep_state, images), atol=1e-5, rtol=1e-5)


