"""`stego export`: a run's segmentations in the forms other tools read.

Writes one folder:

    annotations.json          COCO: images, categories, one RLE-mask annotation per image and class
    images/<split>/<stem>.*   the images the masks belong to
    labels/<split>/<stem>.png class-index PNGs (8-bit, 255 = ignored): this project's corpus layout
    corpus.yaml               the `corpus` params block of that corpus (classes, ignore index)

so CVAT, Label Studio or FiftyOne can import the masks as pre-labels, a supervised model can
train on the pseudo-labels, and `dvc exp run -S corpus.root=<out>` can run this pipeline on them.

Sources: the run's val predictions (after the CRF when it ran; the images are the
evaluation crops the features store holds, at `extract.val_resolution`), or a folder that
`stego predict` wrote (its `<stem>_clusters.png` at the original size, and the original
images its legend.json records). Classes are the run's names file (`cluster_names.yaml`:
merged clusters are one class, ignored clusters 255 and no annotation); without names,
every cluster is its own class `cluster <id>`.

COCO RLE, as pycocotools writes it: the mask is read in column-major (Fortran) order, the
run lengths alternate starting with a run of zeros (possibly empty), and `counts` is the
compressed string form (`rle_string`). Category ids are class index + 1 (COCO keeps 0 free).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from stego_tasks.data.adapters.core import CORPUS_FILE
from stego_tasks.data.corpus_files import ImageDecodeError
from stego_tasks.data.feature_store import read_split
from stego_tasks.data.images import load_label, load_rgb
from stego_tasks.data.manifest import read_manifest
from stego_tasks.data.store_integrity import open_store
from stego_tasks.errors import InvalidInputError, MissingInputError
from stego_tasks.method.model import MODEL_JSON
from stego_tasks.paths import PATHS, run_path
from stego_tasks.runtime import atomic
from stego_tasks.tools.cluster_names import IGNORED, ClusterNames, load_names
from stego_tasks.tools.predict_output import CLUSTERS_PNG, LEGEND, WRITER

KIND = "export"
# The COCO file of an export (the folder also holds a corpus: images/, labels/ and its corpus file).
ANNOTATIONS = "annotations.json"
EXIF_ORIENTATION = 0x0112
SPLITS = ("train", "val")


def rle_counts(mask: np.ndarray) -> list[int]:
    """Run lengths of a binary mask in column-major order, starting with the run of zeros."""
    flat = np.asarray(mask, dtype=bool).reshape(-1, order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


def rle_string(counts: list[int]) -> str:
    """COCO's compressed `counts` string (pycocotools' rleToString): deltas in 5-bit groups, offset by 48."""
    chars = []
    for index, count in enumerate(counts):
        value = int(count) - (int(counts[index - 2]) if index > 2 else 0)
        more = True
        while more:
            group = value & 0x1F
            value >>= 5
            more = value != -1 if group & 0x10 else value != 0
            chars.append(chr((group | 0x20 if more else group) + 48))
    return "".join(chars)


def rle_encode(mask: np.ndarray) -> dict:
    """{"size": [height, width], "counts": compressed string} of a binary mask [H, W]."""
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle_string(rle_counts(mask))}


def bbox(mask: np.ndarray) -> list[int]:
    """COCO [x, y, width, height] of the mask's pixels."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


@dataclass
class Item:
    """One image to export: its output stem, pixels or source file, and its class map (uint8, 255 ignored)."""

    stem: str
    classes: np.ndarray
    pixels: np.ndarray | None = None
    source: Path | None = None


def _classes_of(clusters: np.ndarray, names: ClusterNames) -> np.ndarray:
    return names.cluster_to_class().astype(np.uint8)[clusters.astype(np.int64)]


def val_items(run_dir: Path, names: ClusterNames) -> Iterator[Item]:
    """The run's val images (evaluation crops) and their final cluster maps, as classes."""
    predictions = open_store(run_path(run_dir, "predictions"), "cluster", ["cluster_pred", "image_ids"])
    maps = predictions["cluster_pred"]
    if run_path(run_dir, "crf_out").exists():
        crf = open_store(run_path(run_dir, "crf_out"), "crf", ["cluster_pred"])
        maps = crf.get("cluster_pred", maps)
    images = read_split(run_path(run_dir, "features"), "val", arrays=["images"])["images"]
    stems = _stems(run_dir, predictions["image_ids"][:])
    for index in range(images.shape[0]):
        yield Item(stems[index], _classes_of(maps[index], names), pixels=images[index])


def _stems(run_dir: Path, ids: np.ndarray) -> list[str]:
    """Output stems of the val images: their corpus file names (without extension) when the manifest has them."""
    manifest = run_path(run_dir, "manifest")
    by_id = {}
    if manifest.is_file():
        table = read_manifest(manifest)
        by_id = {int(i): Path(str(p)).stem for i, p in zip(table["id"], table["path"], strict=True)}
    stems, seen = [], set()
    for index, image_id in enumerate(ids.tolist()):
        stem = by_id.get(int(image_id), f"val_{index:05d}")
        stem = stem if stem not in seen else f"{stem}_{index:05d}"
        seen.add(stem)
        stems.append(stem)
    return stems


def predict_items(folder: Path, names: ClusterNames) -> Iterator[Item]:
    """The images a `stego predict` folder segmented, with their cluster maps, as classes.

    Raises:
        ValueError: the folder is not a finished predict output, or does not record its images.
    """
    legend_path = folder / LEGEND
    try:
        legend = json.loads(legend_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        legend = None
    if not isinstance(legend, dict) or legend.get("written_by") != WRITER or legend.get("complete") is False:
        raise InvalidInputError(f"{folder} is not a finished `stego predict` output (no complete legend.json); "
                         "pass --predictions a folder that stego predict wrote.")
    sources = legend.get("sources")
    if not isinstance(sources, dict) or not sources or not all(isinstance(v, str) for v in sources.values()):
        raise InvalidInputError(f"{legend_path} does not record which images were segmented (an older predict, or a damaged legend); "
                         "run `stego predict` into that folder again.")
    for key, source in sorted(sources.items()):
        try:
            clusters = load_label(folder / f"{key}{CLUSTERS_PNG}")
        except ImageDecodeError as error:  # a damaged or removed output: predict writes it again
            raise InvalidInputError(f"{error.path}: {error.reason}; run `stego predict` into {folder} again.") from None
        if clusters.max(initial=0) >= names.n_clusters:
            raise InvalidInputError(f"{folder / key}{CLUSTERS_PNG} holds cluster {clusters.max()}, but the run has "
                             f"{names.n_clusters} clusters; pass --run the run that predicted it.")
        yield Item(key.replace("/", "__"), _classes_of(clusters, names), source=Path(source))


def _save_image(item: Item, folder: Path) -> tuple[str, int, int]:
    """Write the item's image into `folder`; (file name, width, height)."""
    if item.source is None:
        name = f"{item.stem}.png"
        Image.fromarray(item.pixels).save(folder / name)
        return name, item.pixels.shape[1], item.pixels.shape[0]
    if not item.source.is_file():
        raise MissingInputError(f"the image {item.source} that stego predict segmented is gone; "
                                "export needs it beside its mask (restore it, or predict again).")
    try:
        with Image.open(item.source) as picture:
            upright, width, height = picture.getexif().get(EXIF_ORIENTATION, 1) == 1, picture.width, picture.height
    except OSError as error:  # replaced since predict read it (PIL's UnidentifiedImageError is an OSError)
        raise InvalidInputError(f"the image {item.source} that stego predict segmented can no longer be read ({error}); "
                                "restore it, or predict again.") from None
    if upright:
        name = f"{item.stem}{item.source.suffix.lower()}"
        shutil.copyfile(item.source, folder / name)
        return name, width, height
    # Predict segmented the image upright (EXIF applied): write it upright, so the masks fit any reader.
    pixels = load_rgb(item.source)
    name = f"{item.stem}.png"
    Image.fromarray(pixels).save(folder / name)
    return name, pixels.shape[1], pixels.shape[0]


def write_export(items: Iterator[Item], class_names: tuple[str, ...], out_dir: Path, split: str) -> dict:
    """Write the COCO file and the pseudo-labelled corpus (one folder, atomically); return counts."""
    if split not in SPLITS:
        raise InvalidInputError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}.")
    images, annotations = [], []
    with atomic.atomic_path(out_dir) as tmp:
        (tmp / "images" / split).mkdir(parents=True)
        (tmp / "labels" / split).mkdir(parents=True)
        for image_id, item in enumerate(items, start=1):
            name, width, height = _save_image(item, tmp / "images" / split)
            if item.classes.shape != (height, width):
                raise InvalidInputError(f"the mask of {item.stem} is {item.classes.shape[1]}x{item.classes.shape[0]} but its "
                                 f"image is {width}x{height}; predict again with this run.")
            Image.fromarray(item.classes, mode="L").save(tmp / "labels" / split / f"{item.stem}.png")
            images.append({"id": image_id, "file_name": f"images/{split}/{name}", "width": width, "height": height})
            for index in np.unique(item.classes):
                if index == IGNORED:
                    continue
                mask = item.classes == index
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": int(index) + 1,
                    "segmentation": rle_encode(mask), "area": int(mask.sum()), "bbox": bbox(mask), "iscrowd": 0,
                })
        if not images:
            raise InvalidInputError("nothing to export: the source holds no segmented image.")
        categories = [{"id": j + 1, "name": name, "supercategory": "stego"} for j, name in enumerate(class_names)]
        coco = {"info": {"description": "stego export: unsupervised segmentation masks"}, "images": images,
                "annotations": annotations, "categories": categories}
        atomic.write_json(tmp / ANNOTATIONS, coco)
        corpus = {"corpus": {"n_classes": len(class_names), "ignore_index": IGNORED,
                             "class_names": list(class_names), "demo": False}}
        atomic.write_text(tmp / CORPUS_FILE, yaml.safe_dump(corpus, sort_keys=False))
        atomic.mark_folder(tmp, KIND)
    return {"images": len(images), "annotations": len(annotations), "classes": len(class_names)}


def export(run_dir: Path, out_dir: Path, predictions: Path | None = None, split: str | None = None) -> dict:
    """Export a run's val predictions (or a `stego predict` folder) as COCO JSON and a corpus.

    Args:
        run_dir: the run's project folder (its names file and, for val, its stores).
        out_dir: the export folder (new, empty, or an earlier export, which is replaced).
        predictions: a folder `stego predict` wrote; None exports the run's val split.
        split: the corpus split to write into; default `val` for the val split, `train` for a predict folder.

    Returns:
        Counts: images, annotations, classes; and the folder.

    Raises:
        FileNotFoundError, ValueError: one sentence (no run, a bad names file, a bad source).
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    model = run_path(run_dir, "model") / MODEL_JSON
    if not model.is_file():
        raise MissingInputError(f"{run_dir} holds no trained run ({PATHS['model']}/{MODEL_JSON}); pass --run a run folder.")
    n_clusters = _n_clusters(model)
    names = load_names(run_path(run_dir, "cluster_names"), n_clusters)
    items = predict_items(Path(predictions), names) if predictions is not None else val_items(run_dir, names)
    chosen = split or ("train" if predictions is not None else "val")
    return {**write_export(items, names.class_names(), out_dir, chosen), "out": str(out_dir), "split": chosen}


def _n_clusters(model: Path) -> int:
    """The cluster probe's size, from model.json: n_classes + train.extra_clusters (`method.model.build_model`)."""
    info = atomic.read_json_object(model, "train", "rerun `stego train`")
    return int(info.get("n_classes", 0)) + int((info.get("train") or {}).get("extra_clusters", 0))
