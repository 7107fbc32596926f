"""Tests for stego_tasks.train: the loop, logging, probes, determinism, resume, model files.

Everything runs on tiny in-memory features (10 crops of [8, 4, 4]); the stage test writes
a small features store in the layout `extract` writes and a kNN store from `knn_stage`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from stego_tasks import train as train_mod
from stego_tasks.config import CorpusParams, TrainParams, params_to_dict
from stego_tasks.knn import knn_graph, knn_stage, pool_features
from stego_tasks.train import (
    LOSS_COLUMNS,
    StegoModel,
    TrainingData,
    build_model,
    fit,
    load_model,
    load_training_data,
    save_model,
    train,
    write_loss_log,
)

N_CLASSES, IGNORE = 3, 255
PARAMS = TrainParams(
    n_codes=6, steps=6, batch_size=4, feature_samples=3, neg_samples=2, device="cpu", log_every=2, checkpoint_every=3
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny tensors: a second intra-op thread only adds synchronisation on a busy 2-core box.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def test_save_and_load_model_round_trip(tmp_path):
    model, _ = fit(_data(), N_CLASSES, PARAMS, seed=0, ignore_index=IGNORE, info=_info())
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    _assert_same_model(model, loaded, "loaded model")
    assert json.loads((tmp_path / "model.json").read_text()) == _info(), "model.json is not the model's info"
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
    group.create_array("labels", data=data.labels.numpy().astype(np.uint8))
    group.create_array("done", data=np.ones(3, dtype=bool))


def test_train_stage_writes_model_files_and_loss_log(tmp_path):
    data = _data()
    store, knn, model_dir, loss_log = (tmp_path / n for n in ("features.zarr", "knn.zarr", "model", "loss.csv"))
    _write_store(store, data)
    assert knn_stage(store, knn, 3) == {"rows": 10, "k": 3}, "knn stage on the store"
    corpus = CorpusParams(root="unused", n_classes=N_CLASSES, ignore_index=IGNORE, class_names=("a", "b", "c"))
    trained = train(store, knn, model_dir, loss_log, corpus, PARAMS, seed=5)

    assert (model_dir / "model.safetensors").is_file(), "model.safetensors missing"
    assert not (model_dir / "checkpoint.pt").exists(), "the checkpoint must be removed once the model is written"
    info = json.loads((model_dir / "model.json").read_text())
    expected = {
        "in_dim": 8, "n_classes": N_CLASSES, "class_names": ["a", "b", "c"], "ignore_index": IGNORE,
        "backbone": "vit_tiny_patch16_224", "backbone_weights": "random", "resolution": 32, "seed": 5,
        "train": params_to_dict(PARAMS), "linear_probe_trained": True,
    }
    assert info == expected, f"model.json {info}"

    # The stage is `fit` on the stored features: the same seed gives the same model.
    stored = load_training_data(store, knn, IGNORE, N_CLASSES)
    reference, rows = fit(stored, N_CLASSES, PARAMS, seed=5, ignore_index=IGNORE)
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
