"""Tests for stego_tasks.method.dense_crf: the CRF moves a weak boundary onto the image edge and cleans
noise, a CRF without pairwise terms is exactly the clipped softmax of the logits, the result respects
the symmetries of the Potts model (label permutations, constant logit shifts) on square and
non-square images, inputs are checked in one sentence, and batches give the serial results in order
whether run here, in spawned workers or on a shared pool.

Expectations come from NumPy (softmax, argmax) and from pydensecrf's own `unary_from_softmax`,
never from recorded outputs.
"""

import os

import numpy as np
import pydensecrf.utils
import pytest

from stego_tasks.config import CRFParams
from stego_tasks.method.dense_crf import crf_chunk, dense_crf, dense_crf_batch, labels
from stego_tasks.runtime.executors import spawn_pool
from tests.runtime.test_executors import _RecordingExecutor

# Both pairwise kernels weighted 0: mean-field inference then sees the unary term alone.
UNARY_ONLY = CRFParams(iterations=5, gaussian_compat=0, bilateral_compat=0)
H = W = 48
EDGE = 24


def _two_colour_image() -> tuple[np.ndarray, np.ndarray]:
    """A red left half and a blue right half, and the true labelling (1 = right)."""
    image = np.zeros((H, W, 3), np.uint8)
    image[:, :EDGE] = (200, 40, 40)
    image[:, EDGE:] = (40, 40, 200)
    truth = np.broadcast_to(np.arange(W)[None, :] >= EDGE, (H, W)).astype(np.int64)
    return image, truth


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


def _offset_logits(offset: int, confidence: float = 0.5) -> np.ndarray:
    """Weak two-class logits whose boundary sits `offset` pixels right of the true edge."""
    right = np.broadcast_to(np.arange(W)[None, :] >= EDGE + offset, (H, W))
    return np.stack([np.where(right, 0.0, confidence), np.where(right, confidence, 0.0)]).astype(
        np.float32
    )


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


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunksize", [1, 2, None])
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


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [1, 2])
def test_argmax_option_gives_the_argmax_labels(workers):
    images, logits = _batch(5)
    labels = dense_crf_batch(images, logits, workers=workers, argmax=True)
    assert len(labels) == 5, f"expected 5 label maps, got {len(labels)}"
    for i, got in enumerate(labels):
        assert got.shape == (H, W) and got.dtype == np.uint8, f"image {i}: got {got.shape} {got.dtype}"
        want = dense_crf(images[i], logits[i]).argmax(0)
        assert np.array_equal(got, want), f"image {i}: labels differ from dense_crf(...).argmax(0)"


def test_batch_chunks_default_and_explicit_sizes():
    images, logits = _batch(9)
    recorder = _RecordingExecutor()
    dense_crf_batch(images, logits, workers=1, executor=recorder, argmax=True)
    assert recorder.chunk_sizes == [3, 3, 3], f"9 images, 1 worker: chunks {recorder.chunk_sizes}"
    recorder = _RecordingExecutor()
    out = dense_crf_batch(images, logits, workers=2, executor=recorder, argmax=True)
    assert recorder.chunk_sizes == [2, 2, 2, 2, 1], f"9 images, 2 workers: chunks {recorder.chunk_sizes}"
    assert len(out) == 9, f"expected 9 results, got {len(out)}"
    recorder = _RecordingExecutor()
    dense_crf_batch(images, logits, workers=2, chunksize=4, executor=recorder, argmax=True)
    assert recorder.chunk_sizes == [4, 4, 1], f"explicit chunksize=4 not honoured: {recorder.chunk_sizes}"
    with pytest.raises(ValueError, match="chunksize >= 1"):
        dense_crf_batch(images, logits, workers=2, chunksize=0)


@pytest.mark.timeout(60)
def test_shared_pool_serves_several_batches():
    images, logits = _batch(4)
    with spawn_pool(2) as pool:
        first = dense_crf_batch(images[:2], logits[:2], workers=2, executor=pool, argmax=True)
        second = dense_crf_batch(images[2:], logits[2:], workers=2, executor=pool, argmax=True)
    for i, got in enumerate(first + second):
        assert np.array_equal(got, dense_crf(images[i], logits[i]).argmax(0)), f"image {i} differs"


# --- properties that follow from the model, whatever its parameters ------------------------------


def _random_case(height: int, width: int, n_labels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random uint8 image [height, width, 3] and random float32 logits [n_labels, height, width]."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    logits = rng.normal(scale=3.0, size=(n_labels, height, width)).astype(np.float32)
    return image, logits


def _clipped_softmax(logits: np.ndarray) -> np.ndarray:
    """exp(-unary) renormalised, with the unary from pydensecrf's own helper: the CRF's fixed point without pairwise terms."""
    e = np.exp(logits.astype(np.float64) - logits.max(axis=0))
    unary = pydensecrf.utils.unary_from_softmax(e / e.sum(axis=0))
    p = np.exp(-unary.astype(np.float64)).reshape(logits.shape)
    return p / p.sum(axis=0)


def test_a_crf_without_pairwise_terms_returns_the_clipped_softmax_and_its_argmax():
    image, logits = _random_case(20, 30, 4, seed=0)
    logits[:, 0, 0] = [40.0, 0.0, 0.0, 0.0]  # one pixel so sure that the clip at 1e-5 matters
    q = dense_crf(image, logits, UNARY_ONLY)
    assert q.shape == (4, 20, 30) and q.dtype == np.float32, f"got {q.shape} {q.dtype}"
    np.testing.assert_allclose(q, _clipped_softmax(logits), atol=1e-5, err_msg="unary-only CRF != clipped softmax")
    assert np.array_equal(q.argmax(0), logits.argmax(0)), "unary-only CRF changed the argmax of the logits"
    assert q[1:, 0, 0].min() > 5e-6, f"the clipped labels of the sure pixel fell to {q[1:, 0, 0]}"


def test_adding_a_constant_to_every_label_of_a_pixel_changes_nothing():
    image, logits = _random_case(24, 16, 3, seed=1)
    shift = np.random.default_rng(2).normal(scale=5.0, size=(1, 24, 16)).astype(np.float32)
    np.testing.assert_allclose(
        dense_crf(image, logits + shift), dense_crf(image, logits), atol=1e-5,
        err_msg="the CRF depends on more than the softmax of the logits",
    )


def test_permuting_the_labels_permutes_the_result():
    image, logits = _random_case(24, 40, 4, seed=3)
    perm = np.array([2, 0, 3, 1])
    np.testing.assert_allclose(
        dense_crf(image, logits[perm]), dense_crf(image, logits)[perm], atol=1e-5,
        err_msg="the Potts CRF treated the labels differently",
    )


@pytest.mark.parametrize("transpose", [False, True])
def test_the_boundary_snaps_to_the_edge_of_a_non_square_image(transpose):
    # 32 x 64 with a vertical edge at column 40, or its transpose (64 x 32, horizontal edge):
    # a CRF that mixed up height and width would put its kernels across the wrong pixels.
    height, width, edge, offset = 32, 64, 40, 6
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :edge] = (200, 40, 40)
    image[:, edge:] = (40, 40, 200)
    truth = np.broadcast_to(np.arange(width) >= edge, (height, width))
    right = np.broadcast_to(np.arange(width) >= edge + offset, (height, width))
    logits = np.stack([np.where(right, 0.0, 0.5), np.where(right, 0.5, 0.0)]).astype(np.float32)
    if transpose:
        image, truth, logits = image.transpose(1, 0, 2), truth.T, logits.transpose(0, 2, 1)
    q = dense_crf(np.ascontiguousarray(image), np.ascontiguousarray(logits))
    assert q.shape == logits.shape, f"got {q.shape} for logits {logits.shape}"
    before, after = float((logits.argmax(0) == truth).mean()), float((q.argmax(0) == truth).mean())
    assert after > 0.98 and after >= before + 0.05, f"accuracy {before:.3f} -> {after:.3f}, expected a snap to the edge"


def test_a_single_label_is_certain_everywhere():
    image, logits = _random_case(10, 12, 1, seed=4)
    q = dense_crf(image, logits)
    np.testing.assert_allclose(q, 1.0, atol=1e-6, err_msg="one label must have probability 1")


@pytest.mark.parametrize(
    ("logits", "match"),
    [
        (np.zeros((2, H, W), np.int64), r"^dense_crf needs float logits \[n_labels, H, W\], got shape \(2, 48, 48\)\.$"),
        (np.zeros((0, H, W), np.float32), r"^dense_crf needs at least one label in logits, got n_labels=0\.$"),
        (np.full((2, H, W), np.inf, np.float32), r"^dense_crf got NaN or infinite logits; check the model outputs\.$"),
    ],
)
def test_integer_empty_or_infinite_logits_are_refused_in_one_sentence(logits, match):
    with pytest.raises(ValueError, match=match):
        dense_crf(np.zeros((H, W, 3), np.uint8), logits)


@pytest.mark.parametrize(("n_labels", "dtype"), [(2, np.uint8), (256, np.uint8), (257, np.uint16), (300, np.uint16)])
def test_label_maps_are_uint8_up_to_256_labels_and_uint16_above(n_labels, dtype):
    rng = np.random.default_rng(n_labels)
    probs = rng.random((n_labels, 3, 5))
    probs[n_labels - 1, 0, 0] = 2.0  # the highest label wins somewhere: it must fit the dtype
    got = labels(probs)
    assert got.dtype == dtype and got.shape == (3, 5), f"{n_labels} labels: got {got.dtype} {got.shape}"
    assert np.array_equal(got.astype(np.int64), probs.argmax(0)), f"{n_labels} labels: not the argmax"
    assert got[0, 0] == n_labels - 1, f"label {n_labels - 1} stored as {got[0, 0]}"


def test_a_worker_chunk_refines_each_image_in_order():
    images, logits = _batch(3)
    probs = crf_chunk(images, logits, CRFParams())
    maps = crf_chunk(images, logits, CRFParams(), argmax=True)
    for i in range(3):
        want = dense_crf(images[i], logits[i])
        np.testing.assert_array_equal(probs[i], want, err_msg=f"image {i}: probabilities")
        assert maps[i].dtype == np.uint8 and np.array_equal(maps[i], want.argmax(0)), f"image {i}: label map"
