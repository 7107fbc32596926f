"""`stego predict`: segment any images with a finished run's backbone, head and cluster probe.

Works on images of any size and aspect ratio, unlike the pipeline's square evaluation crops:
the shorter side is resized to the run's resolution (aspect kept), the right and bottom are
reflect-padded to a multiple of the patch size, the code is flip-averaged as in the
reference (code(x) + flip(code(flip(x)))) / 2, upsampled to the padded size and cropped
back, turned into cluster log-probabilities, refined by the dense CRF, and the argmax is
mapped back to the original size with nearest-neighbour sampling.

Per image it writes `<stem>_clusters.png` (palette PNG), `<stem>_overlay.png`, when the
run's evaluate stage matched clusters to classes (`artifacts/assignment.json`)
`<stem>_classes.png`, and when the run's `cluster_names.yaml` names clusters
`<stem>_named.png` (the user's classes, merged clusters as one, ignored ones 255; no labels
needed); one `legend.json` names every index and its colour, and records each image's source.

`legend.json` is also the output folder's record: which command and run wrote it and the
files it wrote. A second predict into the same folder replaces the first one's files
completely (and nothing else); a folder holding files predict did not write, or an output
folder inside an input folder (predict would read its own outputs), is refused. The images
are written to a hidden sibling folder first and moved in only when the run is done, so a
failed run leaves the previous outputs as they were.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from stego_tasks.config import CRFParams
from stego_tasks.data.corpus_files import is_hidden, is_image_name
from stego_tasks.data.images import ImageDecodeError, load_rgb
from stego_tasks.data.preprocess import resize_short_side
from stego_tasks.errors import InvalidInputError
from stego_tasks.method.backbone import normalize
from stego_tasks.method.dense_crf import dense_crf
from stego_tasks.method.inference import predict_code
from stego_tasks.runtime import atomic
from stego_tasks.runtime.devices import backbone_precision
from stego_tasks.runtime.progress import Progress
from stego_tasks.tools.predict_output import (
    CLASSES_PNG,
    CLUSTERS_PNG,
    NAMED_PNG,
    OVERLAY_PNG,
    WRITER,
    check_out_dir,
    legend,
    model_digest,
    output_keys,
    publish,
)
from stego_tasks.tools.trained_run import UNMATCHED, Run
from stego_tasks.tools.visualize import overlay, palette, palette_png

log = logging.getLogger("stego")

# Past this the resized image (short side = resolution) gets so many tokens that ViT
# attention runs out of memory; such panoramas should be cropped first.
MAX_ASPECT = 16.0



@dataclass
class Segmentation:
    """Prediction for one image.

    Attributes:
        clusters: uint8 [H, W] cluster ids at the original image size.
        classes: uint8 [H, W] matched class ids (255 = unmatched cluster), or None without
            an assignment.
        cluster_probs: float32 [n_clusters, h, w] probabilities at the resized (network)
            size, after the CRF when it ran; only when asked for (`keep_probs=True`).
        named: uint8 [H, W] the names file's class ids (255 = ignored cluster), or None
            when the run's names file names nothing.
    """

    clusters: np.ndarray
    classes: np.ndarray | None
    cluster_probs: np.ndarray | None = None
    named: np.ndarray | None = None


@dataclass
class PredictSummary:
    """Outcome of `predict_paths`: images written and (path, reason) of those skipped."""

    written: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)


# --- one image -------------------------------------------------------------------------


def nearest_resize(label_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize by pixel centres: out[i, j] = in[floor((i + .5) h / H), ...].

    Args:
        label_map: [h, w] integer map.
        height: output H.
        width: output W.

    Returns:
        [height, width] map of the same dtype.
    """
    h, w = label_map.shape
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return label_map[rows[:, None], cols[None, :]]


@torch.no_grad()
def _cluster_log_probs(run: Run, resized: np.ndarray, flip: bool) -> torch.Tensor:
    """Cluster log-probabilities [n_clusters, h, w] of the resized image, on the CPU."""
    height, width = resized.shape[:2]
    p = run.backbone.patch_size
    pad_h, pad_w = -height % p, -width % p
    x = torch.from_numpy(resized).permute(2, 0, 1)[None].to(run.device)
    x = normalize(x, run.backbone.mean, run.backbone.std)
    # Reflect rather than zero padding: a constant border would be its own "object".
    x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
    # Flip the padded image, so its code flipped back lies on exactly the same grid.
    batch = torch.cat([x, x.flip(-1)]) if flip else x
    use_bf16 = backbone_precision(run.device, run.amp) == "bf16"
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=use_bf16):
        feats = run.backbone(batch)
    feats = feats.float()
    code = predict_code(run.model, feats[:1], feats[1:] if flip else None, (height + pad_h, width + pad_w))
    code = code[:, :, :height, :width]
    return run.model.cluster_probe.log_probs(code, run.alpha)[0].float().cpu()


def segment_image(
    run: Run,
    image: np.ndarray,
    *,
    flip: bool = True,
    crf: bool = True,
    crf_params: CRFParams | None = None,
    keep_probs: bool = False,
) -> Segmentation:
    """Segment one image of any size into the run's clusters (and classes).

    Args:
        run: from `load_run`.
        image: uint8 [H, W, 3] RGB.
        flip: average the code with that of the mirrored image (reference test-time flip).
        crf: refine with the dense CRF on the resized image.
        crf_params: CRF settings; None uses the run's `crf` block.
        keep_probs: also return the cluster probabilities at the network size.

    Returns:
        `Segmentation` with uint8 [H, W] clusters (and classes) at the original size.

    Raises:
        ValueError: not a uint8 RGB array, or an aspect ratio over `MAX_ASPECT`.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInputError(
            f"segment_image needs a uint8 RGB array [H, W, 3], got {getattr(image, 'dtype', type(image))} "
            f"with shape {getattr(image, 'shape', None)}; load images with stego_tasks.data.images.load_rgb."
        )
    height, width = image.shape[:2]
    if max(height, width) > MAX_ASPECT * min(height, width):
        raise InvalidInputError(
            f"image of {width}x{height} px has an aspect ratio over {MAX_ASPECT:g}:1; crop it into parts first."
        )
    # As extract resized the run's val images, so the head sees inputs like those it was scored on.
    resized = resize_short_side(image, run.resolution, mode=run.preprocess)
    log_probs = _cluster_log_probs(run, resized, flip).numpy()
    if crf:
        probs = dense_crf(resized, log_probs, crf_params or run.crf_params)
    else:
        probs = np.exp(log_probs)
    clusters = nearest_resize(probs.argmax(0).astype(np.uint8), height, width)
    classes = None
    if run.cluster_to_class is not None:
        mapped = run.cluster_to_class[clusters]
        classes = np.where(mapped < 0, UNMATCHED, mapped).astype(np.uint8)
    named = run.names.cluster_to_class().astype(np.uint8)[clusters] if run.names is not None else None
    return Segmentation(clusters, classes, probs.astype(np.float32) if keep_probs else None, named)


# --- many files ------------------------------------------------------------------------


def collect_images(inputs: list[Path], exclude: Path | None = None) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """Expand files and folders into (image path, path relative to its input) pairs.

    Folders are walked recursively for image names (hidden entries and anything under
    `exclude`, the output folder, are skipped); files are taken as they are.

    Args:
        inputs: image files and/or folders.
        exclude: a folder whose contents are never inputs.

    Returns:
        (images in input order, folders sorted inside), (input, reason) for unusable inputs.
    """
    found: list[tuple[Path, Path]] = []
    problems: list[tuple[Path, str]] = []
    skip = exclude.resolve() if exclude is not None else None
    for item in map(Path, inputs):
        if item.is_file():
            found.append((item, Path(item.name)))
        elif item.is_dir():
            before = len(found)
            for root, dirs, files in os.walk(item):
                root_path = Path(root)
                dirs[:] = sorted(d for d in dirs if not is_hidden(d) and (root_path / d).resolve() != skip)
                for name in sorted(files):
                    path = root_path / name
                    if is_image_name(name) and not is_hidden(name):
                        found.append((path, path.relative_to(item)))
            if len(found) == before:
                problems.append((item, "folder holds no .jpg/.jpeg/.png/.bmp/.tif/.tiff/.webp images"))
        else:
            problems.append((item, "no such file or folder"))
    return found, problems


def _save_png(image: Image.Image, target: Path) -> None:
    with atomic.atomic_path(target, suffix=".png") as tmp:
        image.save(tmp, format="PNG")


def _class_palette_png(classes: np.ndarray) -> Image.Image:
    picture = palette_png(classes)
    colours = palette()
    colours[UNMATCHED] = 0  # unmatched clusters are drawn black
    picture.putpalette(colours.reshape(-1).tolist())
    return picture


def write_outputs(image: np.ndarray, seg: Segmentation, out_dir: Path, key: Path) -> None:
    """Write one image's PNGs (atomically) as `out_dir/<key>_{clusters,overlay,classes,named}.png`.

    The overlay shows the user's names when there are any, else the matched classes, else the clusters.
    """
    base = out_dir / key
    _save_png(palette_png(seg.clusters), base.with_name(base.name + CLUSTERS_PNG))
    if seg.classes is not None:
        _save_png(_class_palette_png(seg.classes), base.with_name(base.name + CLASSES_PNG))
    if seg.named is not None:
        _save_png(_class_palette_png(seg.named), base.with_name(base.name + NAMED_PNG))
    shown = seg.named if seg.named is not None else seg.classes
    if shown is None:
        blended = overlay(image, seg.clusters)
    else:
        # Classes (their colours are the legend's); unmatched or ignored pixels stay untinted.
        blended = overlay(image, shown)
        blended[shown == UNMATCHED] = image[shown == UNMATCHED]
    _save_png(Image.fromarray(blended), base.with_name(base.name + OVERLAY_PNG))


def predict_paths(
    run: Run, inputs: list[Path], out_dir: Path, *, flip: bool = True, crf: bool = True
) -> PredictSummary:
    """Segment every image under `inputs` and write the results under `out_dir`.

    The outputs replace those of an earlier predict into `out_dir` completely, once every
    image is done; nothing is written (and the earlier outputs stay) when no image was.

    Args:
        run: from `load_run`.
        inputs: image files and/or folders (walked recursively).
        out_dir: output folder; sub-paths of folder inputs are kept.
        flip: flip-average the code.
        crf: refine with the dense CRF.

    Returns:
        `PredictSummary`: images written, and (path, reason) for each input skipped
        (undecodable file, empty folder, missing path, failed prediction).

    Raises:
        ValueError: `out_dir` may not be written (see `check_out_dir`).
    """
    out_dir = Path(out_dir)
    previous = check_out_dir(inputs, out_dir)
    images, failed = collect_images(inputs, exclude=out_dir)
    for path, reason in failed:
        log.warning("predict: skipping %s: %s", path, reason)
    written = 0
    sources: dict[str, str] = {}
    atomic.make_parent(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.predict-", dir=out_dir.parent))
    try:
        with Progress(len(images), "predict", unit="img") as progress:
            for (path, _), key in zip(images, output_keys(images), strict=True):
                try:
                    image = load_rgb(path)
                    seg = segment_image(run, image, flip=flip, crf=crf)
                    write_outputs(image, seg, staging, key)
                    sources[key.as_posix()] = str(path.resolve())
                    written += 1
                except (ValueError, OSError, RuntimeError) as error:
                    # A bad file, or one image too large for memory, must not lose the others.
                    first_line = (str(error).strip().splitlines() or [""])[0]
                    reason = error.reason if isinstance(error, ImageDecodeError) else f"{type(error).__name__}: {first_line}"
                    failed.append((path, reason))
                    log.warning("predict: skipping %s: %s", path, reason)
                progress.update(1)
        if written:
            record = {
                **legend(run),
                "written_by": WRITER,
                "run": str(run.model_dir) if run.model_dir is not None else None,
                "model_sha256": model_digest(run),
                "sources": sources,  # output key -> the image it segmented (`stego export` reads it)
            }
            publish(staging, out_dir, previous, record)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return PredictSummary(written=written, failed=failed)
