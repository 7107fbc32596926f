"""Tests for the `knn` stage: the graph store it writes is the exact top-k, with integrity records.
`method.neighbours` itself is tested in tests/method/test_neighbours.py."""

import numpy as np
import pytest
import zarr

from stego_tasks.data.store_integrity import StoreDamagedError, open_store
from stego_tasks.knn import knn
from stego_tasks.method.neighbours import pool_features


def _brute_force_sims(x: np.ndarray) -> np.ndarray:
    """Cosine similarity matrix in float64 with the diagonal (self) set to -inf."""
    u = x.astype(np.float64)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    sims = u @ u.T
    np.fill_diagonal(sims, -np.inf)
    return sims


def _pooled_store(path, pooled: np.ndarray):
    """A features store holding only what the knn stage reads: a finished train split's pooled features."""
    train = zarr.open_group(str(path), mode="w", zarr_format=3).create_group("train")
    train.create_array("pooled", data=pooled)
    train.create_array("done", data=np.ones(1, dtype=bool))
    return path


@pytest.mark.parametrize("k", [3, 50])
def test_knn_stage_writes_the_exact_graph_with_integrity_records(tmp_path, k):
    rng = np.random.default_rng(3)
    pooled = pool_features(rng.normal(size=(12, 5, 2, 2)).astype(np.float32))
    store = _pooled_store(tmp_path / "features.zarr", pooled)
    summary = knn(store, tmp_path / "knn.zarr", k)
    kept = min(k, len(pooled) - 1)  # more neighbours than other crops: all of them
    assert summary == {"rows": 12, "k": kept}, summary
    group = open_store(tmp_path / "knn.zarr", "knn", ["train"])
    graph = group["train"][:]
    assert graph.shape == (12, kept) and group.attrs["k"] == kept, (graph.shape, dict(group.attrs))
    sims = _brute_force_sims(pooled)
    expected_sims = -np.sort(-sims, axis=1)[:, :kept]
    got_sims = np.take_along_axis(sims, graph.astype(np.int64), axis=1)
    np.testing.assert_allclose(got_sims, expected_sims, atol=1e-6, err_msg="the stored graph is not the exact top-k")
    assert not (graph == np.arange(12)[:, None]).any(), "an image is its own neighbour"
    # The graph's chunk is recorded: a changed byte is caught before training reads it.
    chunk = next(p for p in (tmp_path / "knn.zarr" / "train").rglob("*") if p.is_file() and p.name != "zarr.json")
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(StoreDamagedError, match="stego knn"):
        open_store(tmp_path / "knn.zarr", "knn", ["train"])
