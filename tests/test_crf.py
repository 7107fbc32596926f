"""Tests for the `crf` stage: the published parameters, and the stage on a local pool and on a Dask
cluster (tiny Zarr stores), equal to `dense_crf` image by image, and failing whole. `method.dense_crf`
itself is tested in tests/method/test_dense_crf.py, the executors in tests/runtime/test_executors.py."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr

from stego_tasks.config import CRFParams, DaskParams
from stego_tasks.crf import crf
from stego_tasks.method.dense_crf import dense_crf
from tests.method.test_dense_crf import H, W, _two_colour_image


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


