"""`stego predict`: segment any images with a finished run's backbone, head and cluster probe.

Works on images of any size and aspect ratio, unlike the pipeline's square evaluation crops:
the shorter side is resized to the run's resolution (aspect kept), the right and bottom are
reflect-padded to a multiple of the patch size, the code is flip-averaged as in the
reference (code(x) + flip(code(flip(x)))) / 2, upsampled to the padded size and cropped
back, turned into cluster log-probabilities, refined by the dense CRF, and the argmax is
mapped back to the original size with nearest-neighbour sampling.

Per image it writes `<stem>_clusters.png` (palette PNG), `<stem>_overlay.png` and, when the
run's evaluate stage matched clusters to classes (`artifacts/assignment.json`),
`<stem>_classes.png`; one `legend.json` names every index and its colour.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from stego_tasks import atomic
from stego_tasks.backbone import Backbone, WeightsNotFoundError, create_backbone, normalize
from stego_tasks.config import load_params
from stego_tasks.crf import CRFParams, dense_crf
from stego_tasks.embed import resolve_device
from stego_tasks.images import ImageDecodeError, is_image_name, load_rgb
from stego_tasks.progress import Progress
from stego_tasks.train import StegoModel, load_model
from stego_tasks.visualize import overlay, palette, palette_png

log = logging.getLogger("stego")

UNMATCHED = 255
# Past this the resized image (short side = resolution) gets so many tokens that ViT
# attention runs out of memory; such panoramas should be cropped first.
MAX_ASPECT = 16.0


@dataclass
class Run:
    """What prediction needs from a finished run.

    Attributes:
        model: head and probes, eval mode, on `device`.
        backbone: the frozen ViT the head was trained on, on `device`.
        resolution: shorter image side fed to the backbone, in pixels.
        device: where the networks run.
        alpha: cluster-probe softmax temperature (the run's `cluster.alpha`).
        crf_params: the run's `crf` block.
        cluster_to_class: int64 [n_clusters], class per cluster, -1 when unmatched; None
            when the run has no assignment (no labels were evaluated).
        class_names: one name per class (empty without an assignment).
        amp: run the backbone under bfloat16 autocast on CUDA, as `extract.amp` does when
            the features are stored (no effect on the CPU).
    """

    model: StegoModel
    backbone: Backbone
    resolution: int
    device: torch.device
    alpha: float = 2.0
    crf_params: CRFParams = field(default_factory=CRFParams)
    cluster_to_class: np.ndarray | None = None
    class_names: tuple[str, ...] = ()
    amp: bool = True

    @property
    def n_clusters(self) -> int:
        """Number of cluster-probe centroids."""
        return self.model.cluster_probe.n_clusters


@dataclass
class Segmentation:
    """Prediction for one image.

    Attributes:
        clusters: uint8 [H, W] cluster ids at the original image size.
        classes: uint8 [H, W] matched class ids (255 = unmatched cluster), or None without
            an assignment.
        cluster_probs: float32 [n_clusters, h, w] probabilities at the resized (network)
            size, after the CRF when it ran; only when asked for (`keep_probs=True`).
    """

    clusters: np.ndarray
    classes: np.ndarray | None
    cluster_probs: np.ndarray | None = None


@dataclass
class PredictSummary:
    """Outcome of `predict_paths`: images written and (path, reason) of those skipped."""

    written: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)


# --- loading a run ---------------------------------------------------------------------


def _model_dir(run_dir: Path) -> Path:
    for candidate in (run_dir / "artifacts" / "model", run_dir):
        if (candidate / "model.json").is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    raise FileNotFoundError(
        f"{run_dir} holds no trained model (artifacts/model/model.json + model.safetensors); "
        "pass --run the project folder of a run whose `dvc repro` (or `stego train`) finished."
    )


def _weights_for(info: dict, run_dir: Path) -> str:
    """Map the recorded `backbone_weights` to a `create_backbone` weights argument."""
    source = info.get("backbone_weights")
    if isinstance(source, str) and source.startswith("file:"):
        recorded = Path(source[len("file:") :])
        # DVC runs stages in the project folder, so a relative path is relative to it.
        for path in (recorded,) if recorded.is_absolute() else (run_dir / recorded, recorded):
            if path.is_file():
                return str(path)
        raise FileNotFoundError(
            f"The run's backbone checkpoint {str(recorded)!r} (model.json backbone_weights) does "
            "not exist here; pass --weights PATH to the checkpoint the run was trained with."
        )
    if source in ("hub-cache", "hub-download"):
        return "auto"
    if source == "random":
        return "random"
    raise ValueError(
        f"model.json records backbone_weights {source!r}, not 'file:<path>', 'hub-cache', "
        "'hub-download' or 'random'; pass --weights PATH to the checkpoint the run used."
    )


def _create_backbone(name: str, weights: str, source: str) -> Backbone:
    if weights == "random":
        banner = "=" * 78
        log.warning(
            "%s\nRANDOM BACKBONE: %s runs on random weights; these segments exercise "
            "the code and mean nothing.\n%s",
            banner, name, banner,
        )
        # Seeded exactly as `extract` builds it, so the head sees the features it was trained on.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return create_backbone(name, weights="random")
    try:
        return create_backbone(name, weights=weights)
    except WeightsNotFoundError as error:
        raise WeightsNotFoundError(
            f"No weights for the run's backbone {name} (trained with {source} weights) in the "
            "Hugging Face hub cache and the hub cannot be used; pass --weights PATH to a local checkpoint."
        ) from error


def _read_assignment(path: Path, n_clusters: int, info: dict) -> tuple[np.ndarray | None, tuple[str, ...]]:
    if not path.is_file():
        return None, ()
    data = json.loads(path.read_text())
    if data.get("cluster_to_class") is None:  # evaluated without labels: nothing to map
        return None, ()
    mapping = np.asarray(data["cluster_to_class"], dtype=np.int64)
    n_classes = int(info["n_classes"])
    if mapping.shape != (n_clusters,) or mapping.min() < -1 or mapping.max() >= min(n_classes, UNMATCHED):
        raise ValueError(
            f"{path} maps {mapping.size} clusters to classes {sorted(set(mapping.tolist()))[:8]}, "
            f"but the model has {n_clusters} clusters and {n_classes} classes; rerun `stego evaluate`."
        )
    names = list(data.get("class_names") or info.get("class_names") or [])
    if len(names) != n_classes:
        names = [f"class_{j}" for j in range(n_classes)]
    return mapping, tuple(str(name) for name in names)


def _run_settings(run_dir: Path) -> tuple[float, CRFParams]:
    """The run's cluster-probe alpha and CRF block from its params.yaml (defaults if absent)."""
    try:
        params = load_params(run_dir / "params.yaml")
    except ValueError as error:
        log.warning("predict: ignoring %s (%s); using the published alpha and CRF settings", run_dir / "params.yaml", error)
        return 2.0, CRFParams()
    crf = CRFParams(**{f.name: getattr(params.crf, f.name) for f in dataclasses.fields(CRFParams)})
    return float(params.cluster.alpha), crf


def load_run(
    run_dir: Path, weights: str | None = None, *, device: str = "auto", resolution: int | None = None
) -> Run:
    """Load the model, backbone and cluster-to-class assignment of a finished run.

    Args:
        run_dir: the project folder after `dvc repro` (holding `artifacts/model/`), or the
            model folder itself.
        weights: backbone checkpoint path, "auto" or "random" overriding the recorded
            `backbone_weights` ("file:<path>" -> that path, "hub-*" -> "auto").
        device: "auto", "cpu", "cuda", ...
        resolution: shorter image side fed to the backbone; default the run's own.

    Returns:
        A `Run` with both networks in eval mode on `device`.

    Raises:
        FileNotFoundError: no trained model, or the recorded checkpoint file is gone.
        ValueError: bad resolution, a backbone that does not fit the head, a bad assignment.
        WeightsNotFoundError: hub weights recorded but not available.
    """
    run_dir = Path(run_dir)
    model_dir = _model_dir(run_dir)
    model = load_model(model_dir)
    info = model.info
    name = info.get("backbone")
    if not name:
        raise ValueError(f"{model_dir / 'model.json'} does not name its backbone; rerun `stego train`.")
    source = str(info.get("backbone_weights"))
    backbone = _create_backbone(name, weights if weights is not None else _weights_for(info, run_dir), source)
    if backbone.embed_dim != info["in_dim"]:
        raise ValueError(
            f"Backbone {name} gives {backbone.embed_dim}-d features but the head expects "
            f"{info['in_dim']}-d ones; pass --weights for the backbone the run was trained on."
        )
    size = int(resolution if resolution is not None else info.get("resolution") or 0)
    if size < backbone.patch_size:
        raise ValueError(
            f"Resolution {size} is smaller than the patch size {backbone.patch_size} of {name} "
            "(or the run records none); pass --resolution N with N >= the patch size."
        )
    if model.cluster_probe.n_clusters > 256:
        raise ValueError(f"The run has {model.cluster_probe.n_clusters} clusters; predict writes at most 256.")
    mapping, names = _read_assignment(model_dir.parent / "assignment.json", model.cluster_probe.n_clusters, info)
    alpha, crf_params = _run_settings(run_dir if model_dir != run_dir else run_dir.parent.parent)
    torch_device = resolve_device(device)
    return Run(
        model=model.to(torch_device).eval(),
        backbone=backbone.to(torch_device),
        resolution=size,
        device=torch_device,
        alpha=alpha,
        crf_params=crf_params,
        cluster_to_class=mapping,
        class_names=names,
    )


# --- one image -------------------------------------------------------------------------


def resize_short_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is `size`, keeping the aspect ratio (bilinear, as `extract`).

    Args:
        image: uint8 [H, W, 3].
        size: target shorter side.

    Returns:
        uint8 [h, w, 3] with min(h, w) == size.
    """
    height, width = image.shape[:2]
    scale = size / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    # np.array copies: PIL's buffer is read-only and pydensecrf refuses read-only images.
    return np.array(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))


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
    on_gpu = run.device.type == "cuda"
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=on_gpu and run.amp):
        feats = run.backbone(batch)
    codes = run.model.head(feats.float())
    code = (codes[:1] + codes[1:].flip(-1)) / 2 if flip else codes
    code = F.interpolate(code, size=(height + pad_h, width + pad_w), mode="bilinear", align_corners=False)
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
        raise ValueError(
            f"segment_image needs a uint8 RGB array [H, W, 3], got {getattr(image, 'dtype', type(image))} "
            f"with shape {getattr(image, 'shape', None)}; load images with stego_tasks.images.load_rgb."
        )
    height, width = image.shape[:2]
    if max(height, width) > MAX_ASPECT * min(height, width):
        raise ValueError(
            f"image of {width}x{height} px has an aspect ratio over {MAX_ASPECT:g}:1; crop it into parts first."
        )
    resized = resize_short_side(image, run.resolution)
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
    return Segmentation(clusters, classes, probs.astype(np.float32) if keep_probs else None)


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
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (root_path / d).resolve() != skip)
                for name in sorted(files):
                    path = root_path / name
                    if is_image_name(name) and not name.startswith("."):
                        found.append((path, path.relative_to(item)))
            if len(found) == before:
                problems.append((item, "folder holds no .jpg/.jpeg/.png/.bmp/.tif/.tiff/.webp images"))
        else:
            problems.append((item, "no such file or folder"))
    return found, problems


def output_keys(images: list[tuple[Path, Path]]) -> list[Path]:
    """One unique output stem per image, keeping relative sub-paths.

    An image's key is its path relative to its input without the extension. Keys that
    clash (the same name under two inputs) are taken relative to the clashing files'
    common folder instead; a remaining clash (x.jpg beside x.png) adds the extension, and
    as a last resort a counter.

    Args:
        images: (path, relative path) pairs from `collect_images`.

    Returns:
        Relative paths without suffix, e.g. Path("street/img_001"), one per image.
    """
    keys = [rel.with_suffix("") for _, rel in images]
    clashes = [k for k, n in Counter(keys).items() if n > 1]
    for key in clashes:
        members = [i for i, k in enumerate(keys) if k == key]
        parents = [str(images[i][0].resolve().parent) for i in members]
        common = Path(os.path.commonpath(parents))
        for i in members:
            keys[i] = images[i][0].resolve().relative_to(common).with_suffix("")
    for key in [k for k, n in Counter(keys).items() if n > 1]:
        for i in (i for i, k in enumerate(keys) if k == key):
            keys[i] = key.with_name(f"{key.name}_{images[i][0].suffix.lstrip('.').lower()}")
    seen: set[Path] = set()
    for i, key in enumerate(keys):
        unique, n = key, 1
        while unique in seen:
            n += 1
            unique = key.with_name(f"{key.name}_{n}")
        keys[i] = unique
        seen.add(unique)
    return keys


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
    """Write one image's PNGs (atomically) as `out_dir/<key>_{clusters,overlay,classes}.png`."""
    base = out_dir / key
    _save_png(palette_png(seg.clusters), base.with_name(f"{base.name}_clusters.png"))
    if seg.classes is None:
        blended = overlay(image, seg.clusters)
    else:
        # Classes when matched (their colours are the legend's); unmatched pixels stay untinted.
        blended = overlay(image, seg.classes)
        blended[seg.classes == UNMATCHED] = image[seg.classes == UNMATCHED]
        _save_png(_class_palette_png(seg.classes), base.with_name(f"{base.name}_classes.png"))
    _save_png(Image.fromarray(blended), base.with_name(f"{base.name}_overlay.png"))


def legend(run: Run) -> dict:
    """Index -> name and colour for clusters (and classes), as written to legend.json."""
    colours = palette()
    mapping = run.cluster_to_class
    clusters = {
        str(i): {
            "colour": colours[i].tolist(),
            "class": None if mapping is None or mapping[i] < 0 else int(mapping[i]),
        }
        for i in range(run.n_clusters)
    }
    classes = None
    if mapping is not None:
        classes = {str(j): {"name": name, "colour": colours[j].tolist()} for j, name in enumerate(run.class_names)}
        classes[str(UNMATCHED)] = {"name": "unmatched", "colour": [0, 0, 0]}
    return {
        "clusters": clusters,
        "classes": classes,
        "backbone": run.model.info.get("backbone"),
        "backbone_weights": run.backbone.weights_source,
        "resolution": run.resolution,
    }


def predict_paths(
    run: Run, inputs: list[Path], out_dir: Path, *, flip: bool = True, crf: bool = True
) -> PredictSummary:
    """Segment every image under `inputs` and write the results under `out_dir`.

    Args:
        run: from `load_run`.
        inputs: image files and/or folders (walked recursively).
        out_dir: output folder; sub-paths of folder inputs are kept.
        flip: flip-average the code.
        crf: refine with the dense CRF.

    Returns:
        `PredictSummary`: images written, and (path, reason) for each input skipped
        (undecodable file, empty folder, missing path, failed prediction).
    """
    out_dir = Path(out_dir)
    images, failed = collect_images(inputs, exclude=out_dir)
    for path, reason in failed:
        log.warning("predict: skipping %s: %s", path, reason)
    written = 0
    with Progress(len(images), "predict", unit="img") as progress:
        for (path, _), key in zip(images, output_keys(images), strict=True):
            try:
                image = load_rgb(path)
                seg = segment_image(run, image, flip=flip, crf=crf)
                write_outputs(image, seg, out_dir, key)
                written += 1
            except (ValueError, OSError, RuntimeError) as error:
                # A bad file, or one image too large for memory, must not lose the others.
                first_line = (str(error).strip().splitlines() or [""])[0]
                reason = error.reason if isinstance(error, ImageDecodeError) else f"{type(error).__name__}: {first_line}"
                failed.append((path, reason))
                log.warning("predict: skipping %s: %s", path, reason)
            progress.update(1)
    if written:
        atomic.write_json(out_dir / "legend.json", legend(run))
    return PredictSummary(written=written, failed=failed)


# --- command line ----------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `stego predict` arguments to `parser`."""
    parser.add_argument("inputs", nargs="+", type=Path, metavar="IMAGES_OR_DIR",
                        help="image files and/or folders (searched recursively)")
    parser.add_argument("--run", type=Path, default=Path("."), metavar="RUN_DIR",
                        help="project folder of a finished run, holding artifacts/model/ (default: .)")
    parser.add_argument("--out", type=Path, required=True, metavar="OUT", help="output folder")
    parser.add_argument("--no-flip", action="store_true", help="skip test-time flip averaging (about 2x faster)")
    parser.add_argument("--no-crf", action="store_true", help="skip the dense CRF refinement")
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="backbone checkpoint (or auto / random) instead of the one model.json records")
    parser.add_argument("--resolution", type=int, default=None, metavar="N",
                        help="shorter image side fed to the backbone (default: the run's)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")


def main_from_args(args: argparse.Namespace) -> int:
    """Run `stego predict` from parsed arguments and print a one-line summary.

    Errors loading the run (FileNotFoundError, ValueError, RuntimeError) propagate, for
    the CLI's one-sentence error handler.

    Args:
        args: namespace from a parser set up by `add_arguments`.

    Returns:
        0 when at least one image was written, 2 when none was.
    """
    run = load_run(args.run, args.weights, device=args.device, resolution=args.resolution)
    summary = predict_paths(run, list(args.inputs), args.out, flip=not args.no_flip, crf=not args.no_crf)
    line = f"wrote {summary.written} images to {args.out}; {len(summary.failed)} failed"
    if summary.failed:
        shown = "; ".join(f"{path} ({reason})" for path, reason in summary.failed[:10])
        more = f"; and {len(summary.failed) - 10} more" if len(summary.failed) > 10 else ""
        line += f": {shown}{more}"
    if run.backbone.weights_source == "random":
        line += " (RANDOM backbone weights: the segments mean nothing)"
    print(line)
    return 0 if summary.written else 2
