"""Tests for stego_tasks.loss against a naive loop version and the verbatim reference."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from stego_tasks.loss import (
    PRESETS,
    CorrespondenceLoss,
    CorrespondenceTerms,
    correspondence_loss,
    random_derangements,
)

COMBOS = list(itertools.product([True, False], repeat=3))  # pointwise, zero_clamp, stabilize
SHIFTS = (0.18, 0.12, 0.46)
WEIGHTS = (0.67, 0.25, 0.63)


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


# ------------------------------------------------------------------------- verbatim reference
def reference_forward(cfg, orig_feats, orig_feats_pos, orig_code, orig_code_pos, perms):
    """STEGO's ContrastiveCorrelationLoss.forward, super_perm fed from `perms`."""
    perm_iter = iter(perms)

    def tensor_correlation(a, b):
        return torch.einsum("nchw,ncij->nhwij", a, b)

    def norm(t):
        return F.normalize(t, dim=1, eps=1e-10)

    def sample(t, coords):
        return F.grid_sample(
            t, coords.permute(0, 2, 1, 3), padding_mode="border", align_corners=True
        )

    def super_perm(size, device):
        return next(perm_iter)

    def helper(f1, f2, c1, c2, shift):
        with torch.no_grad():
            fd = tensor_correlation(norm(f1), norm(f2))
            if cfg.pointwise:
                old_mean = fd.mean()
                fd -= fd.mean([3, 4], keepdim=True)
                fd = fd - fd.mean() + old_mean
        cd = tensor_correlation(norm(c1), norm(c2))
        min_val = 0.0 if cfg.zero_clamp else -9999.0
        if cfg.stabalize:
            loss = -cd.clamp(min_val, 0.8) * (fd - shift)
        else:
            loss = -cd.clamp(min_val) * (fd - shift)
        return loss, cd

    coord_shape = [orig_feats.shape[0], cfg.feature_samples, cfg.feature_samples, 2]
    coords1 = torch.rand(coord_shape, device=orig_feats.device) * 2 - 1
    coords2 = torch.rand(coord_shape, device=orig_feats.device) * 2 - 1
    feats = sample(orig_feats, coords1)
    code = sample(orig_code, coords1)
    feats_pos = sample(orig_feats_pos, coords2)
    code_pos = sample(orig_code_pos, coords2)
    pos_intra_loss, _ = helper(feats, feats, code, code, cfg.pos_intra_shift)
    pos_inter_loss, _ = helper(feats, feats_pos, code, code_pos, cfg.pos_inter_shift)
    neg_losses = []
    for i in range(cfg.neg_samples):  # noqa: B007 (verbatim reference)
        perm_neg = super_perm(orig_feats.shape[0], orig_feats.device)
        feats_neg = sample(orig_feats[perm_neg], coords2)
        code_neg = sample(orig_code[perm_neg], coords2)
        neg_losses.append(helper(feats, feats_neg, code, code_neg, cfg.neg_inter_shift)[0])
    neg_inter_loss = torch.cat(neg_losses, axis=0)
    intra, inter, neg = pos_intra_loss.mean(), pos_inter_loss.mean(), neg_inter_loss.mean()
    total = cfg.pos_intra_weight * intra + cfg.pos_inter_weight * inter + cfg.neg_inter_weight * neg
    return total, intra, inter, neg


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
@pytest.mark.parametrize("batch,samples,n_neg", [(2, 4, 3), (5, 11, 5)])
def test_matches_verbatim_reference_with_same_seed(flags, batch, samples, n_neg):
    feats, feats_pos, code, code_pos = _inputs(batch, seed=3)
    perms = list(random_derangements(n_neg, batch, generator=torch.Generator().manual_seed(9)))
    pointwise, zero_clamp, stabilize = flags
    cfg = SimpleNamespace(
        pointwise=pointwise,
        zero_clamp=zero_clamp,
        stabalize=stabilize,
        feature_samples=samples,
        neg_samples=n_neg,
        pos_intra_shift=SHIFTS[0],
        pos_inter_shift=SHIFTS[1],
        neg_inter_shift=SHIFTS[2],
        pos_intra_weight=WEIGHTS[0],
        pos_inter_weight=WEIGHTS[1],
        neg_inter_weight=WEIGHTS[2],
    )
    torch.manual_seed(1234)
    want = reference_forward(cfg, feats, feats_pos, code, code_pos, perms)
    kwargs = dict(
        shifts=SHIFTS,
        weights=WEIGHTS,
        feature_samples=samples,
        neg_samples=n_neg,
        pointwise=pointwise,
        zero_clamp=zero_clamp,
        stabilize=stabilize,
        neg_perms=torch.stack(perms),
    )
    with_generator = correspondence_loss(
        feats, feats_pos, code, code_pos, generator=torch.Generator().manual_seed(1234), **kwargs
    )
    torch.manual_seed(1234)
    with_global_rng = correspondence_loss(feats, feats_pos, code, code_pos, **kwargs)
    for label, got in (("generator", with_generator), ("global RNG", with_global_rng)):
        for name, value, expected in zip(
            ("total", "intra", "inter", "neg"),
            (got.total, got.intra, got.inter, got.neg),
            want,
            strict=True,
        ):
            _close(value, expected, f"{name} via {label} for flags={flags}, B={batch}")


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


def test_gradients_reach_codes_only_and_total_is_weighted_sum():
    feats, feats_pos, code, code_pos = (t.requires_grad_() for t in _inputs(3, seed=1))
    out = correspondence_loss(
        feats,
        feats_pos,
        code,
        code_pos,
        shifts=SHIFTS,
        weights=WEIGHTS,
        feature_samples=4,
        neg_samples=2,
        generator=torch.Generator().manual_seed(0),
    )
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
    out = correspondence_loss(
        feats,
        feats_pos,
        code,
        code_pos,
        shifts=SHIFTS,
        weights=WEIGHTS,
        feature_samples=3,
        neg_samples=4,
        generator=torch.Generator().manual_seed(0),
    )
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


def test_module_wraps_function_with_preset():
    weights, shifts = PRESETS["cocostuff27_vits"]
    assert weights == (0.67, 0.25, 0.63) and shifts == (0.08, 0.02, 0.66), (
        f"cocostuff27_vits preset should match the published table, got {PRESETS['cocostuff27_vits']}"
    )
    module = CorrespondenceLoss.from_preset(
        "cocostuff27_vits", feature_samples=3, neg_samples=2, zero_clamp=False
    )
    assert module.weights == weights and module.shifts == shifts, (
        "preset order is (weights, shifts)"
    )
    inputs = _inputs(3, seed=5)
    got = module(*inputs, generator=torch.Generator().manual_seed(8))
    want = correspondence_loss(
        *inputs,
        shifts=shifts,
        weights=weights,
        feature_samples=3,
        neg_samples=2,
        zero_clamp=False,
        generator=torch.Generator().manual_seed(8),
    )
    assert torch.equal(got.total, want.total), f"module {got.total} != function {want.total}"
    with pytest.raises(ValueError, match="valid presets"):
        CorrespondenceLoss.from_preset("nope")
