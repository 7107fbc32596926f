"""Tests for stego_tasks.method.batching: every epoch is a shuffle of the rows cut into full batches, the
order depends on (seed, epoch) alone so a run resumed at any step draws what the uninterrupted run
drew, each step's positives are uniform draws among its rows' neighbours from (seed, step) alone,
`step_plan` pairs the two step by step, and a graph without neighbours is refused in one sentence.
"""

import re
from itertools import islice

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from stego_tasks.method.batching import epoch_batches, step_plan, step_positives
from stego_tasks.method.neighbours import knn_graph, pool_features
from tests.data.test_shard_rows import _values


def _take(size: int, batch_size: int, seed: int, start_step: int, n: int) -> list[list[int]]:
    """The first `n` batches of `epoch_batches` as lists of row indices."""
    return [batch.tolist() for batch in islice(epoch_batches(size, batch_size, seed, start_step), n)]


def test_positives_are_neighbours_drawn_from_seed_and_step_alone():
    feats, _ = _values(rows=30)
    knn = knn_graph(pool_features(feats), 5)
    index = np.array([4, 0, 29, 4, 11])
    first = step_positives(knn, index, seed=3, step=17)
    assert first.dtype == np.int64 and first.shape == (5,)
    assert all(p in knn[i] for i, p in zip(index, first, strict=True)), "a positive is not among its row's neighbours"
    assert np.array_equal(step_positives(knn, index, seed=3, step=17), first), "not reproducible"
    draws = {tuple(step_positives(knn, index, seed=3, step=s)) for s in range(20)}
    assert len(draws) > 10, "steps draw the same positives"
    assert not np.array_equal(step_positives(knn, index, seed=4, step=17), first) or \
        not np.array_equal(step_positives(knn, index, seed=5, step=17), first), "the seed changes nothing"
    columns = [np.flatnonzero(knn[0] == step_positives(knn, np.array([0]), 0, s)[0])[0] for s in range(400)]
    assert set(columns) == set(range(5)), "every one of the k neighbours must be drawn"


def test_each_epoch_is_a_shuffle_of_the_rows_cut_into_full_batches():
    size, batch_size = 11, 3  # 3 full batches per epoch; 2 rows sit out each epoch (drop_last)
    batches = list(islice(epoch_batches(size, batch_size, seed=0), 12))
    assert all(b.dtype == torch.int64 and b.shape == (batch_size,) for b in batches), "not int64 batches of 3"
    epochs = [np.concatenate(batches[e * 3 : e * 3 + 3]) for e in range(4)]
    for e, rows in enumerate(epochs):
        assert len(set(rows.tolist())) == 9 and set(rows.tolist()) <= set(range(size)), f"epoch {e} rows {rows}"
    assert len({tuple(rows) for rows in epochs}) == 4, "two epochs drew the same order"


def test_a_batch_larger_than_the_split_takes_the_whole_split_every_step():
    for batch in _take(4, 10, seed=2, start_step=0, n=5):
        assert sorted(batch) == [0, 1, 2, 3], f"batch {batch} is not the whole split of 4"


def test_a_run_resumed_at_any_step_draws_the_batches_of_the_uninterrupted_run():
    size, batch_size, seed = 10, 4, 5  # 2 batches per epoch: resumes mid-epoch and at epoch starts
    uninterrupted = _take(size, batch_size, seed, 0, 12)
    for start in range(12):
        assert _take(size, batch_size, seed, start, 12 - start) == uninterrupted[start:], f"resumed at step {start}"


def test_the_seed_decides_the_order_modulo_two_to_the_64():
    assert _take(20, 5, 1, 0, 8) == _take(20, 5, 1, 0, 8), "the same seed gave another order"
    assert _take(20, 5, 1, 0, 8) != _take(20, 5, 2, 0, 8), "another seed gave the same order"
    assert _take(20, 5, -1, 0, 8) == _take(20, 5, 2**64 - 1, 0, 8), "a negative seed is not taken modulo 2**64"


def test_positives_of_one_step_are_uniform_over_the_row_s_neighbours():
    knn = np.arange(50, 55, dtype=np.int64)[None, :].repeat(3, axis=0)
    draws = step_positives(knn, np.full(5000, 1), seed=0, step=9)
    counts = np.array([(draws == v).sum() for v in range(50, 55)])
    assert counts.sum() == 5000, f"draws outside the row: {np.unique(draws)}"
    stat = float(((counts - 1000) ** 2 / 1000).sum())
    assert stat < chi2.ppf(0.999, df=4), f"counts {counts} are not uniform: chi-square {stat:.1f}"


def test_the_plan_pairs_each_step_s_batch_with_that_step_s_positives():
    knn = knn_graph(pool_features(_values(rows=12)[0]), 3)
    plan = list(step_plan(knn, 12, 5, seed=7, start_step=3, steps=9))
    assert len(plan) == 6, f"steps 3..8 are 6 steps, got {len(plan)}"
    batches = _take(12, 5, 7, 3, 6)
    for offset, (index, positives) in enumerate(plan):
        step = 3 + offset
        assert index.tolist() == batches[offset], f"step {step}: batch {index} is not the epoch order's"
        assert np.array_equal(positives, step_positives(knn, index, 7, step)), f"step {step}: positives"
    assert list(step_plan(knn, 12, 5, seed=7, start_step=4, steps=4)) == [], "no steps left must plan nothing"


@pytest.mark.parametrize("shape", [(4, 0), (4,)])
def test_a_graph_without_neighbour_columns_is_refused_in_one_sentence(shape):
    message = rf"^step_positives expects a kNN graph of shape \[N, k>=1\], got {re.escape(str(shape))}\.$"
    with pytest.raises(ValueError, match=message):
        step_positives(np.zeros(shape, np.int64), np.array([0]), seed=0, step=0)
