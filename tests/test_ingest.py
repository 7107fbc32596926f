"""Tests for stego_tasks.ingest: manifest content, quarantine, ids, atomic writes."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from stego_tasks import ingest as ingest_mod
from stego_tasks.data.corpus_layout import EmptyCorpusError
from stego_tasks.data.manifest import MANIFEST_SCHEMA, read_manifest
from stego_tasks.demo_data import demo_data
from stego_tasks.ingest import IngestSummary, ingest

CAMVID = Path("/work/shared/data/camvid-dev")


def _corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    demo_data(root, n_train=4, n_val=3, size=32, seed=1)
    return root


def _run(root: Path, out: Path, **kwargs) -> tuple[IngestSummary, list[dict], dict[str, str]]:
    summary = ingest(root, out / "manifest.parquet", out / "quarantine.csv", **kwargs)
    rows = read_manifest(out / "manifest.parquet").to_dict("records")
    with open(out / "quarantine.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["path", "split", "reason"], "quarantine header wrong"
        quarantine = {r["path"]: r["reason"] for r in reader}
    return summary, rows, quarantine


def _png(path: Path, h: int, w: int, seed: int = 0, channels: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (h, w, channels) if channels > 1 else (h, w)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def test_manifest_content_matches_independent_reads(tmp_path):
    root = _corpus(tmp_path)
    summary, rows, quarantine = _run(root, tmp_path / "out")
    assert quarantine == {}, f"clean corpus quarantined {quarantine}"
    assert summary == IngestSummary({"train": 4, "val": 3}, 0, 7, 0, 0), f"summary {summary}"
    table = pq.read_table(tmp_path / "out" / "manifest.parquet")
    assert table.schema.remove_metadata() == MANIFEST_SCHEMA, "manifest schema differs"
    expected_paths = [
        f"images/{s}/scene_{i:04d}.png" for s, n in (("train", 4), ("val", 3)) for i in range(n)
    ]
    assert [r["path"] for r in rows] == expected_paths, "rows not in split-then-name order"
    assert [r["id"] for r in rows] == list(range(7)), "ids not 0..n-1 on a first run"
    for r in rows:
        image = root / r["path"]
        assert r["hash"] == hashlib.sha256(image.read_bytes()).hexdigest(), f"{r['path']} hash"
        with Image.open(image) as im:
            assert (r["width"], r["height"], r["mode"]) == (*im.size, im.mode), r["path"]
        assert r["split"] == r["path"].split("/")[1], f"{r['path']} split {r['split']}"
        label = r["path"].replace("images/", "labels/", 1)
        assert r["label_path"] == label, f"{r['path']} label path {r['label_path']}"
        assert r["label_hash"] == hashlib.sha256((root / label).read_bytes()).hexdigest()
        assert not Path(r["path"]).is_absolute() and ".." not in r["path"], "unsafe path"


def test_images_without_labels_are_kept(tmp_path):
    root = _corpus(tmp_path)
    (root / "labels" / "val" / "scene_0001.png").unlink()
    _, rows, quarantine = _run(root, tmp_path / "out")
    row = next(r for r in rows if r["path"] == "images/val/scene_0001.png")
    assert (row["label_path"], row["label_hash"]) == ("", ""), "missing label not empty"
    assert quarantine == {}, "an unlabelled image is not a bad image"


def _patched_bomb(path: Path) -> None:
    png = _png(path, 16, 16).read_bytes()
    data = struct.pack(">II", 9000, 9000) + png[24:29]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + data) & 0xFFFFFFFF)
    path.write_bytes(png[:16] + data + crc + png[33:])


def test_bad_files_are_quarantined_with_reasons(tmp_path, monkeypatch):
    root = _corpus(tmp_path)
    train, val = root / "images" / "train", root / "images" / "val"
    good = _png(tmp_path / "big.jpg", 64, 64)
    (train / "trunc.jpg").write_bytes(good.read_bytes()[:300])
    (train / "notes.jpg").write_text("not a picture")
    (train / "empty.png").write_bytes(b"")
    _png(train / "tiny.png", 8, 40)
    _patched_bomb(train / "bomb.png")
    (train / "folder.png").mkdir()
    _png(train / "size_mismatch.png", 40, 40, seed=5)
    _png(root / "labels" / "train" / "size_mismatch.png", 30, 40, channels=1)
    _png(train / "bad_label.png", 40, 40, seed=6)
    (root / "labels" / "train" / "bad_label.png").write_bytes(b"\x89PNG garbage")
    _png(train / "rgb_label.png", 40, 40, seed=7)
    _png(root / "labels" / "train" / "rgb_label.png", 40, 40)
    (train / "README.txt").write_text("ignored: not an image extension")
    outside = _png(tmp_path / "outside.png", 40, 40, seed=8)
    (train / "link_out.png").symlink_to(outside)
    (train / "zz_link_in.png").symlink_to(train / "scene_0002.png")
    shutil.copy(train / "scene_0001.png", train / "a_copy.png")  # sorts first: it is kept
    shutil.copy(train / "scene_0000.png", val / "zz_copy.png")

    seen: list[Path] = []
    real_hash = ingest_mod.sha256_file
    monkeypatch.setattr(ingest_mod, "sha256_file", lambda p: seen.append(Path(p)) or real_hash(p))
    summary, rows, quarantine = _run(root, tmp_path / "out")

    expected = {
        "images/train/README.txt": "skipped: not an image file name (.txt)",
        "images/train/trunc.jpg": "truncated or corrupt image",
        "images/train/notes.jpg": "not an image file",
        "images/train/empty.png": "empty file",
        "images/train/tiny.png": "image of 40x8 px is smaller than 16 px on a side",
        "images/train/bomb.png": "image of 9000x9000 px exceeds the 50 MP limit",
        "images/train/folder.png": "not a regular file",
        "images/train/size_mismatch.png": "label labels/train/size_mismatch.png is 40x30 px but the image is 40x40 px",
        "images/train/bad_label.png": "label labels/train/bad_label.png: not an image file",
        "images/train/rgb_label.png": "must be single-channel class-index PNGs",
        "images/train/link_out.png": "symlink resolving outside the corpus root (not followed)",
        "images/train/zz_link_in.png": "duplicate of images/train/scene_0002.png",
        "images/train/scene_0001.png": "duplicate of images/train/a_copy.png",
        "images/val/zz_copy.png": "duplicate of images/train/scene_0000.png",
    }
    assert sorted(quarantine) == sorted(expected), f"quarantined set differs: {quarantine}"
    for path, reason in expected.items():
        assert reason in quarantine[path], f"{path}: reason {quarantine[path]!r} lacks {reason!r}"
    kept = {r["path"] for r in rows}
    assert kept == {
        "images/train/a_copy.png",
        "images/train/scene_0000.png",
        "images/train/scene_0002.png",
        "images/train/scene_0003.png",
        "images/val/scene_0000.png",
        "images/val/scene_0001.png",
        "images/val/scene_0002.png",
    }, f"kept {kept}"
    assert summary.n_quarantined == len(expected) - 1, "summary quarantine count wrong"
    assert summary.n_skipped == 1, "README.txt is skipped (listed, not quarantined)"
    assert outside.resolve() not in {p.resolve() for p in seen}, "outside symlink was read"


def test_unreadable_file_chmod(tmp_path):
    root = _corpus(tmp_path)
    target = root / "images" / "train" / "scene_0003.png"
    target.chmod(0)
    try:
        try:
            target.read_bytes()
        except PermissionError:
            pass
        else:  # root (CAP_DAC_OVERRIDE) reads mode-000 files
            pytest.skip("this process can read mode-000 files; see test_unreadable_file_simulated")
        _, _, quarantine = _run(root, tmp_path / "out")
    finally:
        target.chmod(0o644)
    assert quarantine == {
        "images/train/scene_0003.png": "file is not readable (permission denied)"
    }, quarantine


def test_unreadable_file_simulated(tmp_path, monkeypatch):
    """Simulates EACCES from the OS at the first read (the hash), since root can read
    mode-000 files; what it checks is the mapping of PermissionError to a reason."""
    root = _corpus(tmp_path)
    target = root / "images" / "train" / "scene_0003.png"
    real_hash = ingest_mod.sha256_file

    def fake_hash(path: Path) -> str:
        if Path(path) == target:
            raise PermissionError(13, "Permission denied", str(path))
        return real_hash(path)

    monkeypatch.setattr(ingest_mod, "sha256_file", fake_hash)
    _, rows, quarantine = _run(root, tmp_path / "out")
    assert quarantine == {
        "images/train/scene_0003.png": "file is not readable (permission denied)"
    }, quarantine
    assert len(rows) == 6, f"other images should stay, got {len(rows)} rows"


def test_incremental_reingest_keeps_ids(tmp_path):
    root = _corpus(tmp_path)
    out = tmp_path / "out"
    _, first, _ = _run(root, out)
    ids = {r["path"]: r["id"] for r in first}
    train = root / "images" / "train"
    (root / "images" / "val" / "scene_0002.png").unlink()  # the highest id (6) goes away
    _png(train / "scene_0000.png", 32, 32, seed=11)  # content changes
    _png(train / "new_b.png", 32, 32, seed=12)
    _png(root / "images" / "val" / "new_a.png", 32, 32, seed=13)
    _png(train / "new_a.png", 32, 32, seed=14)

    summary, second, _ = _run(root, out)
    got = {r["path"]: r["id"] for r in second}
    for path in [
        "images/train/scene_0001.png",
        "images/train/scene_0003.png",
        "images/val/scene_0000.png",
        "images/val/scene_0001.png",
    ]:
        assert got[path] == ids[path], f"{path} changed id {ids[path]} -> {got[path]}"
    # New and changed files in split-then-name order get 7, 8, ... (6 is not reused).
    assert got["images/train/new_a.png"] == 7 and got["images/train/new_b.png"] == 8, got
    assert got["images/train/scene_0000.png"] == 9, "changed file should get a new id"
    assert got["images/val/new_a.png"] == 10, got
    assert "images/val/scene_0002.png" not in got, "removed file still listed"
    assert (summary.n_new, summary.n_kept, summary.n_removed) == (4, 5, 2), f"{summary}"

    (train / "new_b.png").unlink()
    _png(train / "new_c.png", 32, 32, seed=15)
    _, third, _ = _run(root, out)
    assert {r["path"]: r["id"] for r in third}["images/train/new_c.png"] == 11, "id reused"


def test_reingest_applies_a_new_min_size(tmp_path):
    root = _corpus(tmp_path)
    _run(root, tmp_path / "out")
    summary, rows, quarantine = _run(root, tmp_path / "out", min_size=33)
    assert rows == [] and summary.n_quarantined == 7, "unchanged rows skipped the size check"
    assert all("smaller than 33 px" in r for r in quarantine.values()), quarantine


def test_empty_corpus_error(tmp_path):
    (tmp_path / "images" / "train").mkdir(parents=True)
    with pytest.raises(EmptyCorpusError, match="no images found in .*images/train") as info:
        ingest(tmp_path, tmp_path / "m.parquet", tmp_path / "q.csv")
    assert "expected the layout ROOT/images/{train,val}/" in str(info.value), str(info.value)
    _png(tmp_path / "images" / "flat.png", 20, 20)
    with pytest.raises(ValueError, match="move them into images/train"):
        ingest(tmp_path, tmp_path / "m.parquet", tmp_path / "q.csv")
    assert not (tmp_path / "m.parquet").exists(), "manifest written for an empty corpus"


def test_outputs_are_atomic(tmp_path, monkeypatch):
    root = _corpus(tmp_path)
    out = tmp_path / "out"
    _run(root, out)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.parquet", "quarantine.csv"]
    before = (out / "manifest.parquet").read_bytes()
    _png(root / "images" / "train" / "new.png", 32, 32, seed=3)

    def boom(table, where, **kwargs):
        Path(where).write_bytes(b"half a parquet file")
        raise OSError("disk full")

    monkeypatch.setattr(ingest_mod.pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        _run(root, out)
    assert (out / "manifest.parquet").read_bytes() == before, "failed write changed manifest"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.parquet", "quarantine.csv"], (
        f"temporary files left: {sorted(p.name for p in out.iterdir())}"
    )


def test_camvid_dev(tmp_path):
    if not (CAMVID / "images" / "train").is_dir():
        pytest.skip(f"{CAMVID} is not available")
    summary, rows, quarantine = _run(CAMVID, tmp_path / "out")
    assert summary.n_images == {"train": 123, "val": 51}, f"{summary.n_images}"
    assert quarantine == {}, f"camvid files quarantined: {list(quarantine.items())[:3]}"
    assert all((r["width"], r["height"]) == (480, 360) for r in rows), "camvid size not 480x360"
    assert all(r["label_path"] for r in rows), "every camvid image has a label"
    first = rows[0]
    assert first["hash"] == hashlib.sha256((CAMVID / first["path"]).read_bytes()).hexdigest()


def test_non_utf8_name_and_corrupt_previous_manifest(tmp_path):
    root = _corpus(tmp_path)
    raw = os.fsencode(root / "images" / "train") + b"/bad\xff.png"
    with open(raw, "wb") as f:
        f.write((root / "images" / "train" / "scene_0000.png").read_bytes())
    _, rows, quarantine = _run(root, tmp_path / "out")
    assert quarantine == {"images/train/bad\\xff.png": "file name is not valid UTF-8; rename it"}
    assert len(rows) == 7, "the other images must stay"
    (tmp_path / "out" / "manifest.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="cannot be read .* delete it to ingest from scratch"):
        _run(root, tmp_path / "out")


def test_a_manifest_path_that_is_a_folder_is_refused_without_advice_to_delete_it(tmp_path):
    """A folder given as --manifest was read as a damaged manifest, and the sentence said to delete it."""
    root = _corpus(tmp_path)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"mine is a folder but the manifest is a file; refusing to write over the folder") as error:
        ingest(root, folder, tmp_path / "q.csv")
    assert "delete" not in str(error.value)
    assert (folder / "notes.txt").read_text() == "mine"
