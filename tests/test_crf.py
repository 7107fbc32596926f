"""Tests for the `crf` stage and `method.dense_crf`: refinement toward image edges, validation, parallel batches,
and the `crf` stage on a local pool and on a Dask cluster (tiny Zarr stores)."""

import os
from collections.abc import Iterator
from concurrent.futures import Executor, Future
from pathlib import Path

import numpy as np
import pytest
import zarr

from stego_tasks.config import CRFParams, DaskParams
from stego_tasks.crf import crf
from stego_tasks.method.dense_crf import dense_crf, dense_crf_batch
from stego_tasks.runtime.executors import spawn_pool

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


class _RecordingExecutor(Executor):
    """Runs calls inline and records how many images each submitted chunk held."""

    def __init__(self) -> None:
        self.chunk_sizes: list[int] = []

    def submit(self, fn, /, *args, **kwargs) -> Future:
        self.chunk_sizes.append(len(args[0]))
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


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


# --- the `crf` stage on tiny stores ---

N_VAL, N_CLUSTERS, N_CLASSES = 7, 4, 3


def _stores(tmp_path: Path) -> tuple[Path, Path]:
    """A features store with `val/images` [N, H, W, 3] and a predictions store with float16 logits."""
    rng = np.random.default_rng(2)
    features = tmp_path / "features.zarr"
    val = zarr.open_group(str(features), mode="w", zarr_format=3).create_group("val")
    image, _ = _two_colour_image()
    images = np.stack([np.roll(image, 5 * i, axis=1) for i in range(N_VAL)])
    val.create_array("images", data=images, chunks=(2, H, W, 3))
    val.create_array("done", data=np.ones(4, bool), chunks=(4,))
    predictions = tmp_path / "predictions.zarr"
    group = zarr.open_group(str(predictions), mode="w", zarr_format=3)
    for name, n in (("cluster", N_CLUSTERS), ("linear", N_CLASSES)):
        logits = rng.normal(scale=2.0, size=(N_VAL, n, H, W)).astype(np.float16)
        group.create_array(f"{name}_logits", data=logits, chunks=(1, n, H, W))
    return features, predictions


def _expected(features: Path, predictions: Path) -> dict[str, np.ndarray]:
    """What the stage computed before: float32 logits, dense_crf, argmax, uint8."""
    images = zarr.open_group(str(features), mode="r")["val"]["images"][:]
    group = zarr.open_group(str(predictions), mode="r")
    return {
        name: np.stack(
            [dense_crf(img, lg.astype(np.float32)).argmax(0) for img, lg in zip(images, group[f"{name}_logits"][:], strict=True)]
        ).astype(np.uint8)
        for name in ("cluster", "linear")
    }


def _read_preds(path: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    return {name: group[f"{name}_pred"][:] for name in ("cluster", "linear")}


@pytest.fixture
def pool_count(monkeypatch) -> Iterator[list[int]]:
    """Counts process pools the crf stage starts (`executors.spawn_pool` creates them)."""
    from stego_tasks.runtime import executors
    created: list[int] = []
    original = executors.ProcessPoolExecutor

    class Counting(original):
        def __init__(self, *args, **kwargs):
            created.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(executors, "ProcessPoolExecutor", Counting)
    yield created


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("workers", "pools"), [(1, 0), (2, 1)])
def test_stage_matches_dense_crf_with_one_pool(tmp_path, pool_count, workers, pools):
    features, predictions = _stores(tmp_path)
    out = tmp_path / "crf.zarr"
    # chunk=2: several chunks per branch, so a pool per chunk or per branch would show.
    summary = crf(features, predictions, out, CRFParams(), workers=workers, chunk=2)
    assert summary == {"images": N_VAL}, f"summary: {summary}"
    assert len(pool_count) == pools, f"workers={workers}: {len(pool_count)} process pools started, expected {pools}"
    got, want = _read_preds(out), _expected(features, predictions)
    for name in want:
        assert got[name].dtype == np.uint8 and got[name].shape == (N_VAL, H, W), f"{name}: {got[name].dtype} {got[name].shape}"
        assert np.array_equal(got[name], want[name]), f"{name}_pred differs from the argmax of dense_crf"


@pytest.mark.timeout(180)
def test_stage_on_a_dask_cluster_equals_the_local_pool(tmp_path, pool_count, dask_cli_cluster):
    """`dask.address` pointing at a real `dask scheduler` with two `dask worker` processes."""
    features, predictions = _stores(tmp_path)
    local = tmp_path / "local.zarr"
    crf(features, predictions, local, CRFParams(), workers=2, chunk=2)
    assert len(pool_count) == 1, f"local run: {len(pool_count)} pools"
    remote = tmp_path / "dask.zarr"
    crf(features, predictions, remote, CRFParams(), workers=2, chunk=2, dask=DaskParams(address=dask_cli_cluster))
    assert len(pool_count) == 1, "with dask.address the stage must not start a local process pool"
    got, want = _read_preds(remote), _read_preds(local)
    for name in want:
        assert np.array_equal(got[name], want[name]), f"{name}_pred on Dask differs from the local pool"


@pytest.mark.timeout(120)
def test_stage_error_in_a_worker_surfaces_and_writes_nothing(tmp_path):
    features, predictions = _stores(tmp_path)
    group = zarr.open_group(str(predictions), mode="r+")
    bad = group["linear_logits"][3]
    bad[0, 0, 0] = np.nan
    group["linear_logits"][3] = bad
    out = tmp_path / "crf.zarr"
    with pytest.raises(ValueError, match="NaN"):
        crf(features, predictions, out, CRFParams(), workers=2, chunk=2)
    assert not out.exists(), "a failed crf stage left an output store behind"


