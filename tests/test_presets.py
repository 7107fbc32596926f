"""Tests for stego_tasks.presets: published settings as data, and every value reaching its stage.

The expected values are read from the defaults file and the preset files themselves (no
copy of the numbers here): each preset must reach the stages as the defaults with its own
overrides, and a default changed in one place must reach every preset that keeps it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows import stage_functions
from stego_tasks.config import DEFAULTS_FILE, load_params, params_from_dict, params_to_dict
from stego_tasks.data.adapters import PRESETS_FOR, preset_for, write_params
from stego_tasks.demo_data import DEMO_CLASS_NAMES, DEMO_IGNORE_INDEX, DEMO_N_CLASSES
from stego_tasks.params_schema import read_yaml
from stego_tasks.presets import (
    list_presets,
    load_preset,
    params_text,
    preset_overrides,
    preset_text,
)
from tests.conftest import REPO

DEFAULTS = read_yaml(DEFAULTS_FILE)
DATASET_PRESETS = ["cityscapes27_vitb8", "cocostuff27_vitb8", "cocostuff27_vits8", "potsdam3_vits8"]
LOCATION = {"root": "/data/corpus", "demo": False}
# What a real corpus gets (no preset overrides them): the published crop sides and steps.
PUBLISHED_SIZES = (DEFAULTS["extract"]["resolution"], DEFAULTS["extract"]["val_resolution"], DEFAULTS["train"]["steps"])


def _flat(values: dict[str, Any]) -> dict[str, Any]:
    """A params mapping by dotted key (lists as tuples, as the dataclasses hold them)."""
    flat = {}
    for key, value in values.items():
        for inner, item in (value.items() if isinstance(value, dict) and key != "demo" else [("", value)]):
            flat[f"{key}.{inner}" if inner else key] = tuple(item) if isinstance(item, list) else item
    return flat


def test_every_published_setting_is_a_preset_and_the_defaults_file_is_none() -> None:
    assert set(DATASET_PRESETS) | {"custom"} == set(list_presets()), f"presets {list_presets()}"
    with pytest.raises(ValueError, match="unknown preset"):
        preset_text("defaults")


@pytest.mark.parametrize("name", sorted(DATASET_PRESETS + ["custom"]))
def test_a_preset_states_only_differences_each_with_its_citation(name: str) -> None:
    overrides = _flat(preset_overrides(name))
    assert overrides.pop("preset") == name
    text = preset_text(name)
    for dotted, value in overrides.items():
        assert value != _flat(DEFAULTS)[dotted], f"{name}: {dotted} = {value!r} is the default; leave it out"
        key = dotted.rpartition(".")[2]
        line = next(line for line in text.splitlines() if line.lstrip().startswith(f"{key}:"))
        assert "#" in line and line.split("#", 1)[1].strip(), f"{name}: {dotted} has no citation comment"
    if name != "custom":  # a dataset preset follows the reference's protocol: the best head on val
        assert overrides["train.select"] == "best" and "backbone.name" in overrides and "corpus.n_classes" in overrides
    else:
        assert not overrides, "custom is the published defaults unchanged"


@pytest.mark.parametrize("name", sorted(DATASET_PRESETS + ["custom"]))
def test_the_written_params_are_the_defaults_with_the_preset_overrides(name: str) -> None:
    text = params_text(name, LOCATION)
    got = _flat(params_to_dict(params_from_dict(yaml.safe_load(text))))
    want = {**_flat(DEFAULTS), **_flat(preset_overrides(name)), **_flat({"corpus": LOCATION})}
    assert got == want
    assert got == _flat(params_to_dict(params_from_dict(load_preset(name) | {"corpus": {**load_preset(name)["corpus"], **LOCATION}})))
    # Where each value comes from reaches the file: the preset's citation on its overrides.
    for dotted in _flat(preset_overrides(name)):
        if dotted != "preset":
            key = dotted.rpartition(".")[2]
            line = next(line for line in text.splitlines() if line.lstrip().startswith(f"{key}:") and f"preset {name}" in line)
            assert line, dotted


def test_a_default_changed_in_a_copy_of_the_defaults_file_reaches_every_preset_that_keeps_it(tmp_path: Path) -> None:
    package = tmp_path / "pkg" / "stego_tasks"
    shutil.copytree(REPO / "stego_tasks", package, ignore=shutil.ignore_patterns("__pycache__"))
    defaults = package / "presets" / "defaults.yaml"
    text = defaults.read_text()
    assert text.count("  n_codes: 70 ") == 1
    defaults.write_text(text.replace("  n_codes: 70 ", "  n_codes: 64 "))
    script = (
        "import json, yaml\n"
        "from stego_tasks.config import Params, params_from_dict\n"
        "from stego_tasks.presets import list_presets, params_text\n"
        "got = {n: params_from_dict(yaml.safe_load(params_text(n, {'demo': False}))).train.n_codes for n in list_presets()}\n"
        "print(json.dumps({'dataclass': Params().train.n_codes, **got}))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(package.parent), "PATH": ""}, cwd=tmp_path)
    got = json.loads(run.stdout)
    assert got.pop("dataclass") == 64, "the dataclass default must follow the defaults file"
    for name, n_codes in got.items():
        override = _flat(preset_overrides(name)).get("train.n_codes")
        assert n_codes == (override if override is not None else 64), name
    assert 100 in got.values() and 64 in got.values(), "one preset overrides n_codes, the others follow"


def test_a_preset_overriding_an_unknown_key_is_one_sentence(tmp_path: Path) -> None:
    folder = tmp_path / "presets"
    shutil.copytree(DEFAULTS_FILE.parent, folder, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    (folder / "mine.yaml").write_text("preset: custom\ntrain:\n  stepz: 10   # a typo\n")
    with pytest.raises(ValueError, match=r"^preset mine sets train.stepz, which is no key of the defaults file; [^\n]*\.$"):
        params_text("mine", LOCATION, folder=folder)
    with pytest.raises(ValueError, match="unknown preset"):
        preset_text("defaults", folder)


def test_the_project_params_file_is_the_defaults_but_for_the_demo_s_own_settings() -> None:
    """params.yaml must stay complete for DVC; every value there is the default but the demo's own."""
    values = _flat(read_yaml(REPO / "params.yaml"))
    assert set(values) == set(_flat(DEFAULTS)), "params.yaml must hold every key of the defaults file"
    differ = {key for key in values if values[key] != _flat(DEFAULTS)[key]}
    # The demo corpus's location and labels, its threads on 2 CPUs, and its small sizes.
    assert differ == {"corpus.class_names", "corpus.demo", "dask.threads_per_worker", "demo"}, differ
    # The demo corpus's labels are the generator's (stego_tasks/demo_data.py), written there once.
    assert (values["corpus.n_classes"], values["corpus.ignore_index"], values["corpus.class_names"]) == (
        DEMO_N_CLASSES, DEMO_IGNORE_INDEX, DEMO_CLASS_NAMES)


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


@pytest.mark.parametrize("name", sorted(DATASET_PRESETS + ["custom"]))
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
        if block not in where:  # preset, seed and corpus are checked below; the other blocks are no stage's here
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
    for key, value in preset_overrides(name).get("corpus", {}).items():
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
    assert (params.extract.resolution, params.extract.val_resolution, params.train.steps) == PUBLISHED_SIZES
    assert params.train.shifts == tuple(DEFAULTS["train"]["shifts"]) and params.train.weights == tuple(DEFAULTS["train"]["weights"])
    assert params.extract.preprocess == "reference" and params.extract.five_crop


def test_camvid_command_of_the_readme_gets_the_published_sizes() -> None:
    values = _with_overrides(REPO / "params.yaml", {
        "corpus.root": "../shared/data/camvid-dev", "corpus.n_classes": 11, "corpus.ignore_index": 11, "corpus.demo": False,
        "corpus.class_names": ["sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
                               "pedestrian", "bicyclist"],
    })
    params = params_from_dict(values)
    assert (params.extract.resolution, params.extract.val_resolution, params.train.steps) == PUBLISHED_SIZES


def test_the_demo_alone_gets_the_demo_sizes() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.corpus.demo is True
    demo = read_yaml(REPO / "params.yaml")["demo"]
    assert (params.extract.resolution, params.extract.val_resolution, params.train.steps) == (
        demo["extract"]["resolution"], demo["extract"]["val_resolution"], demo["train"]["steps"])
    assert (params.extract.resolution, params.train.steps) != PUBLISHED_SIZES[::2], "the demo must shrink the sizes"


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
    assert params.train.shifts == tuple(load_preset(name)["train"]["shifts"])
    assert (params.extract.resolution, params.extract.val_resolution, params.train.steps) == PUBLISHED_SIZES


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
