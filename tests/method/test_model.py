"""Tests for stego_tasks.method.model: a model's head and probes are sized from (in_dim, n_classes,
train params), saved as prefixed safetensors plus a model.json carrying the file's SHA-256, and
loaded back equal and in eval mode; `holds_model` needs both files, a model.json from before the
checksum still loads, and a model.json whose resolution, backbone or in_dim has the wrong type is
refused in one sentence. (Damaged files and foreign features: tests/pipeline/test_reliability_*.)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stego_tasks.config import TrainParams, params_to_dict
from stego_tasks.method.model import build_model, holds_model, load_model, save_model
from stego_tasks.runtime.content_hash import sha256_of_file
from stego_tasks.train import fit
from tests.test_train import IGNORE, N_CLASSES, PARAMS, _assert_same_model, _data, _info

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = TrainParams(n_codes=5, extra_clusters=2, dropout=0.0)


def _saved(folder: Path, **info: object) -> Path:
    """A random model of in_dim 6 and 3 classes saved in `folder`, its model.json holding `info` too."""
    torch.manual_seed(0)
    model = build_model(6, 3, SMALL, {"in_dim": 6, "n_classes": 3, "train": params_to_dict(SMALL), **info})
    save_model(model, folder)
    return folder


def _edit_json(folder: Path, drop: tuple[str, ...] = (), **changes: object) -> None:
    """Remove the keys `drop` from the saved model.json and set `changes` (None is written as null)."""
    info = json.loads((folder / "model.json").read_text())
    for key in drop:
        del info[key]
    (folder / "model.json").write_text(json.dumps({**info, **changes}))


def test_save_and_load_model_round_trip(tmp_path):
    model, _ = fit(_data(), N_CLASSES, PARAMS, seed=0, ignore_index=IGNORE, info=_info())
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    _assert_same_model(model, loaded, "loaded model")
    recorded = {**_info(), "safetensors_sha256": sha256_of_file(tmp_path / "model.safetensors")}
    assert json.loads((tmp_path / "model.json").read_text()) == recorded, "model.json is not the model's info + checksum"
    feats = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        code, code_loaded = model.eval().head(feats), loaded.head(feats)
        assert torch.equal(code, code_loaded), "head outputs differ after a round trip"
        assert torch.equal(model.cluster_probe.log_probs(code), loaded.cluster_probe.log_probs(code)), "cluster probe"
        assert torch.equal(model.linear_probe(code), loaded.linear_probe(code)), "linear probe outputs differ"
    assert not loaded.head.training, "load_model must return an eval-mode model"


def test_load_model_from_an_empty_folder_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `stego train` first"):
        load_model(tmp_path)


def test_the_head_and_probes_are_sized_from_the_features_classes_and_train_params():
    info = {"note": "kept"}
    model = build_model(7, 4, SMALL, info)
    assert (model.head.in_dim, model.head.n_codes) == (7, 5), "head dims"
    assert model.cluster_probe.clusters.shape == (4 + 2, 5), f"clusters {tuple(model.cluster_probe.clusters.shape)}"
    assert model.linear_probe(torch.zeros(1, 5, 2, 2)).shape == (1, 4, 2, 2), "linear probe outputs one map per class"
    assert set(model.modules()) == {"head", "cluster_probe", "linear_probe"}, f"modules {set(model.modules())}"
    info["note"] = "changed"
    assert model.info == {"note": "kept"}, "the model shares the caller's info dict"
    assert model.eval() is model and not any(m.training for m in model.modules().values()), "eval()"
    assert model.to(torch.device("cpu")) is model, "to() must return the model itself"


def test_a_folder_holds_a_model_only_with_both_of_its_files(tmp_path):
    assert not holds_model(tmp_path), "an empty folder"
    _saved(tmp_path)
    assert holds_model(tmp_path), "a saved model"
    (tmp_path / "model.safetensors").unlink()
    assert not holds_model(tmp_path), "model.json alone"


def test_saved_tensors_carry_their_module_prefix_and_model_json_their_sha256(tmp_path):
    model = build_model(6, 3, SMALL, {"in_dim": 6, "n_classes": 3, "train": params_to_dict(SMALL)})
    save_model(model, tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    expected = {f"{p}.{n}": t for p, m in model.modules().items() for n, t in m.state_dict().items()}
    assert tensors.keys() == expected.keys(), f"tensor names {sorted(tensors)}"
    assert all(torch.equal(tensors[k], expected[k]) for k in expected), "a saved tensor differs from the module's"
    recorded = json.loads((tmp_path / "model.json").read_text())["safetensors_sha256"]
    assert recorded == hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest(), "checksum"
    assert model.info["safetensors_sha256"] == recorded, "the in-memory info must carry the checksum it wrote"


def test_a_model_json_written_before_the_checksum_loads_unchecked(tmp_path):
    folder = _saved(tmp_path)
    _edit_json(folder, drop=("safetensors_sha256",))
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # a bit of the last tensor: caught only where model.json records the checksum
    path.write_bytes(bytes(data))
    model = load_model(folder)
    assert "safetensors_sha256" not in model.info, f"info {model.info}"
    assert model.cluster_probe.clusters.shape == (5, 5), "the model described is rebuilt"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("resolution", "320", 'resolution must be an integer or null, got "320"'),
        ("resolution", True, "resolution must be an integer or null, got true"),
        ("backbone", 5, "backbone must be a string or null, got 5"),
        ("in_dim", True, "in_dim must be a positive integer (got true)"),
        ("n_classes", 0, "n_classes must be a positive integer (got 0)"),
        ("train", [1], "train must be a mapping (got [1])"),
    ],
)
def test_a_model_json_value_of_the_wrong_type_is_refused_in_one_sentence(tmp_path, key, value, message):
    folder = _saved(tmp_path)
    _edit_json(folder, **{key: value})
    with pytest.raises(ValueError) as info:
        load_model(folder)
    assert str(info.value) == f"{folder / 'model.json'}: {message}; rerun `stego train` to write the model again.", (
        f"message: {info.value}"
    )


def test_resolution_and_backbone_may_be_recorded_or_null(tmp_path):
    folder = _saved(tmp_path, resolution=320, backbone="dino_vits8")
    assert (load_model(folder).info["resolution"], load_model(folder).info["backbone"]) == (320, "dino_vits8")
    _edit_json(folder, resolution=None, backbone=None)
    loaded = load_model(folder)
    assert (loaded.info["resolution"], loaded.info["backbone"]) == (None, None), "null values refused or changed"
