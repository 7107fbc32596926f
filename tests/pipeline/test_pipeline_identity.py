"""End-to-end on the tiny DVC project: `dvc repro` notices what no param records, a checkpoint
replaced at the same path and edited label files, and re-runs what they shaped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image
from tiny_project import set_params

from stego_tasks.paths import PATHS
from stego_tasks.runtime.content_hash import sha256_of_file
from tests.conftest import VENV_BIN, always_changed, dvc_repro, run

pytestmark = pytest.mark.slow


def _ran(output: str, project: Path) -> list[str]:
    import re

    checks = always_changed(project)
    return [s for s in re.findall(r"^Running stage '([^']+)':", output, flags=re.MULTILINE) if s not in checks]


def _checkpoint(path: Path, seed: int) -> None:
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(timm.create_model("vit_tiny_patch16_224", num_classes=0).state_dict(), str(path))


def test_a_checkpoint_replaced_at_the_same_path_makes_extract_stale(project_copy: Path, project_env: dict[str, str]) -> None:
    weights = project_copy / "checkpoints" / "backbone.safetensors"
    _checkpoint(weights, seed=1)
    set_params(project_copy, {("backbone", "weights"): "checkpoints/backbone.safetensors"})
    assert "extract" in _ran(dvc_repro(project_copy, project_env, "extract").stdout, project_copy)
    assert _ran(dvc_repro(project_copy, project_env, "extract").stdout, project_copy) == [], "an unchanged file re-ran extract"

    _checkpoint(weights, seed=2)  # same path, same param value, other weights
    dvc_repro(project_copy, project_env, "weights")
    status = run([str(VENV_BIN / "dvc"), "status", "extract"], project_copy, project_env).stdout
    assert PATHS["weights"] in status and "modified" in status, f"dvc status does not say why extract is stale:\n{status}"
    result = dvc_repro(project_copy, project_env, "extract")
    assert _ran(result.stdout, project_copy) == ["extract"], f"a replaced checkpoint ran {_ran(result.stdout, project_copy)}"
    store = zarr.open_group(str(project_copy / PATHS["features"]), mode="r")
    assert store.attrs["weights_sha256"] == sha256_of_file(weights), "the features are not those of the new checkpoint"


def test_edited_val_labels_change_the_scores(project_copy: Path, project_env: dict[str, str]) -> None:
    # The corpus as a user's own: the edit is committed as demo_data's output, so DVC does not
    # write the demo corpus again, and it reaches ingest as an edit of a corpus no stage writes.
    scores = json.loads((project_copy / PATHS["scores"]).read_text())
    feats = zarr.open_group(str(project_copy / PATHS["features"]), mode="r")["val"]["feats"][:]

    for label in sorted((project_copy / PATHS["demo_corpus"] / "labels" / "val").glob("*.png")):
        width, height = Image.open(label).size
        Image.fromarray(np.zeros((height, width), dtype=np.uint8)).save(label)
    run([str(VENV_BIN / "dvc"), "commit", "--force", "demo_data"], project_copy, project_env)
    result = dvc_repro(project_copy, project_env)
    ran = _ran(result.stdout, project_copy)
    assert {"ingest", "extract", "evaluate"} <= set(ran), f"edited labels re-ran only {ran}"
    val = zarr.open_group(str(project_copy / PATHS["features"]), mode="r")["val"]
    assert np.all(val["labels"][:] == 0), "the store kept the old val labels"
    assert np.array_equal(val["feats"][:], feats), "the features changed although only labels did"
    edited = json.loads((project_copy / PATHS["scores"]).read_text())
    assert edited["kmeans"] != scores["kmeans"], f"the scores did not move with the labels: {edited['kmeans']}"
