"""Signals of a segmentation's quality that need no labels: balance, confidence, agreement.

Arrays in, numbers out; the evaluate stage and `stego seeds` feed them.

* `size_balance`: normalised entropy of the clusters' pixel shares, H(p) / log K over all K
  clusters (empty ones included): 1 when every cluster holds as many pixels as the others,
  0 when one cluster holds every pixel.
* `contingency`: the joint histogram of two label maps of the same pixels.
* `adjusted_mutual_info`: AMI of two partitions (Vinh, Epps & Bailey 2010, arithmetic-mean
  normalisation, as scikit-learn's default): 1 for the same partition under any renaming
  of the ids, about 0 for independent ones (0 in expectation under random permutations).
* `adjusted_rand_index`: ARI (Hubert & Arabie 1985) of the same histogram.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln

from stego_tasks.errors import InvalidInputError

# The hypergeometric terms of the expected MI are summed over mean +- (SPAN_SD sd + SPAN_ADD):
# beyond that their probabilities are below 1e-40 (checked against the full sum in the tests).
SPAN_SD = 16.0
SPAN_ADD = 16


def size_balance(counts: np.ndarray) -> float:
    """H(p) / log K of the shares p = counts / sum over all K entries; 1.0 when K == 1.

    Raises:
        ValueError: no entry, a negative count, or all counts zero.
    """
    counts = np.asarray(counts, dtype=np.float64).reshape(-1)
    if counts.size == 0 or counts.min() < 0 or counts.sum() <= 0:
        raise InvalidInputError(f"size_balance needs non-negative counts with a positive sum, got {counts[:8]}.")
    if counts.size == 1:
        return 1.0
    shares = counts[counts > 0] / counts.sum()
    return float(-(shares * np.log(shares)).sum() / math.log(counts.size))


def contingency(a: np.ndarray, b: np.ndarray, n_a: int, n_b: int) -> np.ndarray:
    """int64 [n_a, n_b]: entry [i, j] counts the pixels with id i in `a` and id j in `b`.

    Raises:
        ValueError: different shapes, or an id outside [0, n_a) / [0, n_b).
    """
    a = np.asarray(a).reshape(-1).astype(np.int64)
    b = np.asarray(b).reshape(-1).astype(np.int64)
    if a.shape != b.shape:
        raise InvalidInputError(f"contingency needs two maps of the same pixels, got {a.size} and {b.size} values.")
    for values, n, name in ((a, n_a, "first"), (b, n_b, "second")):
        if values.size and (values.min() < 0 or values.max() >= n):
            raise InvalidInputError(f"the {name} map holds ids in [{values.min()}, {values.max()}], outside [0, {n}).")
    return np.bincount(a * n_b + b, minlength=n_a * n_b).reshape(n_a, n_b)


def _entropy(counts: np.ndarray, total: float) -> float:
    shares = counts[counts > 0] / total
    return float(-(shares * np.log(shares)).sum())


def mutual_info(table: np.ndarray) -> float:
    """Mutual information (nats) of the joint histogram `table`."""
    table = np.asarray(table, dtype=np.float64)
    total = table.sum()
    rows, cols = table.sum(1), table.sum(0)
    i, j = np.nonzero(table)
    joint = table[i, j]
    return float((joint / total * np.log(joint * total / (rows[i] * cols[j]))).sum())


def expected_mutual_info(rows: np.ndarray, cols: np.ndarray) -> float:
    """E[MI] of two partitions with these cluster sizes under random permutations (hypergeometric model).

    Each pair of sizes (a, b) contributes sum_n P(n) n/N log(N n / (a b)) over the overlaps n
    a random permutation can give, P the hypergeometric law; the sum is taken where P is not
    negligible (`SPAN_SD`), so it costs O(K_a K_b sd) rather than O(K_a K_b N).
    """
    rows = np.asarray(rows, dtype=np.float64)[np.asarray(rows) > 0]
    cols = np.asarray(cols, dtype=np.float64)[np.asarray(cols) > 0]
    total = rows.sum()
    expected = 0.0
    log_total_fact = gammaln(total + 1)
    for a in rows:
        for b in cols:
            low, high = max(1.0, a + b - total), min(a, b)
            if low > high:
                continue
            mean = a * b / total
            sd = math.sqrt(a * b * (total - a) * (total - b) / (total * total * max(total - 1.0, 1.0)))
            start = max(low, math.floor(mean - SPAN_SD * sd - SPAN_ADD))
            stop = min(high, math.ceil(mean + SPAN_SD * sd + SPAN_ADD))
            n = np.arange(start, stop + 1, dtype=np.float64)
            log_p = (gammaln(a + 1) + gammaln(b + 1) + gammaln(total - a + 1) + gammaln(total - b + 1)
                     - log_total_fact - gammaln(n + 1) - gammaln(a - n + 1) - gammaln(b - n + 1)
                     - gammaln(total - a - b + n + 1))
            expected += float((np.exp(log_p) * n / total * np.log(total * n / (a * b))).sum())
    return expected


def adjusted_mutual_info(table: np.ndarray) -> float:
    """AMI = (MI - E[MI]) / (mean(H_a, H_b) - E[MI]) of the joint histogram `table`.

    Returns:
        1.0 when both sides are one cluster (or the partitions are identical), else the AMI.

    Raises:
        ValueError: an empty histogram.
    """
    table = np.asarray(table, dtype=np.float64)
    total = table.sum()
    if total <= 0:
        raise InvalidInputError("adjusted_mutual_info needs a histogram with at least one pixel.")
    rows, cols = table.sum(1), table.sum(0)
    if (rows > 0).sum() == (cols > 0).sum() == 1:
        return 1.0
    mi = mutual_info(table)
    expected = expected_mutual_info(rows, cols)
    mean_entropy = (_entropy(rows, total) + _entropy(cols, total)) / 2
    denominator = mean_entropy - expected
    # Identical partitions give MI == mean entropy; guard the rounding of a near-zero denominator.
    if abs(denominator) < 1e-15:
        return 1.0 if abs(mi - mean_entropy) < 1e-12 else 0.0
    return float((mi - expected) / denominator)


def adjusted_rand_index(table: np.ndarray) -> float:
    """ARI of the joint histogram `table` (1 for identical partitions, about 0 for independent ones)."""
    table = np.asarray(table, dtype=np.float64)

    def pairs(x: np.ndarray) -> float:
        return float((x * (x - 1) / 2).sum())

    total_pairs = pairs(np.array([table.sum()]))
    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / total_pairs if total_pairs else 0.0
    top = (rows + cols) / 2
    if top == expected:
        return 1.0
    return float((index - expected) / (top - expected))


def runner_up(prob_mass: np.ndarray) -> np.ndarray:
    """For each cluster k, the other cluster with the most probability on k's pixels (-1 when K == 1).

    Args:
        prob_mass: float [K, K]; row k sums the probe's probabilities over the pixels assigned to k.

    Returns:
        int64 [K].
    """
    mass = np.array(prob_mass, dtype=np.float64)
    if mass.shape[0] < 2:
        return np.full(mass.shape[0], -1, dtype=np.int64)
    np.fill_diagonal(mass, -np.inf)
    return mass.argmax(1).astype(np.int64)
