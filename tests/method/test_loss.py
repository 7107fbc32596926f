"""Tests for stego_tasks.method.loss against a naive loop version and the reference's recorded numbers.

`tests/golden/stego_loss_golden.npz` was made once, outside the repo, by running the
reference's own `ContrastiveCorrelationLoss.forward` (mhamilton723/STEGO at commit
eb4d6b521740bd4265681b353547f2ffca65d673, src/modules.py) and the total of
src/train_segmentation.py (weights 0.67 / 0.25 / 0.63, shifts 0.18 / 0.12 / 0.46) on
torch.randn inputs (generator seed 3; feats [B, 4, 4, 5], feats_pos [B, 4, 5, 3], code
[B, 3, 4, 5], code_pos [B, 3, 5, 3]) for (B, S, negative draws) = (2, 4, 3) and (5, 11, 5)
and all eight (pointwise, zero_clamp, stabilize) flags, with torch.manual_seed(1234) before
each call and the reference's `super_perm` fed derangements drawn by `torch.randperm`
(generator seed 9, redrawn until fixed-point free). Only the arrays are kept: the inputs,
the coords the reference sampled at, the derangements, the four loss terms and (B = 2)
the code correlations. tests/golden/README.md says how to make them again.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from stego_tasks.method.loss import (
    CorrespondenceTerms,
    correspondence_loss,
    random_derangements,
)
from tests.conftest import GOLDEN_DIR

COMBOS = list(itertools.product([True, False], repeat=3))  # pointwise, zero_clamp, stabilize
SHIFTS = (0.18, 0.12, 0.46)
WEIGHTS = (0.67, 0.25, 0.63)
GOLDEN = GOLDEN_DIR / "stego_loss_golden.npz"


# ---------------------------------------------------------------- naive version (no torch ops)
def _bilinear(img: list, x: float, y: float) -> list[float]:
    """Samples img [C][H][W] at normalised (x, y), align_corners=True, border padding."""
    height, width = len(img[0]), len(img[0][0])
    px = min(max((x + 1) / 2 * (width - 1), 0.0), width - 1)
    py = min(max((y + 1) / 2 * (height - 1), 0.0), height - 1)
    x0, y0 = int(math.floor(px)), int(math.floor(py))
    x1, y1 = min(x0 + 1, width - 1), min(y0 + 1, height - 1)
    wx, wy = px - x0, py - y0
    return [
        (1 - wy) * ((1 - wx) * ch[y0][x0] + wx * ch[y0][x1])
        + wy * ((1 - wx) * ch[y1][x0] + wx * ch[y1][x1])
        for ch in img
    ]


def _naive_sample(maps: list, coords: list, sources: list[int]) -> list:
    """Vectors [B][S][S] -> [C]; image b reads maps[sources[b]] at coords[b][w][h] (transposed grid)."""
    size = len(coords[0])
    return [
        [[_bilinear(maps[src], *coords[b][w][h]) for w in range(size)] for h in range(size)]
        for b, src in enumerate(sources)
    ]


def _cos(u: list[float], v: list[float]) -> float:
    nu = max(math.sqrt(sum(a * a for a in u)), 1e-10)
    nv = max(math.sqrt(sum(b * b for b in v)), 1e-10)
    return sum(a * b for a, b in zip(u, v, strict=True)) / (nu * nv)


def _naive_term(fa, fb, ga, gb, shift, pointwise, zero_clamp, stabilize):
    """Flat lists of loss-map entries and raw code cosines, in [n, h, w, i, j] order."""
    size = len(fa[0])
    grid = [(h, w) for h in range(size) for w in range(size)]
    keys = [(n, h, w, i, j) for n in range(len(fa)) for h, w in grid for i, j in grid]
    fd = {(n, h, w, i, j): _cos(fa[n][h][w], fb[n][i][j]) for n, h, w, i, j in keys}
    if pointwise:
        old_mean = sum(fd.values()) / len(fd)
        centred = {}
        for n in range(len(fa)):
            for h, w in grid:
                m = sum(fd[n, h, w, i, j] for i, j in grid) / len(grid)
                for i, j in grid:
                    centred[n, h, w, i, j] = fd[n, h, w, i, j] - m
        new_mean = sum(centred.values()) / len(centred)
        fd = {k: v - new_mean + old_mean for k, v in centred.items()}
    low = 0.0 if zero_clamp else -9999.0
    high = 0.8 if stabilize else math.inf
    losses, cds = [], []
    for n, h, w, i, j in keys:
        cds.append(_cos(ga[n][h][w], gb[n][i][j]))
        losses.append(-min(max(cds[-1], low), high) * (fd[n, h, w, i, j] - shift))
    return losses, cds


def naive_loss(feats, feats_pos, code, code_pos, coords1, coords2, perms, flags):
    """Returns ((total, intra, inter, neg) as floats, {term: flat list of code cosines})."""
    f, fp, g, gp = (t.double().tolist() for t in (feats, feats_pos, code, code_pos))
    c1, c2 = coords1.double().tolist(), coords2.double().tolist()
    own = list(range(len(f)))
    f1, g1 = _naive_sample(f, c1, own), _naive_sample(g, c1, own)
    f2, g2 = _naive_sample(fp, c2, own), _naive_sample(gp, c2, own)
    intra, cd_intra = _naive_term(f1, f1, g1, g1, SHIFTS[0], *flags)
    inter, cd_inter = _naive_term(f1, f2, g1, g2, SHIFTS[1], *flags)
    neg, cd_neg = [], []
    for perm in perms.tolist():
        fn, gn = _naive_sample(f, c2, perm), _naive_sample(g, c2, perm)
        losses, cds = _naive_term(f1, fn, g1, gn, SHIFTS[2], *flags)
        neg, cd_neg = neg + losses, cd_neg + cds
    means = [sum(x) / len(x) for x in (intra, inter, neg)]
    cd = {"intra": cd_intra, "inter": cd_inter, "neg": cd_neg}
    return (sum(w * m for w, m in zip(WEIGHTS, means, strict=True)), *means), cd


def _inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Non-square maps of different sizes so an x/y swap or a size mix-up shows."""
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 4, 4, 5, generator=g),
        torch.randn(batch, 4, 5, 3, generator=g),
        torch.randn(batch, 3, 4, 5, generator=g),
        torch.randn(batch, 3, 5, 3, generator=g),
    )


def _close(got: torch.Tensor, want: float, what: str) -> None:
    got, want = float(torch.as_tensor(got).detach()), float(torch.as_tensor(want).detach())
    assert math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-6), (
        f"{what}: got {got!r}, expected {want!r}"
    )


# -------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("flags", COMBOS, ids=lambda f: "pw{}-zc{}-st{}".format(*map(int, f)))
@pytest.mark.parametrize("batch,samples,n_neg", [(2, 2, 1), (3, 3, 2), (2, 3, 5)])
def test_matches_naive_loops(flags, batch, samples, n_neg):
    feats, feats_pos, code, code_pos = _inputs(batch, seed=batch * 10 + samples)
    g = torch.Generator().manual_seed(samples + n_neg)
    # Points reach over a pixel beyond [-1, 1]: border padding then differs from zero
    # padding even after normalisation (a partly outside point is only rescaled).
    coords1 = torch.rand(batch, samples, samples, 2, generator=g) * 4 - 2
    coords2 = torch.rand(batch, samples, samples, 2, generator=g) * 4 - 2
    perms = random_derangements(n_neg, batch, generator=g)
    pointwise, zero_clamp, stabilize = flags
    got = correspondence_loss(
        feats,
        feats_pos,
        code,
        code_pos,
        shifts=SHIFTS,
        weights=WEIGHTS,
        feature_samples=samples,
        neg_samples=n_neg,
        pointwise=pointwise,
        zero_clamp=zero_clamp,
        stabilize=stabilize,
        coords=(coords1, coords2),
        neg_perms=perms,
    )
    want, want_cd = naive_loss(feats, feats_pos, code, code_pos, coords1, coords2, perms, flags)
    for name, value, expected in zip(
        ("total", "intra", "inter", "neg"),
        (got.total, got.intra, got.inter, got.neg),
        want,
        strict=True,
    ):
        _close(value, expected, f"{name} for flags={flags}, B={batch}, S={samples}, R={n_neg}")
    # Loss means do not see the layout of the sampled grid; the [n, h, w, i, j] cd does.
    for name, flat in want_cd.items():
        expected_cd = torch.tensor(flat, dtype=torch.float32).reshape(got.cd[name].shape)
        assert torch.allclose(got.cd[name], expected_cd, atol=1e-5), (
            f"cd[{name}] differs from the naive cosines by {(got.cd[name] - expected_cd).abs().max()}"
        )


@pytest.mark.parametrize("flags", COMBOS, ids=lambda f: "pw{}-zc{}-st{}".format(*map(int, f)))
@pytest.mark.parametrize("config", ["b2_s4_r3", "b5_s11_r5"])
def test_matches_the_reference_goldens(flags, config):
    """Same inputs, same draws as the reference's ContrastiveCorrelationLoss: same numbers.

    The draws are taken three ways: the recorded coords, a generator seeded as the
    reference's global RNG was, and that global RNG itself.
    """
    golden = np.load(GOLDEN)
    feats, feats_pos, code, code_pos = (
        torch.from_numpy(golden[f"{config}__{name}"]) for name in ("feats", "feats_pos", "code", "code_pos")
    )
    batch, samples, n_neg = (int(part[1:]) for part in config.split("_"))
    pointwise, zero_clamp, stabilize = flags
    key = f"{config}__pw{int(pointwise)}_zc{int(zero_clamp)}_st{int(stabilize)}"
    want = golden[f"{key}__terms"]  # total, intra, inter, neg
    seed = int(golden["seed"])
    kwargs = dict(
        shifts=tuple(golden["shifts"]),
        weights=tuple(golden["weights"]),
        feature_samples=samples,
        neg_samples=n_neg,
        pointwise=pointwise,
        zero_clamp=zero_clamp,
        stabilize=stabilize,
        neg_perms=torch.from_numpy(golden[f"{config}__perms"]),
    )
    coords = (torch.from_numpy(golden[f"{config}__coords1"]), torch.from_numpy(golden[f"{config}__coords2"]))
    recorded = correspondence_loss(feats, feats_pos, code, code_pos, coords=coords, **kwargs)
    with_generator = correspondence_loss(
        feats, feats_pos, code, code_pos, generator=torch.Generator().manual_seed(seed), **kwargs
    )
    torch.manual_seed(seed)
    with_global_rng = correspondence_loss(feats, feats_pos, code, code_pos, **kwargs)
    for label, got in (("recorded coords", recorded), ("generator", with_generator), ("global RNG", with_global_rng)):
        values = [float(got.total), float(got.intra), float(got.inter), float(got.neg)]
        np.testing.assert_allclose(
            values, want, rtol=1e-5, atol=1e-7,
            err_msg=f"(total, intra, inter, neg) via {label} for {key} differ from the reference's",
        )
    if f"{key}__cd_intra" in golden:
        for name in ("intra", "inter", "neg"):
            np.testing.assert_allclose(
                recorded.cd[name].numpy(), golden[f"{key}__cd_{name}"], rtol=0, atol=1e-6,
                err_msg=f"cd[{name}] for {key} differs from the reference's code correlations",
            )


def test_generator_draws_coords_then_derangements():
    feats, feats_pos, code, code_pos = _inputs(3, seed=7)
    kwargs = dict(shifts=SHIFTS, weights=WEIGHTS, feature_samples=3, neg_samples=4)
    drawn = correspondence_loss(
        feats, feats_pos, code, code_pos, generator=torch.Generator().manual_seed(42), **kwargs
    )
    g = torch.Generator().manual_seed(42)
    coords1 = torch.rand(3, 3, 3, 2, generator=g) * 2 - 1
    coords2 = torch.rand(3, 3, 3, 2, generator=g) * 2 - 1
    perms = random_derangements(4, 3, generator=g)
    given = correspondence_loss(
        feats, feats_pos, code, code_pos, coords=(coords1, coords2), neg_perms=perms, **kwargs
    )
    for name in ("total", "intra", "inter", "neg"):
        assert torch.equal(getattr(drawn, name), getattr(given, name)), (
            f"{name}: generator path {getattr(drawn, name)} != replayed draws {getattr(given, name)}"
        )
    other = correspondence_loss(
        feats, feats_pos, code, code_pos, generator=torch.Generator().manual_seed(43), **kwargs
    )
    assert not torch.equal(drawn.total, other.total), "a different seed should give other draws"


def _published_loss(*tensors: torch.Tensor, feature_samples: int, neg_samples: int) -> CorrespondenceTerms:
    """The loss of (feats, feats_pos, code, code_pos) at the published shifts and weights, seed 0."""
    return correspondence_loss(*tensors, shifts=SHIFTS, weights=WEIGHTS, feature_samples=feature_samples,
                               neg_samples=neg_samples, generator=torch.Generator().manual_seed(0))


def test_gradients_reach_codes_only_and_total_is_weighted_sum():
    feats, feats_pos, code, code_pos = (t.requires_grad_() for t in _inputs(3, seed=1))
    out = _published_loss(feats, feats_pos, code, code_pos, feature_samples=4, neg_samples=2)
    assert isinstance(out, CorrespondenceTerms), f"expected CorrespondenceTerms, got {type(out)}"
    expected = WEIGHTS[0] * out.intra + WEIGHTS[1] * out.inter + WEIGHTS[2] * out.neg
    _close(out.total, expected, "total vs weighted sum of terms")
    for name in ("total", "intra", "inter", "neg"):
        assert getattr(out, name).dim() == 0, f"{name} should be a scalar"
    out.total.backward()
    for name, t in (("feats", feats), ("feats_pos", feats_pos)):
        assert t.grad is None or not t.grad.any(), f"{name} must get no gradient"
    for name, t in (("code", code), ("code_pos", code_pos)):
        assert t.grad is not None and t.grad.abs().sum() > 0, f"{name} must get a gradient"


def test_cd_diagnostics_are_detached_with_documented_shapes():
    feats, feats_pos, code, code_pos = (t.requires_grad_() for t in _inputs(2, seed=2))
    out = _published_loss(feats, feats_pos, code, code_pos, feature_samples=3, neg_samples=4)
    shapes = {"intra": (2, 3, 3, 3, 3), "inter": (2, 3, 3, 3, 3), "neg": (8, 3, 3, 3, 3)}
    for name, shape in shapes.items():
        cd = out.cd[name]
        assert tuple(cd.shape) == shape, f"cd[{name}] shape {tuple(cd.shape)} != {shape}"
        assert not cd.requires_grad, f"cd[{name}] should be detached"
        assert cd.abs().max() <= 1 + 1e-5, f"cd[{name}] holds cosines, max {cd.abs().max()}"


@pytest.mark.parametrize("size", range(2, 8))
def test_random_derangements_are_permutations_without_fixed_points(size):
    draws = random_derangements(300, size, generator=torch.Generator().manual_seed(size))
    assert draws.shape == (300, size), f"shape {tuple(draws.shape)} != (300, {size})"
    identity = torch.arange(size)
    assert torch.equal(draws.sort(dim=1).values, identity.expand(300, size)), (
        f"some draws of size {size} are not permutations"
    )
    assert not (draws == identity).any(), f"some draws of size {size} have a fixed point"
    # Derangement counts: 1, 2, 9 for sizes 2, 3, 4; uniform draws should hit them all.
    if size <= 4:
        n_distinct = len({tuple(r) for r in draws.tolist()})
        assert n_distinct == {2: 1, 3: 2, 4: 9}[size], f"saw {n_distinct} derangements of {size}"


def test_batch_of_one_raises():
    feats, feats_pos, code, code_pos = (t[:1] for t in _inputs(2))
    with pytest.raises(ValueError, match="at least 2 images"):
        correspondence_loss(feats, feats_pos, code, code_pos, shifts=SHIFTS, weights=WEIGHTS)


@pytest.mark.parametrize("which", [1, 3])
def test_mismatched_batch_raises(which):
    tensors = list(_inputs(3))
    tensors[which] = tensors[which][:2]
    with pytest.raises(ValueError, match="one batch size"):
        correspondence_loss(*tensors, shifts=SHIFTS, weights=WEIGHTS)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(neg_perms=torch.tensor([[1, 1, 2]])), "no neg_perms"),
        (dict(neg_perms=torch.tensor([[1, 2, 0], [2, 0, 1]])), "shape"),
        (dict(coords=(torch.zeros(3, 2, 2, 2), torch.zeros(3, 3, 3, 2))), "coords1"),
        (dict(shifts=(0.1, 0.2)), "triple"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    base = dict(shifts=SHIFTS, weights=WEIGHTS, feature_samples=3, neg_samples=1)
    with pytest.raises(ValueError, match=match):
        correspondence_loss(*_inputs(3), **{**base, **kwargs})
