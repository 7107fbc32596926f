"""Faults and misuse around stored artifacts: out of room, damaged model files, a checkpoint that no
longer matches a run, images that share a stem, unknown presets.

Each case must end in one sentence (exit status 2 from the command line) and leave what
was already computed intact, so a rerun completes it exactly.
"""

from __future__ import annotations

import csv
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr
from PIL import Image
from safetensors.torch import save_file

from stego_tasks.config import TrainParams, load_params
from stego_tasks.demo_data import demo_data
from stego_tasks.ingest import ingest
from stego_tasks.method.model import build_model, load_model, save_model
from stego_tasks.runtime import content_hash
from tests.conftest import REPO

TINY = "vit_tiny_patch16_224"
TINY_PARAMS = {
    "backbone": {"name": TINY, "weights": "random"},
    "extract": {"resolution": 32, "val_resolution": 32, "batch_size": 2, "device": "cpu"},
    "runtime": {"decode_workers": 1},
}


def _stego(args: list[str], cwd: Path, file_size_limit: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:
        if file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
        preexec_fn=limit, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )


def _project(tmp_path: Path) -> Path:
    demo_data(tmp_path / "corpus", n_train=4, n_val=3, size=48)
    params = {**TINY_PARAMS, "corpus": {"root": str(tmp_path / "corpus"), "n_classes": 5, "demo": False}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def _one_sentence(result: subprocess.CompletedProcess, command: str) -> str:
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.returncode == 2, f"{command} exited {result.returncode}:\n{result.stderr[-3000:]}"
    assert lines and lines[-1].startswith(f"stego {command}: error: "), f"no one-sentence error:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, f"a traceback reached the user:\n{result.stderr[-3000:]}"
    return lines[-1]


# --- out of room ------------------------------------------------------------------------------

@pytest.mark.slow  # two extractions: about 20 s
def test_extract_out_of_room_is_one_sentence_and_the_rerun_completes_the_store_exactly(tmp_path):
    project = _project(tmp_path / "limited")
    args = ["extract", "--no-prefect", "--manifest", "manifest.parquet", "--features", "features.zarr"]
    assert _stego(["ingest", "--no-prefect", "--manifest", "manifest.parquet"], project).returncode == 0
    # 6 KiB per file: the first train feature shard (10 five-crops of a ViT-Ti) does not fit.
    failed = _stego(args, project, file_size_limit=6 * 1024)
    message = _one_sentence(failed, "extract")
    for part in ("ran out of room writing", "features.zarr", "File too large", "kept", "rerun `stego extract`"):
        assert part in message, f"the out-of-room sentence lacks {part!r}: {message}"
    assert _stego(args, project).returncode == 0, "the rerun after freeing room failed"

    clean = _project(tmp_path / "clean")
    for step in (["ingest", "--no-prefect", "--manifest", "manifest.parquet"], args):
        assert _stego(step, clean).returncode == 0
    got, want = (zarr.open_group(str(p / "features.zarr"), mode="r") for p in (project, clean))
    for split in ("train", "val"):
        for name in want[split].array_keys():
            assert np.array_equal(got[split][name][:], want[split][name][:]), f"{split}/{name} differs after the resumed run"


def test_an_atomic_artifact_out_of_room_names_it_and_keeps_the_previous_one(tmp_path):
    project = _project(tmp_path)
    assert _stego(["ingest", "--no-prefect", "--manifest", "manifest.parquet"], project).returncode == 0
    before = (project / "manifest.parquet").read_bytes()
    failed = _stego(["ingest", "--no-prefect", "--manifest", "manifest.parquet"], project, file_size_limit=512)
    message = _one_sentence(failed, "ingest")
    assert "ran out of room writing" in message and "manifest.parquet" in message, message
    assert (project / "manifest.parquet").read_bytes() == before, "the previous manifest was damaged by the failed write"
    assert not [p for p in project.iterdir() if p.name.startswith(".manifest.parquet.")], "a temporary file was left behind"


# --- model files ------------------------------------------------------------------------------

def _model_dir(tmp_path: Path) -> Path:
    params = TrainParams(n_codes=8)
    model = build_model(16, 3, params, {"in_dim": 16, "n_classes": 3, "train": {"n_codes": 8}})
    save_model(model, tmp_path / "model")
    return tmp_path / "model"


def test_a_flipped_bit_in_model_safetensors_is_refused_in_one_sentence(tmp_path):
    model_dir = _model_dir(tmp_path)
    load_model(model_dir)  # intact: loads
    path = model_dir / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # a bit of the last tensor's data: still a valid safetensors file
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.safetensors does not match the checksum model\.json recorded"):
        load_model(model_dir)


def test_a_changed_tensor_in_the_train_checkpoint_is_refused_on_resume(tmp_path):
    from stego_tasks import train as train_stage

    model = build_model(16, 3, TrainParams(n_codes=8))
    optimizer = torch.optim.Adam(model.head.parameters())
    generator = torch.Generator().manual_seed(0)
    path = tmp_path / "checkpoint.pt"
    train_stage._save_checkpoint(path, model, [optimizer], 3, generator, [], identity=None)
    train_stage._load_checkpoint(path, model, [optimizer], generator)  # intact: resumes
    state = torch.load(path, weights_only=True)
    first = next(iter(state["modules"]["head"]))
    state["modules"]["head"][first] = state["modules"]["head"][first] + 1e-3  # silent damage, old checksum kept
    torch.save(state, path)
    with pytest.raises(ValueError, match="does not match the checksum recorded when it was written"):
        train_stage._load_checkpoint(path, model, [optimizer], generator)


def test_predict_refuses_a_checkpoint_whose_content_changed_since_the_features(tmp_path):
    import timm

    from stego_tasks.tools.trained_run import load_run

    weights = tmp_path / "backbone.safetensors"
    torch.manual_seed(0)
    save_file(timm.create_model(TINY, num_classes=0).state_dict(), str(weights))
    recorded = content_hash.sha256_of_file(weights)
    info = {"in_dim": 192, "n_classes": 3, "train": {"n_codes": 8}, "backbone": TINY, "resolution": 32,
            "backbone_weights": f"file:{weights}", "backbone_weights_sha256": recorded}
    save_model(build_model(192, 3, TrainParams(n_codes=8), info), tmp_path / "run" / "artifacts" / "model")
    torch.manual_seed(1)
    save_file(timm.create_model(TINY, num_classes=0).state_dict(), str(weights))  # replaced at the same path
    with pytest.raises(ValueError, match="not the file the run's features were extracted with"):
        load_run(tmp_path / "run")


# --- corpus and params ------------------------------------------------------------------------

def test_images_sharing_a_stem_are_quarantined_with_their_label_named(tmp_path):
    root = tmp_path / "corpus"
    demo_data(root, n_train=3, n_val=3, size=48)
    first = sorted((root / "images" / "train").glob("*.png"))[0]
    Image.open(first).convert("RGB").save(first.with_suffix(".jpg"), quality=95)
    summary = ingest(root, tmp_path / "manifest.parquet", tmp_path / "quarantine.csv")
    with open(tmp_path / "quarantine.csv", newline="") as handle:
        rows = {row["path"]: row["reason"] for row in csv.DictReader(handle)}
    for name in (first.name, first.with_suffix(".jpg").name):
        reason = rows.get(f"images/train/{name}", "")
        assert reason.startswith("ambiguous:") and f"labels/train/{first.stem}.png" in reason, f"{name}: {reason!r}"
    assert summary.n_images["train"] == 2, f"the two images sharing a stem were ingested: {summary.n_images}"


def test_an_unknown_preset_is_refused_naming_the_presets(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("preset: cocostuff_vits8\n")
    with pytest.raises(ValueError, match=r"preset 'cocostuff_vits8' is not a preset of this project; use one of \[.*'custom'"):
        load_params(path)
