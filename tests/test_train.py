"""Tests for stego_tasks.train and stego_tasks.data.training_data: the loop, logging, probes,
determinism, resume, model files, and reading the split in memory or streamed.

Everything runs on tiny in-memory features (10 crops of [8, 4, 4]); the stage tests write
a small features store in the layout `extract` writes (4-row chunks) and a kNN store from
`knn`, and read it both into memory and streamed batch by batch.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from stego_tasks import knn as knn_module
from stego_tasks import train as train_mod
from stego_tasks.config import CorpusParams, TrainParams, params_to_dict
from stego_tasks.data.training_data import TrainingData, load_training_data
from stego_tasks.method.model import StegoModel, build_model, load_model
from stego_tasks.method.neighbours import knn_graph, pool_features
from stego_tasks.runtime.content_hash import sha256_of_file
from stego_tasks.train import LOSS_COLUMNS, fit, train, write_loss_log

N_CLASSES, IGNORE = 3, 255
PARAMS = TrainParams(
    n_codes=6, steps=6, batch_size=4, feature_samples=3, neg_samples=2, device="cpu", log_every=2, checkpoint_every=3
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(seed: int = 0, labels: bool = True, rows: int = 10) -> TrainingData:
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(rows, 8, 4, 4)).astype(np.float16)
    label = rng.integers(0, N_CLASSES, (rows, 8, 8))
    label[:, 0, :] = IGNORE
    knn = knn_graph(pool_features(feats), 3)
    return TrainingData(torch.from_numpy(feats), torch.from_numpy(label) if labels else None, knn)


def _state(model: StegoModel) -> dict[str, torch.Tensor]:
    return {f"{k}.{n}": t for k, m in model.modules().items() for n, t in m.state_dict().items()}


def _assert_same_model(a: StegoModel, b: StegoModel, what: str) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys(), f"{what}: different tensors"
    for name in sa:
        assert torch.equal(sa[name], sb[name]), f"{what}: {name} differs"


def _info(params: TrainParams = PARAMS) -> dict:
    return {"in_dim": 8, "n_classes": N_CLASSES, "train": params_to_dict(params)}


# --- the loop ------------------------------------------------------------------------------


@pytest.mark.parametrize("steps,logged", [(7, [0, 3, 6]), (8, [0, 3, 6, 7])])
def test_losses_are_logged_every_log_every_steps_and_at_the_end(steps, logged):
    params = TrainParams(**{**params_to_dict(PARAMS), "steps": steps, "log_every": 3, "weights": (0.67, 0.25, 0.63),
                            "shifts": (0.18, 0.12, 0.46)})
    _, rows = fit(_data(), N_CLASSES, params, seed=0, ignore_index=IGNORE)
    assert [row["step"] for row in rows] == logged, f"logged steps {[row['step'] for row in rows]}"
    for row in rows:
        assert tuple(row) == LOSS_COLUMNS, f"row keys {tuple(row)}"
        weighted = 0.67 * row["intra"] + 0.25 * row["inter"] + 0.63 * row["neg"]
        assert abs(row["total"] - weighted) < 1e-5, f"total {row['total']} != weighted terms {weighted}"
        assert -1.0 <= row["cluster"] <= 1.0, f"cluster loss {row['cluster']} is minus a mean cosine"
        assert row["linear"] > 0, f"linear loss {row['linear']} must be a positive cross-entropy"


def test_without_labels_the_linear_probe_is_not_trained():
    model, rows = fit(_data(labels=False), N_CLASSES, PARAMS, seed=0, ignore_index=IGNORE)
    torch.manual_seed(0)
    initial = build_model(8, N_CLASSES, PARAMS)
    assert all(row["linear"] == 0.0 for row in rows), f"linear losses {[r['linear'] for r in rows]}"
    for name, tensor in initial.linear_probe.state_dict().items():
        assert torch.equal(model.linear_probe.state_dict()[name], tensor), f"linear probe {name} moved"


def test_probe_losses_never_reach_the_head():
    # Zero loss weights: the head's only gradients would come from the probes' losses.
    params = TrainParams(**{**params_to_dict(PARAMS), "weights": (0.0, 0.0, 0.0)})
    model, _ = fit(_data(), N_CLASSES, params, seed=0, ignore_index=IGNORE)
    torch.manual_seed(0)  # fit seeds the global RNG and then builds the model
    initial = build_model(8, N_CLASSES, params)
    for name, tensor in initial.head.state_dict().items():
        assert torch.equal(model.head.state_dict()[name], tensor), f"head {name} changed through a probe loss"
    for probe in ("cluster_probe", "linear_probe"):
        trained_state, initial_state = getattr(model, probe).state_dict(), getattr(initial, probe).state_dict()
        moved = any(not torch.equal(trained_state[name], initial_state[name]) for name in initial_state)
        assert moved, f"{probe} did not train"
    trained, _ = fit(_data(), N_CLASSES, PARAMS, seed=0, ignore_index=IGNORE)
    assert not torch.equal(trained.head.linear.weight, initial.head.linear.weight), "the loss must train the head"


def test_same_seed_gives_identical_models_and_another_seed_does_not():
    a, rows_a = fit(_data(), N_CLASSES, PARAMS, seed=3, ignore_index=IGNORE)
    b, rows_b = fit(_data(), N_CLASSES, PARAMS, seed=3, ignore_index=IGNORE)
    _assert_same_model(a, b, "same seed")
    assert rows_a == rows_b, "same seed, different loss logs"
    c, _ = fit(_data(), N_CLASSES, PARAMS, seed=4, ignore_index=IGNORE)
    assert not torch.equal(a.head.linear.weight, c.head.linear.weight), "the seed changed nothing"


def test_fit_needs_two_crops():
    one = TrainingData(torch.zeros(1, 8, 4, 4, dtype=torch.float16), None, np.zeros((1, 1), np.int64))
    with pytest.raises(ValueError, match="at least 2 crops, found 1"):
        fit(one, N_CLASSES, PARAMS, seed=0, ignore_index=IGNORE)


def test_resume_after_a_kill_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    # 10 crops, batch 4: two batches an epoch, so the step-3 checkpoint falls mid-epoch.
    data = _data()
    full_ckpt = tmp_path / "full.pt"
    full, full_rows = fit(data, N_CLASSES, PARAMS, seed=0, ignore_index=IGNORE, checkpoint=full_ckpt)
    assert torch.load(full_ckpt, weights_only=True)["step"] == 3, "checkpoint_every=3 must save after step 3 only"

    real_step, calls = train_mod._step, []

    def dying_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # killed during step 4, after the step-3 checkpoint
            raise RuntimeError("killed")
        return real_step(*args, **kwargs)

    ckpt = tmp_path / "run.pt"
    monkeypatch.setattr(train_mod, "_step", dying_step)
    with pytest.raises(RuntimeError, match="killed"):
        fit(data, N_CLASSES, PARAMS, seed=0, ignore_index=IGNORE, checkpoint=ckpt)
    monkeypatch.setattr(train_mod, "_step", real_step)
    assert torch.load(ckpt, weights_only=True)["step"] == 3, "the killed run left no step-3 checkpoint"

    resumed, resumed_rows = fit(data, N_CLASSES, PARAMS, seed=0, ignore_index=IGNORE, checkpoint=ckpt, resume=True)
    _assert_same_model(full, resumed, "resumed run")
    assert resumed_rows == full_rows, f"loss log after resume {resumed_rows} != {full_rows}"

    fresh, _ = fit(data, N_CLASSES, PARAMS, seed=0, ignore_index=IGNORE, checkpoint=ckpt, resume=False)
    _assert_same_model(full, fresh, "resume=False must ignore the checkpoint")


# --- files -----------------------------------------------------------------------------------


def test_loss_log_csv(tmp_path):
    rows = [
        {"step": 0, "total": 1.25, "intra": -0.5, "inter": 0.125, "neg": 2.0, "cluster": -0.3, "linear": 1.0},
        {"step": 10, "total": 0.1234567, "intra": 0.0, "inter": 0.0, "neg": 0.0, "cluster": 0.0, "linear": 0.0},
    ]
    path = tmp_path / "loss.csv"
    write_loss_log(path, rows)
    with path.open(newline="") as handle:
        table = list(csv.reader(handle))
    assert tuple(table[0]) == LOSS_COLUMNS, f"header {table[0]}"
    assert [int(line[0]) for line in table[1:]] == [0, 10], f"step column {[line[0] for line in table[1:]]}"
    assert table[1][1:] == ["1.250000", "-0.500000", "0.125000", "2.000000", "-0.300000", "1.000000"], f"{table[1]}"
    assert table[2][1] == "0.123457", f"values must keep 6 decimals, got {table[2][1]}"


# --- the stage -------------------------------------------------------------------------------


def _write_store(path: Path, data: TrainingData) -> None:
    """A features store with the train split as `extract` lays it out (all chunks done)."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.attrs.update({"backbone": "vit_tiny_patch16_224", "weights_source": "random", "resolution": 32})
    group = root.create_group("train")
    feats = data.feats.numpy()
    group.create_array("feats", data=feats, chunks=(4, *feats.shape[1:]))
    group.create_array("pooled", data=pool_features(feats))
    group.create_array("labels", data=data.labels.numpy().astype(np.uint8), chunks=(4, *data.labels.shape[1:]))
    group.create_array("done", data=np.ones(3, dtype=bool))


def test_train_stage_writes_model_files_and_loss_log(tmp_path):
    data = _data()
    store, knn, model_dir, loss_log = (tmp_path / n for n in ("features.zarr", "knn.zarr", "model", "loss.csv"))
    _write_store(store, data)
    assert knn_module.knn(store, knn, 3) == {"rows": 10, "k": 3}, "knn stage on the store"
    corpus = CorpusParams(root="unused", n_classes=N_CLASSES, ignore_index=IGNORE, class_names=("a", "b", "c"))
    # The reference's probe (no refit after training), so the stage equals `fit` below.
    params = dataclasses.replace(PARAMS, probe_init="random")
    trained = train(store, knn, model_dir, loss_log, corpus, params, seed=5)

    assert (model_dir / "model.safetensors").is_file(), "model.safetensors missing"
    assert not (model_dir / "checkpoint.pt").exists(), "the checkpoint must be removed once the model is written"
    info = json.loads((model_dir / "model.json").read_text())
    expected = {
        "in_dim": 8, "n_classes": N_CLASSES, "class_names": ["a", "b", "c"], "ignore_index": IGNORE,
        "backbone": "vit_tiny_patch16_224", "backbone_weights": "random", "resolution": 32, "seed": 5,
        "train": params_to_dict(params), "linear_probe_trained": True, "shifts_used": list(PARAMS.shifts),
        "shifts_setting": "fixed", "selection": {"select": "last", "uses_labels": False}, "probe_init": "random",
        "preprocess": "antialias", "pos_embed": "timm",  # a store without these attrs predates preprocess modes
        "safetensors_sha256": sha256_of_file(model_dir / "model.safetensors"),
    }
    assert info == expected, f"model.json {info}"

    # The stage is `fit` on the stored features: the same seed gives the same model.
    stored = load_training_data(store, knn, IGNORE, N_CLASSES)
    reference, rows = fit(stored, N_CLASSES, params, seed=5, ignore_index=IGNORE)
    _assert_same_model(reference, load_model(model_dir), "model on disk")
    _assert_same_model(reference, trained, "returned model")
    with loss_log.open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in table] == [r["step"] for r in rows] == [0, 2, 4, 5], "loss log steps"
    assert all(abs(float(t["total"]) - r["total"]) < 1e-6 for t, r in zip(table, rows, strict=True)), "loss values"


def test_train_stage_refuses_a_stale_knn_graph(tmp_path):
    store, knn = tmp_path / "features.zarr", tmp_path / "knn.zarr"
    _write_store(store, _data())
    zarr.open_group(str(knn), mode="w", zarr_format=3).create_array("train", data=np.zeros((7, 3), np.int64))
    with pytest.raises(ValueError, match="7 rows but the store has 10 training crops; rerun `stego knn`"):
        load_training_data(store, knn, IGNORE, N_CLASSES)


# --- streamed from the store ------------------------------------------------------------------


def _stored(tmp_path: Path, data: TrainingData | None = None) -> tuple[Path, Path]:
    """The features store of `data` (default `_data()`) and its kNN store, as the stages write them."""
    store, knn = tmp_path / "features.zarr", tmp_path / "knn.zarr"
    _write_store(store, _data() if data is None else data)
    knn_module.knn(store, knn, 3)
    return store, knn


def test_load_streams_above_the_byte_budget_and_never_widens_labels(tmp_path):
    store, knn = _stored(tmp_path)
    group = zarr.open_group(str(store), mode="r")["train"]
    nbytes = group["feats"].nbytes + group["labels"].nbytes
    held = load_training_data(store, knn, IGNORE, N_CLASSES, in_memory_bytes=nbytes)
    assert not held.streamed and isinstance(held.feats, torch.Tensor), "a split within the budget is read into memory"
    assert held.labels.dtype == torch.uint8, f"labels held as {held.labels.dtype}, not the stored uint8"
    assert held.feats.dtype == torch.float16, f"features held as {held.feats.dtype}, not the stored float16"
    streamed = load_training_data(store, knn, IGNORE, N_CLASSES, in_memory_bytes=nbytes - 1)
    assert streamed.streamed and isinstance(streamed.feats, zarr.Array), "a split over the budget must be streamed"
    assert isinstance(streamed.labels, zarr.Array), "streamed labels must stay in the store"
    assert (streamed.size, streamed.in_dim) == (held.size, held.in_dim) == (10, 8), "size / in_dim"
    assert not load_training_data(store, knn, IGNORE, N_CLASSES).streamed, "the default budget holds a tiny split"


def test_a_streamed_batch_holds_the_stored_rows_with_int64_labels(tmp_path):
    store, knn = _stored(tmp_path)
    group = zarr.open_group(str(store), mode="r")["train"]
    feats, labels = np.asarray(group["feats"]), np.asarray(group["labels"])
    assert labels.dtype == np.uint8, "the store keeps uint8 labels"
    index, positives = np.array([6, 1, 9, 4]), np.array([1, 1, 0, 9])
    for budget in (0, 1 << 30):
        data = load_training_data(store, knn, IGNORE, N_CLASSES, in_memory_bytes=budget)
        batch = data.batch(torch.from_numpy(index), positives, torch.device("cpu"))
        assert batch.labels.dtype == torch.int64, f"budget {budget}: batch labels are {batch.labels.dtype}"
        assert np.array_equal(batch.labels.numpy(), labels[index].astype(np.int64)), f"budget {budget}: labels"
        assert batch.feats.dtype == batch.feats_pos.dtype == torch.float32, f"budget {budget}: features not float32"
        assert np.array_equal(batch.feats.numpy(), feats[index].astype(np.float32)), f"budget {budget}: batch rows"
        assert np.array_equal(batch.feats_pos.numpy(), feats[positives].astype(np.float32)), f"budget {budget}: positives"


def test_without_valid_labels_a_streamed_split_has_none(tmp_path):
    data = _data()
    data.labels[:] = IGNORE
    data.labels[-1, 1, 1] = N_CLASSES  # out of range: no class either
    store, knn = _stored(tmp_path, data)
    for budget in (0, 1 << 30):
        assert load_training_data(store, knn, IGNORE, N_CLASSES, in_memory_bytes=budget).labels is None, f"budget {budget}"


def test_fit_on_streamed_data_equals_fit_on_data_in_memory(tmp_path):
    store, knn = _stored(tmp_path)
    streamed = load_training_data(store, knn, IGNORE, N_CLASSES, in_memory_bytes=0)
    held = load_training_data(store, knn, IGNORE, N_CLASSES)
    assert streamed.streamed and not held.streamed, "one of each"
    a, rows_a = fit(streamed, N_CLASSES, PARAMS, seed=2, ignore_index=IGNORE)
    b, rows_b = fit(held, N_CLASSES, PARAMS, seed=2, ignore_index=IGNORE)
    _assert_same_model(a, b, "streamed vs in memory")
    assert rows_a == rows_b, "streamed and in-memory loss logs differ"
    assert all(row["linear"] > 0 for row in rows_a), "the linear probe must train on streamed labels"


def test_resume_from_streamed_data_equals_the_uninterrupted_run(tmp_path):
    store, knn = _stored(tmp_path)
    data = load_training_data(store, knn, IGNORE, N_CLASSES, in_memory_bytes=0)
    full, full_rows = fit(data, N_CLASSES, PARAMS, seed=0, ignore_index=IGNORE)
    ckpt = tmp_path / "run.pt"
    half = TrainParams(**{**params_to_dict(PARAMS), "steps": 4})  # stops after the step-3 checkpoint
    fit(data, N_CLASSES, half, seed=0, ignore_index=IGNORE, checkpoint=ckpt)
    assert torch.load(ckpt, weights_only=True)["step"] == 3, "no step-3 checkpoint"
    resumed, resumed_rows = fit(data, N_CLASSES, PARAMS, seed=0, ignore_index=IGNORE, checkpoint=ckpt, resume=True)
    _assert_same_model(full, resumed, "resumed streamed run")
    assert resumed_rows == full_rows, "loss log after resume"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_batch_equals_the_cpu_batch(tmp_path):
    store, knn = _stored(tmp_path)
    data = load_training_data(store, knn, IGNORE, N_CLASSES, in_memory_bytes=0)
    index, positives = np.array([3, 8, 0]), np.array([8, 2, 2])
    cpu = data.batch(index, positives, torch.device("cpu"))
    gpu = data.batch(index, positives, torch.device("cuda"))
    for name in ("feats", "feats_pos", "labels"):
        a, b = getattr(cpu, name), getattr(gpu, name)
        assert b.device.type == "cuda" and b.dtype == a.dtype, f"{name} on {b.device}, {b.dtype}"
        assert torch.equal(a, b.cpu()), f"{name} differs after the pinned copy"


def test_train_stage_refits_the_cluster_probe_on_the_codes_when_asked(tmp_path):
    data = _data()
    store, knn, model_dir = tmp_path / "features.zarr", tmp_path / "knn.zarr", tmp_path / "model"
    _write_store(store, data)
    knn_module.knn(store, knn, 3)
    corpus = CorpusParams(root="unused", n_classes=N_CLASSES, ignore_index=IGNORE, class_names=("a", "b", "c"))
    params = dataclasses.replace(PARAMS, probe_init="codes", probe_restarts=2)
    trained = train(store, knn, model_dir, tmp_path / "loss.csv", corpus, params, seed=5)
    plain, _ = fit(load_training_data(store, knn, IGNORE, N_CLASSES), N_CLASSES, params, seed=5, ignore_index=IGNORE)
    for name in ("head", "linear_probe"):  # the refit touches the cluster probe only
        for key, value in plain.modules()[name].state_dict().items():
            assert torch.equal(value, trained.modules()[name].state_dict()[key]), f"{name}.{key} changed"
    assert not torch.equal(plain.cluster_probe.clusters, trained.cluster_probe.clusters), "the probe was not refitted"
    on_disk = load_model(model_dir)
    assert torch.equal(on_disk.cluster_probe.clusters, trained.cluster_probe.clusters), "the refitted probe was not saved"
    assert on_disk.info["probe_init"] == "codes"
