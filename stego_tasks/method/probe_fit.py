"""Refitting a cluster probe on a trained head's codes, for any number of clusters K.

Used by `stego sweep-k`. The fit is the `train` stage's probe update (minus the mean best
cosine similarity, Adam, shuffled batches) with two additions: centroids start at random
codes, and the best of a few restarts is kept, because a centroid that starts far from
every code never moves.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from stego_tasks.errors import InvalidInputError
from stego_tasks.method.batching import epoch_batches as _batches
from stego_tasks.method.head import ClusterProbe

# Where the centroids start: at random training codes, or the training's N(0, 1) draw.
INITS = ("codes", "random")


def fit_cluster_probe(
    codes: torch.Tensor, n_clusters: int, *, steps: int, batch_size: int, lr: float, seed: int, init: str = "codes"
) -> ClusterProbe:
    """Fit a fresh K-centroid cluster probe on fixed codes with the `train` stage's update.

    The same update as in `train._step`, restricted to the probe: its own loss
    (`ClusterProbe.forward` with hard assignment), Adam at `lr`, batches drawn by
    `train._batches` (epoch-wise shuffling). train.py has no probe-only step to reuse,
    hence these few lines. The global torch RNG is left untouched.

    Initial centroids: with init="random" the probe's own N(0, 1) draw, exactly as in
    training. A centroid that starts where no code is nearest never gets a gradient and
    stays dead, which makes a K behave like a smaller one (on the demo run's codes most
    fits with K = 8 kept only 4 or 5 live centroids); so by default (init="codes") the
    centroids start at K distinct randomly drawn training code vectors (k-means' Forgy
    start), rescaled to the norm sqrt(D) of the N(0, 1) draw so that Adam's fixed step
    turns them by comparable angles.

    Args:
        codes: training codes [M, D, h, w].
        n_clusters: K, the number of centroids.
        steps: optimiser steps.
        batch_size: crops per step (capped at M).
        lr: Adam learning rate (the run's `train.probe_lr`).
        seed: seeds the initial centroids and the batch order.
        init: "codes" or "random", see above.

    Returns:
        The fitted probe (eval mode, CPU), centroids [K, D] in `probe.clusters`.
    """
    if init not in INITS:
        raise InvalidInputError(f"init must be one of {INITS}, got {init!r}.")
    dim = int(codes.shape[1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = ClusterProbe(dim, n_clusters)
    if init == "codes":
        flat = codes.permute(0, 2, 3, 1).reshape(-1, dim)
        if flat.shape[0] < n_clusters:
            raise InvalidInputError(f"K = {n_clusters} exceeds the {flat.shape[0]} training code vectors; choose a smaller K.")
        chosen = torch.randperm(flat.shape[0], generator=torch.Generator().manual_seed(seed))[:n_clusters]
        with torch.no_grad():
            probe.clusters.copy_(F.normalize(flat[chosen], dim=1) * math.sqrt(dim))
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    batches = _batches(int(codes.shape[0]), batch_size, seed)
    probe.train()
    for _ in range(steps):
        loss, _ = probe(codes[next(batches)], None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return probe.eval()


def probe_objective(probe: ClusterProbe, codes: torch.Tensor, batch: int = 64) -> float:
    """Mean over all positions of the best cosine similarity to a centroid (minus the probe loss).

    Args:
        probe: a cluster probe with centroids [K, D].
        codes: codes [M, D, h, w].
        batch: crops per step.

    Returns:
        The mean, in [-1, 1]; higher means tighter clusters.
    """
    total = 0.0
    with torch.no_grad():
        for start in range(0, codes.shape[0], batch):
            total += float(probe.similarity(codes[start : start + batch]).amax(1).double().sum())
    return total / (codes.shape[0] * codes.shape[2] * codes.shape[3])


def best_cluster_probe(
    codes: torch.Tensor,
    n_clusters: int,
    *,
    restarts: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    init: str = "codes",
) -> ClusterProbe:
    """Fit `restarts` probes and keep the one with the best objective on the training codes.

    Restarts guard against a poor start (two initial centroids in one cluster, or a dead
    centroid, see `fit_cluster_probe`); they are judged on the training codes, without
    labels. Restart 0 uses `seed` itself, so restarts=1 is exactly one fit.

    Args:
        codes: training codes [M, D, h, w].
        n_clusters: K.
        restarts: number of fits (>= 1).
        steps: optimiser steps per fit.
        batch_size: crops per step.
        lr: Adam learning rate.
        seed: base seed; restart r > 0 uses a seed derived from (seed, r).
        init: initial centroids, "codes" or "random" (see `fit_cluster_probe`).

    Returns:
        The probe with the highest `probe_objective` (the first one on ties).
    """
    best, best_score = None, -math.inf
    for restart in range(restarts):
        restart_seed = seed if restart == 0 else int(np.random.SeedSequence([seed, restart]).generate_state(1)[0])
        probe = fit_cluster_probe(codes, n_clusters, steps=steps, batch_size=batch_size, lr=lr, seed=restart_seed,
                                  init=init)
        score = probe_objective(probe, codes)
        if score > best_score:
            best, best_score = probe, score
    assert best is not None, "restarts must be >= 1"
    return best
