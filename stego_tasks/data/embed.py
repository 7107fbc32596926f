"""The worker side of stage `extract`: decode, preprocess and embed one chunk of images.

A chunk is one `ChunkJob` (a batch of manifest rows of one split). The same functions run
in the stage's own process (one local worker), on a Dask worker (`dask.address`), or as a
Prefect task on a `DaskTaskRunner`; whichever runs them, the arrays they return are equal,
so where the work ran never changes the store.

Decoding (`load_chunk`, image by image: `decode_image`) is kept apart from the forward
pass (`embed_chunk`) so that the in-process runner can decode the next chunks on a pool of
`runtime.decode_workers` threads while the backbone runs.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import torch

from stego_tasks.config import BackboneParams
from stego_tasks.data.corpus_files import ImageDecodeError
from stego_tasks.data.images import load_label, load_rgb
from stego_tasks.data.preprocess import preprocess
from stego_tasks.errors import InvalidInputError
from stego_tasks.method.backbone import Backbone, create_seeded_backbone, normalize
from stego_tasks.method.pos_embed import supports_dino_pos_embed
from stego_tasks.method.weights import WeightsNotFoundError
from stego_tasks.runtime.devices import backbone_precision, resolve_device

log = logging.getLogger("stego")


def load_backbone(backbone: BackboneParams, allow_random_fallback: bool) -> Backbone:
    """Create the frozen backbone; on the demo corpus only, fall back to random weights loudly.

    Args:
        backbone: name and weights source.
        allow_random_fallback: True only for the bundled demo corpus.

    Returns:
        The frozen `Backbone` (its `weights_source` says where the weights came from).
    """
    try:
        return create_seeded_backbone(backbone.name, weights=backbone.weights)
    except WeightsNotFoundError as error:
        if not allow_random_fallback:
            raise
        banner = "=" * 78
        log.warning(
            "%s\nDEMO ONLY: no weights for backbone '%s' (%s).\n"
            "Falling back to a RANDOMLY INITIALISED ViT; metrics are recorded with "
            "backbone_weights: random.\n%s",
            banner, backbone.name, error, banner,
        )
        return create_seeded_backbone(backbone.name, weights="random")


def pos_embed_mode(backbone: Backbone, preprocess: str) -> str:
    """"dino" when `preprocess` is reference and the backbone has DINO's layout, else "timm"."""
    return "dino" if preprocess == "reference" and supports_dino_pos_embed(backbone.model) else "timm"


@lru_cache(maxsize=4)
def _cached_backbone(
    name: str, weights: str, device: str, compile_model: bool = False, pos_embed: str = "timm",
    weights_sha256: str | None = None,
) -> Backbone:
    # One backbone per worker process, reused by every chunk that process runs (keyed by the
    # checkpoint's content too, so a file replaced at the same path is loaded again). Random
    # weights are seeded so that every worker, and every rerun, embeds with the same net.
    model = create_seeded_backbone(name, weights=weights, pos_embed=pos_embed)
    if weights_sha256 is not None and model.weights_sha256 != weights_sha256:
        # A worker (or a later chunk) found another file at the path the stage planned with.
        raise InvalidInputError(
            f"the weights file {weights!r} changed while features were being extracted (its content no longer "
            f"matches sha256 {weights_sha256[:12]}...); leave it unchanged and rerun `stego extract`."
        )
    model = model.to(resolve_device(device))
    if compile_model:
        # In place, so the Backbone keeps its attributes (patch size, mean, std).
        model.compile()
    return model


@dataclass(frozen=True)
class ChunkJob:
    """Everything a (possibly remote) worker needs to extract one chunk."""

    split: str
    index: int
    image_paths: tuple[str, ...]
    label_paths: tuple[str | None, ...]
    backbone_name: str
    backbone_weights: str
    resolution: int
    five_crop: bool
    crop_ratio: float
    flip: bool
    ignore_index: int
    device: str
    torch_threads: int | None = None
    amp: bool = True
    compile_model: bool = False
    preprocess: str = "antialias"
    pos_embed: str = "timm"
    # Threads decoding the chunk's images (`runtime.decode_workers`); changes no value.
    decode_workers: int = 1
    # SHA-256 of the checkpoint file the stage planned with (None: random weights).
    weights_sha256: str | None = None


@dataclass(frozen=True)
class DecodedChunk:
    """A chunk's network inputs before the backbone: images uint8 [m, R, R, 3], labels uint8 [m, R, R], crops int8 [m]."""

    images: np.ndarray
    labels: np.ndarray
    crops: np.ndarray


DecodedImage = list[tuple[np.ndarray, np.ndarray, int]]
"""One image's network inputs: (uint8 [R, R, 3], labels uint8 [R, R], crop index) per crop."""


def decode_image(job: ChunkJob, position: int) -> DecodedImage:
    """Decode and preprocess image `position` of a chunk and its label (no torch; safe in a thread).

    PIL releases the GIL while it decodes, resizes and JPEG-encodes, so several threads
    running this decode in parallel (`runtime.decode_workers`).
    """
    label_path = job.label_paths[position]
    try:
        label = load_label(Path(label_path)) if label_path else None
        image = load_rgb(Path(job.image_paths[position]))
    except ImageDecodeError as error:  # ingest read it whole: the corpus changed since the manifest was written
        raise ImageDecodeError(error.path, f"{error.reason}; it changed since `stego ingest` listed it: rerun "
                               "`stego ingest` (or `dvc repro`), which quarantines it") from None
    pieces = preprocess(image, label, job.resolution, job.five_crop, job.crop_ratio, job.preprocess)
    out = []
    for crop_index, (crop, crop_label) in enumerate(pieces):
        fill = np.full(crop.shape[:2], job.ignore_index, dtype=np.uint8)
        out.append((crop, fill if crop_label is None else np.clip(crop_label, 0, 255).astype(np.uint8), crop_index))
    return out


def assemble_chunk(images: list[DecodedImage]) -> DecodedChunk:
    """A chunk's `DecodedChunk` from its images' `decode_image` results, in image order."""
    pieces = [piece for image in images for piece in image]
    return DecodedChunk(
        np.stack([p[0] for p in pieces]), np.stack([p[1] for p in pieces]), np.asarray([p[2] for p in pieces], dtype=np.int8)
    )


def load_chunk(job: ChunkJob, pool: Executor | None = None) -> DecodedChunk:
    """Decode and preprocess a chunk's images and labels (no torch; safe in a thread).

    Args:
        job: the chunk's absolute paths and preprocessing settings.
        pool: decode the images on these threads (None: `job.decode_workers` threads of
            its own when more than 1, else in this thread); the result is the same.

    Returns:
        A `DecodedChunk` with m = images x crops rows (labels ignore-filled where an image has none).
    """
    positions = range(len(job.image_paths))
    if pool is None and job.decode_workers > 1 and len(positions) > 1:
        with ThreadPoolExecutor(min(job.decode_workers, len(positions)), thread_name_prefix="stego-decode") as own:
            return assemble_chunk(list(own.map(partial(decode_image, job), positions)))
    if pool is None:
        return assemble_chunk([decode_image(job, i) for i in positions])
    return assemble_chunk(list(pool.map(partial(decode_image, job), positions)))


def embed_chunk(job: ChunkJob, decoded: DecodedChunk) -> dict[str, np.ndarray]:
    """Run the frozen backbone on a decoded chunk.

    On CUDA the uint8 batch goes through pinned memory and, with `job.amp`, the forward
    runs under bfloat16 autocast; the stored features are float16 either way.

    Args:
        job: backbone, device, flip and thread settings.
        decoded: the chunk's preprocessed inputs.

    Returns:
        feats float16 [m, C, h, w], pooled float32 [m, C] (L2-normalised spatial mean),
        labels uint8 [m, R, R], images uint8 [m, R, R, 3], crops int8 [m], and
        feats_flip float16 [m, C, h, w] when `job.flip`.
    """
    if job.torch_threads:
        torch.set_num_threads(job.torch_threads)
    model = _cached_backbone(
        job.backbone_name, job.backbone_weights, job.device, job.compile_model, job.pos_embed, job.weights_sha256
    )
    device = next(model.parameters()).device
    pixels = torch.from_numpy(decoded.images)
    if device.type == "cuda":
        pixels = pixels.pin_memory()
    batch = normalize(pixels.to(device, non_blocking=True).permute(0, 3, 1, 2), model.mean, model.std)
    use_bf16 = backbone_precision(device, job.amp) == "bf16"
    # A context, not torch.set_grad_enabled(False): in-process, that would switch autograd
    # off for whatever the caller runs next (a training loop in the same interpreter).
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
        feats = model(batch).float()
        flipped = model(batch.flip(-1)).float() if job.flip else None
    out = {
        "feats": feats.cpu().numpy().astype(np.float16),
        "pooled": torch.nn.functional.normalize(feats.mean(dim=(2, 3)), dim=1).cpu().numpy(),
        "labels": decoded.labels,
        "images": decoded.images,
        "crops": decoded.crops,
    }
    if flipped is not None:
        out["feats_flip"] = flipped.cpu().numpy().astype(np.float16)
    return out


def extract_chunk(job: ChunkJob) -> dict[str, np.ndarray]:
    """Decode and embed one chunk (what a Dask worker or Prefect task runs).

    Args:
        job: the chunk's absolute image/label paths and the preprocessing settings.

    Returns:
        The arrays of `embed_chunk`.
    """
    return embed_chunk(job, load_chunk(job))
