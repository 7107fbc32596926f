"""The worker side of extract: decoding a chunk, the backbone forward, and the GPU options."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from stego_tasks.data.embed import (
    ChunkJob,
    backbone_precision,
    embed_chunk,
    extract_chunk,
    load_chunk,
)
from stego_tasks.data.images import load_label, load_rgb
from stego_tasks.data.preprocess import preprocess
from stego_tasks.demo_data import demo_data


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> ChunkJob:
    root = tmp_path_factory.mktemp("embed")
    demo_data(root, n_train=3, n_val=3, size=64)
    images = sorted((root / "images" / "train").iterdir())[:2]
    labels = [root / "labels" / "train" / (path.stem + ".png") for path in images]
    assert all(path.exists() for path in labels), f"the demo corpus has no label for some of {images}"
    return ChunkJob(
        split="train", index=0, image_paths=tuple(map(str, images)), label_paths=(str(labels[0]), None),
        backbone_name="vit_tiny_patch16_224", backbone_weights="random", resolution=32, five_crop=True,
        crop_ratio=0.5, flip=True, ignore_index=255, device="cpu",
    )


def test_precision_is_bf16_only_on_cuda_with_amp() -> None:
    assert backbone_precision("cuda", True) == "bf16"
    assert backbone_precision(torch.device("cuda:1"), True) == "bf16"
    assert backbone_precision("cuda", False) == "fp32"
    assert backbone_precision("cpu", True) == "fp32", "autocast is a GPU option; the CPU stays float32"


def test_load_chunk_equals_preprocess_of_each_file(job: ChunkJob) -> None:
    decoded = load_chunk(job)
    assert decoded.images.shape == (10, 32, 32, 3) and decoded.images.dtype == np.uint8, decoded.images.shape
    assert decoded.labels.shape == (10, 32, 32) and decoded.labels.dtype == np.uint8, decoded.labels.shape
    assert decoded.crops.tolist() == [0, 1, 2, 3, 4] * 2, f"crop indices {decoded.crops.tolist()}"
    first = preprocess(load_rgb(Path(job.image_paths[0])), load_label(Path(job.label_paths[0])), 32, True, 0.5)
    second = preprocess(load_rgb(Path(job.image_paths[1])), None, 32, True, 0.5)
    for row, (image, label) in enumerate(first + second):
        assert np.array_equal(decoded.images[row], image), f"row {row}: image differs from preprocess()"
        want = np.full((32, 32), 255, np.uint8) if label is None else label
        assert np.array_equal(decoded.labels[row], want), f"row {row}: label differs (unlabelled rows are ignore-filled)"


def test_amp_changes_nothing_on_the_cpu(job: ChunkJob) -> None:
    with_amp, without = extract_chunk(replace(job, amp=True)), extract_chunk(replace(job, amp=False))
    assert set(with_amp) == {"feats", "feats_flip", "pooled", "labels", "images", "crops"}, sorted(with_amp)
    for name in with_amp:
        assert np.array_equal(with_amp[name], without[name]), f"{name}: amp must be a no-op on the CPU"
    pooled = with_amp["pooled"]
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, rtol=1e-5, err_msg="pooled rows are unit vectors")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_features_on_cuda_are_close_to_float32(job: ChunkJob) -> None:
    decoded = load_chunk(job)
    bf16 = embed_chunk(replace(job, device="cuda", amp=True), decoded)["feats"].astype(np.float32)
    fp32 = embed_chunk(replace(job, device="cuda", amp=False), decoded)["feats"].astype(np.float32)
    cpu = embed_chunk(job, decoded)["feats"].astype(np.float32)
    np.testing.assert_allclose(fp32, cpu, rtol=1e-2, atol=1e-2, err_msg="CUDA float32 vs CPU")
    cosine = (bf16 * fp32).sum(1) / (np.linalg.norm(bf16, axis=1) * np.linalg.norm(fp32, axis=1) + 1e-12)
    assert cosine.min() > 0.99, f"bf16 features drift from float32: min cosine {cosine.min():.4f}"


def test_embedding_in_process_leaves_autograd_on(job: ChunkJob) -> None:
    extract_chunk(job)
    assert torch.is_grad_enabled(), "extract_chunk switched autograd off for the rest of the process"
    assert not torch.is_inference_mode_enabled(), "extract_chunk left inference mode on"


@pytest.mark.parametrize("damage", ["removed", "garbage"])
def test_an_image_changed_since_ingest_is_one_sentence_saying_to_ingest_again(
    job: ChunkJob, tmp_path: Path, damage: str
) -> None:
    """The bare 'file does not exist' of a manifest's image said nothing of what to do."""
    from stego_tasks.data.corpus_files import ImageDecodeError

    image = tmp_path / "gone.png"
    if damage == "garbage":
        image.write_bytes(b"\x89 not a png" * 10)
    with pytest.raises(ImageDecodeError, match=r"gone\.png: .*; it changed since `stego ingest` listed it: rerun `stego ingest`"):
        load_chunk(replace(job, image_paths=(str(image), job.image_paths[1])))
