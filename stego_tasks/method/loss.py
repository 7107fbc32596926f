"""Correspondence distillation loss (STEGO, reference doc section 3).

A plain function, `correspondence_loss`; the published weights and shifts are params
(`stego_tasks/presets/*.yaml`). The math reproduces the reference
`ContrastiveCorrelationLoss` exactly, including its `coords.permute(0, 2, 1, 3)` before
`grid_sample`, with one deliberate change: negatives are drawn as true derangements
(uniform over all derangements, by rejection sampling of `torch.randperm`) instead of the
reference's `super_perm`, which is not always a permutation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from stego_tasks.errors import InvalidInputError

Triple = tuple[float, float, float]

_TERMS = ("intra", "inter", "neg")
# The reference's "no clamp" lower bound when zero_clamp is off, and its stabilize cap.
_NO_CLAMP_MIN = -9999.0
_STABILIZE_MAX = 0.8


@dataclass(frozen=True, eq=False)
class CorrespondenceTerms:
    """Result of `correspondence_loss`.

    Attributes:
        total: Scalar, weights[0] * intra + weights[1] * inter + weights[2] * neg; the
            only term with a gradient path that training needs (it reaches the codes only).
        intra: Scalar, unweighted mean of the self-correspondence loss map.
        inter: Scalar, unweighted mean of the kNN-positive loss map.
        neg: Scalar, unweighted mean of the negative loss maps of all draws pooled.
        cd: Detached code correlations, for tuning the shifts from their distributions:
            "intra" and "inter" [B, S, S, S, S], "neg" [neg_samples * B, S, S, S, S]
            (draw-major: rows r * B .. r * B + B - 1 belong to draw r).
    """

    total: Tensor
    intra: Tensor
    inter: Tensor
    neg: Tensor
    cd: dict[str, Tensor]


def random_derangements(
    n_draws: int,
    size: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draws permutations without fixed points, uniformly over all derangements.

    Each row is a `torch.randperm` redrawn until it has no fixed point (acceptance rate
    about 1/e, 1/2 for size 2), so the distribution is exactly uniform over derangements.

    Args:
        n_draws: Number of derangements (rows) to draw, >= 0.
        size: Length of each permutation, >= 2.
        generator: Random source; the global torch RNG when None.
        device: Device to draw on; the generator's device when None and a generator is
            given, else the CPU.

    Returns:
        LongTensor [n_draws, size]; row r maps index b to `out[r, b] != b`.
    """
    if size < 2:
        raise InvalidInputError(f"A derangement needs at least 2 elements, got size={size}.")
    if device is None:
        device = generator.device if generator is not None else "cpu"
    identity = torch.arange(size, device=device)
    rows = []
    for _ in range(n_draws):
        perm = torch.randperm(size, generator=generator, device=device)
        while bool((perm == identity).any()):
            perm = torch.randperm(size, generator=generator, device=device)
        rows.append(perm)
    if not rows:
        return torch.empty((0, size), dtype=torch.long, device=device)
    return torch.stack(rows)


def correspondence_loss(
    feats: Tensor,
    feats_pos: Tensor,
    code: Tensor,
    code_pos: Tensor,
    *,
    shifts: Sequence[float],
    weights: Sequence[float],
    feature_samples: int = 11,
    neg_samples: int = 5,
    pointwise: bool = True,
    zero_clamp: bool = True,
    stabilize: bool = False,
    coords: tuple[Tensor, Tensor] | None = None,
    neg_perms: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> CorrespondenceTerms:
    """STEGO's correspondence distillation loss, equal to the reference's values.

    Random draws when not given, in the reference's order: coords1, then coords2, each
    `torch.rand([B, S, S, 2], generator=generator) * 2 - 1`, then `neg_samples`
    derangements from `random_derangements` with the same generator. With
    `generator=None` the global RNG is used on `feats.device`, so `torch.manual_seed`
    reproduces the reference's coords.

    Args:
        feats: Backbone features [B, C, H, W]; no gradient is taken through them.
        feats_pos: Features of each image's positive partner [B, C, H', W'].
        code: Head codes [B, K, h, w] of the same images.
        code_pos: Head codes of the positive partners [B, K, h', w'].
        shifts: (intra, inter, neg) shifts b subtracted from the feature correlations.
        weights: (intra, inter, neg) weights lambda of the three terms in `total`.
        feature_samples: S, the side of the S x S grid of sampled points.
        neg_samples: Number of negative draws pooled into the `neg` term.
        pointwise: Spatially centre the feature correlations (reference default on).
        zero_clamp: Clamp code correlations at 0 from below (else at -9999).
        stabilize: Also clamp code correlations at 0.8 from above.
        coords: Optional (coords1, coords2), each [B, S, S, 2] in [-1, 1], grid_sample
            (x, y) order; drawn when None.
        neg_perms: Optional LongTensor [neg_samples, B]; image b of draw r is paired with
            image `neg_perms[r, b] != b`; drawn when None.
        generator: Random source for the draws that are not given.

    Returns:
        CorrespondenceTerms with scalar `total`, `intra`, `inter`, `neg` and the detached
        code correlations `cd`; gradients reach `code` and `code_pos` only.
    """
    batch = _check_inputs(feats, feats_pos, code, code_pos)
    shifts_t, weights_t = _check_triple("shifts", shifts), _check_triple("weights", weights)
    _check_counts(feature_samples, neg_samples)
    if coords is None:
        coords = _draw_coords(batch, feature_samples, generator, feats.device)
    coords1, coords2 = _check_coords(coords, batch, feature_samples)
    if neg_perms is None:
        draw_device = generator.device if generator is not None else feats.device
        neg_perms = random_derangements(neg_samples, batch, generator=generator, device=draw_device)
    neg_perms = _check_neg_perms(neg_perms, neg_samples, batch).to(feats.device)
    term = dict(pointwise=pointwise, zero_clamp=zero_clamp, stabilize=stabilize)

    with torch.no_grad():
        f1, f2 = _sample(feats, coords1), _sample(feats_pos, coords2)
    g1, g2 = _sample(code, coords1), _sample(code_pos, coords2)
    intra, cd_intra = _term(f1, f1, g1, g1, shifts_t[0], **term)
    inter, cd_inter = _term(f1, f2, g1, g2, shifts_t[1], **term)
    neg_maps, neg_cds = [], []
    for perm in neg_perms:
        with torch.no_grad():
            f_neg = _sample(feats[perm], coords2)
        loss_map, cd = _term(f1, f_neg, g1, _sample(code[perm], coords2), shifts_t[2], **term)
        neg_maps.append(loss_map)
        neg_cds.append(cd)
    means = (intra.mean(), inter.mean(), torch.cat(neg_maps).mean())
    total = sum(w * m for w, m in zip(weights_t, means, strict=True))
    cds = (cd_intra, cd_inter, torch.cat(neg_cds))
    return CorrespondenceTerms(
        total, *means, cd={k: v.detach() for k, v in zip(_TERMS, cds, strict=True)}
    )


def _correlation(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of every position pair: [N, C, H, W] x [N, C, I, J] -> [N, H, W, I, J]."""
    a, b = F.normalize(a, dim=1, eps=1e-10), F.normalize(b, dim=1, eps=1e-10)
    return torch.einsum("nchw,ncij->nhwij", a, b)


def _feature_correlation(f_a: Tensor, f_b: Tensor, pointwise: bool) -> Tensor:
    """The F the shift b is subtracted from: correlation, spatially centred when `pointwise`."""
    fd = _correlation(f_a, f_b)
    if pointwise:
        old_mean = fd.mean()
        fd = fd - fd.mean([3, 4], keepdim=True)
        fd = fd - fd.mean() + old_mean
    return fd


@torch.no_grad()
def feature_correlations(
    feats: Tensor, feats_pos: Tensor, *, feature_samples: int = 11, neg_samples: int = 5,
    pointwise: bool = True, generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """The three feature-correlation tensors F of one batch, exactly as the loss forms them.

    The same draws, sampling and centring as `correspondence_loss`, without a head: what
    the shifts are compared against (`stego_tasks.method.shift_stats`).

    Args:
        feats: backbone features [B, C, H, W], B >= 2.
        feats_pos: features of each image's kNN positive [B, C, H', W'].
        feature_samples: S.
        neg_samples: negative draws pooled into "neg".
        pointwise: spatial centring (reference default on).
        generator: random source of the sample points and derangements.

    Returns:
        {"intra", "inter", "neg"}: flat float tensors of B*S^4 (neg: neg_samples*B*S^4) values.
    """
    batch = feats.shape[0]
    coords1, coords2 = _draw_coords(batch, feature_samples, generator, feats.device)
    draw_device = generator.device if generator is not None else feats.device
    perms = random_derangements(neg_samples, batch, generator=generator, device=draw_device).to(feats.device)
    f1, f2 = _sample(feats, coords1), _sample(feats_pos, coords2)
    neg = [_feature_correlation(f1, _sample(feats[perm], coords2), pointwise) for perm in perms]
    return {
        "intra": _feature_correlation(f1, f1, pointwise).flatten(),
        "inter": _feature_correlation(f1, f2, pointwise).flatten(),
        "neg": torch.cat(neg).flatten(),
    }


def _sample(t: Tensor, coords: Tensor) -> Tensor:
    """Bilinear samples of t [B, C, H, W] at coords [B, S, S, 2] -> [B, C, S, S]."""
    # The reference transposes the sample grid; kept so that the same draws give the same loss.
    grid = coords.to(device=t.device, dtype=t.dtype).permute(0, 2, 1, 3)
    return F.grid_sample(t, grid, padding_mode="border", align_corners=True)


def _term(
    f_a: Tensor,
    f_b: Tensor,
    g_a: Tensor,
    g_b: Tensor,
    shift: float,
    *,
    pointwise: bool,
    zero_clamp: bool,
    stabilize: bool,
) -> tuple[Tensor, Tensor]:
    """One pair type's loss map and code correlation, both [B, S, S, S, S]."""
    with torch.no_grad():
        fd = _feature_correlation(f_a, f_b, pointwise)
    cd = _correlation(g_a, g_b)
    min_val = 0.0 if zero_clamp else _NO_CLAMP_MIN
    clamped = cd.clamp(min_val, _STABILIZE_MAX) if stabilize else cd.clamp(min_val)
    return -clamped * (fd - shift), cd


def _draw_coords(
    batch: int, samples: int, generator: torch.Generator | None, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Draws coords1 then coords2, each [B, S, S, 2] uniform in [-1, 1)."""
    shape = (batch, samples, samples, 2)
    draw_device = generator.device if generator is not None else device
    coords1 = torch.rand(shape, generator=generator, device=draw_device) * 2 - 1
    coords2 = torch.rand(shape, generator=generator, device=draw_device) * 2 - 1
    return coords1.to(device), coords2.to(device)


def _check_inputs(feats: Tensor, feats_pos: Tensor, code: Tensor, code_pos: Tensor) -> int:
    """Validates the four maps and returns the batch size."""
    named = {"feats": feats, "feats_pos": feats_pos, "code": code, "code_pos": code_pos}
    for name, t in named.items():
        if t.dim() != 4:
            raise InvalidInputError(f"{name} must be 4-D [B, C, H, W], got shape {tuple(t.shape)}.")
    sizes = {name: t.shape[0] for name, t in named.items()}
    if len(set(sizes.values())) != 1:
        raise InvalidInputError(f"feats, feats_pos, code and code_pos need one batch size, got {sizes}.")
    for a, b in (("feats", "feats_pos"), ("code", "code_pos")):
        if named[a].shape[1] != named[b].shape[1]:
            raise InvalidInputError(
                f"{a} and {b} need the same channel count, got {named[a].shape[1]} "
                f"and {named[b].shape[1]}."
            )
    batch = feats.shape[0]
    if batch < 2:
        raise InvalidInputError(
            f"The correspondence loss needs a batch of at least 2 images to form negative "
            f"pairs, got batch size {batch}; use a larger batch."
        )
    return batch


def _check_triple(name: str, values: Sequence[float]) -> Triple:
    """Returns values as an (intra, inter, neg) tuple of floats."""
    values = tuple(float(v) for v in values)
    if len(values) != 3:
        raise InvalidInputError(f"{name} must be an (intra, inter, neg) triple, got {values}.")
    return values  # type: ignore[return-value]


def _check_counts(feature_samples: int, neg_samples: int) -> None:
    """Validates the grid side and the number of negative draws."""
    if feature_samples < 1:
        raise InvalidInputError(f"feature_samples must be >= 1, got {feature_samples}.")
    if neg_samples < 1:
        raise InvalidInputError(f"neg_samples must be >= 1, got {neg_samples}.")


def _check_coords(coords: Sequence[Tensor], batch: int, samples: int) -> tuple[Tensor, Tensor]:
    """Validates a given (coords1, coords2) pair against [B, S, S, 2]."""
    expected = (batch, samples, samples, 2)
    if len(coords) != 2:
        raise InvalidInputError(f"coords must be a pair (coords1, coords2), got {len(coords)} items.")
    for i, c in enumerate(coords, start=1):
        if tuple(c.shape) != expected:
            raise InvalidInputError(
                f"coords{i} must have shape [B, S, S, 2] = {expected}, got {tuple(c.shape)}."
            )
    return coords[0], coords[1]


def _check_neg_perms(neg_perms: Tensor, neg_samples: int, batch: int) -> Tensor:
    """Validates given negative partners: [neg_samples, B] indices with no self-pair."""
    if tuple(neg_perms.shape) != (neg_samples, batch):
        raise InvalidInputError(
            f"neg_perms must have shape [neg_samples, B] = {(neg_samples, batch)}, "
            f"got {tuple(neg_perms.shape)}."
        )
    if neg_perms.dtype.is_floating_point or neg_perms.dtype == torch.bool:
        raise InvalidInputError(f"neg_perms must hold integer indices, got dtype {neg_perms.dtype}.")
    neg_perms = neg_perms.long()
    if bool(((neg_perms < 0) | (neg_perms >= batch)).any()):
        raise InvalidInputError(f"neg_perms values must lie in [0, {batch}), got {neg_perms.tolist()}.")
    identity = torch.arange(batch, device=neg_perms.device)
    if bool((neg_perms == identity).any()):
        raise InvalidInputError(
            f"neg_perms must pair every image with another image (no neg_perms[r, b] == b), "
            f"got {neg_perms.tolist()}."
        )
    return neg_perms
