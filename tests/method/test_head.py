"""Tests for stego_tasks.method.head against hand computations on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stego_tasks.method.head import ClusterProbe, LinearProbe, SegmentationHead


def _conv1x1(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv written as a channel matmul plus bias."""
    weight = conv.weight[:, :, 0, 0]
    return torch.einsum("kc,bchw->bkhw", weight, x) + conv.bias[None, :, None, None]


def _hand_cosines(code: list, centroids: list) -> list:
    """Cosine [B][N][H][W] between code[b][:, h, w] and each centroid, by explicit loops."""
    out = []
    for sample in code:
        height, width = len(sample[0]), len(sample[0][0])
        per_centroid = []
        for cen in centroids:
            cen_norm = math.sqrt(sum(v * v for v in cen))
            rows = []
            for h in range(height):
                row = []
                for w in range(width):
                    vec = [sample[c][h][w] for c in range(len(sample))]
                    dot = sum(a * b for a, b in zip(vec, cen, strict=True))
                    row.append(dot / (math.sqrt(sum(v * v for v in vec)) * cen_norm))
                rows.append(row)
            per_centroid.append(rows)
        out.append(per_centroid)
    return out


def _hand_upsample(x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Bilinear resize with align_corners=False by explicit source-index arithmetic."""
    in_h, in_w = x.shape[-2:]

    def taps(dst: int, n_in: int, n_out: int) -> tuple[int, int, float]:
        src = max((dst + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = int(math.floor(src))
        return lo, min(lo + 1, n_in - 1), src - lo

    out = torch.zeros(*x.shape[:-2], out_h, out_w, dtype=x.dtype)
    for i in range(out_h):
        y0, y1, wy = taps(i, in_h, out_h)
        for j in range(out_w):
            x0, x1, wx = taps(j, in_w, out_w)
            out[..., i, j] = (1 - wy) * ((1 - wx) * x[..., y0, x0] + wx * x[..., y0, x1]) + wy * (
                (1 - wx) * x[..., y1, x0] + wx * x[..., y1, x1]
            )
    return out


def test_head_shape_and_eval_forward_matches_hand_computation():
    torch.manual_seed(0)
    head = SegmentationHead(6, n_codes=5, dropout=0.3).eval()
    x = torch.randn(2, 6, 3, 4)
    code = head(x)
    assert code.shape == (2, 5, 3, 4), f"code shape {tuple(code.shape)} != (2, 5, 3, 4)"
    assert torch.equal(code, head(x)), "eval mode must be deterministic"
    hidden = torch.relu(_conv1x1(head.nonlinear[0], x))
    want = _conv1x1(head.linear, x) + _conv1x1(head.nonlinear[2], hidden)
    assert torch.allclose(code, want, atol=1e-5), f"max diff {(code - want).abs().max()}"
    assert torch.equal(head.drop_features(x), x), "drop_features must be identity in eval mode"
    assert SegmentationHead(4).n_codes == 70, "default K should be 70"


def test_train_dropout_is_channelwise_with_a_fresh_mask_per_use():
    torch.manual_seed(1)
    head = SegmentationHead(16, n_codes=4, dropout=0.5).train()
    x = torch.ones(2, 16, 3, 3)
    dropped = head.drop_features(x)
    per_channel = dropped.flatten(2)
    assert torch.equal(per_channel.amin(2), per_channel.amax(2)), "dropout must drop whole channels"
    values = set(per_channel[:, :, 0].flatten().tolist())
    assert values == {0.0, 2.0}, f"channels should be 0 or 1/(1-p) = 2, got {values}"

    seen: list[torch.Tensor] = []
    head.dropout.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    code = head(x)
    assert len(seen) == 2, f"forward should call dropout once per branch, called {len(seen)} times"
    assert not torch.equal(seen[0], seen[1]), "the two branches must get different masks"
    want = _conv1x1(head.linear, seen[0]) + _conv1x1(
        head.nonlinear[2], torch.relu(_conv1x1(head.nonlinear[0], seen[1]))
    )
    assert torch.allclose(code, want, atol=1e-5), "linear gets the first mask, nonlinear the second"
    head.drop_features(x)
    assert len(seen) == 3 and not torch.equal(seen[2], seen[0]), "drop_features uses a third mask"


def _fixed_probe() -> tuple[ClusterProbe, torch.Tensor]:
    probe = ClusterProbe(dim=2, n_classes=3)
    with torch.no_grad():
        probe.clusters.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]]))
    code = torch.tensor([[[[3.0, 0.1, -2.0, 0.5]], [[1.0, 4.0, 1.0, 0.4]]]])  # [1, 2, 1, 4]
    return probe, code


def test_cluster_probe_matches_hand_cosines_and_argmax():
    probe, code = _fixed_probe()
    sim = torch.tensor(_hand_cosines(code.tolist(), probe.clusters.tolist()))  # [1, 3, 1, 4]
    pred = probe.predict(code)
    assert pred.dtype == torch.long and pred.shape == (1, 1, 4), (
        f"predict gave {pred.dtype} {pred.shape}"
    )
    assert pred.tolist() == sim.argmax(1).tolist() == [[[0, 1, 2, 0]]], f"predict {pred.tolist()}"

    loss, probs = probe(code)
    assert probs.dtype == torch.float32 and probs.shape == (1, 3, 1, 4), (
        "probs should be [B, N, H, W]"
    )
    assert torch.equal(probs, F.one_hot(pred, 3).permute(0, 3, 1, 2).float()), (
        "alpha=None is one-hot"
    )
    want = -sim.max(1).values.mean()
    assert torch.isclose(loss, want, atol=1e-6), f"hard loss {loss} != -mean max cosine {want}"

    soft_loss, soft = probe(code, alpha=3.0)
    want_soft = torch.softmax(3.0 * sim, dim=1)
    assert torch.allclose(soft, want_soft, atol=1e-6), "alpha gives softmax(alpha * sim)"
    want_soft_loss = -(want_soft * sim).sum(1).mean()
    assert torch.isclose(soft_loss, want_soft_loss, atol=1e-6), f"{soft_loss} != {want_soft_loss}"
    assert torch.allclose(probe.log_probs(code), torch.log_softmax(2.0 * sim, dim=1), atol=1e-6), (
        "log_probs defaults to log_softmax(2 * sim)"
    )


def test_extra_clusters_increase_n_clusters():
    probe = ClusterProbe(dim=4, n_classes=3, extra_clusters=2)
    assert probe.n_clusters == 5, f"n_clusters {probe.n_clusters} != 3 + 2"
    assert probe.clusters.shape == (5, 4), f"centroids shape {tuple(probe.clusters.shape)}"
    _, probs = probe(torch.randn(2, 4, 3, 3))
    assert probs.shape == (2, 5, 3, 3), f"probs shape {tuple(probs.shape)} != (2, 5, 3, 3)"


def test_probes_train_on_detached_codes():
    code = torch.randn(2, 4, 3, 3, requires_grad=True)
    cluster, linear = ClusterProbe(4, 3), LinearProbe(4, 3)
    loss = cluster(code, alpha=2.0)[0] + linear.loss(code, torch.randint(0, 3, (2, 5, 5)))
    loss.backward()
    assert code.grad is None, "probe losses must not reach the code"
    assert cluster.clusters.grad.abs().sum() > 0, "centroids must get a gradient"
    assert linear.conv.weight.grad.abs().sum() > 0, "the linear probe must get a gradient"


@pytest.mark.parametrize("ignore_index", [-1, 2])
def test_linear_probe_loss_matches_cross_entropy_on_hand_upsampled_logits(ignore_index):
    torch.manual_seed(2)
    probe = LinearProbe(3, 4)
    code = torch.randn(2, 3, 2, 3)
    labels = torch.randint(0, 4, (2, 4, 5))
    labels[0, 0, :3] = -1
    labels[1, 2, 1:] = 255  # out of range: never counted
    logits = probe(code)
    assert logits.shape == (2, 4, 2, 3), f"logits shape {tuple(logits.shape)}"
    up = _hand_upsample(_conv1x1(probe.conv, code), 4, 5).permute(0, 2, 3, 1).reshape(-1, 4)
    flat = labels.reshape(-1)
    valid = (flat >= 0) & (flat < 4) & (flat != ignore_index)
    want = F.cross_entropy(up[valid], flat[valid])
    got = probe.loss(code, labels, ignore_index=ignore_index)
    assert torch.isclose(got, want, atol=1e-5), f"loss {got} != hand cross-entropy {want}"


def test_linear_probe_loss_without_valid_labels_is_zero_with_grad():
    probe = LinearProbe(3, 4)
    labels = torch.full((1, 4, 4), 255)
    labels[0, 0] = -1
    loss = probe.loss(torch.randn(1, 3, 2, 2), labels)
    assert loss.item() == 0.0 and loss.requires_grad, f"expected a 0 with grad, got {loss}"
    loss.backward()
    assert not probe.conv.weight.grad.any(), "an empty loss should give zero gradients"


@pytest.mark.parametrize(
    "make",
    [
        lambda: SegmentationHead(4, dropout=1.0),
        lambda: SegmentationHead(4)(torch.zeros(1, 5, 2, 2)),
        lambda: ClusterProbe(4, 0),
        lambda: ClusterProbe(4, 2).predict(torch.zeros(1, 3, 2, 2)),
        lambda: LinearProbe(4, 2).loss(torch.zeros(2, 4, 2, 2), torch.zeros(1, 2, 2)),
    ],
)
def test_bad_arguments_raise_value_error(make):
    with pytest.raises(ValueError):
        make()
