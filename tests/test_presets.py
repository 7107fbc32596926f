"""Tests for stego_tasks.presets: published settings as data, and every value reaching its stage.

The expected numbers are typed here from the reference doc (sections 5, 9 and 11) and the
reference's train_config.yml blocks, independently of the YAML files under test.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows import stage_functions
from stego_tasks.config import load_params, params_from_dict
from stego_tasks.data.adapters import PRESETS_FOR, preset_for, write_params
from stego_tasks.presets import list_presets, load_preset, params_text

REPO = Path(__file__).resolve().parents[1]

PUBLISHED = {
    "custom": dict(backbone="dino_vits8", weights=(0.67, 0.25, 0.63), shifts=(0.18, 0.12, 0.46), n_codes=70, five_crop=True),
    "cocostuff27_vits8": dict(backbone="dino_vits8_300ep", weights=(0.67, 0.25, 0.63), shifts=(0.08, 0.02, 0.66), n_codes=70, five_crop=True),
    "cocostuff27_vitb8": dict(backbone="dino_vitb8", weights=(0.1, 1.0, 0.1538476246415498), shifts=(0.12, 0.2, 1.0), n_codes=70, five_crop=True),
    "cityscapes27_vitb8": dict(backbone="dino_vitb8", weights=(1.0, 0.577453483136995, 0.9058762625226623),
                               shifts=(0.45828472207, 0.1754346515479633, 0.31361241889448443), n_codes=100, five_crop=True),
    "potsdam3_vits8": dict(backbone="dino_vits8_300ep", weights=(0.67, 0.25, 0.63), shifts=(0.08, 0.02, 0.46), n_codes=70, five_crop=False),
}
CORPUS = {"root": "/data/corpus", "n_classes": 27, "ignore_index": 255, "demo": False}


def test_every_published_setting_is_a_preset() -> None:
    assert set(PUBLISHED) <= set(list_presets()), f"presets {list_presets()}"


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_holds_the_published_values(name: str) -> None:
    want = PUBLISHED[name]
    params = params_from_dict(yaml.safe_load(params_text(name, CORPUS)))
    assert params.preset == name
    assert params.backbone.name == want["backbone"]
    assert params.train.weights == pytest.approx(want["weights"], abs=0, rel=0)
    assert params.train.shifts == pytest.approx(want["shifts"], abs=0, rel=0)
    assert params.train.n_codes == want["n_codes"]
    assert params.extract.five_crop is want["five_crop"]
    # Shared by every published setting (reference doc section 5 and 11).
    assert (params.extract.resolution, params.extract.val_resolution, params.extract.crop_ratio) == (224, 320, 0.5)
    assert params.extract.preprocess == "reference"
    assert (params.train.steps, params.train.batch_size, params.train.lr, params.train.probe_lr) == (5000, 16, 5e-4, 5e-3)
    assert (params.train.extra_clusters, params.knn.k, params.train.feature_samples, params.train.neg_samples) == (0, 7, 11, 5)
    assert (params.crf.iterations, params.crf.bilateral_sxy, params.crf.bilateral_srgb) == (10, 67.0, 3.0)
    if name != "custom":  # dataset presets follow the reference's protocol
        assert (params.train.select, params.train.select_every, params.train.probe_init) == ("best", 100, "random")


def _capture(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """Replace each stage's library call by a recorder of the params objects it is handed."""
    import stego_tasks.cluster
    import stego_tasks.crf
    import stego_tasks.evaluate
    import stego_tasks.extract
    import stego_tasks.knn
    import stego_tasks.train

    seen: dict[str, dict[str, Any]] = {}

    def extract(manifest, store, corpus, backbone, params, dask, runner=None, runtime=None):
        seen["extract"] = {"corpus": corpus, "backbone": backbone, "extract": params}
        return stego_tasks.extract.ExtractSummary({}, {}, {}, "x")

    def train(features, knn, model, loss_log, corpus, params, seed, resume=False, shift_stats=None, readers=2):
        seen["train"] = {"corpus": corpus, "train": params, "seed": seed}
        return type("Trained", (), {"info": {"in_dim": 1}})()

    def knn(features, out, k):
        seen["knn"] = {"k": k}
        return {}

    def cluster(features, model, predictions, params, seed):
        seen["cluster"] = {"cluster": params, "seed": seed}
        return {}

    def crf(features, predictions, out, params, workers, dask):
        seen["crf"] = {"crf": params, "workers": workers}
        return {}

    def evaluate(*args, preset="custom", **kwargs):
        seen["evaluate"] = {"preset": preset, "corpus": args[7], "evaluate": args[8]}
        return {}

    monkeypatch.setattr(stego_tasks.extract, "extract", extract)
    monkeypatch.setattr(stego_tasks.train, "train", train)
    monkeypatch.setattr(stego_tasks.knn, "knn", knn)
    monkeypatch.setattr(stego_tasks.cluster, "cluster", cluster)
    monkeypatch.setattr(stego_tasks.crf, "crf", crf)
    monkeypatch.setattr(stego_tasks.evaluate, "evaluate", evaluate)
    return seen


def _run_stages(params_path: Path) -> None:
    p = str(params_path)
    stage_functions.extract(p, "m", "f")
    stage_functions.knn(p, "f", "k")
    stage_functions.train(p, "f", "k", "model", "loss.csv")
    stage_functions.cluster(p, "f", "model", "pred")
    stage_functions.crf(p, "f", "pred", "crf")
    stage_functions.evaluate(p, "f", "pred", "crf", "s", "pc", "c.png", "o", "a")


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_every_preset_value_reaches_the_stage_that_uses_it(name: str, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "params.yaml"
    # Only the location: the preset's own class count and ignore index must reach the stages.
    path.write_text(params_text(name, {"root": "/data/corpus", "demo": False}))
    seen = _capture(monkeypatch)
    _run_stages(path)
    raw = load_preset(name)
    where = {"backbone": "extract", "extract": "extract", "train": "train", "cluster": "cluster", "crf": "crf", "knn": "knn",
             "evaluate": "evaluate"}
    checked = 0
    for block, values in raw.items():
        if block in ("preset", "seed", "corpus"):
            continue
        stage = where[block]
        if block == "crf":
            for key, value in values.items():
                got = getattr(seen["crf"]["crf"], key)
                assert got == value, f"{name}: crf.{key} reached the stage as {got!r}, preset says {value!r}"
                checked += 1
            continue
        if block == "knn":
            assert seen["knn"]["k"] == values["k"], f"{name}: knn.k"
            checked += 1
            continue
        received = seen[stage][block]
        for key, value in values.items():
            got = getattr(received, key)
            want = tuple(value) if isinstance(value, list) else value
            assert got == want, f"{name}: {block}.{key} reached {stage} as {got!r}, preset says {want!r}"
            checked += 1
    assert seen["train"]["seed"] == raw["seed"] and seen["cluster"]["seed"] == raw["seed"]
    assert seen["evaluate"]["preset"] == name, "the preset name must reach evaluate, which records it"
    for key, value in (raw.get("corpus") or {}).items():
        assert getattr(seen["train"]["corpus"], key) == value, f"{name}: corpus.{key}"
    assert checked > 40, f"only {checked} values checked"


def _with_overrides(path: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """The params mapping as `dvc exp run -S key=value` leaves it."""
    values = yaml.safe_load(path.read_text())
    for dotted, value in overrides.items():
        block, key = dotted.split(".")
        values.setdefault(block, {})[key] = value
    return values


def test_a_real_corpus_as_the_readme_says_gets_the_published_sizes_steps_and_shifts() -> None:
    # README "Segment your own images", step 2: only corpus keys and the weights are set.
    values = _with_overrides(REPO / "params.yaml", {
        "corpus.root": "/data/my-corpus", "corpus.n_classes": 27, "corpus.class_names": [], "corpus.demo": False,
        "backbone.weights": "/models/dino_deitsmall8_pretrain.pth",
    })
    params = params_from_dict(values)
    assert (params.extract.resolution, params.extract.val_resolution, params.train.steps) == (224, 320, 5000)
    assert params.train.shifts == PUBLISHED["custom"]["shifts"] and params.train.weights == PUBLISHED["custom"]["weights"]
    assert params.extract.preprocess == "reference" and params.extract.five_crop


def test_camvid_command_of_the_readme_gets_the_published_sizes() -> None:
    values = _with_overrides(REPO / "params.yaml", {
        "corpus.root": "../shared/data/camvid-dev", "corpus.n_classes": 11, "corpus.ignore_index": 11, "corpus.demo": False,
        "corpus.class_names": ["sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
                               "pedestrian", "bicyclist"],
    })
    params = params_from_dict(values)
    assert (params.extract.resolution, params.extract.val_resolution, params.train.steps) == (224, 320, 5000)


def test_the_demo_alone_gets_the_demo_sizes() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.corpus.demo is True
    assert (params.extract.resolution, params.extract.val_resolution, params.train.steps) == (112, 112, 1000)


@pytest.mark.parametrize("dataset", sorted(PRESETS_FOR))
def test_adapt_writes_a_complete_params_file_with_the_dataset_preset(dataset: str, tmp_path: Path) -> None:
    dst = tmp_path / "corpus"
    dst.mkdir()
    path = write_params(dataset, dst)
    params = load_params(path)
    name = preset_for(dataset)
    assert params.preset == name
    assert params.corpus.root == str(dst.resolve()) and params.corpus.demo is False
    assert params.corpus.n_classes == (6 if dataset == "potsdam" else 27 if dataset != "potsdam3" else 3)
    assert params.train.shifts == pytest.approx(PUBLISHED[name]["shifts"])
    assert (params.extract.resolution, params.extract.val_resolution, params.train.steps) == (224, 320, 5000)


def test_adapt_params_elsewhere_keeps_the_old_file(tmp_path: Path) -> None:
    dst = tmp_path / "corpus"
    dst.mkdir()
    mine = tmp_path / "params.yaml"
    mine.write_text("seed: 3\n")
    write_params("cocostuff27", dst, backbone="vitb8", out=mine)
    assert (tmp_path / "params.yaml.bak").read_text() == "seed: 3\n", "the user's file must be kept"
    assert load_params(mine).preset == "cocostuff27_vitb8"
    with pytest.raises(ValueError, match="vits8"):
        preset_for("cityscapes27", "vits8")


def test_every_dataclass_default_matches_preset_custom() -> None:
    """The defaults in config.py are preset `custom`; a params file may omit any block."""
    defaults = params_from_dict({})
    custom = params_from_dict(load_preset("custom"))
    for block in ("backbone", "extract", "knn", "train", "cluster", "crf", "evaluate"):
        assert dataclasses.asdict(getattr(defaults, block)) == dataclasses.asdict(getattr(custom, block)), block
