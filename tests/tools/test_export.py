"""Tests for stego_tasks.tools.export (`stego export`): COCO RLE masks and the pseudo-labelled corpus.

The masks are read back twice: with a decoder written here from the COCO RLE spec (column-
major runs starting with zeros; counts as pycocotools' 6-bit text form) and with
pycocotools itself, the reader CVAT, Label Studio and FiftyOne build on. Both must give
exactly the run's predictions, classes named by the run's names file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from flows.tools import add_export_arguments, export_from_args
from stego_tasks.errors import InvalidInputError
from stego_tasks.paths import PATHS
from stego_tasks.tools.export import export, rle_counts, rle_encode, rle_string

N_IMAGES, SIZE, K = 4, 12, 5


def decode_counts(text: str) -> list[int]:
    """COCO's compressed counts string to run lengths (the spec: 5 data bits per char + 48, a
    continuation bit 0x20, sign bit 0x10 on the last char, counts after the second as deltas)."""
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            char = ord(text[position]) - 48
            value |= (char & 0x1F) << (5 * shift)
            more = bool(char & 0x20)
            position += 1
            shift += 1
            if not more and char & 0x10:
                value |= -1 << (5 * shift)
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def decode_mask(rle: dict) -> np.ndarray:
    """A binary mask [H, W] from COCO RLE: runs alternate 0, 1, 0, ... in column-major order."""
    height, width = rle["size"]
    flat = np.zeros(height * width, dtype=bool)
    position, value = 0, False
    for count in decode_counts(rle["counts"]):
        flat[position:position + count] = value
        position += count
        value = not value
    assert position == height * width, f"runs cover {position} of {height * width} pixels"
    return flat.reshape((height, width), order="F")


def test_rle_round_trips_masks_of_every_shape() -> None:
    rng = np.random.default_rng(0)
    masks = [rng.random((7, 9)) > 0.5, np.ones((3, 4), bool), np.zeros((5, 2), bool), rng.random((40, 33)) > 0.9]
    masks.append(np.pad(np.ones((30, 30), bool), 100))  # long runs: several 5-bit groups, negative deltas
    for mask in masks:
        counts = rle_counts(mask)
        assert sum(counts) == mask.size and all(c >= 0 for c in counts), f"counts {counts[:6]}"
        assert decode_counts(rle_string(counts)) == counts, "the counts string does not decode to the counts"
        assert np.array_equal(decode_mask(rle_encode(mask)), mask), f"mask {mask.shape} does not round-trip"


def _write_run(run: Path) -> np.ndarray:
    """A finished run without labels; returns its final (CRF) cluster maps."""
    rng = np.random.default_rng(1)
    features = zarr.open_group(str(run / PATHS["features"]), mode="w", zarr_format=3)
    val = features.create_group("val")
    val.create_array("images", data=rng.integers(0, 256, (N_IMAGES, SIZE, SIZE, 3), dtype=np.uint8))
    val.create_array("labels", data=np.full((N_IMAGES, SIZE, SIZE), 255, np.uint8))
    val.create_array("done", data=np.ones(1, dtype=bool))
    probe = rng.integers(0, K, (N_IMAGES, SIZE, SIZE)).astype(np.uint8)
    final = probe.copy()
    final[:, :3] = 4
    predictions = zarr.open_group(str(run / PATHS["predictions"]), mode="w", zarr_format=3)
    predictions.create_array("cluster_pred", data=probe)
    predictions.create_array("image_ids", data=np.arange(10, 10 + N_IMAGES, dtype=np.int64))
    crf = zarr.open_group(str(run / PATHS["crf_out"]), mode="w", zarr_format=3)
    crf.create_array("cluster_pred", data=final)
    model = run / PATHS["model"] / "model.json"
    model.parent.mkdir(parents=True)
    model.write_text(json.dumps({"n_classes": 3, "train": {"extra_clusters": 2}}))
    return final


def _read_export(out: Path, split: str) -> tuple[dict, dict[str, np.ndarray]]:
    coco = json.loads((out / "annotations.json").read_text())
    maps = {}
    for image in coco["images"]:
        classes = np.full((image["height"], image["width"]), 255, np.int64)
        for annotation in (a for a in coco["annotations"] if a["image_id"] == image["id"]):
            mask = decode_mask(annotation["segmentation"])
            assert not (classes[mask] != 255).any(), "two annotations of one image overlap"
            assert annotation["area"] == int(mask.sum()), "area is the mask's pixel count"
            classes[mask] = annotation["category_id"] - 1
        maps[image["file_name"]] = classes
        label = out / "labels" / split / (Path(image["file_name"]).stem + ".png")
        assert np.array_equal(np.asarray(Image.open(label)), classes), f"{label} differs from the COCO masks"
    return coco, maps


def test_val_export_equals_the_final_maps_named_merged_and_ignored(tmp_path: Path) -> None:
    final = _write_run(tmp_path)
    (tmp_path / PATHS["cluster_names"]).write_text("names:\n  1: tree\n  2: tree\n  0: road\nignore: [3]\n")
    result = export(tmp_path, tmp_path / "export")
    assert result["images"] == N_IMAGES and result["split"] == "val"
    coco, maps = _read_export(tmp_path / "export", "val")
    # Classes in the order of their lowest cluster: road (0), tree (1, 2), cluster 4; 3 is ignored.
    assert [c["name"] for c in coco["categories"]] == ["road", "tree", "cluster 4"]
    to_class = np.array([0, 1, 1, 255, 2])
    for index, (name, classes) in enumerate(maps.items()):
        assert np.array_equal(classes, to_class[final[index]]), f"{name}: the COCO masks differ from the predictions"
        stored = zarr.open_group(str(tmp_path / PATHS["features"]), mode="r")["val"]["images"][index]
        assert np.array_equal(np.asarray(Image.open(tmp_path / "export" / name)), stored), f"{name}: image differs"
    corpus = (tmp_path / "export" / "corpus.yaml").read_text()
    assert "n_classes: 3" in corpus and "ignore_index: 255" in corpus, corpus


def test_pycocotools_reads_the_export_back_to_the_predictions(tmp_path: Path) -> None:
    pytest.importorskip("pycocotools", reason="pycocotools is pinned in the test extras (pyproject.toml)")
    from pycocotools.coco import COCO

    final = _write_run(tmp_path)
    export(tmp_path, tmp_path / "export")
    coco = COCO(str(tmp_path / "export" / "annotations.json"))
    assert len(coco.getImgIds()) == N_IMAGES and len(coco.getCatIds()) == K, "one category per cluster without names"
    for index, image_id in enumerate(sorted(coco.getImgIds())):
        classes = np.full((SIZE, SIZE), 255, np.int64)
        for annotation in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            classes[coco.annToMask(annotation) > 0] = annotation["category_id"] - 1
        assert np.array_equal(classes, final[index]), f"image {image_id}: pycocotools reads other masks"


def test_export_of_a_predict_folder_uses_its_masks_and_original_images(tmp_path: Path) -> None:
    _write_run(tmp_path)
    photos, predicted = tmp_path / "photos", tmp_path / "predicted"
    photos.mkdir()
    (predicted / "sub").mkdir(parents=True)
    rng = np.random.default_rng(2)
    sources, masks = {}, {}
    for key, (height, width) in {"a": (9, 14), "sub/b": (20, 6)}.items():
        source = photos / f"{key.replace('/', '_')}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(source)
        masks[key] = rng.integers(0, K, (height, width)).astype(np.uint8)
        Image.fromarray(masks[key]).save(predicted / f"{key}_clusters.png")
        sources[key] = str(source)
    (predicted / "legend.json").write_text(json.dumps({"written_by": "stego predict", "complete": True, "sources": sources}))
    args = argparse.ArgumentParser()
    add_export_arguments(args)
    assert export_from_args(args.parse_args(["--run", str(tmp_path), "--out", str(tmp_path / "e"),
                                             "--predictions", str(predicted)])) == 0
    coco, maps = _read_export(tmp_path / "e", "train")
    assert np.array_equal(maps["images/train/a.png"], masks["a"]), "mask of a"
    assert np.array_equal(maps["images/train/sub__b.png"], masks["sub/b"]), "mask of sub/b (flattened name)"
    assert (tmp_path / "e" / "images" / "train" / "a.png").read_bytes() == Path(sources["a"]).read_bytes()


def test_bad_sources_and_outputs_are_refused_in_one_sentence(tmp_path: Path) -> None:
    _write_run(tmp_path)
    (tmp_path / "not-predict").mkdir()
    with pytest.raises(ValueError, match="not a finished `stego predict` output"):
        export(tmp_path, tmp_path / "e", tmp_path / "not-predict")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="refusing"):
        export(tmp_path, mine)
    assert (mine / "keep.txt").read_text() == "x"
    export(tmp_path, tmp_path / "e")
    export(tmp_path, tmp_path / "e")  # an earlier export is replaced
    (tmp_path / PATHS["cluster_names"]).write_text("names:\n  9: sky\n")
    with pytest.raises(ValueError, match=r"cluster_names.yaml: names: id 9 is not a cluster of this run"):
        export(tmp_path, tmp_path / "e")


@pytest.mark.parametrize(("damaged", "message"), [
    ("predicted/a_clusters.png", r"a_clusters\.png: .*; run `stego predict` into .*predicted again\."),
    ("photos/a.png", r"the image .*a\.png that stego predict segmented can no longer be read .*; restore it, or predict again\."),
])
def test_a_damaged_predict_mask_or_source_image_is_one_sentence(tmp_path: Path, damaged: str, message: str) -> None:
    """PIL's UnidentifiedImageError on a garbage mask or source was a bug's traceback (exit 1)."""
    _write_run(tmp_path)
    photos, predicted = tmp_path / "photos", tmp_path / "predicted"
    photos.mkdir()
    predicted.mkdir()
    Image.fromarray(np.zeros((9, 14, 3), dtype=np.uint8)).save(photos / "a.png")
    Image.fromarray(np.zeros((9, 14), dtype=np.uint8)).save(predicted / "a_clusters.png")
    legend = {"written_by": "stego predict", "complete": True, "sources": {"a": str(photos / "a.png")}}
    (predicted / "legend.json").write_text(json.dumps(legend))
    (tmp_path / damaged).write_bytes(b"\x89garbage, not a PNG" * 8)
    with pytest.raises(InvalidInputError, match=message) as error:
        export(tmp_path, tmp_path / "e", predicted)
    assert "\n" not in str(error.value) and not (tmp_path / "e").exists()


def test_a_legend_whose_sources_are_not_paths_is_one_sentence(tmp_path: Path) -> None:
    """A number as a source path was a TypeError traceback."""
    _write_run(tmp_path)
    predicted = tmp_path / "predicted"
    predicted.mkdir()
    legend = {"written_by": "stego predict", "complete": True, "sources": {"a": 5}}
    (predicted / "legend.json").write_text(json.dumps(legend))
    with pytest.raises(InvalidInputError, match=r"legend\.json does not record which images were segmented .*; "
                                                r"run `stego predict` into that folder again\.$"):
        export(tmp_path, tmp_path / "e", predicted)
