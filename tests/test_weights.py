"""Tests for the `weights` stage: the backbone checkpoint's identity, by content, for DVC.

They prove the identity is the file's SHA-256 and size (read once while the file is unchanged,
again after it is replaced), that the same bytes at another path have the same hash, that the
file written changes only when the identity does, that random weights and a missing file carry
no hash and say why, and that an unknown backbone name is one sentence.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from stego_tasks import weights as weights_module
from stego_tasks.config import BackboneParams
from stego_tasks.runtime import content_hash
from stego_tasks.weights import weights_identity

TINY = "vit_tiny_patch16_224"
TABLE = "dino_vits8"  # a name of the backbone table: no timm model is built for its geometry


@pytest.fixture(autouse=True)
def _own_hash_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEGO_CACHE_DIR", str(tmp_path / "hash-cache"))


def _checkpoint(path: Path, seed: int) -> None:
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(TINY, pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def test_weights_identity_follows_content_and_the_hash_cache_reads_a_file_once(tmp_path, monkeypatch):
    weights = tmp_path / "w.safetensors"
    _checkpoint(weights, seed=1)
    out = tmp_path / "weights.json"
    params = BackboneParams(name=TINY, weights=str(weights))
    first = weights_module.weights(params, out)
    assert first["sha256"] == content_hash.sha256_of_file(weights), "the identity is not the file's SHA-256"
    assert first["size"] == weights.stat().st_size
    text = out.read_text()
    reads = []
    original = content_hash.sha256_of_file
    monkeypatch.setattr(content_hash, "sha256_of_file", lambda path, *a: reads.append(path) or original(path, *a))
    weights_module.weights(params, out)
    assert reads == [] and out.read_text() == text, "an unchanged checkpoint was hashed again or changed the identity"
    _checkpoint(weights, seed=2)
    changed = weights_module.weights(params, out)
    assert len(reads) == 1 and changed["sha256"] == original(weights) != first["sha256"], "a replaced file kept its hash"
    random = weights_identity(BackboneParams(name=TINY, weights="random"))
    assert random["sha256"] is None and random["found"] == "random weights", f"random weights identity: {random}"


def test_the_identity_is_the_files_sha256_and_size_found_as_a_file(tmp_path: Path) -> None:
    data = b"not really a checkpoint, but weights_identity never loads it"
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "w.pth").write_bytes(data)
    identity = weights_identity(BackboneParams(name=TABLE, weights=str(tmp_path / "a" / "w.pth")))
    assert identity == {"backbone": TABLE, "weights": str(tmp_path / "a" / "w.pth"),
                        "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "found": "file"}, identity


def test_the_same_bytes_elsewhere_have_the_same_hash_and_other_bytes_another(tmp_path: Path) -> None:
    (tmp_path / "one.pth").write_bytes(b"same")
    (tmp_path / "two.pth").write_bytes(b"same")
    (tmp_path / "three.pth").write_bytes(b"other")
    sha = {name: weights_identity(BackboneParams(name=TABLE, weights=str(tmp_path / name)))["sha256"]
           for name in ("one.pth", "two.pth", "three.pth")}
    assert sha["one.pth"] == sha["two.pth"] != sha["three.pth"], sha


def test_random_weights_and_a_missing_file_carry_no_hash_and_say_why(tmp_path: Path) -> None:
    random = weights_identity(BackboneParams(name=TABLE, weights="random"))
    assert (random["sha256"], random["size"], random["found"]) == (None, None, "random weights"), random
    missing = weights_identity(BackboneParams(name=TABLE, weights=str(tmp_path / "gone.pth")))
    assert missing["sha256"] is None and missing["size"] is None, missing
    assert missing["found"].startswith("no checkpoint: Weights file ") and "does not exist" in missing["found"], missing


def test_the_stage_writes_the_identity_as_json_and_returns_it(tmp_path: Path) -> None:
    (tmp_path / "w.pth").write_bytes(b"weights")
    out = tmp_path / "artifacts" / "weights.json"
    written = weights_module.weights(BackboneParams(name=TABLE, weights=str(tmp_path / "w.pth")), out)
    assert json.loads(out.read_text()) == written and written["sha256"] == hashlib.sha256(b"weights").hexdigest()


def test_an_unknown_backbone_name_is_one_sentence_naming_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^Unknown backbone 'no_such_vit'; use one of \[.*'dino_vits8'.*\]"):
        weights_identity(BackboneParams(name="no_such_vit", weights="random"))
