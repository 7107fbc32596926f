"""Tests for stego_tasks.crf: refinement toward image edges, validation, parallel batches."""

import os

import numpy as np
import pytest

from stego_tasks.crf import CRFParams, dense_crf, dense_crf_batch

H = W = 48
EDGE = 24


def _two_colour_image() -> tuple[np.ndarray, np.ndarray]:
    """A red left half and a blue right half, and the true labelling (1 = right)."""
    image = np.zeros((H, W, 3), np.uint8)
    image[:, :EDGE] = (200, 40, 40)
    image[:, EDGE:] = (40, 40, 200)
    truth = np.broadcast_to(np.arange(W)[None, :] >= EDGE, (H, W)).astype(np.int64)
    return image, truth


def _offset_logits(offset: int, confidence: float = 0.5) -> np.ndarray:
    """Weak two-class logits whose boundary sits `offset` pixels right of the true edge."""
    right = np.broadcast_to(np.arange(W)[None, :] >= EDGE + offset, (H, W))
    return np.stack([np.where(right, 0.0, confidence), np.where(right, confidence, 0.0)]).astype(
        np.float32
    )


def test_params_are_the_published_ones():
    p = CRFParams()
    got = (
        p.iterations,
        p.gaussian_sxy,
        p.gaussian_compat,
        p.bilateral_sxy,
        p.bilateral_srgb,
        p.bilateral_compat,
    )
    assert got == (10, 1, 3, 67, 3, 4), f"published STEGO CRF parameters changed: {got}"


@pytest.mark.parametrize("offset", [4, 8])
def test_crf_moves_boundary_to_the_image_edge(offset):
    image, truth = _two_colour_image()
    logits = _offset_logits(offset)
    before = float((logits.argmax(0) == truth).mean())
    q = dense_crf(image, logits)
    after = float((q.argmax(0) == truth).mean())
    assert q.shape == (2, H, W) and q.dtype == np.float32, f"got {q.shape} {q.dtype}"
    assert after >= before + 0.08 and after > 0.98, (
        f"boundary offset by {offset}px: accuracy {before:.3f} -> {after:.3f}, expected a snap to the edge"
    )


def test_crf_cleans_strong_noise_and_sums_to_one():
    image, truth = _two_colour_image()
    rng = np.random.default_rng(0)
    onehot = np.stack([truth == 0, truth == 1]).astype(np.float32)
    logits = (onehot + rng.normal(scale=1.5, size=onehot.shape)).astype(np.float32)
    before = float((logits.argmax(0) == truth).mean())
    q = dense_crf(image, logits)
    after = float((q.argmax(0) == truth).mean())
    assert after >= before + 0.2, f"noisy labelling: accuracy {before:.3f} -> {after:.3f}"
    np.testing.assert_allclose(
        q.sum(axis=0), 1.0, atol=1e-5, err_msg="CRF output is not a distribution per pixel"
    )
    assert np.all(q >= 0), "negative probabilities"


def test_zero_iterations_return_the_clipped_softmax():
    image, _ = _two_colour_image()
    logits = _offset_logits(3, confidence=2.0)
    q = dense_crf(image, logits, CRFParams(iterations=0))
    e = np.exp(logits - logits.max(0))
    np.testing.assert_allclose(
        q, e / e.sum(0), atol=1e-5, err_msg="0 iterations should give softmax(logits)"
    )


@pytest.mark.parametrize(
    ("image", "logits", "match"),
    [
        (np.zeros((H, W, 3), np.float32), np.zeros((2, H, W), np.float32), "uint8"),
        (np.zeros((H, W), np.uint8), np.zeros((2, H, W), np.float32), "uint8"),
        (np.zeros((H, W, 3), np.uint8), np.zeros((2, H // 8, W // 8), np.float32), "upsample"),
        (np.zeros((H, W, 3), np.uint8), np.zeros((H, W), np.float32), r"\[n_labels, H, W\]"),
        (np.zeros((H, W, 3), np.uint8), np.full((2, H, W), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_inputs_raise(image, logits, match):
    with pytest.raises(ValueError, match=match):
        dense_crf(image, logits)


def _batch(n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(1)
    image, truth = _two_colour_image()
    onehot = np.stack([truth == 0, truth == 1, np.zeros_like(truth, bool)]).astype(np.float32)
    images = [np.roll(image, 3 * i, axis=1) for i in range(n)]
    logits = [
        (np.roll(onehot, 3 * i, axis=2) + rng.normal(size=onehot.shape)).astype(np.float32)
        for i in range(n)
    ]
    return images, logits


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunksize", [1, 2])
def test_parallel_batch_equals_serial(chunksize):
    images, logits = _batch(5)
    serial_progress: list[int] = []
    serial = dense_crf_batch(images, logits, workers=1, progress=serial_progress.append)
    parallel_progress: list[int] = []
    parallel = dense_crf_batch(
        images, logits, workers=2, chunksize=chunksize, progress=parallel_progress.append
    )
    assert len(parallel) == 5, f"expected 5 results, got {len(parallel)}"
    for i, (a, b) in enumerate(zip(serial, parallel, strict=True)):
        np.testing.assert_allclose(
            b, a, atol=1e-6, err_msg=f"image {i}: parallel result differs or is out of order"
        )
        np.testing.assert_allclose(
            a, dense_crf(images[i], logits[i]), atol=1e-6, err_msg=f"image {i}: serial batch"
        )
    assert serial_progress == [1, 2, 3, 4, 5], f"serial progress calls: {serial_progress}"
    assert parallel_progress[-1] == 5 and parallel_progress == sorted(parallel_progress), (
        f"parallel progress should count up to 5, got {parallel_progress}"
    )


class _KillsWorker(np.ndarray):
    """An image whose unpickling ends the receiving process, like an OOM kill."""

    def __reduce_ex__(self, protocol):
        return (os._exit, (3,))


@pytest.mark.timeout(60)
def test_dead_worker_raises_instead_of_hanging():
    images, logits = _batch(4)
    images[2] = images[2].view(_KillsWorker)
    with pytest.raises(RuntimeError, match="worker process died"):
        dense_crf_batch(images, logits, workers=2)


def test_batch_validates_before_starting():
    images, logits = _batch(3)
    logits[1] = logits[1][:, :10]
    with pytest.raises(ValueError, match="upsample"):
        dense_crf_batch(images, logits, workers=2)
    with pytest.raises(ValueError, match="3 images but 2 logits"):
        dense_crf_batch(images, logits[:2])
