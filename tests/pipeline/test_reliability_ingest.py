"""What a corpus can hold that ingest must survive (issue 12, round two): entries that are
not regular files never block or crash the scan, every entry that is not ingested is
listed with a reason (quarantined, or skipped: hidden files, sub-folders, other types),
labels are converted exactly or quarantined (never clipped, never lossy), and the stage
ends with one summary line. Every test builds its own small demo corpus.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stego_tasks.data.corpus_files import is_hidden, is_image_name
from stego_tasks.data.embed import ChunkJob, load_chunk
from stego_tasks.data.images import load_label
from stego_tasks.data.manifest import read_manifest
from stego_tasks.demo_data import demo_data
from stego_tasks.ingest import ingest
from stego_tasks.tools.predict import collect_images


def _corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    demo_data(root, n_train=4, n_val=3, size=32, seed=1)
    return root


def _listed(quarantine: Path) -> dict[str, str]:
    with quarantine.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["path", "split", "reason"], f"header {reader.fieldnames}"
        return {row["path"]: row["reason"] for row in reader}


def _noise_png(path: Path, seed: int, size: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


# --- entries that are not regular files ------------------------------------------------------


def test_pipes_sockets_links_and_folders_never_block_and_are_quarantined(tmp_path, monkeypatch):
    root = _corpus(tmp_path)
    train, labels = root / "images" / "train", root / "labels" / "train"
    os.mkfifo(train / "pipe.png")  # opening it for reading would wait for a writer forever
    (labels / "scene_0001.png").unlink()
    os.mkfifo(labels / "scene_0001.png")  # the label of a good image
    monkeypatch.chdir(train)  # a socket path is limited to ~107 bytes: bind by a short relative name
    server = socket.socket(socket.AF_UNIX)
    server.bind("sock.jpg")
    (train / "loop.png").symlink_to(train / "loop.png")
    (train / "broken.png").symlink_to(train / "gone.png")
    (train / "dir.png").mkdir()
    (root / "images" / "val" / "null.png").symlink_to("/dev/null")
    out = tmp_path / "out"
    out.mkdir()
    code = (
        "import sys; from pathlib import Path; from stego_tasks.ingest import ingest; "
        "ingest(Path(sys.argv[1]), Path(sys.argv[2]) / 'manifest.parquet', Path(sys.argv[2]) / 'quarantine.csv')"
    )
    try:
        result = subprocess.run([sys.executable, "-c", code, str(root), str(out)], capture_output=True, text=True,
                                timeout=120, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("ingest blocked on a named pipe (killed after 120 s)")
    finally:
        server.close()
    assert result.returncode == 0, f"ingest failed:\n{result.stderr[-3000:]}"

    listed = _listed(out / "quarantine.csv")
    expected = {
        "images/train/pipe.png": "a named pipe (FIFO), not a regular file",
        "images/train/scene_0001.png": "label labels/train/scene_0001.png: a named pipe (FIFO), not a regular file",
        "images/train/sock.jpg": "a socket, not a regular file",
        "images/train/loop.png": "symlink loop",
        "images/train/broken.png": "broken symlink",
        "images/train/dir.png": "a directory named like an image, not a regular file",
        "images/val/null.png": "not a regular file",  # a character device, and outside the corpus
    }
    assert set(listed) == set(expected), f"listed {listed}"
    for path, reason in expected.items():
        assert reason in listed[path], f"{path}: {listed[path]!r} lacks {reason!r}"
    kept = sorted(read_manifest(out / "manifest.parquet")["path"])
    assert kept == [f"images/train/scene_000{i}.png" for i in (0, 2, 3)] + [f"images/val/scene_000{i}.png" for i in range(3)]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads mode-000 files")
def test_unreadable_label_is_quarantined(tmp_path):
    root = _corpus(tmp_path)
    label = root / "labels" / "train" / "scene_0002.png"
    label.chmod(0)
    try:
        ingest(root, tmp_path / "m.parquet", tmp_path / "q.csv")
    finally:
        label.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert _listed(tmp_path / "q.csv") == {
        "images/train/scene_0002.png": "label labels/train/scene_0002.png: file is not readable (permission denied)"
    }


# --- everything not ingested is listed; hidden files mean the same to ingest and predict ----


def test_hidden_files_folders_and_other_types_are_listed_as_skipped_and_predict_agrees(tmp_path, caplog):
    root = _corpus(tmp_path)
    train = root / "images" / "train"
    (train / ".DS_Store").write_bytes(b"\0Bud1")
    _noise_png(train / "._scene_0000.png", seed=9)  # an AppleDouble name; even a real PNG there is no input
    (train / "notes.txt").write_text("a note")
    _noise_png(train / "sub" / "deeper.png", seed=10)
    _noise_png(root / "images" / "stray.png", seed=11)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "labels" / "train" / "orphan.png")
    (root / "images" / "val" / "scene_0002.png").write_bytes(b"not a png")  # one real quarantine

    quarantine = tmp_path / "quarantine.csv"
    with caplog.at_level(logging.INFO, logger="stego"):
        summary = ingest(root, tmp_path / "manifest.parquet", quarantine)
    listed = _listed(quarantine)
    skipped = {
        "images/train/.DS_Store": "skipped: hidden file",
        "images/train/._scene_0000.png": "skipped: hidden file",
        "images/train/notes.txt": "skipped: not an image file name (.txt)",
        "images/train/sub": "skipped: sub-folder",
        "images/stray.png": "skipped: not in images/train or images/val",
        "labels/train/orphan.png": "skipped: label without an image",
    }
    assert set(listed) == set(skipped) | {"images/val/scene_0002.png"}, f"listed {listed}"
    for path, reason in skipped.items():
        assert listed[path].startswith(reason), f"{path}: {listed[path]!r}"
    assert not listed["images/val/scene_0002.png"].startswith("skipped"), "a bad image is quarantined, not skipped"
    assert (summary.n_quarantined, summary.n_skipped, sum(summary.n_images.values())) == (1, 6, 6), summary
    line = f"ingest: 6 images ingested, 1 quarantined, 6 skipped; see {quarantine}"
    assert line in [record.getMessage() for record in caplog.records], f"no summary line in {caplog.records}"

    # `stego predict` on the same folder takes exactly the top-level images ingest took.
    ingested = {Path(p).name for p in read_manifest(tmp_path / "manifest.parquet")["path"] if p.startswith("images/train/")}
    found, _ = collect_images([train])
    top_level = {rel.name for _, rel in found if rel.parent == Path(".")}
    assert top_level == ingested, f"predict takes {top_level}, ingest {ingested}"
    left_out = {n for n in os.listdir(train) if is_image_name(n) and (train / n).is_file()} - top_level
    assert left_out == {"._scene_0000.png"} and all(map(is_hidden, left_out)), f"left out {left_out}"


# --- labels: converted exactly or quarantined ------------------------------------------------


def _save_label(path: Path, values: np.ndarray, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "L":
        Image.fromarray(values.astype(np.uint8), mode="L").save(path)
    elif kind == "1":
        Image.fromarray(values.astype(bool)).save(path)
    elif kind == "P+transparency":
        image = Image.fromarray(values.astype(np.uint8), mode="L").convert("P")
        image.putpalette([(i * 37) % 256 for i in range(768)])
        image.save(path, transparency=0)
    elif kind == "I;16":
        Image.fromarray(values.astype(np.uint16)).save(path)
    elif kind == "I;16B":
        Image.frombytes("I;16B", values.shape[::-1], values.astype(">u2").tobytes()).save(path)
    elif kind == "LA":
        Image.fromarray(values.astype(np.uint8), mode="L").convert("LA").save(path)
    elif kind in ("JPEG", "WEBP"):
        buffer = io.BytesIO()
        Image.fromarray(values.astype(np.uint8), mode="L").save(buffer, format=kind, quality=90)
        path.write_bytes(buffer.getvalue())  # named .png (or .jpg), stored lossy
    else:
        raise AssertionError(kind)


GOOD = ["L", "1", "P+transparency", "I;16", "I;16B"]
BAD = {
    "I;16 wide": ("I;16", 300, "label values reach 300, above 255"),
    "JPEG in a .png": ("JPEG", 5, "labels must be lossless PNG: JPEG compression changes class ids"),
    "WebP in a .png": ("WEBP", 5, "labels must be lossless PNG: WebP"),
    "LA": ("LA", 5, "must be single-channel class-index PNGs"),
}


def test_labels_are_converted_exactly_or_quarantined_and_never_crash_extract(tmp_path):
    root = _corpus(tmp_path)
    train, labels = root / "images" / "train", root / "labels" / "train"
    rng = np.random.default_rng(3)
    wanted = {}
    for index, kind in enumerate(GOOD):
        values = rng.integers(0, 2 if kind == "1" else 6, (40, 40))
        values[0, :3] = [0, 1, 1]
        _noise_png(train / f"good_{index}.png", seed=100 + index)
        _save_label(labels / f"good_{index}.png", values, kind)
        wanted[f"good_{index}"] = values
    for index, (kind, top, _) in enumerate(BAD.values()):
        values = rng.integers(0, 6, (40, 40))
        values[5, 5] = top
        _noise_png(train / f"bad_{index}.png", seed=200 + index)
        _save_label(labels / f"bad_{index}.png", values, kind)
    _noise_png(train / "jpeg_named.png", seed=300)
    _save_label(labels / "jpeg_named.jpg", np.zeros((40, 40)), "JPEG")  # no .png beside it
    _noise_png(train / "small_label.png", seed=301)
    _save_label(labels / "small_label.png", np.zeros((30, 40)), "I;16")

    ingest(root, tmp_path / "m.parquet", tmp_path / "q.csv")
    listed = _listed(tmp_path / "q.csv")
    expected = {f"images/train/bad_{i}.png": reason for i, (_, _, reason) in enumerate(BAD.values())}
    expected["images/train/jpeg_named.png"] = (
        "label labels/train/jpeg_named.jpg: labels must be lossless PNG: JPEG compression changes class ids"
    )
    expected["images/train/small_label.png"] = "is 40x30 px but the image is 40x40 px"
    assert set(listed) == set(expected), f"listed {listed}"
    for path, reason in expected.items():
        assert reason in listed[path], f"{path}: {listed[path]!r} lacks {reason!r}"

    rows = read_manifest(tmp_path / "m.parquet").set_index("path")
    for stem, values in wanted.items():
        label_path = rows.loc[f"images/train/{stem}.png", "label_path"]
        assert label_path == f"labels/train/{stem}.png", f"{stem}: label {label_path!r}"
        decoded = load_label(root / label_path)
        assert decoded.dtype == np.uint8 and np.array_equal(decoded, values), f"{stem}: label not exact"
        # Extract's own decode path (load + preprocess, before the backbone) takes it.
        job = ChunkJob(split="train", index=0, image_paths=(str(train / f"{stem}.png"),), label_paths=(str(root / label_path),),
                       backbone_name="unused", backbone_weights="random", resolution=32, five_crop=True, crop_ratio=0.5,
                       flip=False, ignore_index=255, device="cpu")
        chunk = load_chunk(job)
        assert chunk.labels.dtype == np.uint8 and set(np.unique(chunk.labels)) <= set(np.unique(values)), stem
