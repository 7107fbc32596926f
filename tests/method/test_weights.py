"""Tests for stego_tasks.method.weights: where a backbone's weights come from and how a checkpoint is
read. The hub cache is found through HF_HUB_CACHE or HF_HOME (safetensors first, the older pickle
file too), a download happens only when online and reachable, missing weights name every way to
provide them, a recorded weights source maps back to the argument that loads it, training
checkpoints are unwrapped (teacher first, `module.` / `backbone.` prefixes dropped), and a pickle
holding code, a file that does not exist or a checkpoint of another architecture is refused in
one sentence.

No test touches the network: the hub is offline and its cache lives in tmp_path (the backbone
tests' fixtures); checkpoints are random timm models or tensors made here.
"""

import argparse
import re
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import save_file

import stego_tasks.method.weights as weights_module
from stego_tasks.method.backbone import Backbone, create_backbone
from stego_tasks.method.registry import BACKBONES
from stego_tasks.method.weights import (
    WeightsNotFoundError,
    locate_weights,
    read_checkpoint,
    resolve_weights,
    weights_argument,
    weights_file,
)
from tests.method import test_backbone as backbone_tests
from tests.method.test_backbone import OFFICIAL_300EP, _official_dino, _reference_patches

# The backbone tests' fixtures, fixtures of this module too: an offline hub whose cache is in
# tmp_path (autouse), a random ViT-S/16 with its images, and a tiny random ViT.
offline_hub = backbone_tests.offline_hub
vits16 = backbone_tests.vits16
images224 = backbone_tests.images224
tiny = backbone_tests.tiny


_UNPICKLED: list[str] = []


def _mark_unpickled() -> str:
    """Side effect a malicious pickle would trigger on load."""
    _UNPICKLED.append("ran")
    return "payload"


class _Evil:
    def __reduce__(self):
        return (_mark_unpickled, ())


@pytest.mark.parametrize("env", ["HF_HUB_CACHE", "HF_HOME"])
def test_hub_cache_loads_offline(
    env: str,
    vits16: torch.nn.Module,
    images224: torch.Tensor,
    offline_hub: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if env == "HF_HOME":  # the cache must then be found at $HF_HOME/hub
        monkeypatch.delenv("HF_HUB_CACHE")
    repo = offline_hub / "models--timm--vit_small_patch16_224.dino"
    sha = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots" / sha).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    save_file(_official_dino(vits16), str(repo / "snapshots" / sha / "model.safetensors"))

    backbone = create_backbone("dino_vits16")
    assert backbone.weights_source == "hub-cache", f"got source {backbone.weights_source}"
    _assert_reference_features(backbone, vits16, images224)



def _assert_reference_features(backbone: torch.nn.Module, reference: torch.nn.Module, images: torch.Tensor) -> None:
    """The loaded backbone's patch features equal those of the reference model it was saved from."""
    torch.testing.assert_close(backbone(images), _reference_patches(reference, images), atol=1e-5, rtol=1e-5,
                               msg="features differ")

def test_missing_weights_offline_names_three_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*args, **kwargs):
        raise AssertionError("offline mode must not try to download")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone("dino_vits16")
    message = str(info.value)
    assert isinstance(info.value, RuntimeError), "WeightsNotFoundError must be a RuntimeError"
    for needle in (
        "local checkpoint path",
        "timm/vit_small_patch16_224.dino",
        "hub cache",
        "go online",
    ):
        assert needle in message, f"{needle!r} missing from message: {message}"


def test_download_when_online(
    monkeypatch: pytest.MonkeyPatch,
    vits16: torch.nn.Module,
    images224: torch.Tensor,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    stored = tmp_path / "downloaded.safetensors"
    save_file(_official_dino(vits16), str(stored))
    calls = []

    def fake_download(repo_id, filename, cache_dir=None):
        calls.append((repo_id, filename))
        return str(stored)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(weights_module, "_hub_reachable", lambda timeout=3.0: True)
    backbone = create_backbone("dino_vits16")
    assert calls == [("timm/vit_small_patch16_224.dino", "model.safetensors")], f"calls: {calls}"
    assert backbone.weights_source == "hub-download", f"got source {backbone.weights_source}"
    _assert_reference_features(backbone, vits16, images224)

    def failing_download(repo_id, filename, cache_dir=None):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", failing_download)
    with pytest.raises(WeightsNotFoundError, match="download failed"):
        create_backbone("dino_vits16")


def test_unreachable_hub_fails_fast_without_download(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    # A reserved TEST-NET address: the connect fails (or times out) without any real host.
    monkeypatch.setenv("HF_ENDPOINT", "http://192.0.2.1:9")

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted although the hub is unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    with pytest.raises(WeightsNotFoundError, match="cannot be reached"):
        create_backbone("dino_vits16")


def test_missing_checkpoint_file_raises(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        create_backbone("dino_vits16", weights=tmp_path / "nope.pth")


def test_checkpoint_with_pickled_object_is_refused(vits16: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": _official_dino(vits16), "extra": _Evil()}, path)
    with pytest.raises(ValueError, match="Refused to load"):
        create_backbone("dino_vits16", weights=path)
    assert not _UNPICKLED, "the pickled payload ran during loading"


def test_checkpoint_for_other_architecture_is_refused(tiny: Backbone, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pth"
    torch.save(tiny.model.state_dict(), path)
    with pytest.raises(ValueError, match="does not fit"):
        create_backbone("dino_vits16", weights=path)
    with pytest.raises(ValueError, match="patches"):
        create_backbone("dino_vits8", weights=path)


def test_300ep_missing_offline_names_the_file_the_cache_and_the_url(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_download(*args, **kwargs):
        raise AssertionError("offline mode must not try to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone("dino_vits8_300ep")
    message = str(info.value)
    for needle in (OFFICIAL_300EP, str(tmp_path / "torch" / "hub" / "checkpoints"), "dl.fbaipublicfiles.com", "offline"):
        assert needle in message, f"{needle!r} missing from: {message}"


# --- a recorded source back to its argument ----------------------------------------------------


@pytest.mark.parametrize(
    ("source", "argument"),
    [("file:/models/dino.pth", "/models/dino.pth"), ("file:rel/w.safetensors", "rel/w.safetensors"),
     ("hub-cache", "auto"), ("hub-download", "auto"), ("random", "random")],
)
def test_a_recorded_weights_source_maps_back_to_the_argument_that_loads_it(source, argument):
    assert weights_argument(source) == argument, f"{source!r} -> {weights_argument(source)!r}"


def test_a_file_source_round_trips_through_weights_file(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"not read here")
    spec = BACKBONES["dino_vits16"]
    found, source = weights_file(spec, str(path))
    assert (found, source) == (path, f"file:{path}"), f"weights_file gave {found}, {source}"
    assert weights_file(spec, weights_argument(source)) == (found, source), "the argument does not load the same file"
    assert weights_file(spec, "random") == (None, "random"), "random weights have no file"


@pytest.mark.parametrize("source", ["s3://bucket/w.pth", "file", "", "hub"])
def test_an_unknown_weights_source_is_refused_in_one_sentence(source):
    message = (f"unknown weights source {source!r}; expected 'file:<path>', 'hub-cache', 'hub-download' or "
               "'random'.")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        weights_argument(source)


def test_a_folder_is_not_a_weights_file(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"^Weights file '.*' for backbone dino_vits16 does not exist; "):
        weights_file(BACKBONES["dino_vits16"], tmp_path)


# --- the hub cache -----------------------------------------------------------------------------


def _cache_repo(cache: Path, repo: str, files: dict[str, dict[str, torch.Tensor]]) -> Path:
    """A hub cache entry of `repo` (one snapshot on `main`) holding `files`; returns the snapshot folder."""
    sha = "89abcdef0123456789abcdef0123456789abcdef"
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / sha).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(sha)
    for name, state in files.items():
        if name.endswith(".safetensors"):
            save_file(state, str(folder / "snapshots" / sha / name))
        else:
            torch.save(state, folder / "snapshots" / sha / name)
    return folder / "snapshots" / sha


def test_a_hub_cache_with_only_the_older_pickle_file_is_found_and_read(offline_hub):
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    snapshot = _cache_repo(offline_hub, "timm/vit_small_patch16_224.dino", {"pytorch_model.bin": state})
    path, source = locate_weights(BACKBONES["dino_vits16"])
    assert (path, source) == (snapshot / "pytorch_model.bin", "hub-cache"), f"located {path}, {source}"
    read, source = resolve_weights(BACKBONES["dino_vits16"])
    assert source == "hub-cache" and read.keys() == {"w"} and torch.equal(read["w"], state["w"]), f"read {read}"


def test_the_safetensors_file_is_preferred_when_the_cache_has_both(offline_hub):
    state = {"w": torch.ones(2)}
    snapshot = _cache_repo(offline_hub, "timm/vit_small_patch16_224.dino",
                           {"pytorch_model.bin": state, "model.safetensors": state})
    assert locate_weights(BACKBONES["dino_vits16"]) == (snapshot / "model.safetensors", "hub-cache")


# --- unwrapping checkpoints --------------------------------------------------------------------


def _tensors(*names: str) -> dict[str, torch.Tensor]:
    """Distinct tensors under `names`."""
    return {name: torch.full((2,), float(i)) for i, name in enumerate(names)}


def _assert_state(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    assert got.keys() == want.keys(), f"{what}: keys {sorted(got)}, expected {sorted(want)}"
    assert all(torch.equal(got[k], want[k]) for k in want), f"{what}: a tensor differs"


def test_training_checkpoints_are_unwrapped_to_the_teacher_s_backbone(tmp_path):
    net = _tensors("cls_token", "blocks.0.attn.qkv.weight")
    student = {f"module.backbone.{k}": v + 1 for k, v in net.items()}
    teacher = {f"backbone.{k}": v for k, v in net.items()} | {"head.mlp.0.weight": torch.zeros(3)}
    cases = {
        "teacher and student": {"student": student, "teacher": teacher, "epoch": 3, "args": argparse.Namespace(a=1)},
        "state_dict": {"state_dict": {f"module.{k}": v for k, v in net.items()}},
        "model": {"model": net, "optimizer": {"lr": 0.1}},
        "plain with extras": net | {"epoch": 7},
    }
    for what, checkpoint in cases.items():
        path = tmp_path / f"{what.replace(' ', '_')}.pth"
        torch.save(checkpoint, path)
        _assert_state(read_checkpoint(path), net, what)
    torch.save({"student": student}, tmp_path / "student.pth")
    _assert_state(read_checkpoint(tmp_path / "student.pth"), {k: v + 1 for k, v in net.items()}, "student alone")


def test_a_checkpoint_without_a_state_dict_is_refused_in_one_sentence(tmp_path):
    cases = {
        "list.pth": ([torch.zeros(1)], r"holds a list, not a state dict of tensors\.$"),
        "meta.pth": ({"meta": {"lr": 1}, "epoch": 3},
                     r"holds no tensors under its keys \['epoch', 'meta'\]; pass a state dict, possibly wrapped under"),
    }
    for name, (checkpoint, match) in cases.items():
        torch.save(checkpoint, tmp_path / name)
        with pytest.raises(ValueError, match=f"^Checkpoint '{re.escape(str(tmp_path / name))}' {match}"):
            read_checkpoint(tmp_path / name)


def test_a_missing_checkpoint_file_keeps_its_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "absent.pth")
