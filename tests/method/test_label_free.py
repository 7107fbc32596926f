"""Tests for stego_tasks.method.label_free: each signal against an independent computation.

The expected mutual information is checked against the average over every permutation of
a tiny map (its definition) and against the full hypergeometric sum with exact binomials;
ARI against counting pixel pairs one by one.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from stego_tasks.method.label_free import (
    adjusted_mutual_info,
    adjusted_rand_index,
    contingency,
    expected_mutual_info,
    mutual_info,
    runner_up,
    size_balance,
)


def _mi_of_maps(a: np.ndarray, b: np.ndarray) -> float:
    """MI from the definition: sum over (i, j) of p(i, j) log(p(i, j) / (p(i) p(j)))."""
    n = a.size
    total = 0.0
    for i in set(a.tolist()):
        for j in set(b.tolist()):
            joint = np.sum((a == i) & (b == j)) / n
            if joint > 0:
                total += joint * math.log(joint / (np.mean(a == i) * np.mean(b == j)))
    return total


def _entropy_of_map(a: np.ndarray) -> float:
    shares = np.array([np.mean(a == i) for i in set(a.tolist())])
    return float(-(shares * np.log(shares)).sum())


def test_size_balance_is_the_normalised_entropy_of_the_shares() -> None:
    rng = np.random.default_rng(0)
    for k in (2, 5, 27):
        counts = rng.integers(0, 1000, k)
        counts[0] = 5  # never all zero
        p = counts / counts.sum()
        want = sum(-x * math.log(x) for x in p if x > 0) / math.log(k)
        assert size_balance(counts) == pytest.approx(want, abs=1e-12), f"K={k}"
    assert size_balance(np.full(7, 3)) == pytest.approx(1.0), "equal clusters are perfectly balanced"
    assert size_balance(np.array([10, 0, 0, 0])) == pytest.approx(0.0), "one cluster with everything"
    with pytest.raises(ValueError, match="positive sum"):
        size_balance(np.zeros(3))


def test_contingency_counts_each_pixel_once() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 4, (3, 5, 5)), rng.integers(0, 6, (3, 5, 5))
    table = contingency(a, b, 4, 6)
    for i, j in itertools.product(range(4), range(6)):
        assert table[i, j] == np.sum((a == i) & (b == j)), f"entry {i},{j}"
    with pytest.raises(ValueError, match="outside"):
        contingency(a, b, 3, 6)


def test_expected_mutual_info_is_the_average_over_all_permutations() -> None:
    a = np.array([0, 0, 0, 1, 1, 2, 2])
    b = np.array([0, 0, 1, 1, 1, 1, 2])
    perms = list(itertools.permutations(range(a.size)))
    average = sum(_mi_of_maps(a, b[list(p)]) for p in perms) / len(perms)
    rows, cols = np.bincount(a), np.bincount(b)
    assert expected_mutual_info(rows, cols) == pytest.approx(average, rel=1e-10)


def test_expected_mutual_info_equals_the_full_hypergeometric_sum_on_larger_maps() -> None:
    rng = np.random.default_rng(2)
    rows = rng.integers(1, 600, 6)
    cols = rng.integers(1, 600, 5)
    cols[-1] += rows.sum() - cols.sum()  # same total
    assert cols[-1] > 0
    n = int(rows.sum())
    full = 0.0
    for a, b in itertools.product(rows.tolist(), cols.tolist()):
        for k in range(max(1, a + b - n), min(a, b) + 1):
            p = math.exp(math.lgamma(a + 1) + math.lgamma(b + 1) + math.lgamma(n - a + 1) + math.lgamma(n - b + 1)
                         - math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(a - k + 1) - math.lgamma(b - k + 1)
                         - math.lgamma(n - a - b + k + 1))
            full += p * k / n * math.log(n * k / (a * b))
    assert expected_mutual_info(rows, cols) == pytest.approx(full, rel=1e-9)


def test_adjusted_mutual_info_against_its_definition() -> None:
    a = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    b = np.array([1, 1, 0, 0, 0, 2, 2, 1])
    perms = list(itertools.permutations(range(a.size)))
    expected = sum(_mi_of_maps(a, b[list(p)]) for p in perms) / len(perms)
    mi = _mi_of_maps(a, b)
    mean_h = (_entropy_of_map(a) + _entropy_of_map(b)) / 2
    want = (mi - expected) / (mean_h - expected)
    table = contingency(a, b, 3, 3)
    assert mutual_info(table) == pytest.approx(mi, rel=1e-12)
    assert adjusted_mutual_info(table) == pytest.approx(want, rel=1e-9)
    assert adjusted_mutual_info(table.T) == pytest.approx(want, rel=1e-9), "AMI is symmetric"


def test_adjusted_mutual_info_is_one_for_the_same_partition_and_near_zero_for_independent_ones() -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 5, 4000)
    renamed = np.array([3, 0, 4, 1, 2])[a]
    assert adjusted_mutual_info(contingency(a, renamed, 5, 5)) == pytest.approx(1.0, abs=1e-9)
    independent = rng.integers(0, 4, 4000)
    assert abs(adjusted_mutual_info(contingency(a, independent, 5, 4))) < 0.01
    assert adjusted_mutual_info(np.array([[7, 0], [0, 0]])) == 1.0, "one cluster on both sides"


def test_adjusted_rand_index_against_pair_counting() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.integers(0, 3, 40), rng.integers(0, 4, 40)
    b[:20] = a[:20]  # some agreement
    same_a = same_b = same_both = 0
    for i, j in itertools.combinations(range(a.size), 2):
        same_a += a[i] == a[j]
        same_b += b[i] == b[j]
        same_both += (a[i] == a[j]) and (b[i] == b[j])
    pairs = a.size * (a.size - 1) / 2
    expected = same_a * same_b / pairs
    want = (same_both - expected) / ((same_a + same_b) / 2 - expected)
    assert adjusted_rand_index(contingency(a, b, 3, 4)) == pytest.approx(want, rel=1e-12)
    assert adjusted_rand_index(contingency(a, a, 3, 3)) == pytest.approx(1.0)


def test_runner_up_is_the_other_cluster_with_most_probability() -> None:
    mass = np.array([[9.0, 1.0, 3.0], [5.0, 9.0, 4.0], [0.0, 2.0, 9.0]])
    assert runner_up(mass).tolist() == [2, 0, 1]
    assert runner_up(np.ones((1, 1))).tolist() == [-1]
