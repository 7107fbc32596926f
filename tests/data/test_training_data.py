"""Tests for stego_tasks.data.training_data's readers: batches read ahead by
threads, and the per-step positives that make them independent of how the data is read.

Stores are written in the layout `extract` writes (`feature_store.array_layout`: the train
features and labels as 4-row shards of one-row chunks) with each codec `extract.compression`
offers, on 10 crops of [8, 4, 4] features.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from stego_tasks.config import TrainParams
from stego_tasks.data.training_data import TrainingData, load_training_data
from stego_tasks.knn import knn
from stego_tasks.method.neighbours import pool_features
from stego_tasks.train import fit, training_batches
from tests.data.test_shard_rows import COMPRESSIONS, IGNORE, N_CLASSES, ROWS_PER_CHUNK
from tests.data.test_shard_rows import _store as shard_store

PARAMS = TrainParams(
    n_codes=6, steps=7, batch_size=4, feature_samples=3, neg_samples=2, device="cpu", log_every=1, checkpoint_every=0
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _store(path: Path, compression: str = "zstd", rows: int = 10) -> tuple[Path, Path]:
    """A features store of `_values()` in extract's train layout with `compression`, and its kNN store."""
    _, group = shard_store(path, compression, rows)
    group.create_array("pooled", data=pool_features(group["feats"][:]))
    group.create_array("done", data=np.ones(-(-rows // ROWS_PER_CHUNK), dtype=bool))
    knn(path / "features.zarr", path / "knn.zarr", 3)
    return path / "features.zarr", path / "knn.zarr"


def _all_batches(data: TrainingData, readers: int) -> list[tuple[torch.Tensor, ...]]:
    with training_batches(data, PARAMS, seed=4, device=torch.device("cpu"), readers=readers) as batches:
        return [(b.feats, b.feats_pos, b.labels) for b in batches]


def test_every_step_gets_the_same_batch_for_any_reader_count_held_or_streamed(tmp_path):
    store, knn = _store(tmp_path)
    reference = _all_batches(load_training_data(store, knn, IGNORE, N_CLASSES), readers=0)
    assert len(reference) == PARAMS.steps, f"{len(reference)} batches for {PARAMS.steps} steps"
    for budget in (1 << 30, 0):
        data = load_training_data(store, knn, IGNORE, N_CLASSES, in_memory_bytes=budget)
        assert data.streamed == (budget == 0)
        for readers in (0, 1, 3):
            got = _all_batches(data, readers)
            for step, (a, b) in enumerate(zip(got, reference, strict=True)):
                for name, x, y in zip(("feats", "feats_pos", "labels"), a, b, strict=True):
                    assert x.dtype == y.dtype and torch.equal(x, y), f"budget {budget}, {readers} readers: step {step} {name}"


def test_fit_is_the_same_for_any_reader_count(tmp_path):
    store, knn = _store(tmp_path)
    data = load_training_data(store, knn, IGNORE, N_CLASSES, in_memory_bytes=0)
    runs = [fit(data, N_CLASSES, PARAMS, seed=1, ignore_index=IGNORE, readers=r) for r in (0, 4)]
    (a, rows_a), (b, rows_b) = runs
    assert rows_a == rows_b, "the loss log depends on the reader count"
    for key in a.modules():
        for name, tensor in a.modules()[key].state_dict().items():
            assert torch.equal(tensor, b.modules()[key].state_dict()[name]), f"{key}.{name} depends on the reader count"


@pytest.mark.parametrize("compression", [c for c in COMPRESSIONS if c != "zstd"])
def test_a_lossless_codec_gives_the_same_losses_and_model_as_the_zstd_store(tmp_path, compression):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    base = load_training_data(*_store(tmp_path / "a", "zstd"), IGNORE, N_CLASSES, in_memory_bytes=0)
    other = load_training_data(*_store(tmp_path / "b", compression), IGNORE, N_CLASSES, in_memory_bytes=0)
    (model_a, rows_a), (model_b, rows_b) = (fit(d, N_CLASSES, PARAMS, seed=0, ignore_index=IGNORE) for d in (base, other))
    assert rows_a == rows_b, f"{compression}: loss values differ from the zstd store's"
    state_a, state_b = model_a.head.state_dict(), model_b.head.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a), f"{compression}: the head differs"


def test_a_failing_read_stops_training_with_its_error_and_leaves_no_reader_thread(tmp_path, monkeypatch):
    store, knn = _store(tmp_path)
    data = load_training_data(store, knn, IGNORE, N_CLASSES, in_memory_bytes=0)
    real, calls = data.host_batch, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise OSError("disk gone")
        return real(*args, **kwargs)

    monkeypatch.setattr(data, "host_batch", failing)
    with pytest.raises(OSError, match="disk gone"):
        fit(data, N_CLASSES, PARAMS, seed=0, ignore_index=IGNORE, readers=2)
    assert not [t for t in threading.enumerate() if t.name.startswith("stego-read")], "reader threads outlived the run"
