"""Tests for `tools.trained_run`: a finished run loaded for inference.

They prove `load_run` reads the model, the checkpoint the run recorded (relative to the project
folder), the assignment and the settings its cluster and crf stages recorded (not params.yaml),
from the project folder or the model folder itself; that a missing model or checkpoint, a bad
assignment or a resolution below the patch size is one sentence naming what to pass; that
`run_settings` falls back to the published values for stages that have not run (or a damaged
store, with a warning) and refuses recorded values of the wrong type; and where `project_of`
finds the project of a model folder.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
import zarr

from stego_tasks.config import CRFParams
from stego_tasks.errors import InvalidInputError
from stego_tasks.paths import PATHS
from stego_tasks.tools.trained_run import Run, RunSettings, load_run, project_of, run_settings
from tests.tools.conftest import BACKBONE, CLASS_NAMES, CLUSTER_TO_CLASS, RESOLUTION, write_run


def test_load_run_reads_model_checkpoint_assignment_and_params(run: Run, run_dir: Path):
    assert run.backbone.weights_source.startswith("file:"), f"weights from {run.backbone.weights_source}"
    assert Path(run.backbone.weights_source[5:]).resolve() == (run_dir / "weights" / "vit.safetensors").resolve(), (
        f"relative checkpoint resolved to {run.backbone.weights_source}"
    )
    assert run.resolution == RESOLUTION and run.n_clusters == 4, f"{run.resolution}, {run.n_clusters}"
    assert run.cluster_to_class.tolist() == CLUSTER_TO_CLASS, f"assignment {run.cluster_to_class}"
    assert run.class_names == tuple(CLASS_NAMES), f"class names {run.class_names}"
    assert run.alpha == 3.0 and run.crf_params.iterations == 5 and run.flip, (
        f"the settings the run's stages recorded were not used: {run.alpha}, {run.flip}, {run.crf_params}"
    )


def test_run_settings_are_the_recorded_ones_or_the_published_defaults(tmp_path: Path, run_dir: Path):
    assert run_settings(run_dir) == RunSettings(3.0, True, CRFParams(iterations=5)), "recorded by the stages"
    assert run_settings(tmp_path) == RunSettings(), "a run whose cluster and crf stages have not run"
    zarr.open_group(str(tmp_path / "artifacts" / "predictions.zarr"), mode="w").attrs.update({"alpha": -1.0})
    with pytest.raises(ValueError, match="alpha must be a positive number"):
        run_settings(tmp_path)


def test_run_without_model_gives_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="holds no trained model"):
        load_run(tmp_path)


def test_missing_checkpoint_asks_for_weights(run_dir: Path, tmp_path: Path):
    moved = tmp_path / "moved"
    shutil.copytree(run_dir / "artifacts", moved / "artifacts")
    with pytest.raises(FileNotFoundError, match="pass --weights PATH"):
        load_run(moved)
    run = load_run(moved, weights=str(run_dir / "weights" / "vit.safetensors"), device="cpu")
    assert run.backbone.weights_source.startswith("file:"), f"weights from {run.backbone.weights_source}"


def test_random_weights_warn_and_match_extraction(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    from stego_tasks.data.embed import _cached_backbone

    root = write_run(tmp_path, "random")
    with caplog.at_level(logging.WARNING, logger="stego"), pytest.warns(UserWarning, match="RANDOM"):
        run = load_run(root, device="cpu")
    assert "RANDOM BACKBONE" in caplog.text, f"no loud warning logged: {caplog.text!r}"
    reference = _cached_backbone(BACKBONE, "random", "cpu")
    x = torch.randn(1, 3, 32, 48)
    gap = float((run.backbone(x) - reference(x)).abs().max())
    assert gap == 0.0, f"random backbone differs from the one extract embedded with by {gap}"


def _copy_run(run_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the shared run, to change."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def _write_assignment(run: Path, data: object) -> None:
    (run / PATHS["assignment"]).write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ([0, 1, "2", 0], r"cluster_to_class must be a list of integers, got \[0, 1, '2', 0\]; rerun `stego evaluate`"),
        ([0, 1, True, 0], r"cluster_to_class must be a list of integers"),
        ([0, 1, 2], r"maps 3 clusters to classes \[0, 1, 2\], but the model has 4 clusters and 3 classes; rerun `stego evaluate`\.$"),
        ([0, 1, 3, 0], r"maps 4 clusters to classes \[0, 1, 3\], but the model has 4 clusters and 3 classes"),
        ([0, -2, 1, 0], r"maps 4 clusters to classes \[-2, 0, 1\]"),
    ],
)
def test_a_bad_assignment_is_one_sentence_asking_to_rerun_evaluate(run_dir: Path, tmp_path: Path, mapping: list, message: str) -> None:
    copy = _copy_run(run_dir, tmp_path)
    _write_assignment(copy, {"cluster_to_class": mapping, "class_names": CLASS_NAMES})
    with pytest.raises(InvalidInputError, match=message):
        load_run(copy, device="cpu")


def test_an_assignment_without_labels_or_names_maps_nothing_or_numbers_the_classes(run_dir: Path, tmp_path: Path) -> None:
    copy = _copy_run(run_dir, tmp_path)
    _write_assignment(copy, {"cluster_to_class": None})
    run = load_run(copy, device="cpu")
    assert run.cluster_to_class is None and run.class_names == (), "evaluated without labels: nothing to map"
    _write_assignment(copy, {"cluster_to_class": CLUSTER_TO_CLASS, "class_names": ["only", "two"]})
    info = json.loads((copy / PATHS["model"] / "model.json").read_text())
    info.pop("class_names", None)
    (copy / PATHS["model"] / "model.json").write_text(json.dumps(info))
    assert load_run(copy, device="cpu").class_names == ("class_0", "class_1", "class_2"), "names of the wrong length"


def test_the_model_folder_itself_loads_with_the_projects_assignment(run_dir: Path) -> None:
    run = load_run(run_dir / PATHS["model"], weights=str(run_dir / "weights" / "vit.safetensors"), device="cpu")
    assert run.cluster_to_class.tolist() == CLUSTER_TO_CLASS and run.alpha == 3.0, "the project's records were not read"
    assert run.model_dir == (run_dir / PATHS["model"]).resolve()


def test_the_model_folder_finds_the_checkpoint_the_run_recorded_relative_to_its_project(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # neither the project nor the model folder
    run = load_run(run_dir / PATHS["model"], device="cpu")
    given = load_run(run_dir, device="cpu")
    assert run.backbone.weights_sha256 == given.backbone.weights_sha256 is not None


def test_a_resolution_below_the_patch_size_is_refused(run: Run, run_dir: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"^Resolution 8 is smaller than the patch size 16 of vit_tiny_patch16_224 .*"
                                                 r"pass --resolution N with N >= the patch size\.$"):
        load_run(run_dir, resolution=8, device="cpu")
    assert load_run(run_dir, resolution=48, device="cpu").resolution == 48 != RESOLUTION


def test_a_resolution_whose_image_cannot_fit_is_refused_in_one_sentence(run_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"^--resolution 200000 needs at least \d+\.\d GiB of memory .*; pass a smaller --resolution\.$"):
        load_run(run_dir, device="cpu", resolution=200_000)


def test_a_names_file_that_names_nothing_gives_no_names(run_dir: Path, tmp_path: Path) -> None:
    copy = _copy_run(run_dir, tmp_path)
    (copy / PATHS["cluster_names"]).write_text("names: {}\nignore: []\n")
    assert load_run(copy, device="cpu").names is None
    (copy / PATHS["cluster_names"]).write_text("names:\n  0: water\nignore: [3]\n")
    names = load_run(copy, device="cpu").names
    assert names is not None and names.names[0] == "water" and names.ignore == {3}, names


def test_a_damaged_store_falls_back_to_the_published_settings_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = tmp_path / PATHS["crf_out"]
    store.mkdir(parents=True)
    (store / "zarr.json").write_text("{damaged")
    with caplog.at_level(logging.WARNING, logger="stego"):
        assert run_settings(tmp_path) == RunSettings()
    assert "using the published settings" in caplog.text, caplog.text


def test_recorded_settings_of_the_wrong_type_are_refused_naming_the_store(tmp_path: Path) -> None:
    zarr.open_group(str(tmp_path / PATHS["crf_out"]), mode="w").attrs.update({"crf": {"iterations": "five"}})
    with pytest.raises(InvalidInputError, match=rf"^{tmp_path / PATHS['crf_out']}: crf\.iterations must be a positive integer"):
        run_settings(tmp_path)
    zarr.open_group(str(tmp_path / PATHS["predictions"]), mode="w").attrs.update({"alpha": 2, "flip": "yes"})
    with pytest.raises(InvalidInputError, match=r"cluster\.flip must be true or false \(unquoted\), got the string \"yes\""):
        run_settings(tmp_path)


def test_a_recorded_crf_that_is_not_a_mapping_is_the_published_one(tmp_path: Path) -> None:
    zarr.open_group(str(tmp_path / PATHS["crf_out"]), mode="w").attrs.update({"crf": None})
    zarr.open_group(str(tmp_path / PATHS["predictions"]), mode="w").attrs.update({"flip": False})
    assert run_settings(tmp_path) == RunSettings(alpha=2.0, flip=False, crf_params=CRFParams())


def test_the_project_of_a_model_folder_is_above_the_models_path(tmp_path: Path) -> None:
    model = tmp_path / PATHS["model"]
    assert project_of(model, model) == tmp_path.resolve()
    assert project_of(tmp_path, model) == tmp_path, "a project folder given: itself"


def test_a_run_loads_on_the_device_asked_for_in_eval_mode(run: Run) -> None:
    assert run.device == torch.device("cpu") and not run.backbone.training
    assert not any(module.training for module in run.model.modules().values()), "a part of the model is in train mode"
    assert run.model.info["backbone"] == BACKBONE
