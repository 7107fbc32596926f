"""Tests for stego_tasks.validate. GX imports slowly, so validate runs only 7 times here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from stego_tasks.data.manifest import MANIFEST_SCHEMA, read_manifest
from stego_tasks.demo_data import DEMO_N_CLASSES, demo_data
from stego_tasks.ingest import ingest
from stego_tasks.validate import ValidationFailed, validate

CAMVID = Path("/work/shared/data/camvid-dev")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("validate")
    root = base / "corpus"
    demo_data(root, n_train=4, n_val=3, size=32, seed=2)
    ingest(root, base / "manifest.parquet", base / "quarantine.csv")
    return root, base / "manifest.parquet"


def _labels(root: Path) -> dict[str, np.ndarray]:
    return {
        p.relative_to(root).as_posix(): np.asarray(Image.open(p))
        for p in sorted((root / "labels").rglob("*.png"))
    }


def _failure(tmp_path: Path, manifest: Path, root: Path, **kwargs) -> tuple[str, dict]:
    result_path = tmp_path / "result.json"
    with pytest.raises(ValidationFailed) as info:
        validate(manifest, root, result_path, **kwargs)
    written = json.loads(result_path.read_text())
    assert written == info.value.result, "result file differs from the exception's result"
    assert written["success"] is False, "failed validation written as success"
    return str(info.value), {e["name"]: e for e in written["expectations"]}


def test_passes_on_demo_corpus(demo, tmp_path):
    root, manifest = demo
    result = validate(
        manifest, root, tmp_path / "r.json", n_classes=DEMO_N_CLASSES, ignore_index=255
    )
    assert result["success"], f"demo corpus failed: {result['expectations']}"
    assert json.loads((tmp_path / "r.json").read_text()) == result, "result file differs"
    assert all(e["success"] for e in result["expectations"]), "an expectation failed"
    assert len(result["expectations"]) == 11, "label expectations missing from the result"
    assert result["counts"]["n_images"] == {"train": 4, "val": 3}, result["counts"]
    assert result["counts"]["n_labelled"] == 7, "every demo image has a label"
    # Independent histogram of label values with a plain loop.
    expected: dict[str, int] = {}
    for mask in _labels(root).values():
        for value in mask.ravel().tolist():
            expected[str(value)] = expected.get(str(value), 0) + 1
    assert result["counts"]["label_value_counts"] == expected, "label value counts differ"
    assert not list(tmp_path.glob(".*tmp")), "temporary file left behind"


def test_out_of_range_label_is_named(demo, tmp_path):
    root = tmp_path / "corpus"
    shutil.copytree(demo[0], root)
    bad = root / "labels" / "val" / "scene_0001.png"
    mask = np.asarray(Image.open(bad)).copy()
    mask[5:9, 5:9] = 7
    Image.fromarray(mask).save(bad)
    ingest(root, tmp_path / "m.parquet", tmp_path / "q.csv")
    message, checks = _failure(
        tmp_path, tmp_path / "m.parquet", root, n_classes=DEMO_N_CLASSES, ignore_index=255
    )
    assert "label_values_in_range" in message, message
    assert "labels/val/scene_0001.png" in message, f"offending file not named: {message}"
    assert "set corpus.n_classes to at least 8" in message, message
    assert "corpus.ignore_index to 7" in message, "single stray value should suggest ignore"
    assert checks["label_values_in_range"]["unexpected"] == ["labels/val/scene_0001.png"]
    failed = sorted(n for n, e in checks.items() if not e["success"])
    assert failed == ["label_values_in_range"], f"other checks failed too: {failed}"
    counts = json.loads((tmp_path / "result.json").read_text())["counts"]
    assert counts["label_value_counts"]["7"] == 16, "stray pixels miscounted"


def test_too_few_classes(demo, tmp_path):
    root, manifest = demo
    message, checks = _failure(tmp_path, manifest, root, n_classes=3, ignore_index=255)
    offending = sorted(p for p, m in _labels(root).items() if ((m >= 3) & (m != 255)).any())
    assert offending, "test corpus should have labels with classes 3 and 4"
    check = checks["label_values_in_range"]
    assert sorted(check["unexpected"]) == offending, f"{check['unexpected']} != {offending}"
    assert check["unexpected_count"] == len(offending), "unexpected count wrong"
    assert f"({len(offending)} failing: {offending[0]}" in message, message
    assert "set corpus.n_classes to at least 5 (now 3)" in message, message
    assert "ignore_index to" not in message, "two stray values cannot both be ignore"


def test_broken_manifest_names_each_failure(demo, tmp_path):
    root, manifest = demo
    rows = read_manifest(manifest).to_dict("records")
    rows = [r for r in rows if r["split"] == "val"] + [rows[0]]  # a single train image
    rows[1]["id"] = rows[0]["id"]
    rows[1]["path"] = "images/../images/val/scene_0001.png"
    rows[2]["split"] = "test"
    rows[3]["width"] = 8
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), tmp_path / "m.parquet")
    message, checks = _failure(
        tmp_path, tmp_path / "m.parquet", root, n_classes=DEMO_N_CLASSES, ignore_index=255
    )
    expected = {
        "ids_unique": sorted([rows[0]["path"], rows[1]["path"]]),
        "paths_relative": [rows[1]["path"]],
        "split_known": [rows[2]["path"]],
        "width_at_least_min_size": [rows[3]["path"]],
        "split_sizes": ["train"],
        "label_width_matches_image": [rows[3]["label_path"]],
    }
    failed = {n: sorted(e["unexpected"]) for n, e in checks.items() if not e["success"]}
    assert failed == expected, f"failed checks {failed}"
    for name in expected:
        assert name in message, f"{name} missing from the message: {message}"
    assert "put at least 2 usable images in images/train" in message, message


def test_argument_errors(demo, tmp_path):
    root, manifest = demo
    with pytest.raises(ValueError, match="ignore_index 3 is a class index"):
        validate(manifest, root, tmp_path / "r.json", n_classes=5, ignore_index=3)
    with pytest.raises(ValueError, match="n_classes must be at least 1"):
        validate(manifest, root, tmp_path / "r.json", n_classes=0, ignore_index=255)
    assert not (tmp_path / "r.json").exists(), "bad arguments should write nothing"


def test_camvid_dev(tmp_path):
    if not (CAMVID / "labels" / "train").is_dir():
        pytest.skip(f"{CAMVID} is not available")
    ingest(CAMVID, tmp_path / "m.parquet", tmp_path / "q.csv")
    result = validate(
        tmp_path / "m.parquet", CAMVID, tmp_path / "r.json", n_classes=11, ignore_index=11
    )
    assert result["success"], (
        f"camvid failed: {[e for e in result['expectations'] if not e['success']]}"
    )
    total = sum(result["counts"]["label_value_counts"].values())
    assert total == 174 * 480 * 360, f"pixel total {total} != 174 x 480 x 360"
    assert set(result["counts"]["label_value_counts"]) <= {str(v) for v in range(12)}


def test_unlabelled_corpus_passes_and_empty_manifest_fails(demo, tmp_path):
    root, manifest = demo
    rows = read_manifest(manifest).to_dict("records")
    for row in rows:
        row["label_path"], row["label_hash"] = "", ""
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), tmp_path / "m.parquet")
    result = validate(
        tmp_path / "m.parquet", root, tmp_path / "r.json", n_classes=5, ignore_index=255
    )
    assert result["success"] and result["counts"]["n_labelled"] == 0, result["counts"]
    names = [e["name"] for e in result["expectations"]]
    assert not [n for n in names if n.startswith("label_")], f"label checks ran: {names}"

    pq.write_table(pa.Table.from_pylist([], schema=MANIFEST_SCHEMA), tmp_path / "m.parquet")
    message, checks = _failure(
        tmp_path, tmp_path / "m.parquet", root, n_classes=5, ignore_index=255
    )
    assert checks["split_sizes"]["unexpected"] == ["train", "val"], checks["split_sizes"]
    assert "split_sizes (2 failing: train, val)" in message, message
