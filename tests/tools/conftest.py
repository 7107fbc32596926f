"""Shared fixtures of the tools' tests: a finished run to load and predict with.

The run is built here: a random ViT-Ti/16 saved as a timm .safetensors file (so the backbone
is loaded through the real "file:<path>" route), an untrained head and probes saved with
`save_model`, and an assignment.json as the evaluate stage writes it. Used by
`test_predict.py` (segmenting with it) and `test_trained_run.py` (loading it).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import timm
import torch
import zarr
from safetensors.torch import save_file

from stego_tasks.config import CRFParams, TrainParams, params_to_dict
from stego_tasks.method.model import build_model, save_model
from stego_tasks.tools.trained_run import Run, load_run

BACKBONE = "vit_tiny_patch16_224"
RESOLUTION = 32
N_CLASSES = 3
CLASS_NAMES = ["sky", "road", "tree"]
# Four clusters (one extra): cluster 2 is unmatched, as Hungarian matching leaves it.
CLUSTER_TO_CLASS = [2, 0, -1, 1]


def write_run(root: Path, weights_source: str, with_assignment: bool = True) -> Path:
    """A project folder holding artifacts/model (+ assignment.json) and a params.yaml."""
    torch.manual_seed(0)
    params = TrainParams(n_codes=8, extra_clusters=1)
    info = {
        "in_dim": 192,
        "n_classes": N_CLASSES,
        "class_names": CLASS_NAMES,
        "ignore_index": 255,
        "backbone": BACKBONE,
        "backbone_weights": weights_source,
        "resolution": RESOLUTION,
        "seed": 0,
        "train": params_to_dict(params),
        "linear_probe_trained": False,
    }
    save_model(build_model(192, N_CLASSES, params, info), root / "artifacts" / "model")
    if with_assignment:
        assignment = {"cluster_to_class": CLUSTER_TO_CLASS, "class_names": CLASS_NAMES}
        (root / "artifacts" / "assignment.json").write_text(json.dumps(assignment))
    # What the run's cluster and crf stages recorded in their stores; params.yaml says otherwise
    # (edited after the run), and must not change how the run predicts.
    zarr.open_group(str(root / "artifacts" / "predictions.zarr"), mode="w").attrs.update({"alpha": 3.0, "flip": True})
    crf = {**dataclasses.asdict(CRFParams()), "iterations": 5}
    zarr.open_group(str(root / "artifacts" / "crf.zarr"), mode="w").attrs.update({"crf": crf})
    (root / "params.yaml").write_text("cluster:\n  alpha: 9.0\n  flip: false\ncrf:\n  iterations: 1\n")
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose model.json records a checkpoint relative to the run folder."""
    root = tmp_path_factory.mktemp("run")
    torch.manual_seed(1)
    vit = timm.create_model(BACKBONE, pretrained=False, num_classes=0)
    (root / "weights").mkdir()
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(root / "weights" / "vit.safetensors"))
    return write_run(root, "file:weights/vit.safetensors")


@pytest.fixture(scope="module")
def run(run_dir: Path) -> Run:
    return load_run(run_dir, device="cpu")
