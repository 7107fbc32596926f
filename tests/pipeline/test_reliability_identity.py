"""A stored result is valid only for everything that shaped it: labels, backbone weights, model files.

Each test changes one input that shaped a stored artifact (a label file, the checkpoint's
content at the same path, a byte of the model files) and checks that the stage notices:
it recomputes exactly what depends on the change (and nothing else), or refuses in one
sentence. Stores are compared with a fresh extraction of the changed inputs, an
independent computation of what the store must hold.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image
from safetensors.torch import save_file

from stego_tasks.config import (
    BackboneParams,
    CorpusParams,
    DaskParams,
    ExtractParams,
    RuntimeParams,
)
from stego_tasks.demo_data import demo_data
from stego_tasks.extract import extract
from stego_tasks.ingest import ingest
from stego_tasks.method.backbone import create_backbone
from stego_tasks.runtime import content_hash

TINY = "vit_tiny_patch16_224"
EXTRACT = ExtractParams(resolution=32, val_resolution=32, batch_size=2, device="cpu")
IN_PROCESS = DaskParams(n_workers=1, threads_per_worker=1)
N_TRAIN, N_VAL = 4, 3


@pytest.fixture(autouse=True)
def _own_hash_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEGO_CACHE_DIR", str(tmp_path / "hash-cache"))


def _corpus(root: Path) -> CorpusParams:
    return CorpusParams(root=str(root), n_classes=5, ignore_index=255, demo=False)


def _prepare(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "corpus"
    demo_data(root, n_train=N_TRAIN, n_val=N_VAL, size=48)
    return root, tmp_path / "manifest.parquet"


def _extract(root: Path, manifest: Path, store: Path, weights: str = "random"):
    ingest(root, manifest, manifest.with_suffix(".csv"))
    return extract(manifest, store, _corpus(root), BackboneParams(name=TINY, weights=weights), EXTRACT, IN_PROCESS,
                   runtime=RuntimeParams(decode_workers=1))


def _arrays(store: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(store), mode="r")
    return {f"{split}/{name}": root[split][name][:] for split in ("train", "val") for name in root[split].array_keys()}


def _assert_equal_stores(got: Path, want: Path, what: str) -> None:
    a, b = _arrays(got), _arrays(want)
    assert sorted(a) == sorted(b), f"{what}: arrays {sorted(a)} vs {sorted(b)}"
    for name in b:
        assert np.array_equal(a[name], b[name]), f"{what}: {name} differs from a fresh extraction"


# --- labels ----------------------------------------------------------------------------------

def test_edited_and_removed_labels_reach_the_store_without_running_the_backbone(tmp_path, monkeypatch):
    root, manifest = _prepare(tmp_path)
    store = tmp_path / "features.zarr"
    _extract(root, manifest, store)
    before = _arrays(store)
    val_labels = sorted((root / "labels" / "val").glob("*.png"))
    for path in val_labels:  # every val label becomes class 0, as in the issue
        size = Image.open(path).size
        Image.fromarray(np.zeros(size[::-1], dtype=np.uint8)).save(path)
    removed = sorted((root / "labels" / "train").glob("*.png"))[0]
    removed.unlink()

    import stego_tasks.data.embed as embed

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone ran, but only labels changed")

    monkeypatch.setattr(embed, "embed_chunk", no_backbone)
    monkeypatch.setattr("stego_tasks.extract.embed_chunk", no_backbone)
    summary = _extract(root, manifest, store)
    assert summary.chunks_computed == {"train": 0, "val": 0}, f"labels alone changed, yet {summary.chunks_computed} chunks were recomputed"
    assert summary.labels_reread["val"] == 2 and summary.labels_reread["train"] == 1, f"labels re-read: {summary.labels_reread}"
    after = _arrays(store)
    for name in before:
        if not name.endswith("/labels"):
            assert np.array_equal(after[name], before[name]), f"{name} changed although only labels did"
    assert np.all(after["val/labels"] == 0), "val labels were all set to class 0 but the store keeps other classes"
    assert not np.array_equal(after["val/labels"], before["val/labels"]), "the store kept the old val labels"
    # Independent check: a fresh extraction of the edited corpus holds exactly the same store.
    fresh = tmp_path / "fresh"
    shutil.copytree(root, fresh / "corpus")
    monkeypatch.undo()
    _extract(fresh / "corpus", fresh / "manifest.parquet", fresh / "features.zarr")
    _assert_equal_stores(store, fresh / "features.zarr", "after editing and removing labels")
    rows = zarr.open_group(str(store), mode="r")["train"]
    assert np.any(np.all(rows["labels"][:] == 255, axis=(1, 2))), "the image whose label was removed is not ignore-filled"


def test_unchanged_labels_are_not_reread(tmp_path):
    root, manifest = _prepare(tmp_path)
    store = tmp_path / "features.zarr"
    _extract(root, manifest, store)
    again = _extract(root, manifest, store)
    assert again.labels_reread == {"train": 0, "val": 0} and again.chunks_computed == {"train": 0, "val": 0}, (
        f"an unchanged corpus re-read {again.labels_reread} / recomputed {again.chunks_computed}"
    )


def test_a_store_without_label_keys_rereads_its_labels_once(tmp_path):
    root, manifest = _prepare(tmp_path)
    store = tmp_path / "features.zarr"
    _extract(root, manifest, store)
    group = zarr.open_group(str(store), mode="a")
    for split in ("train", "val"):
        del group[split]["integrity/label_keys"]  # as a store written before the keys existed
    first = _extract(root, manifest, store)
    assert first.chunks_computed == {"train": 0, "val": 0}, f"old store recomputed {first.chunks_computed}"
    assert first.labels_reread == {"train": 2, "val": 2}, f"old store re-read {first.labels_reread}"
    assert _extract(root, manifest, store).labels_reread == {"train": 0, "val": 0}, "labels re-read twice"


# --- backbone weights --------------------------------------------------------------------

def _checkpoint(path: Path, seed: int) -> None:
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(TINY, pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def test_a_checkpoint_replaced_at_the_same_path_rebuilds_the_features(tmp_path):
    root, manifest = _prepare(tmp_path)
    weights = tmp_path / "dino.safetensors"
    _checkpoint(weights, seed=1)
    store = tmp_path / "features.zarr"
    first = _extract(root, manifest, store, str(weights))
    assert zarr.open_group(str(store), mode="r").attrs["weights_sha256"] == content_hash.sha256_of_file(weights)
    old = _arrays(store)
    assert _extract(root, manifest, store, str(weights)).chunks_computed == {"train": 0, "val": 0}, "same file, yet recomputed"

    _checkpoint(weights, seed=2)  # a newer download, at the same path
    replaced = _extract(root, manifest, store, str(weights))
    assert replaced.chunks_computed == first.chunks_computed, f"a new checkpoint recomputed only {replaced.chunks_computed}"
    assert not np.array_equal(_arrays(store)["train/feats"], old["train/feats"]), "the store kept the old weights' features"
    fresh = tmp_path / "fresh"
    shutil.copytree(root, fresh / "corpus")
    _extract(fresh / "corpus", fresh / "manifest.parquet", fresh / "features.zarr", str(weights))
    _assert_equal_stores(store, fresh / "features.zarr", "after replacing the checkpoint")


def test_the_same_checkpoint_moved_elsewhere_keeps_the_features(tmp_path):
    root, manifest = _prepare(tmp_path)
    weights = tmp_path / "a.safetensors"
    _checkpoint(weights, seed=1)
    store = tmp_path / "features.zarr"
    _extract(root, manifest, store, str(weights))
    moved = tmp_path / "b.safetensors"
    shutil.move(weights, moved)
    assert _extract(root, manifest, store, str(moved)).chunks_computed == {"train": 0, "val": 0}, "a moved file rebuilt the store"


def test_a_backbone_built_from_a_file_carries_its_content_hash(tmp_path):
    weights = tmp_path / "w.safetensors"
    _checkpoint(weights, seed=3)
    backbone = create_backbone(TINY, weights=str(weights))
    assert backbone.weights_sha256 == content_hash.sha256_of_file(weights)
    assert create_backbone(TINY, weights="random").weights_sha256 is None


# --- downstream stores against the features they were made from ------------------------------

def test_a_model_trained_on_other_weights_features_is_refused(tmp_path):
    from stego_tasks.method.model import check_trained_on

    info = {"backbone": TINY, "backbone_weights_sha256": "a" * 64}
    check_trained_on(info, {"backbone": TINY, "weights_sha256": "a" * 64}, tmp_path / "model", tmp_path / "f.zarr")
    check_trained_on({"backbone": TINY}, {"backbone": TINY}, tmp_path / "model", tmp_path / "f.zarr")  # random weights
    with pytest.raises(ValueError, match=r"trained on features of another backbone .* rerun `stego train`"):
        check_trained_on(info, {"backbone": TINY, "weights_sha256": "b" * 64}, tmp_path / "model", tmp_path / "f.zarr")
    with pytest.raises(ValueError, match="another backbone"):
        check_trained_on(info, {"backbone": "dino_vits8", "weights_sha256": "a" * 64}, tmp_path / "model", tmp_path / "f.zarr")


def test_predictions_for_other_images_than_the_store_holds_are_refused(tmp_path):
    from stego_tasks.data.store_integrity import same_images

    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    val, predictions = root.create_group("val"), root.create_group("pred")
    val.create_array("image_ids", data=np.array([3, 4, 5]))
    predictions.create_array("image_ids", data=np.array([3, 4, 5]))
    same_images(predictions, val, "pred", "store")
    predictions["image_ids"][:] = np.array([3, 4, 6])  # an image replaced since the predictions
    with pytest.raises(ValueError, match="holds predictions for other images than store now holds; rerun `stego cluster`"):
        same_images(predictions, val, "pred", "store")
