"""Tests for stego_tasks.extract: the Zarr store layout, resume, growth, rebuilds.

The store is built once per module (a tiny random ViT, 6 + 3 demo images of 64 px, a
one-worker local Dask cluster that `extract` starts itself) and copied by every test that
changes it. Those reruns connect to one module-wide scheduler through `dask.address`, so
its worker imports torch and builds the backbone once.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from stego_tasks.config import (
    BackboneParams,
    CorpusParams,
    DaskParams,
    ExtractParams,
    RuntimeParams,
)
from stego_tasks.data.feature_store import read_split, resize_split
from stego_tasks.data.images import load_label, load_rgb
from stego_tasks.data.manifest import read_manifest
from stego_tasks.data.preprocess import preprocess
from stego_tasks.demo_data import demo_data
from stego_tasks.extract import ExtractSummary, extract, resolve_writers
from stego_tasks.ingest import ingest
from stego_tasks.method.backbone import Backbone, create_backbone, normalize
from stego_tasks.method.weights import WeightsNotFoundError

BACKBONE = BackboneParams(name="vit_tiny_patch16_224", weights="random")
PARAMS = ExtractParams(resolution=32, val_resolution=48, batch_size=4, device="cpu")
DASK = DaskParams(n_workers=1, threads_per_worker=1)
N_TRAIN, N_VAL = 6, 3


@dataclass(frozen=True)
class Base:
    """The module's corpus, manifest and store, built once."""

    tmp: Path
    root: Path
    manifest: Path
    store: Path
    summary: ExtractSummary


def _corpus(root: Path, demo: bool = True) -> CorpusParams:
    return CorpusParams(root=str(root), n_classes=5, ignore_index=255, demo=demo)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Base:
    tmp = tmp_path_factory.mktemp("extract")
    root = tmp / "corpus"
    demo_data(root, n_train=N_TRAIN, n_val=N_VAL, size=64)
    manifest = tmp / "manifest.parquet"
    ingest(root, manifest, tmp / "quarantine.csv")
    store = tmp / "features.zarr"
    summary = extract(manifest, store, _corpus(root), BACKBONE, PARAMS, DASK)
    return Base(tmp, root, manifest, store, summary)


@pytest.fixture(scope="module")
def scheduler() -> Iterator[DaskParams]:
    from dask.distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None, silence_logs=40
    )
    yield DaskParams(address=cluster.scheduler_address)
    cluster.close()


def _copy(base: Base, tmp_path: Path) -> Base:
    """A private copy of corpus, manifest and store that a test may change."""
    for name in ("corpus", "manifest.parquet", "features.zarr"):
        source = base.tmp / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name)
        else:
            shutil.copy2(source, tmp_path / name)
    return Base(tmp_path, tmp_path / "corpus", tmp_path / "manifest.parquet", tmp_path / "features.zarr", base.summary)


def _arrays(store: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(store), mode="r")
    return {f"{split}/{name}": root[split][name][:] for split in ("train", "val") for name in root[split].array_keys()}


def _assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Integers exactly; features to float16 rounding (reruns may use another thread count)."""
    assert got.shape == want.shape and got.dtype == want.dtype, f"{what}: {got.shape} {got.dtype} vs {want.shape} {want.dtype}"
    if np.issubdtype(want.dtype, np.floating):
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2e-3, atol=1e-5, err_msg=what)
    else:
        assert np.array_equal(got, want), what


@lru_cache(maxsize=2)
def _reference_backbone(name: str) -> Backbone:
    # Extraction seeds random weights with 0 so that every worker embeds with one net.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        # The store's default preprocess is "reference", which resamples positions as DINO does.
        return create_backbone(name, weights="random", pos_embed="dino")


def _embed(images: np.ndarray) -> torch.Tensor:
    """float32 features [B, C, h, w] of uint8 images [B, R, R, 3], run here, not on Dask."""
    model = _reference_backbone(BACKBONE.name)
    batch = normalize(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2), model.mean, model.std)
    with torch.no_grad():
        return model(batch).float()


def _split_rows(manifest: Path, split: str):
    frame = read_manifest(manifest)
    return frame[frame["split"] == split].sort_values("id")


# --- the store -----------------------------------------------------------------------------


def test_store_layout_shapes_and_dtypes(base):
    root = zarr.open_group(str(base.store), mode="r")
    dim = 192  # vit_tiny: 192 channels; patches of 16 px
    side = {"train": 32, "val": 48}  # extract.resolution / extract.val_resolution
    rows = {"train": 5 * N_TRAIN, "val": N_VAL}
    assert base.summary.rows == rows, f"summary rows {base.summary.rows}"
    assert base.summary.chunks_total == {"train": 2, "val": 1}, f"chunks {base.summary.chunks_total}"
    assert base.summary.chunks_computed == base.summary.chunks_total, "a fresh store must compute every chunk"
    assert base.summary.weights_source == "random", f"weights source {base.summary.weights_source}"
    for split, n in rows.items():
        res, grid = side[split], side[split] // 16
        expected = {
            "feats": ((dim, grid, grid), np.float16),
            "pooled": ((dim,), np.float32),
            "labels": ((res, res), np.uint8),
            "image_ids": ((), np.int64),
            "crops": ((), np.int8),
        }
        group = root[split]
        names = set(expected) | {"done"} | ({"images", "feats_flip"} if split == "val" else set())
        assert set(group.array_keys()) == names, f"{split} arrays {sorted(group.array_keys())}"
        for name, (tail, dtype) in expected.items():
            assert group[name].shape == (n, *tail), f"{split}/{name} shape {group[name].shape}"
            assert group[name].dtype == dtype, f"{split}/{name} dtype {group[name].dtype}"
        assert bool(np.all(group["done"][:])), f"{split}: not every chunk is done"
    assert root["val"]["images"].shape == (N_VAL, 48, 48, 3), "val images shape"
    assert root["val"]["feats_flip"].shape == (N_VAL, dim, 3, 3), "val feats_flip shape"
    expected_attrs = {
        "backbone": BACKBONE.name, "weights_source": "random", "resolution": 48, "train_resolution": 32, "precision": "fp32",
        "preprocess": "reference", "pos_embed": "dino",
    }
    assert dict(root.attrs) == expected_attrs, f"root attrs {dict(root.attrs)}"


def test_ids_and_crops_follow_the_manifest(base):
    root = zarr.open_group(str(base.store), mode="r")
    train_ids = _split_rows(base.manifest, "train")["id"].to_numpy()
    val_ids = _split_rows(base.manifest, "val")["id"].to_numpy()
    assert len(train_ids) == N_TRAIN and len(val_ids) == N_VAL, "ingest lost images"
    assert np.array_equal(root["train"]["image_ids"][:], np.repeat(train_ids, 5)), "train image ids"
    assert np.array_equal(root["train"]["crops"][:], np.tile(np.arange(5), N_TRAIN)), "train crop indices"
    assert np.array_equal(root["val"]["image_ids"][:], val_ids), "val image ids"
    assert np.array_equal(root["val"]["crops"][:], np.zeros(N_VAL)), "val crop indices"


def test_train_features_equal_the_backbone_rerun_on_the_image_files(base):
    group = read_split(base.store, "train")
    rows = _split_rows(base.manifest, "train")
    inputs, labels = [], []
    for path, label_path in zip(rows["path"], rows["label_path"], strict=True):
        pieces = preprocess(load_rgb(base.root / path), load_label(base.root / label_path), 32, True, 0.5, PARAMS.preprocess)
        inputs += [crop for crop, _ in pieces]
        labels += [crop_label for _, crop_label in pieces]
    feats = _embed(np.stack(inputs))
    stored = group["feats"][:].astype(np.float32)
    scale = float(feats.abs().max())
    np.testing.assert_allclose(stored, feats.numpy(), rtol=2e-3, atol=2e-3 * scale, err_msg="train feats")
    pooled = group["pooled"][:]
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-5, err_msg="pooled is not unit norm")
    mean = feats.mean(dim=(2, 3)).numpy().astype(np.float64)
    expected = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    np.testing.assert_allclose(pooled, expected, atol=1e-5, err_msg="pooled != normalised mean of float32 feats")
    assert np.array_equal(group["labels"][:], np.stack(labels)), "train labels are not cropped like the images"


def test_val_images_labels_and_flipped_features(base):
    group = read_split(base.store, "val")
    rows = _split_rows(base.manifest, "val")
    images, labels = [], []
    for path, label_path in zip(rows["path"], rows["label_path"], strict=True):
        [(image, label)] = preprocess(load_rgb(base.root / path), load_label(base.root / label_path), 48, False, 0.5, PARAMS.preprocess)
        images.append(image)
        labels.append(label)
    images = np.stack(images)
    assert np.array_equal(group["images"][:], images), "val images are not the resized, centre-cropped files"
    assert np.array_equal(group["labels"][:], np.stack(labels)), "val labels are not resized like the images"
    feats, flipped = _embed(images), _embed(images[:, :, ::-1])
    scale = float(feats.abs().max())
    np.testing.assert_allclose(group["feats"][:].astype(np.float32), feats.numpy(), rtol=2e-3, atol=2e-3 * scale,
                               err_msg="val feats")
    np.testing.assert_allclose(group["feats_flip"][:].astype(np.float32), flipped.numpy(), rtol=2e-3,
                               atol=2e-3 * scale, err_msg="val feats_flip are not the features of the mirrored input")
    assert not np.allclose(feats.numpy(), flipped.numpy(), atol=1e-2), "mirroring changed nothing: test is vacuous"


# --- resume, growth, rebuild ---------------------------------------------------------------


def test_rerun_recomputes_only_an_unfinished_chunk(base, scheduler, tmp_path):
    copy = _copy(base, tmp_path)
    group = zarr.open_group(str(copy.store), mode="a")["train"]
    group["done"][1] = False  # as if the run died while writing chunk 1 (rows 20..29)
    group["feats"][20:30] = 0
    group["pooled"][20:30] = 0
    with pytest.raises(ValueError, match="incomplete"):
        read_split(copy.store, "train")
    # Chunk 0 stays done and intact: a rerun must trust it, not rewrite its files.
    chunk0 = {p: p.stat().st_mtime_ns for p in copy.store.glob("train/*/c/0/**/*") if p.is_file()}
    assert chunk0, "no chunk files found for chunk 0"
    summary = extract(copy.manifest, copy.store, _corpus(copy.root), BACKBONE, PARAMS, scheduler)
    assert summary.chunks_computed == {"train": 1, "val": 0}, f"computed {summary.chunks_computed}"
    assert {p: p.stat().st_mtime_ns for p in chunk0} == chunk0, "a done chunk was rewritten"
    before, after = _arrays(base.store), _arrays(copy.store)
    assert set(before) == set(after), "the rerun changed the set of arrays"
    for name in before:
        _assert_same(after[name], before[name], f"{name} differs from the uninterrupted run")


def test_split_killed_while_being_created_is_rebuilt(base, scheduler, tmp_path):
    copy = _copy(base, tmp_path)
    root = zarr.open_group(str(copy.store), mode="a")
    del root["train"]["done"]  # as if killed after the arrays but before the done flags
    summary = extract(copy.manifest, copy.store, _corpus(copy.root), BACKBONE, PARAMS, scheduler)
    assert summary.chunks_computed == {"train": 2, "val": 0}, f"computed {summary.chunks_computed}"
    before, after = _arrays(base.store), _arrays(copy.store)
    for name in before:
        _assert_same(after[name], before[name], f"{name} differs after rebuilding a half-created split")


def test_shrunk_then_regrown_split_does_not_trust_stale_done_flags(base, scheduler, tmp_path):
    copy = _copy(base, tmp_path)
    group = zarr.open_group(str(copy.store), mode="a")["train"]
    resize_split(group, 5 * 4)  # manifest shrank to 4 images: one chunk
    resize_split(group, 5 * N_TRAIN)  # and grew back: chunk 1 must be pending again
    assert group["done"][:].tolist() == [True, False], f"done flags {group['done'][:].tolist()}"


def test_grown_corpus_extracts_only_the_new_images(base, scheduler, tmp_path):
    copy = _copy(base, tmp_path)
    demo_data(copy.root, n_train=N_TRAIN + 2, n_val=N_VAL, size=64)  # same first 6, 2 new
    grown = ingest(copy.root, copy.manifest, tmp_path / "quarantine.csv")
    assert grown.n_new == 2 and grown.n_kept == N_TRAIN + N_VAL, f"ingest summary {grown}"
    summary = extract(copy.manifest, copy.store, _corpus(copy.root), BACKBONE, PARAMS, scheduler)
    # Images 4, 5 shared chunk 1 with room for two more: only that chunk is redone.
    assert summary.chunks_total == {"train": 2, "val": 1}, f"chunks {summary.chunks_total}"
    assert summary.chunks_computed == {"train": 1, "val": 0}, f"computed {summary.chunks_computed}"
    before, after = _arrays(base.store), _arrays(copy.store)
    assert after["train/feats"].shape[0] == 5 * (N_TRAIN + 2), f"train rows {after['train/feats'].shape}"
    old = 5 * N_TRAIN
    for name in before:
        if name.startswith("train/") and name != "train/done":
            _assert_same(after[name][:old], before[name], f"old rows of {name} changed")
        elif name.startswith("val/"):
            _assert_same(after[name], before[name], f"{name} changed")
    new_ids = _split_rows(copy.manifest, "train")["id"].to_numpy()[-2:]
    assert np.array_equal(after["train/image_ids"][old:], np.repeat(new_ids, 5)), "new rows' image ids"
    assert np.all(np.abs(after["train/feats"][old:]).sum(axis=(1, 2, 3)) > 0), "new rows were left empty"
    assert bool(np.all(after["train/done"])), "not every chunk is done after growth"


def test_changed_resolution_rebuilds_the_store(base, scheduler, tmp_path):
    copy = _copy(base, tmp_path)
    params = ExtractParams(resolution=48, val_resolution=64, batch_size=4, device="cpu")
    summary = extract(copy.manifest, copy.store, _corpus(copy.root), BACKBONE, params, scheduler)
    assert summary.chunks_computed == summary.chunks_total == {"train": 2, "val": 1}, f"{summary}"
    root = zarr.open_group(str(copy.store), mode="r")
    assert root["train"]["feats"].shape == (30, 192, 3, 3), f"train feats {root['train']['feats'].shape}"
    assert root["val"]["images"].shape == (3, 64, 64, 3), f"val images {root['val']['images'].shape}"
    assert root.attrs["resolution"] == 64 and root.attrs["train_resolution"] == 48, f"root attrs {dict(root.attrs)}"
    assert root["train"].attrs["fingerprint"]["resolution"] == 48, "train fingerprint not updated"
    assert root["val"].attrs["fingerprint"]["resolution"] == 64, "val fingerprint not updated"


def test_resolution_must_be_a_multiple_of_the_patch(base, tmp_path):
    store = tmp_path / "features.zarr"
    params = ExtractParams(resolution=40, val_resolution=None, batch_size=4, device="cpu")
    with pytest.raises(ValueError, match=r"resolution 40 is not a multiple of the backbone's patch size 16.*32"):
        extract(base.manifest, store, _corpus(base.root), BACKBONE, params, DASK)
    assert not store.exists(), "a refused run must not create the store"


def test_a_resolution_whose_batch_cannot_fit_is_refused_before_the_backbone_loads(base, tmp_path, monkeypatch):
    import stego_tasks.extract as extract_module

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone was loaded for a batch that cannot fit")

    monkeypatch.setattr(extract_module, "load_backbone", no_backbone)
    store = tmp_path / "features.zarr"
    params = ExtractParams(resolution=32, val_resolution=160_000, batch_size=2, device="cpu")
    with pytest.raises(ValueError, match=r"^extract.val_resolution 160000 \(batch_size 2, 1 crop each\) needs at least "
                                         r"\d+\.\d GiB of memory .*; lower extract.val_resolution or extract.batch_size\.$"):
        extract(base.manifest, store, _corpus(base.root), BACKBONE, params, DASK)
    assert not store.exists(), "a refused run must not create the store"


def test_random_fallback_only_on_the_demo_corpus(base, scheduler, tmp_path, monkeypatch, caplog):
    empty_cache = tmp_path / "hub"
    empty_cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(empty_cache))
    auto = BackboneParams(name=BACKBONE.name, weights="auto")
    refused = tmp_path / "refused.zarr"
    with pytest.raises(WeightsNotFoundError, match="offline"):
        extract(base.manifest, refused, _corpus(base.root, demo=False), auto, PARAMS, scheduler)
    assert not refused.exists(), "a corpus that is not the demo must not get a store from random weights"

    # On the demo corpus the fallback gives the seeded random net of weights="random", so
    # the store built with it is complete as it stands: nothing is recomputed.
    copy = _copy(base, tmp_path)
    with caplog.at_level(logging.WARNING, logger="stego"):
        summary = extract(copy.manifest, copy.store, _corpus(copy.root, demo=True), auto, PARAMS, scheduler)
    assert summary.weights_source == "random", f"weights source {summary.weights_source}"
    assert "DEMO ONLY" in caplog.text, "the fallback must be announced loudly"
    assert summary.chunks_computed == {"train": 0, "val": 0}, f"computed {summary.chunks_computed}"
    assert zarr.open_group(str(copy.store), mode="r").attrs["weights_source"] == "random", "store does not say random"


# --- parallel decoding and the features' codec (issue 13) -----------------------------------


def _assert_store_equals(got: Path, want: Path, what: str) -> None:
    """Labels, images and ids byte for byte; features to float16 rounding (`_assert_same`)."""
    a, b = _arrays(got), _arrays(want)
    assert set(a) == set(b), f"{what}: arrays {sorted(a)} vs {sorted(b)}"
    for name in b:
        if np.issubdtype(b[name].dtype, np.floating):
            _assert_same(a[name], b[name], f"{what}: {name}")
        else:
            assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), f"{what}: {name} is not byte-equal"


def test_any_number_of_decoders_gives_the_single_decoder_store(base, tmp_path):
    # The module's store was written with the default (2 decoders); 1 and 5 must give it too.
    # batch_size 2: 3 + 2 chunks, so several chunks queue ahead and finish out of order.
    stores = {}
    for workers in (1, 5):
        params = ExtractParams(resolution=32, val_resolution=48, batch_size=2, device="cpu")
        stores[workers] = tmp_path / f"decoders-{workers}.zarr"
        summary = extract(base.manifest, stores[workers], _corpus(base.root), BACKBONE, params, DASK,
                          runtime=RuntimeParams(decode_workers=workers))
        assert summary.chunks_computed == {"train": 3, "val": 2}, f"{workers} decoders: {summary}"
    _assert_store_equals(stores[5], stores[1], "5 decoders vs 1")
    a, b = _arrays(stores[1]), _arrays(base.store)
    for name in ("train/labels", "val/labels", "val/images", "train/image_ids", "train/crops"):
        assert np.array_equal(a[name], b[name]), f"{name}: 1 decoder (chunks of 2) vs 2 decoders (chunks of 4)"


def test_decode_workers_and_writers_are_not_part_of_the_fingerprint(base, tmp_path):
    copy = _copy(base, tmp_path)
    params = ExtractParams(resolution=32, val_resolution=48, batch_size=4, device="cpu")
    summary = extract(copy.manifest, copy.store, _corpus(copy.root), BACKBONE, params, DASK,
                      runtime=RuntimeParams(decode_workers=7, writers=5))
    assert summary.chunks_computed == {"train": 0, "val": 0}, f"a decoder or writer count re-extracted chunks: {summary}"


def _store_files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def test_any_number_of_writers_gives_the_single_writer_store_byte_for_byte(base, tmp_path):
    # batch_size 1: 6 + 3 chunks, so with 4 writers several are written at once and finish
    # out of order; the same process and thread count make the features bit-identical.
    files = {}
    for writers in (1, 4):
        params = ExtractParams(resolution=32, val_resolution=48, batch_size=1, device="cpu")
        store = tmp_path / f"writers-{writers}.zarr"
        summary = extract(base.manifest, store, _corpus(base.root), BACKBONE, params, DASK,
                          runtime=RuntimeParams(writers=writers))
        assert summary.chunks_computed == {"train": N_TRAIN, "val": N_VAL}, f"{writers} writers: {summary}"
        files[writers] = _store_files(store)
    assert sorted(files[4]) == sorted(files[1]), f"files in one store only: {sorted(set(files[4]) ^ set(files[1]))}"
    differ = [name for name in files[1] if files[4][name] != files[1][name]]
    assert not differ, f"4 writers vs 1: files differ byte for byte: {differ}"


def test_auto_writers_are_the_cores_this_process_may_run_on():
    assert resolve_writers("auto") == len(os.sched_getaffinity(0)), "auto must follow the process's CPU affinity"
    assert resolve_writers(3) == 3, "an explicit count is kept"


@pytest.mark.parametrize("writers", [0, -1, "many"])
def test_a_bad_writer_count_is_refused_in_one_sentence(writers):
    with pytest.raises(ValueError, match=r"^runtime\.writers must be a positive integer or 'auto', got .+\.$"):
        RuntimeParams(writers=writers)


@pytest.mark.parametrize("compression", ["none", "blosc-lz4", "blosc-zstd"])
def test_a_changed_compression_rebuilds_with_that_codec_and_the_same_values(base, tmp_path, compression):
    copy = _copy(base, tmp_path)
    params = ExtractParams(resolution=32, val_resolution=48, batch_size=4, device="cpu", compression=compression)
    summary = extract(copy.manifest, copy.store, _corpus(copy.root), BACKBONE, params, DASK)
    assert summary.chunks_computed == summary.chunks_total, f"{compression}: the store must be rebuilt: {summary}"
    root = zarr.open_group(str(copy.store), mode="r")
    for path in ("train/feats", "val/feats", "val/feats_flip"):
        codecs = [type(c).__name__ for c in root[path].compressors]
        assert codecs == ([] if compression == "none" else ["BloscCodec"]), f"{compression}: {path} codecs {codecs}"
        assert root[path.split("/")[0]].attrs["fingerprint"]["compression"] == compression, "fingerprint"
    assert [type(c).__name__ for c in root["train/labels"].compressors] == ["ZstdCodec"], "labels keep zstd"
    _assert_store_equals(copy.store, base.store, f"{compression} vs zstd")
    read_split(copy.store, "train")  # the digests were recorded for the new codec's bytes
    again = extract(copy.manifest, copy.store, _corpus(copy.root), BACKBONE, params, DASK)
    assert again.chunks_computed == {"train": 0, "val": 0}, f"{compression}: a rerun re-extracted {again}"


# --- scale-out on a real Dask cluster (issue 6) ----------------------------------------------


def _worker_backbones(address: str) -> dict[str, int]:
    """How many backbones each worker of the cluster has built (0: it ran no chunk)."""
    from dask.distributed import Client

    with Client(address, timeout="10s") as client:
        # A lambda travels by value; a function of this module would need `tests` importable there.
        return client.run(lambda: __import__("stego_tasks.data.embed", fromlist=["_"])._cached_backbone.cache_info().currsize)


def test_dask_scheduler_and_two_workers_give_the_local_store(base, dask_cli_cluster, tmp_path):
    """`dask.address` pointing at `dask scheduler` + two `dask worker` processes: every chunk runs
    there, both workers take part, and the store equals the in-process run's."""
    store = tmp_path / "features.zarr"
    params = ExtractParams(resolution=32, val_resolution=48, batch_size=2, device="cpu")  # 5 + 2 chunks
    summary = extract(base.manifest, store, _corpus(base.root), BACKBONE, params, DaskParams(address=dask_cli_cluster))
    assert summary.chunks_computed == {"train": 3, "val": 2}, f"computed {summary.chunks_computed}"
    busy = _worker_backbones(dask_cli_cluster)
    assert len(busy) == 2 and all(busy.values()), f"both workers must have run chunks: {busy}"
    want, got = _arrays(base.store), _arrays(store)
    assert set(got) == set(want), f"arrays {sorted(got)} vs the local run's {sorted(want)}"
    for name in want:
        if name.endswith("/done"):
            continue  # 2 images per chunk instead of 4: more chunks, all done
        _assert_same(got[name], want[name], f"{name} differs between the Dask cluster and the local run")
    assert bool(np.all(got["train/done"])) and bool(np.all(got["val/done"])), "not every chunk is done"
