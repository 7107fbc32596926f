"""Tests for stego_tasks.tools.sweep: refitting the cluster probe for several K and scoring it.

The run is hand-written: a features store laid out as `extract` writes it, whose patches
point along one of three orthogonal directions (one per class, plus a little noise), and
a saved model whose head is the identity (code = features), so three clusters are
plainly right. Criterion and scores are checked against NumPy and `unsupervised_scores`.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from flows.tools import add_sweep_arguments, sweep_from_args
from stego_tasks.config import TrainParams, params_to_dict
from stego_tasks.errors import InvalidInputError
from stego_tasks.method.inference import predict_code
from stego_tasks.method.metrics import unsupervised_scores
from stego_tasks.method.model import build_model, load_model, save_model
from stego_tasks.method.probe_fit import best_cluster_probe
from stego_tasks.tools.sweep import (
    ROW_KEYS,
    evaluate_probes,
    parse_ks,
    sweep_k,
    training_codes,
)

C, N_CLASSES, IGNORE, SIZE, STEPS, SEED, RESTARTS = 6, 3, 255, 8, 100, 0, 2
RUN_SEED = 4  # the seed model.json records, the command's default
PARAMS = TrainParams(n_codes=C, steps=STEPS, batch_size=16, probe_lr=5e-3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _split(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Features [rows, C, 4, 4] along class directions, and the class layout [rows, 4, 4]."""
    layout = rng.integers(0, N_CLASSES, (rows, 4, 4))
    layout[:, 0, :N_CLASSES] = np.arange(N_CLASSES)  # every crop holds every class
    feats = np.eye(C)[layout].transpose(0, 3, 1, 2) * 3 + rng.normal(0, 0.1, (rows, C, 4, 4))
    return feats.astype(np.float16), layout


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder: artifacts/features.zarr (train + val) and artifacts/model (identity head)."""
    run = tmp_path_factory.mktemp("sweep") / "run"
    rng = np.random.default_rng(7)
    root = zarr.open_group(str(run / "artifacts" / "features.zarr"), mode="w", zarr_format=3)
    train_feats, _ = _split(rng, 12)
    train = root.create_group("train")
    train.create_array("feats", data=train_feats, chunks=(5, C, 4, 4))
    train.create_array("done", data=np.ones(3, dtype=bool))
    val_feats, layout = _split(rng, 10)  # more than one prediction batch (8)
    labels = layout.repeat(2, axis=1).repeat(2, axis=2).astype(np.uint8)  # 2 x 2 pixels per patch
    labels[:, -1, :] = IGNORE
    val = root.create_group("val")
    val.create_array("feats", data=val_feats, chunks=(4, C, 4, 4))
    mirrored = val_feats[..., ::-1] + rng.normal(0, 0.1, val_feats.shape)
    val.create_array("feats_flip", data=mirrored.astype(np.float16), chunks=(4, C, 4, 4))
    val.create_array("labels", data=labels)
    val.create_array("done", data=np.ones(3, dtype=bool))

    torch.manual_seed(0)
    model = build_model(C, N_CLASSES, PARAMS)
    with torch.no_grad():
        model.head.linear.weight.copy_(torch.eye(C)[:, :, None, None])
        model.head.linear.bias.zero_()
        model.head.nonlinear[2].weight.zero_()
        model.head.nonlinear[2].bias.zero_()
    model.info = {"in_dim": C, "n_classes": N_CLASSES, "ignore_index": IGNORE, "seed": RUN_SEED,
                  "train": params_to_dict(PARAMS)}
    save_model(model, run / "artifacts" / "model")
    return run


def _sweep(run: Path, out: Path, ks: list[int], seed: int = SEED, steps: int | None = STEPS) -> list[dict]:
    store, model_dir = run / "artifacts" / "features.zarr", run / "artifacts" / "model"
    return sweep_k(store, model_dir, ks, out.with_suffix(".json"), out.with_suffix(".png"), seed=seed, steps=steps,
                   restarts=RESTARTS)


def _codes(run: Path) -> torch.Tensor:
    model = load_model(run / "artifacts" / "model")
    return training_codes(model, zarr.open_group(str(run / "artifacts" / "features.zarr"), mode="r")["train"]["feats"])


def _probe(run: Path, k: int, seed: int = SEED):
    """The probe `sweep_k` keeps for K (fitting is deterministic; see the determinism test)."""
    return best_cluster_probe(_codes(run), k, restarts=RESTARTS, steps=STEPS, batch_size=16, lr=5e-3, seed=seed)


def test_rows_per_k_are_sorted_and_written_as_json_and_png(run_dir, tmp_path):
    rows = _sweep(run_dir, tmp_path / "k_sweep", [4, 2, 3])
    assert [row["k"] for row in rows] == [2, 3, 4], f"rows for K {[row['k'] for row in rows]}"
    assert all(tuple(row) == ROW_KEYS for row in rows), f"row keys {[tuple(row) for row in rows]}"
    assert json.loads((tmp_path / "k_sweep.json").read_text()) == rows, "JSON differs from the returned rows"
    with Image.open(tmp_path / "k_sweep.png") as image:
        image.load()
        assert image.format == "PNG" and min(image.size) > 100, f"{image.format} {image.size}"
        assert "Software" not in image.info, f"PNG metadata {image.info}"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


@pytest.mark.parametrize("k", [2, 3, 5])
def test_criterion_and_scores_match_an_independent_computation(run_dir, tmp_path, k):
    (row,) = _sweep(run_dir, tmp_path / "one", [k])
    probe = _probe(run_dir, k)
    model = load_model(run_dir / "artifacts" / "model")
    val = zarr.open_group(str(run_dir / "artifacts" / "features.zarr"), mode="r")["val"]
    with torch.no_grad():
        code = predict_code(model, torch.from_numpy(val["feats"][:]).float(),
                            torch.from_numpy(val["feats_flip"][:]).float(), SIZE).double().numpy()
    unit = code / np.linalg.norm(code, axis=1, keepdims=True)
    centroids = probe.clusters.detach().double().numpy()
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    cosine = np.einsum("bchw,kc->bkhw", unit, centroids)
    assert row["criterion"] == pytest.approx(cosine.max(1).mean(), abs=1e-6), f"criterion for K={k}"
    train_unit = _codes(run_dir).double().numpy()
    train_unit /= np.linalg.norm(train_unit, axis=1, keepdims=True)
    train_best = np.einsum("bchw,kc->bkhw", train_unit, centroids).max(1).mean()
    assert row["train_criterion"] == pytest.approx(train_best, abs=1e-6), f"training criterion for K={k}"
    labels = val["labels"][:].astype(np.int64)
    expected = unsupervised_scores(cosine.argmax(1), np.where(labels == IGNORE, -1, labels), N_CLASSES, k)
    assert row["miou"] == pytest.approx(expected["miou"], abs=1e-9), f"mIoU for K={k}"
    assert row["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-9), f"accuracy for K={k}"


def test_three_true_classes_score_best_at_k_three(run_dir, tmp_path):
    rows = {row["k"]: row for row in _sweep(run_dir, tmp_path / "k", [2, 3])}
    assert rows[3]["miou"] > 95, f"K=3 should recover three clean classes, mIoU {rows[3]['miou']:.1f}"
    assert rows[3]["miou"] > rows[2]["miou"] + 20, f"mIoU K=3 {rows[3]['miou']:.1f} vs K=2 {rows[2]['miou']:.1f}"
    assert rows[3]["train_criterion"] > rows[2]["train_criterion"] + 0.1, f"a third centroid must tighten: {rows}"


def test_the_same_seed_gives_identical_outputs(run_dir, tmp_path):
    _sweep(run_dir, tmp_path / "a", [2, 3])
    _sweep(run_dir, tmp_path / "b", [3, 2])
    _sweep(run_dir, tmp_path / "c", [2, 3], seed=SEED + 1)
    first = (tmp_path / "a.json").read_bytes()
    assert first == (tmp_path / "b.json").read_bytes(), "same seed (K order aside), different JSON"
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes(), "same rows, different PNG bytes"
    assert first != (tmp_path / "c.json").read_bytes(), "another seed gave the very same numbers"


def test_val_without_labels_gives_criterion_only(run_dir):
    source = zarr.open_group(str(run_dir / "artifacts" / "features.zarr"), mode="r")["val"]
    val = zarr.open_group(zarr.storage.MemoryStore(), mode="w", zarr_format=3)
    val.create_array("feats", data=source["feats"][:])
    val.create_array("labels", data=np.full(source["labels"].shape, IGNORE, dtype=np.uint8))
    (row,) = evaluate_probes(load_model(run_dir / "artifacts" / "model"), val, [_probe(run_dir, 3)])
    assert row["miou"] is None and row["accuracy"] is None, f"scores without labels: {row}"
    assert 0.9 < row["criterion"] <= 1.0, f"criterion {row['criterion']}"


# --- the command -----------------------------------------------------------------------------


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_sweep_arguments(parser)
    return parser.parse_args(argv)


def test_command_writes_prefix_json_and_png_with_the_runs_defaults(run_dir, tmp_path, capsys):
    out = tmp_path / "plots" / "k_sweep"
    argv = ["--run", str(run_dir), "--ks", "2, 3", "--out", str(out), "--restarts", str(RESTARTS)]
    assert sweep_from_args(_args(argv)) == 0, "exit status"
    written = json.loads((tmp_path / "plots" / "k_sweep.json").read_text())
    assert (tmp_path / "plots" / "k_sweep.png").is_file(), "PNG not written"
    # Defaults: the run's seed and train.steps.
    expected = _sweep(run_dir, tmp_path / "direct", [2, 3], seed=RUN_SEED, steps=STEPS)
    assert written == expected, f"command rows {written} != sweep_k rows {expected}"
    assert "K=3" in capsys.readouterr().out, "one printed line per K"


@pytest.mark.parametrize("text,message", [
    ("", "holds no number of clusters"),
    (" , ", "holds no number of clusters"),
    ("3,x", "comma-separated integers"),
    ("0,3", "integer >= 1"),
    (str(2**70), r"integer >= 1 \(and at most 2147483647\)"),
    ("3,5,3", "repeats a value"),
])
def test_invalid_k_lists_are_refused_in_one_sentence(text, message):
    with pytest.raises(ValueError, match=message):
        parse_ks(text)


def test_sweep_k_refuses_an_empty_k_list(run_dir, tmp_path):
    with pytest.raises(ValueError, match="list of cluster counts is empty"):
        _sweep(run_dir, tmp_path / "none", [])
    assert not (tmp_path / "none.json").exists(), "nothing may be written for an invalid K list"


def test_a_run_without_a_model_is_refused_in_one_sentence(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no trained model") as error:
        sweep_from_args(_args(["--run", str(tmp_path), "--ks", "3,5"]))
    assert "\n" not in str(error.value), f"error spans lines: {error.value}"
    assert parse_ks("3,5,8,12") == [3, 5, 8, 12], "a valid list"


@pytest.mark.parametrize(("damage", "message"), [
    (lambda info: b"\xba\x00 not json", r"model\.json: not valid JSON .*; rerun `stego train`"),
    (lambda info: b"[1]", r"model\.json: holds a JSON list, not the mapping train writes"),
    (lambda info: json.dumps({**info, "seed": "x"}).encode(), r"model\.json records the seed 'x', not an integer; pass --seed"),
])
def test_the_command_refuses_a_damaged_model_json_in_one_sentence(run_dir, tmp_path, damage, message):
    """The command read the run's seed from model.json raw: garbage was a bug's traceback (exit 1)."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    model_json = run / "artifacts" / "model" / "model.json"
    model_json.write_bytes(damage(json.loads(model_json.read_text())))
    with pytest.raises(InvalidInputError, match=message) as error:
        sweep_from_args(_args(["--run", str(run), "--ks", "2", "--out", str(tmp_path / "k"), "--restarts", "1"]))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "k.json").exists(), "nothing is written for a damaged run"


@pytest.mark.parametrize("alpha", [0.0, float("nan"), float("inf")])
def test_an_alpha_that_is_not_a_finite_positive_number_is_refused(run_dir, tmp_path, alpha):
    """--alpha inf was taken: a temperature that is no number of the probe's softmax."""
    with pytest.raises(InvalidInputError, match=r"alpha must be a finite number > 0"):
        sweep_k(run_dir / "artifacts" / "features.zarr", run_dir / "artifacts" / "model", [2],
                tmp_path / "k.json", tmp_path / "k.png", alpha=alpha)
    assert not (tmp_path / "k.json").exists()
