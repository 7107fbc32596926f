"""Tests for stego_tasks.demo_data: determinism, layout, label values, class coverage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stego_tasks.demo_data import (
    DEMO_CLASS_NAMES,
    DEMO_IGNORE_INDEX,
    DEMO_N_CLASSES,
    demo_data,
)

N_TRAIN, N_VAL, SIZE = 6, 4, 48


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo")
    return root, demo_data(root, n_train=N_TRAIN, n_val=N_VAL, size=SIZE, seed=3)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_same_seed_gives_byte_identical_files(corpus, tmp_path):
    root, _ = corpus
    demo_data(tmp_path, n_train=N_TRAIN, n_val=N_VAL, size=SIZE, seed=3)
    first, second = _files(root), _files(tmp_path)
    assert sorted(first) == sorted(second), "two calls wrote different file names"
    differing = [name for name in first if first[name] != second[name]]
    assert not differing, f"same seed gave different bytes for {differing}"


def test_other_seed_gives_other_images(corpus, tmp_path):
    root, _ = corpus
    demo_data(tmp_path, n_train=N_TRAIN, n_val=N_VAL, size=SIZE, seed=4)
    name = "images/train/scene_0000.png"
    assert (root / name).read_bytes() != (tmp_path / name).read_bytes(), "seed is ignored"


def test_layout_and_formats(corpus):
    root, summary = corpus
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        images = sorted(p.name for p in (root / "images" / split).iterdir())
        labels = sorted(p.name for p in (root / "labels" / split).iterdir())
        assert len(images) == n, f"{split}: expected {n} images, found {len(images)}"
        assert images == labels, f"{split}: image and label names differ"
        for name in images:
            with Image.open(root / "images" / split / name) as im:
                assert (im.format, im.mode, im.size) == ("PNG", "RGB", (SIZE, SIZE)), name
                assert not im.info.get("exif") and "dpi" not in im.info, f"{name} has metadata"
            with Image.open(root / "labels" / split / name) as lab:
                assert (lab.format, lab.mode, lab.size) == ("PNG", "L", (SIZE, SIZE)), name
    assert summary["n_train"] == N_TRAIN and summary["n_val"] == N_VAL, "summary counts wrong"
    assert summary["class_names"] == list(DEMO_CLASS_NAMES), "summary class names wrong"
    assert summary["n_classes"] == DEMO_N_CLASSES == 5, "expected 5 demo classes"


def test_label_values_classes_and_counts(corpus):
    root, summary = corpus
    for split in ("train", "val"):
        present: set[int] = set()
        hist = [0] * DEMO_N_CLASSES
        for path in sorted((root / "labels" / split).glob("*.png")):
            lab = np.asarray(Image.open(path))
            values = set(np.unique(lab).tolist())
            allowed = set(range(DEMO_N_CLASSES)) | {DEMO_IGNORE_INDEX}
            assert values <= allowed, f"{path.name}: values {values - allowed} out of range"
            classes = values - {DEMO_IGNORE_INDEX}
            assert 3 <= len(classes) <= 5, f"{path.name}: {len(classes)} classes, want 3-5"
            ignore_share = float((lab == DEMO_IGNORE_INDEX).mean())
            assert 0 < ignore_share < 0.1, f"{path.name}: ignore share {ignore_share:.3f}"
            present |= classes
            # Independent count with a plain loop over the classes.
            for c in range(DEMO_N_CLASSES):
                hist[c] += int((lab == c).sum())
        assert present == set(range(DEMO_N_CLASSES)), f"{split} misses classes"
        assert summary["class_pixel_counts"][split] == hist, f"{split}: pixel counts differ"


def test_classes_differ_in_colour_and_texture(corpus):
    root, _ = corpus
    means, stds = np.zeros((DEMO_N_CLASSES, 3)), np.zeros(DEMO_N_CLASSES)
    images = sorted((root / "images" / "train").glob("*.png"))
    pixels = {c: [] for c in range(DEMO_N_CLASSES)}
    for path in images:
        img = np.asarray(Image.open(path)).astype(float)
        lab = np.asarray(Image.open(root / "labels" / "train" / path.name))
        # Horizontal neighbour differences measure texture, independent of colour.
        grad = np.abs(np.diff(img.mean(axis=2), axis=1))
        for c in range(DEMO_N_CLASSES):
            inside = (lab[:, :-1] == c) & (lab[:, 1:] == c)
            pixels[c].append((img[:, :-1][inside], grad[inside]))
    for c in range(DEMO_N_CLASSES):
        means[c] = np.concatenate([p[0] for p in pixels[c]]).mean(axis=0)
        stds[c] = np.concatenate([p[1] for p in pixels[c]]).mean()
    for a in range(DEMO_N_CLASSES):
        for b in range(a + 1, DEMO_N_CLASSES):
            dist = np.abs(means[a] - means[b]).max()
            assert dist > 15, f"{DEMO_CLASS_NAMES[a]} vs {DEMO_CLASS_NAMES[b]}: colours too close"
    assert stds[0] < 5 and stds[1] > 15, f"sky should be smooth, grass noisy: {stds}"


def test_too_few_images_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 3 images per split"):
        demo_data(tmp_path, n_train=2, n_val=5)
    with pytest.raises(ValueError, match="size >= 32"):
        demo_data(tmp_path, size=16)
