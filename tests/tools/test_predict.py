"""Tests for stego_tasks.tools.predict: any-size segmentation, flip averaging, CRF, files, CLI.

The run is built in `tests/tools/conftest.py` (fixtures `run_dir` and `run`): a random ViT-Ti/16
saved as a timm .safetensors file, an untrained head and probes, and an assignment.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from flows.tools import add_predict_arguments, predict_from_args
from stego_tasks.method.dense_crf import dense_crf
from stego_tasks.tools.predict import nearest_resize, predict_paths, segment_image
from stego_tasks.tools.trained_run import UNMATCHED, Run, load_run
from stego_tasks.tools.visualize import palette
from tests.tools.conftest import CLASS_NAMES, N_CLASSES, RESOLUTION


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random picture (blocks of colour plus noise), uint8 [H, W, 3]."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), dtype=np.int16)
    return np.clip(big + rng.integers(-20, 21, size=big.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    """Two good images (one in a sub-folder), a corrupt one, an empty one and a text file."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(_photo(37, 53, 1)).save(folder / "a.png")
    Image.fromarray(_photo(100, 30, 2)).save(folder / "sub" / "b.jpg", quality=95)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.mark.parametrize("height,width", [(37, 53), (100, 30), (32, 32), (17, 200), (300, 401)])
def test_output_has_the_input_size(run: Run, height: int, width: int):
    seg = segment_image(run, _photo(height, width), crf=False)
    assert seg.clusters.shape == (height, width) and seg.clusters.dtype == np.uint8, (
        f"clusters {seg.clusters.shape} {seg.clusters.dtype} for a {height}x{width} image"
    )
    assert seg.classes is not None and seg.classes.shape == (height, width), f"classes {seg.classes}"
    assert int(seg.clusters.max()) < run.n_clusters, f"cluster id {seg.clusters.max()} >= {run.n_clusters}"


def test_classes_are_the_assignment_of_clusters(run: Run):
    image = _photo(45, 61, 3)
    base = segment_image(run, image, crf=False).clusters
    # Make the cluster at the top-left pixel the unmatched one, so 255 must appear.
    unmatched = int(base[0, 0])
    others = iter(j for j in range(N_CLASSES))
    mapping = np.array([-1 if i == unmatched else next(others) % N_CLASSES for i in range(run.n_clusters)])
    seg = segment_image(dataclasses.replace(run, cluster_to_class=mapping), image, crf=False)
    expected = np.zeros_like(seg.clusters)
    for i in range(seg.clusters.shape[0]):
        for j in range(seg.clusters.shape[1]):
            cls = mapping[seg.clusters[i, j]]
            expected[i, j] = UNMATCHED if cls == -1 else cls
    assert np.array_equal(seg.classes, expected), "classes differ from cluster_to_class[clusters]"
    assert seg.classes[0, 0] == UNMATCHED, f"unmatched cluster gave class {seg.classes[0, 0]}"


def _manual_probs(run: Run, image: np.ndarray, flip: bool) -> np.ndarray:
    """Cluster probabilities [N, h, w] computed step by step, each network call on its own."""
    height, width = image.shape[:2]
    scale = RESOLUTION / min(height, width)
    size = (max(RESOLUTION, round(width * scale)), max(RESOLUTION, round(height * scale)))
    resized = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR), dtype=np.float32) / 255
    rh, rw = resized.shape[:2]
    padded = np.pad(resized, ((0, -rh % 16), (0, -rw % 16), (0, 0)), mode="reflect")
    # The backbone's own normalisation, as extract uses (timm's ViT-Ti: 0.5 / 0.5, not ImageNet's).
    mean, std = np.array(run.backbone.mean, np.float32), np.array(run.backbone.std, np.float32)
    x = torch.from_numpy(((padded - mean) / std).transpose(2, 0, 1)[None].copy())
    with torch.no_grad():
        code = run.model.head(run.backbone(x))
        if flip:
            mirrored = run.model.head(run.backbone(torch.flip(x, dims=[3])))
            code = (code + torch.flip(mirrored, dims=[3])) / 2
        code = F.interpolate(code, size=padded.shape[:2], mode="bilinear", align_corners=False)[:, :, :rh, :rw]
        centroids = run.model.cluster_probe.clusters
        sim = torch.einsum(
            "kc,bchw->bkhw", centroids / centroids.norm(dim=1, keepdim=True), code / code.norm(dim=1, keepdim=True)
        )
        return torch.softmax(run.alpha * sim, dim=1)[0].numpy()


@pytest.mark.parametrize("flip", [True, False])
def test_probabilities_match_a_manual_computation(run: Run, flip: bool):
    image = _photo(37, 53, 4)
    seg = segment_image(run, image, flip=flip, crf=False, keep_probs=True)
    manual = _manual_probs(run, image, flip)
    assert seg.cluster_probs.shape == manual.shape == (4, 32, 46), f"{seg.cluster_probs.shape} vs {manual.shape}"
    gap = float(np.abs(seg.cluster_probs - manual).max())
    assert gap < 1e-4, f"flip={flip}: probabilities differ from the manual computation by {gap}"
    other = _manual_probs(run, image, not flip)
    assert float(np.abs(seg.cluster_probs - other).max()) > 1e-3, "flip averaging changes nothing; test is blind"


def test_crf_refines_the_network_probabilities(run: Run):
    image = _photo(37, 53, 5)
    plain = segment_image(run, image, crf=False, keep_probs=True)
    refined = segment_image(run, image, crf=True, keep_probs=True)
    resized = np.array(Image.fromarray(image).resize((46, 32), Image.BILINEAR))
    expected = dense_crf(resized, np.log(plain.cluster_probs), run.crf_params)
    gap = float(np.abs(refined.cluster_probs - expected).max())
    assert gap < 1e-4, f"CRF output differs from dense_crf on the network probabilities by {gap}"
    back = F.interpolate(torch.from_numpy(expected.argmax(0)[None, None].astype(np.float32)), size=(37, 53), mode="nearest-exact")
    assert np.array_equal(refined.clusters, back[0, 0].numpy().astype(np.uint8)), "CRF argmax not mapped back by nearest"
    assert refined.clusters.shape == plain.clusters.shape, f"{refined.clusters.shape} vs {plain.clusters.shape}"


@pytest.mark.parametrize("src,dst", [((7, 9), (37, 53)), ((40, 30), (13, 11)), ((5, 5), (5, 5))])
def test_nearest_resize_matches_torch_nearest_exact(src, dst):
    label = np.random.default_rng(0).integers(0, 200, size=src).astype(np.uint8)
    ours = nearest_resize(label, *dst)
    theirs = F.interpolate(torch.from_numpy(label[None, None].astype(np.float32)), size=dst, mode="nearest-exact")
    assert np.array_equal(ours, theirs[0, 0].numpy().astype(np.uint8)), f"{src} -> {dst} differs from torch"


def test_bad_image_arrays_are_refused(run: Run):
    with pytest.raises(ValueError, match="uint8 RGB"):
        segment_image(run, np.zeros((20, 20, 3), np.float32))
    with pytest.raises(ValueError, match="aspect ratio"):
        segment_image(run, np.zeros((16, 400, 3), np.uint8))


def test_predict_paths_writes_pngs_and_skips_bad_files(run: Run, images_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    summary = predict_paths(run, [images_dir], out, crf=True)
    assert summary.written == 2, f"wrote {summary.written}, failed {summary.failed}"
    failed = {path.name: reason for path, reason in summary.failed}
    assert set(failed) == {"broken.png", "empty.jpg"}, f"failed: {summary.failed}"
    assert "empty" in failed["empty.jpg"], f"reason for the empty file: {failed['empty.jpg']}"
    for key, source in [("a", images_dir / "a.png"), ("sub/b", images_dir / "sub" / "b.jpg")]:
        photo = np.array(Image.open(source).convert("RGB"))
        expected = segment_image(run, photo, crf=True)
        for kind in ("clusters", "classes"):
            with Image.open(out / f"{key}_{kind}.png") as picture:
                assert picture.mode == "P" and picture.getpalette() is not None, f"{key}_{kind}: {picture.mode}"
                pal = np.array(picture.getpalette(), dtype=np.uint8).reshape(-1, 3)
                indices = np.array(picture)
            assert np.array_equal(pal[:4], palette(4)), f"{key}_{kind} palette {pal[:4].tolist()}"
            assert np.array_equal(indices, getattr(expected, kind)), f"{key}_{kind}.png pixels differ from segment_image"
        with Image.open(out / f"{key}_overlay.png") as picture:
            assert picture.mode == "RGB" and picture.size == (photo.shape[1], photo.shape[0]), f"overlay {picture}"
    leftovers = [p.name for p in out.rglob(".*")]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    legend = json.loads((out / "legend.json").read_text())
    assert [legend["classes"][str(j)]["name"] for j in range(N_CLASSES)] == CLASS_NAMES, f"legend {legend['classes']}"
    assert [legend["clusters"][str(i)]["class"] for i in range(4)] == [2, 0, None, 1], f"legend {legend['clusters']}"
    assert legend["clusters"]["3"]["colour"] == palette(4)[3].tolist(), f"cluster colour {legend['clusters']['3']}"


def test_run_without_assignment_writes_no_classes(run_dir: Path, images_dir: Path, tmp_path: Path):
    bare = tmp_path / "bare"
    shutil.copytree(run_dir, bare)
    (bare / "artifacts" / "assignment.json").unlink()
    run = load_run(bare, device="cpu")
    summary = predict_paths(run, [images_dir / "a.png"], tmp_path / "out", flip=False, crf=False)
    assert summary.written == 1 and not summary.failed, f"summary {summary}"
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["a_clusters.png", "a_overlay.png", "legend.json"], f"wrote {names}"


def test_main_from_args(run_dir: Path, images_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    parser = argparse.ArgumentParser()
    add_predict_arguments(parser)
    args = parser.parse_args([str(images_dir), "--run", str(run_dir), "--out", str(tmp_path / "o"), "--no-crf", "--device", "cpu"])
    assert predict_from_args(args) == 0, "exit status with images written"
    line = capsys.readouterr().out
    assert line.startswith(f"wrote 2 images to {tmp_path / 'o'}; 2 failed: "), f"printed {line!r}"
    assert "broken.png" in line and "empty.jpg" in line, f"failed files not named: {line!r}"
    args = parser.parse_args([str(images_dir / "broken.png"), "--run", str(run_dir), "--out", str(tmp_path / "p"), "--no-flip"])
    assert predict_from_args(args) == 2, "exit status with nothing written"
    assert capsys.readouterr().out.startswith("wrote 0 images"), "summary line for a failed run"
    assert not (tmp_path / "p" / "legend.json").exists(), "legend written although no image was"


def test_names_file_gives_named_maps_and_a_legend_without_labels(run_dir: Path, images_dir: Path, tmp_path: Path):
    bare = tmp_path / "named-run"
    shutil.copytree(run_dir, bare)
    (bare / "artifacts" / "assignment.json").unlink()  # no labels were ever evaluated
    (bare / "cluster_names.yaml").write_text("names:\n  0: water\n  2: water\n  1: sand\nignore: [3]\n")
    run = load_run(bare, device="cpu")
    out = tmp_path / "out"
    summary = predict_paths(run, [images_dir / "a.png"], out, flip=False, crf=False)
    assert summary.written == 1, f"summary {summary}"
    photo = np.array(Image.open(images_dir / "a.png").convert("RGB"))
    expected = segment_image(run, photo, flip=False, crf=False)
    assert expected.classes is None, "no assignment, no Hungarian classes"
    with Image.open(out / "a_named.png") as picture:
        named = np.array(picture)
    want = np.array([0, 1, 0, UNMATCHED])[expected.clusters]  # water = 0 (clusters 0, 2), sand = 1, 3 ignored
    assert np.array_equal(named, want), "a_named.png is not the names file applied to the clusters"
    legend = json.loads((out / "legend.json").read_text())
    assert legend["named"]["0"]["name"] == "water" and legend["named"]["0"]["clusters"] == [0, 2], legend["named"]
    assert legend["named"]["1"]["name"] == "sand" and legend["named"][str(UNMATCHED)]["clusters"] == [3]
    assert legend["clusters"]["2"]["name"] == "water" and legend["sources"]["a"] == str((images_dir / "a.png").resolve())
