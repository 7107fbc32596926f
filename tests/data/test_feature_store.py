"""Tests for stego_tasks.data.feature_store: the features store's layout, resume bookkeeping and checked reads.

Proves that a split's fingerprint holds exactly the settings that shape its arrays (and the
checkpoint's content instead of its path when known); that each array gets the layout
written down in the module (train features and labels as shards of one-row chunks, the
codec only on the features); that `open_split` lays out a split, reuses it while the
fingerprint holds, and rebuilds it (saying what changed) otherwise; that resizing never
trusts stale done flags; that `pending_chunks` is every chunk not done, done for other
images, or damaged, and records digests for done chunks that had none; and that reading a
missing, incomplete or unreadable store is one sentence. Stores are written here, tiny
(4 channels, a 2 x 2 grid, 4 px labels, 2 rows per chunk).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from stego_tasks.config import ExtractParams
from stego_tasks.data.feature_store import (
    array_layout,
    feature_compressors,
    open_features,
    open_for_writing,
    open_split,
    pending_chunks,
    read_split,
    resize_split,
    split_fingerprint,
    split_resolution,
)
from stego_tasks.data.store_integrity import DIGESTS, StoreDamagedError, record_chunk
from stego_tasks.errors import InvalidInputError, MissingInputError

PARAMS = ExtractParams(resolution=32, val_resolution=48, batch_size=2, device="cpu")
DIM, GRID, RES, ROWS_PER_CHUNK = 4, 2, 4, 2


def _backbone(sha256: str | None = None) -> SimpleNamespace:
    """What `split_fingerprint` reads of a backbone."""
    return SimpleNamespace(name="dino_vits8", timm_name="vit_small_patch8_224.dino", weights_source="/w/dino.pth",
                           patch_size=8, embed_dim=DIM, weights_sha256=sha256)


def _fingerprint(**changes: object) -> dict:
    """A train fingerprint without five-crop: 2 rows per chunk."""
    return {"backbone": "b", "batch_size": ROWS_PER_CHUNK, "five_crop": False, "resolution": RES, "embed_dim": DIM,
            "flip": False, **changes}


def _root(path: Path) -> zarr.Group:
    return zarr.open_group(str(path), mode="a", zarr_format=3)


def _write_chunk(group: zarr.Group, index: int, ids: np.ndarray, seed: int = 0) -> None:
    """Write chunk `index` as extract does: data, then its digests, then its done flag."""
    rows = slice(index * ROWS_PER_CHUNK, index * ROWS_PER_CHUNK + len(ids))
    rng = np.random.default_rng(seed + index)
    group["feats"][rows] = rng.normal(size=(len(ids), DIM, GRID, GRID)).astype(np.float16)
    group["pooled"][rows] = rng.normal(size=(len(ids), DIM)).astype(np.float32)
    group["labels"][rows] = rng.integers(0, 3, (len(ids), RES, RES)).astype(np.uint8)
    group["image_ids"][rows] = ids
    record_chunk(group, index)
    group["done"][index] = True


def test_split_resolution_is_val_resolution_for_val_when_set() -> None:
    assert (split_resolution(PARAMS, "train"), split_resolution(PARAMS, "val")) == (32, 48)
    same = dataclasses.replace(PARAMS, val_resolution=None)
    assert split_resolution(same, "val") == 32, "no val_resolution: the training side"


def test_the_fingerprint_holds_what_shapes_each_split() -> None:
    train, val = (split_fingerprint(_backbone(), PARAMS, split) for split in ("train", "val"))
    assert train == {"backbone": "dino_vits8", "timm_name": "vit_small_patch8_224.dino", "weights_source": "/w/dino.pth",
                     "patch_size": 8, "embed_dim": DIM, "resolution": 32, "five_crop": True, "crop_ratio": 0.5,
                     "flip": False, "batch_size": 2, "preprocess": "reference", "pos_embed": "timm"}, f"{train}"
    assert (val["resolution"], val["five_crop"], val["crop_ratio"], val["flip"]) == (48, False, None, True), f"{val}"


def test_the_fingerprint_names_the_checkpoint_content_and_only_non_default_precision_and_codec() -> None:
    known = split_fingerprint(_backbone("ab" * 32), PARAMS, "train")
    assert "weights_source" not in known and known["weights_sha256"] == "ab" * 32, f"{known}"
    assert "precision" not in known and "compression" not in known, "defaults leave older stores valid"
    other = split_fingerprint(_backbone(), dataclasses.replace(PARAMS, compression="none"), "train", precision="bf16")
    assert (other["precision"], other["compression"]) == ("bf16", "none"), f"{other}"


def test_feature_compressors_offer_the_four_codecs_and_refuse_others() -> None:
    assert feature_compressors("none") is None, "none: raw bytes"
    [blosc] = feature_compressors("blosc-zstd")
    assert isinstance(blosc, BloscCodec) and blosc.cname.value == "zstd" and blosc.clevel == 1, f"{blosc}"
    with pytest.raises(InvalidInputError, match=r"extract\.compression must be one of \['blosc-lz4', 'blosc-zstd', 'none', 'zstd'\], got 'lz5'\."):
        feature_compressors("lz5")


def test_array_layout_shards_only_the_training_rows_read_at_random_and_compresses_only_features() -> None:
    tail = (DIM, GRID, GRID)
    assert array_layout("train", "feats", 8, tail) == {"chunks": (1, *tail), "shards": (8, *tail)}
    assert array_layout("train", "labels", 8, (RES, RES)) == {"chunks": (1, RES, RES), "shards": (8, RES, RES)}
    assert array_layout("train", "pooled", 8, (DIM,)) == {"chunks": (8, DIM)}
    assert array_layout("val", "feats", 8, tail) == {"chunks": (8, *tail)}
    assert array_layout("val", "feats_flip", 8, tail, "none") == {"chunks": (8, *tail), "compressors": None}
    assert array_layout("val", "labels", 8, (RES, RES), "none") == {"chunks": (8, RES, RES)}, "labels keep zstd"


def test_open_split_lays_out_every_array_with_done_flags_and_digests(tmp_path: Path) -> None:
    root = _root(tmp_path / "f.zarr")
    val = open_split(root, "val", _fingerprint(flip=True), n_rows=5, grid=GRID)
    shapes = {name: (val[name].shape, str(val[name].dtype)) for name in val.array_keys()}
    assert shapes == {
        "feats": ((5, DIM, GRID, GRID), "float16"), "feats_flip": ((5, DIM, GRID, GRID), "float16"),
        "pooled": ((5, DIM), "float32"), "labels": ((5, RES, RES), "uint8"), "images": ((5, RES, RES, 3), "uint8"),
        "image_ids": ((5,), "int64"), "crops": ((5,), "int8"), "done": ((3,), "bool"),
    }, f"{shapes}"
    assert not val["done"][:].any() and val[DIGESTS].shape == (3, 7, 2), "nothing done, one digest row per chunk"
    assert val.attrs["fingerprint"] == _fingerprint(flip=True), "the fingerprint is recorded"
    train = open_split(root, "train", _fingerprint(five_crop=True), n_rows=10, grid=GRID)
    assert train["done"].shape == (1,) and train["feats"].shards == (10, DIM, GRID, GRID), "5 crops x 2 images a chunk"


def test_open_split_reuses_a_split_while_its_fingerprint_holds_and_rebuilds_it_otherwise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _root(tmp_path / "f.zarr")
    group = open_split(root, "train", _fingerprint(), n_rows=4, grid=GRID)
    _write_chunk(group, 0, np.array([1, 2]))
    again = open_split(root, "train", _fingerprint(), n_rows=6, grid=GRID)
    assert again["image_ids"][:].tolist() == [1, 2, 0, 0, 0, 0] and again["done"][:].tolist() == [True, False, False]
    with caplog.at_level(logging.WARNING, logger="stego"):
        rebuilt = open_split(root, "train", _fingerprint(resolution=8), n_rows=6, grid=GRID)
    assert not rebuilt["done"][:].any() and rebuilt["labels"].shape == (6, 8, 8), "a changed setting rebuilds"
    assert "extract train: resolution changed since the split was written; rebuilding it" in caplog.text, caplog.text
    del rebuilt.attrs["fingerprint"]  # as if killed while being created
    assert open_split(root, "train", _fingerprint(resolution=8), 6, GRID).attrs["fingerprint"]["resolution"] == 8


def test_resizing_never_trusts_the_done_flags_of_a_shrunk_split(tmp_path: Path) -> None:
    group = open_split(_root(tmp_path / "f.zarr"), "train", _fingerprint(), n_rows=6, grid=GRID)
    for index in range(3):
        _write_chunk(group, index, np.array([2 * index + 1, 2 * index + 2]))
    resize_split(group, 2)
    resize_split(group, 6)
    assert group["done"][:].tolist() == [True, False, False], f"{group['done'][:]}"
    assert (group[DIGESTS][1:] == -1).all(), "regrown chunks have no record"
    assert group["feats"].shape[0] == 6 and group["image_ids"].shape == (6,), "every data array follows"


def test_pending_chunks_are_those_not_done_done_for_other_images_or_damaged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "f.zarr"
    group = open_split(_root(store), "train", _fingerprint(), n_rows=5, grid=GRID)
    ids = np.array([1, 2, 3, 4, 5])
    assert pending_chunks(group, ids, ROWS_PER_CHUNK) == [0, 1, 2], "a new split: everything"
    for index in range(3):
        _write_chunk(group, index, ids[2 * index : 2 * index + 2])
    assert pending_chunks(group, ids, ROWS_PER_CHUNK) == [], "all done for these images"
    assert pending_chunks(group, np.array([1, 2, 3, 9, 5]), ROWS_PER_CHUNK) == [1], "chunk 1 holds another image now"
    (store / "train" / "pooled" / "c" / "2" / "0").unlink()
    with caplog.at_level(logging.WARNING, logger="stego"):
        assert pending_chunks(group, ids, ROWS_PER_CHUNK) == [2], "a deleted object makes its chunk pending"
    assert "chunk 2 of train/pooled is missing" in caplog.text, caplog.text


def test_done_chunks_without_records_get_them_when_they_decode(tmp_path: Path) -> None:
    group = open_split(_root(tmp_path / "f.zarr"), "train", _fingerprint(), n_rows=4, grid=GRID)
    ids = np.array([1, 2, 3, 4])
    for index in range(2):
        _write_chunk(group, index, ids[2 * index : 2 * index + 2])
    group[DIGESTS][:] = -1  # a store written before records existed
    (tmp_path / "f.zarr" / "train" / "feats" / "c" / "1" / "0" / "0" / "0").unlink()
    assert pending_chunks(group, ids, ROWS_PER_CHUNK) == [1], "chunk 1 lost its features file: computed again"
    assert (group[DIGESTS][0] >= 0).all() and (group[DIGESTS][1] == -1).all(), "chunk 0 recorded, chunk 1 not"


def test_reading_a_missing_incomplete_or_damaged_store_is_one_sentence(tmp_path: Path) -> None:
    store = tmp_path / "f.zarr"
    with pytest.raises(MissingInputError, match=r"f\.zarr does not exist; run `stego extract` first\.$"):
        read_split(store, "train")
    group = open_split(_root(store), "train", _fingerprint(), n_rows=4, grid=GRID)
    with pytest.raises(InvalidInputError, match=r"f\.zarr has no 'val' features; run `stego extract` first\.$"):
        read_split(store, "val")
    _write_chunk(group, 0, np.array([1, 2]))
    with pytest.raises(InvalidInputError, match=r"f\.zarr/train is incomplete \(an extraction was interrupted\); rerun `stego extract`\.$"):
        read_split(store, "train")
    _write_chunk(group, 1, np.array([3, 4]))
    assert read_split(store, "train")["image_ids"][:].tolist() == [1, 2, 3, 4], "a complete, intact split reads"
    (store / "train" / "labels" / "c" / "1" / "0" / "0").write_bytes(b"x")
    assert read_split(store, "train", arrays=["feats"])["feats"].shape == (4, DIM, GRID, GRID), "only feats checked"
    with pytest.raises(StoreDamagedError, match=r"chunk 1 of train/labels is truncated or damaged"):
        read_split(store, "train")
    (store / "train" / "done" / "zarr.json").write_text("{ broken")
    with pytest.raises(StoreDamagedError, match=r"train/done cannot be read \(\w+\); run `stego extract`"):
        read_split(store, "train")


def test_a_damaged_root_is_refused_for_reading_and_given_new_metadata_for_writing(tmp_path: Path) -> None:
    store = tmp_path / "f.zarr"
    group = open_split(_root(store), "train", _fingerprint(), n_rows=2, grid=GRID)
    _write_chunk(group, 0, np.array([7, 8]))
    (store / "zarr.json").write_text("{ broken")
    with pytest.raises(InvalidInputError, match=r"f\.zarr cannot be opened as a Zarr store \(its zarr\.json: \w+\); run `stego extract`"):
        open_features(store)
    root = open_for_writing(store)
    assert root["train"]["image_ids"][:].tolist() == [7, 8], "the splits below the root are kept"
    assert open_features(store)["train"]["done"][:].tolist() == [True], "the root reads again"


@pytest.mark.parametrize("damage", ["{}", "{ broken"])
def test_a_split_whose_own_metadata_is_damaged_is_one_sentence_to_readers_and_to_extract(tmp_path: Path, damage: str) -> None:
    """zarr reads a split group's zarr.json to answer `split in root`: a MetadataValidationError there was a bug's
    traceback in every reader and in extract itself."""
    store = tmp_path / "f.zarr"
    group = open_split(_root(store), "train", _fingerprint(), n_rows=2, grid=GRID)
    _write_chunk(group, 0, np.array([7, 8]))
    (store / "train" / "zarr.json").write_text(damage)
    message = r"f\.zarr: train cannot be opened \(its zarr\.json: \w+\); move .*train away and run `stego extract`"
    with pytest.raises(StoreDamagedError, match=message):
        read_split(store, "train")
    with pytest.raises(StoreDamagedError, match=message):
        open_split(open_for_writing(store), "train", _fingerprint(), n_rows=2, grid=GRID)
    assert (store / "train" / "image_ids").is_dir(), "nothing computed is deleted"
