"""Tests for stego_tasks.method.probe_fit: a refitted cluster probe lowers its loss without touching the
global RNG, starts at the probe's own draw or at distinct training codes (which avoids dead
centroids), restarts keep the best training objective, the objective is the mean best cosine
whatever the batching, fits are reproducible per seed, and bad settings are refused in one sentence.

The run-based tests use the sweep tests' hand-written run (codes along three orthogonal
directions); the others use random codes made here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stego_tasks.method.probe_fit import best_cluster_probe, fit_cluster_probe, probe_objective
from tests.tools import test_sweep
from tests.tools.test_sweep import STEPS, C, _codes

# The sweep tests' hand-written run, a fixture of this module too.
run_dir = test_sweep.run_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random_codes(seed: int, rows: int = 6, dim: int = 4) -> torch.Tensor:
    """Random codes [rows, dim, 3, 2]."""
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(rows, dim, 3, 2)).astype(np.float32))


def test_fit_cluster_probe_lowers_its_loss_and_leaves_the_global_rng_alone(run_dir):
    codes = _codes(run_dir)
    state = torch.get_rng_state()
    # The random start is far from the codes, so the update has work to do.
    untrained = fit_cluster_probe(codes, 3, steps=0, batch_size=16, lr=5e-3, seed=0, init="random")
    trained = fit_cluster_probe(codes, 3, steps=STEPS, batch_size=16, lr=5e-3, seed=0, init="random")
    assert torch.equal(torch.get_rng_state(), state), "fitting a probe changed the global torch RNG"
    with torch.no_grad():
        before, after = untrained(codes, None)[0].item(), trained(codes, None)[0].item()
    assert after < before - 0.1, f"probe loss {before:.3f} -> {after:.3f} did not fall"
    unit = codes.double().numpy() / np.linalg.norm(codes.double().numpy(), axis=1, keepdims=True)
    centroids = trained.clusters.detach().double().numpy()
    best = np.einsum("bchw,kc->bkhw", unit, centroids / np.linalg.norm(centroids, axis=1, keepdims=True)).max(1)
    assert probe_objective(trained, codes) == pytest.approx(best.mean(), abs=1e-6), "objective != mean best cosine"
    assert probe_objective(trained, codes) == pytest.approx(-after, abs=1e-5), "objective != minus the probe loss"


def test_best_cluster_probe_keeps_the_restart_with_the_best_training_objective(run_dir):
    codes = _codes(run_dir)
    fit = {"steps": STEPS, "batch_size": 16, "lr": 5e-3, "init": "random"}
    single = best_cluster_probe(codes, 3, restarts=1, seed=3, **fit)
    first = fit_cluster_probe(codes, 3, seed=3, **fit)
    assert torch.equal(single.clusters, first.clusters), "restarts=1 must be exactly one fit with the seed"
    scores = [probe_objective(best_cluster_probe(codes, 3, restarts=r, seed=3, **fit), codes) for r in (1, 2, 3)]
    assert scores == sorted(scores), f"more restarts gave a worse objective: {scores}"


def test_initial_centroids_random_as_in_training_or_drawn_from_the_codes(run_dir):
    codes = _codes(run_dir)
    random = fit_cluster_probe(codes, 4, steps=0, batch_size=16, lr=5e-3, seed=5, init="random")
    torch.manual_seed(5)
    assert torch.equal(random.clusters.detach(), torch.randn(4, C)), "init='random' must be the probe's own draw"
    drawn = fit_cluster_probe(codes, 4, steps=0, batch_size=16, lr=5e-3, seed=5).clusters.detach().double().numpy()
    np.testing.assert_allclose(np.linalg.norm(drawn, axis=1), np.sqrt(C), rtol=1e-6, err_msg="centroid norms")
    flat = codes.permute(0, 2, 3, 1).reshape(-1, C).double().numpy()
    cosine = (drawn / np.sqrt(C)) @ (flat / np.linalg.norm(flat, axis=1, keepdims=True)).T
    assert np.all(cosine.max(1) > 1 - 1e-6), f"a centroid is no training code: best cosines {cosine.max(1)}"
    assert len(set(cosine.argmax(1).tolist())) == 4, "two centroids started on the same code"


def test_codes_init_avoids_the_dead_centroids_random_init_leaves(run_dir):
    # A centroid that no code is nearest to gets no gradient: K = 3 then acts as K = 2.
    codes = _codes(run_dir)

    def live(init: str, seed: int) -> int:
        probe = fit_cluster_probe(codes, 3, steps=STEPS, batch_size=16, lr=5e-3, seed=seed, init=init)
        with torch.no_grad():
            return len(torch.unique(probe.predict(codes)))

    from_codes, from_random = [live("codes", s) for s in range(8)], [live("random", s) for s in range(8)]
    assert from_codes == [3] * 8, f"live centroids with init='codes': {from_codes}"
    assert min(from_random) < 3, f"random init never left a dead centroid here ({from_random}): test is vacuous"


def test_the_objective_is_the_mean_best_cosine_whatever_the_batching():
    codes = _random_codes(0)
    probe = fit_cluster_probe(codes, 3, steps=0, batch_size=4, lr=1e-2, seed=1, init="random")
    unit = codes.double().numpy() / np.linalg.norm(codes.double().numpy(), axis=1, keepdims=True)
    centroids = probe.clusters.detach().double().numpy()
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    expected = np.einsum("bchw,kc->bkhw", unit, centroids).max(1).mean()
    for batch in (1, 4, 64):
        assert probe_objective(probe, codes, batch=batch) == pytest.approx(expected, abs=1e-6), f"batch {batch}"


def test_a_fit_is_reproducible_for_a_seed_and_changes_with_it():
    codes = _random_codes(2)
    fit = {"steps": 5, "batch_size": 4, "lr": 1e-2}
    first, again = (fit_cluster_probe(codes, 3, seed=7, **fit).clusters for _ in range(2))
    assert torch.equal(first, again), "the same seed gave other centroids"
    assert not torch.equal(first, fit_cluster_probe(codes, 3, seed=8, **fit).clusters), "another seed changed nothing"
    assert not fit_cluster_probe(codes, 3, seed=7, **fit).training, "the fitted probe must be in eval mode"


def test_an_unknown_initialisation_is_refused_in_one_sentence():
    with pytest.raises(ValueError, match=r"^init must be one of \('codes', 'random'\), got 'kmeans'\.$"):
        fit_cluster_probe(_random_codes(3), 2, steps=1, batch_size=2, lr=1e-2, seed=0, init="kmeans")


def test_more_clusters_than_code_vectors_is_refused_in_one_sentence():
    codes = _random_codes(4, rows=2)  # 2 crops x 3 x 2 positions = 12 code vectors
    with pytest.raises(ValueError, match=r"^K = 13 exceeds the 12 training code vectors; choose a smaller K\.$"):
        best_cluster_probe(codes, 13, restarts=2, steps=1, batch_size=2, lr=1e-2, seed=0)
    assert fit_cluster_probe(codes, 12, steps=1, batch_size=2, lr=1e-2, seed=0).clusters.shape == (12, 4)
