"""Damaged stores and changed settings (issue 12, round two): a deleted, truncated or
bit-flipped chunk of any store is named by the stage that reads it, with the command that
repairs it, and `stego extract` computes such chunks of the features store again, ending
equal to a clean extraction; `--resume` with settings that changed the training refuses,
naming the changed keys, and keeps the checkpoint.

Built once per module: a demo corpus of 6 + 3 images of 64 px, a random ViT-Ti/16 at 32 px
(five-crop: 3 train chunks of 10 crops, 2 val chunks), extracted in this process; then the
kNN graph, a 6-step model, its predictions and their CRF refinement, each written by its
stage. Every test damages its own copy.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from stego_tasks import train as train_mod
from stego_tasks.cluster import cluster
from stego_tasks.config import (
    BackboneParams,
    ClusterParams,
    CorpusParams,
    CRFParams,
    DaskParams,
    EvaluateParams,
    ExtractParams,
    TrainParams,
    params_to_dict,
)
from stego_tasks.crf import crf
from stego_tasks.data.feature_store import read_split
from stego_tasks.data.store_integrity import StoreDamagedError
from stego_tasks.data.training_data import TrainingData, load_training_data
from stego_tasks.demo_data import demo_data
from stego_tasks.evaluate import evaluate
from stego_tasks.extract import extract
from stego_tasks.ingest import ingest
from stego_tasks.knn import knn
from stego_tasks.method.model import load_model
from stego_tasks.method.neighbours import knn_graph, pool_features
from stego_tasks.train import fit, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BACKBONE = BackboneParams(name="vit_tiny_patch16_224", weights="random")
EXTRACT = ExtractParams(resolution=32, batch_size=2, device="cpu")
IN_PROCESS = DaskParams(n_workers=1, threads_per_worker=1)
N_CLASSES, IGNORE = 5, 255
TRAIN = TrainParams(
    n_codes=6, steps=6, batch_size=4, feature_samples=3, neg_samples=2, device="cpu", log_every=2, checkpoint_every=3
)
FILES = ("corpus", "manifest.parquet", "features.zarr", "knn.zarr", "model", "predictions.zarr", "crf.zarr")


@dataclass(frozen=True)
class Run:
    """A folder holding the corpus and every stage's store, as the stages wrote them."""

    tmp: Path

    def __getattr__(self, name: str) -> Path:
        return self.tmp / {"features": "features.zarr", "knn": "knn.zarr", "predictions": "predictions.zarr",
                           "crf": "crf.zarr", "manifest": "manifest.parquet"}.get(name, name)

    def corpus_params(self) -> CorpusParams:
        return CorpusParams(root=str(self.tmp / "corpus"), n_classes=N_CLASSES, ignore_index=IGNORE, demo=True)

    def extract(self):
        return extract(self.manifest, self.features, self.corpus_params(), BACKBONE, EXTRACT, IN_PROCESS)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Run:
    run = Run(tmp_path_factory.mktemp("clean"))
    demo_data(run.tmp / "corpus", n_train=6, n_val=3, size=64)
    ingest(run.tmp / "corpus", run.manifest, run.tmp / "quarantine.csv")
    summary = run.extract()
    assert summary.chunks_total == {"train": 3, "val": 2}, f"fixture layout changed: {summary.chunks_total}"
    knn(run.features, run.knn, 3)
    train(run.features, run.knn, run.model, run.tmp / "loss.csv", run.corpus_params(), TRAIN, seed=0)
    cluster(run.features, run.model, run.predictions, ClusterParams(kmeans_iters=5), seed=0)
    crf(run.features, run.predictions, run.crf, CRFParams(iterations=2), workers=1)
    return run


def _copy(clean: Run, tmp_path: Path) -> Run:
    for name in FILES:
        if (clean.tmp / name).is_dir():
            shutil.copytree(clean.tmp / name, tmp_path / name)
        else:
            shutil.copy2(clean.tmp / name, tmp_path / name)
    return Run(tmp_path)


def _arrays(store: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(store), mode="r")
    return {f"{split}/{name}": root[split][name][:] for split in ("train", "val") for name in root[split].array_keys()}


def _assert_same_store(got: Path, want: Path) -> None:
    """Integers exactly; features to float16 rounding (as tests/test_extract.py compares reruns)."""
    a, b = _arrays(got), _arrays(want)
    assert a.keys() == b.keys(), f"arrays {sorted(a)} vs {sorted(b)}"
    for name in b:
        assert a[name].shape == b[name].shape and a[name].dtype == b[name].dtype, name
        if np.issubdtype(b[name].dtype, np.floating):
            np.testing.assert_allclose(a[name].astype(np.float32), b[name].astype(np.float32), rtol=2e-3, atol=1e-5,
                                       err_msg=f"{name} differs from a clean extraction")
        else:
            assert np.array_equal(a[name], b[name]), f"{name} differs from a clean extraction"


def _truncate(path: Path, keep: int = 7) -> None:
    data = path.read_bytes()
    assert len(data) > keep, path
    path.write_bytes(data[: len(data) - keep])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


# --- the features store ------------------------------------------------------------------


def test_deleted_chunk_is_named_by_readers_and_extract_recomputes_only_it(clean, tmp_path):
    run = _copy(clean, tmp_path)
    (run.features / "train/feats/c/1/0/0/0").unlink()  # read back, it would be all zeros

    with pytest.raises(StoreDamagedError) as caught:
        read_split(run.features, "train")
    assert (caught.value.array, caught.value.chunk) == ("train/feats", 1), str(caught.value)
    message = str(caught.value)
    assert str(run.features) in message and "is missing" in message and "`stego extract`" in message, message
    assert "\n" not in message, "the error must be one line"
    # `stego train` refuses before it trains on zeros.
    with pytest.raises(ValueError, match=r"chunk 1 of train/feats is missing .*stego extract"):
        load_training_data(run.features, run.knn, IGNORE, N_CLASSES)

    summary = run.extract()
    assert summary.chunks_computed == {"train": 1, "val": 0}, f"computed {summary.chunks_computed}"
    read_split(run.features, "train")
    _assert_same_store(run.features, clean.features)


def test_truncated_and_bit_flipped_chunks_are_named_and_recomputed(clean, tmp_path):
    run = _copy(clean, tmp_path)
    _truncate(run.features / "train/labels/c/2/0/0")  # a shard: zarr would say "checksum" naming no file
    _truncate(run.features / "train/pooled/c/0/0")  # zstd would say "invalid input data"
    _flip_byte(run.features / "val/images/c/0/0/0/0")  # same size: only a checksum sees it

    with pytest.raises(ValueError, match=r"chunk 2 of train/labels is truncated or damaged .*`stego extract`"):
        load_training_data(run.features, run.knn, IGNORE, N_CLASSES)
    with pytest.raises(ValueError, match=r"chunk 0 of train/pooled is truncated or damaged"):
        knn(run.features, tmp_path / "knn-new.zarr", 3)
    assert not (tmp_path / "knn-new.zarr").exists(), "a refused knn stage wrote its store"
    with pytest.raises(ValueError, match=r"chunk 0 of val/images is damaged \(file val/images/c/0/0/0/0 does not match"):
        crf(run.features, run.predictions, tmp_path / "crf-new.zarr", CRFParams(iterations=2), workers=1)

    summary = run.extract()
    assert summary.chunks_computed == {"train": 2, "val": 1}, f"computed {summary.chunks_computed}"
    _assert_same_store(run.features, clean.features)
    load_training_data(run.features, run.knn, IGNORE, N_CLASSES)


def test_unreadable_done_flags_are_rebuilt_without_recomputing(clean, tmp_path):
    run = _copy(clean, tmp_path)
    _truncate(run.features / "train/done/c/0", keep=3)
    with pytest.raises(StoreDamagedError, match=r"train/done .*`stego extract`"):
        read_split(run.features, "train")
    summary = run.extract()
    assert summary.chunks_computed == {"train": 0, "val": 0}, "intact chunks were computed again"
    assert bool(np.all(read_split(run.features, "train")["done"][:])), "done flags not rebuilt"
    _assert_same_store(run.features, clean.features)


def test_store_without_digests_gets_them_from_extract_without_recomputing(clean, tmp_path):
    """A store written before digests existed is read unchecked, and `extract` adds them."""
    run = _copy(clean, tmp_path)
    for split in ("train", "val"):
        shutil.rmtree(run.features / split / "integrity")
        group = zarr.open_group(str(run.features), mode="a")[split]
        del group.attrs["integrity"]
    read_split(run.features, "train")  # nothing to check against: no error
    summary = run.extract()
    assert summary.chunks_computed == {"train": 0, "val": 0}, "an intact legacy store was recomputed"
    (run.features / "train/feats/c/0/0/0/0").unlink()
    with pytest.raises(StoreDamagedError, match="chunk 0 of train/feats is missing"):
        read_split(run.features, "train")


# --- the stores written whole by later stages --------------------------------------------


def test_damaged_knn_predictions_and_crf_stores_name_the_stage_that_rewrites_them(clean, tmp_path):
    run = _copy(clean, tmp_path)
    (run.knn / "train/c/0/0").unlink()
    with pytest.raises(StoreDamagedError, match=r"knn.zarr: chunk 0 of train is missing .*`stego knn` \(or `dvc repro knn`\)"):
        load_training_data(run.features, run.knn, IGNORE, N_CLASSES)

    _truncate(run.predictions / "linear_logits/c/1/0/0/0")
    with pytest.raises(StoreDamagedError, match=r"predictions.zarr: chunk 1 of linear_logits is truncated .*`stego cluster`"):
        crf(run.features, run.predictions, tmp_path / "crf-new.zarr", CRFParams(iterations=2), workers=1)

    _flip_byte(run.crf / "cluster_pred/c/0/0/0")
    with pytest.raises(StoreDamagedError, match=r"crf.zarr: chunk 0 of cluster_pred is damaged .*`stego crf`"):
        evaluate(
            run.features, run.predictions, run.crf, tmp_path / "scores.json", tmp_path / "per_class.json",
            tmp_path / "confusion.png", tmp_path / "overlays", run.corpus_params(), EvaluateParams(n_overlays=1),
            tmp_path / "assignment.json",
        )
    assert not (tmp_path / "scores.json").exists(), "a refused evaluate wrote its scores"


# --- resume: exact or refused ----------------------------------------------------------------


def _data(seed: int = 0) -> TrainingData:
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(10, 8, 4, 4)).astype(np.float16)
    labels = rng.integers(0, N_CLASSES, (10, 8, 8))
    return TrainingData(torch.from_numpy(feats), torch.from_numpy(labels), knn_graph(pool_features(feats), 3))


def _checkpoint(tmp_path: Path, data: TrainingData) -> Path:
    """A step-3 checkpoint of TRAIN, left by a run that stopped after step 4 of 6."""
    path = tmp_path / "checkpoint.pt"
    fit(data, N_CLASSES, TrainParams(**{**params_to_dict(TRAIN), "steps": 4}), 0, IGNORE, checkpoint=path)
    assert torch.load(path, weights_only=True)["step"] == 3, "no step-3 checkpoint"
    return path


def _same(a, b) -> bool:
    sa = {f"{k}.{n}": t for k, m in a.modules().items() for n, t in m.state_dict().items()}
    sb = {f"{k}.{n}": t for k, m in b.modules().items() for n, t in m.state_dict().items()}
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    "change, named",
    [
        ({"lr": 1e-3}, "train.lr 0.0005 -> 0.001"),
        ({"probe_lr": 1e-2, "n_codes": 7}, "train.n_codes 6 -> 7; train.probe_lr 0.005 -> 0.01"),
        ({"seed": 1}, "seed 0 -> 1"),
        ({"n_classes": 4}, "n_classes 5 -> 4"),
        ({"data": 1}, "the training data (features store, kNN graph changed)"),
    ],
)
def test_resume_with_changed_settings_is_refused_naming_them(tmp_path, change, named):
    path = _checkpoint(tmp_path, _data())
    before = path.read_bytes()
    change = dict(change)
    seed, n_classes, data = change.pop("seed", 0), change.pop("n_classes", N_CLASSES), _data(change.pop("data", 0))
    params = TrainParams(**{**params_to_dict(TRAIN), **change})
    with pytest.raises(ValueError) as caught:
        fit(data, n_classes, params, seed, IGNORE, checkpoint=path, resume=True)
    message = str(caught.value)
    assert named in message, f"{named!r} not in {message!r}"
    assert "rerun without --resume to start over, or restore the old values" in message, message
    assert "\n" not in message, "the refusal must be one line"
    assert path.read_bytes() == before, "a refused resume changed the checkpoint"


def test_resume_with_only_logging_saving_device_or_more_steps_changed_equals_the_uninterrupted_run(tmp_path):
    data = _data()
    path = _checkpoint(tmp_path, data)
    free = TrainParams(**{**params_to_dict(TRAIN), "log_every": 1, "checkpoint_every": 2, "device": "cpu", "steps": 7})
    resumed, _ = fit(data, N_CLASSES, free, 0, IGNORE, checkpoint=path, resume=True)
    uninterrupted, _ = fit(data, N_CLASSES, free, 0, IGNORE)
    assert _same(resumed, uninterrupted), "a resume that changed only free keys is not exact"
    # A checkpoint already past the new step count cannot be the model model.json would describe.
    (tmp_path / "again").mkdir()
    path = _checkpoint(tmp_path / "again", data)
    with pytest.raises(ValueError, match=r"is at step 3, not before train.steps 3"):
        fit(data, N_CLASSES, TrainParams(**{**params_to_dict(TRAIN), "steps": 3}), 0, IGNORE, checkpoint=path, resume=True)


def test_train_stage_resume_with_a_changed_lr_is_refused_and_keeps_the_checkpoint(clean, tmp_path, monkeypatch):
    run = _copy(clean, tmp_path)
    shutil.rmtree(run.model)
    real_step, calls = train_mod._step, []

    def dying_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # killed during step 4, after the step-3 checkpoint
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train(run.features, run.knn, run.model, tmp_path / "loss.csv", run.corpus_params(), TRAIN, seed=0)
    monkeypatch.setattr(train_mod, "_step", real_step)
    checkpoint = run.model / "checkpoint.pt"
    assert checkpoint.is_file(), "the killed run left no checkpoint"

    changed = TrainParams(**{**params_to_dict(TRAIN), "lr": 1e-3})
    with pytest.raises(ValueError, match=r"train.lr 0.0005 -> 0.001.*rerun without --resume"):
        train(run.features, run.knn, run.model, tmp_path / "loss.csv", run.corpus_params(), changed, seed=0, resume=True)
    assert checkpoint.is_file(), "a refused resume lost the checkpoint"
    assert not (run.model / "model.json").exists(), "a refused resume wrote a model"

    train(run.features, run.knn, run.model, tmp_path / "loss.csv", run.corpus_params(), TRAIN, seed=0, resume=True)
    assert _same(load_model(run.model), load_model(clean.model)), "resuming with the old values is not exact"
