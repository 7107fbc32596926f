"""Tests for stego_tasks.method.registry: every entry of the backbone table names a timm model of the
stated patch size and width (its hub repo timm's own, or none for weights from an official URL),
`list_backbones` lists the table sorted, every DINOv2 size comes with its register variant, STEGO's
300-epoch ViT-S/8 is the ViT-S/8 network with DINO's own file, and entries cannot be changed.
"""

import dataclasses
from pathlib import PurePosixPath
from urllib.parse import urlparse

import pytest
import timm
import torch

from stego_tasks.method.registry import BACKBONES, list_backbones


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_registry_entries_match_timm(name: str) -> None:
    spec = BACKBONES[name]
    with torch.device("meta"):
        model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0)
    assert spec.name == name, f"table key {name} holds spec named {spec.name}"
    assert model.patch_embed.patch_size == (spec.patch_size,) * 2, (
        f"{name}: table patch {spec.patch_size}, timm {model.patch_embed.patch_size}"
    )
    assert model.embed_dim == spec.embed_dim, (
        f"{name}: table dim {spec.embed_dim}, timm {model.embed_dim}"
    )
    hub_id = timm.models.get_pretrained_cfg(spec.timm_name).hf_hub_id
    if spec.weights_url is None:
        assert spec.hf_repo == hub_id, f"{name}: table repo {spec.hf_repo}, timm {hub_id}"
    else:  # weights timm does not host come from their official URL, never from timm's repo
        assert spec.hf_repo is None, f"{name}: a URL entry must not look in {spec.hf_repo}"
    assert name in list_backbones(), f"{name} missing from list_backbones()"


def test_the_list_is_the_table_s_names_sorted():
    names = list_backbones()
    assert names == sorted(names) and set(names) == set(BACKBONES), f"list_backbones() = {names}"


def test_every_dinov2_size_has_a_register_variant_of_the_same_geometry():
    plain = [name for name in BACKBONES if name.startswith("dinov2_") and not name.endswith("_reg")]
    assert len(plain) == 4, f"DINOv2 sizes {plain}"
    for name in plain:
        spec, reg = BACKBONES[name], BACKBONES[f"{name}_reg"]
        assert reg.patch_size == spec.patch_size == 14 and reg.embed_dim == spec.embed_dim, f"{name}: geometry differs"
        assert "reg4" in reg.timm_name and "reg4" not in spec.timm_name, f"{name}: {spec.timm_name} / {reg.timm_name}"


def test_the_300_epoch_vits8_is_the_vits8_network_with_dino_s_own_file():
    spec, vits8 = BACKBONES["dino_vits8_300ep"], BACKBONES["dino_vits8"]
    assert (spec.timm_name, spec.patch_size, spec.embed_dim) == (vits8.timm_name, vits8.patch_size, vits8.embed_dim)
    url = urlparse(spec.weights_url)
    assert url.scheme == "https", f"weights URL {spec.weights_url}"
    assert PurePosixPath(url.path).name == "dino_deitsmall8_300ep_pretrain.pth", f"file of {spec.weights_url}"
    assert vits8.weights_url is None, "the 800-epoch ViT-S/8 comes from the hub"


def test_an_entry_cannot_be_changed():
    with pytest.raises(dataclasses.FrozenInstanceError):
        BACKBONES["dino_vits8"].patch_size = 16  # type: ignore[misc]
