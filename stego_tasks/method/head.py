"""Segmentation head, cluster probe and linear probe (STEGO, reference doc sections 2 and 6).

The probes are trained on detached codes so that their losses never change the head.
The training loop already passes `code.detach()`, but `ClusterProbe` and `LinearProbe`
detach their input themselves as well, so they are safe whatever the caller passes:
gradients reach the probe's own parameters and never the code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stego_tasks.errors import InvalidInputError


class SegmentationHead(nn.Module):
    """STEGO head: code = linear(drop(x)) + nonlinear(drop(x)).

    linear is a 1x1 conv C -> K; nonlinear is 1x1 conv C -> C, ReLU, 1x1 conv C -> K;
    drop is channel-wise `nn.Dropout2d(dropout)` with a fresh mask at each call.

    Args:
        in_dim: C, channels of the backbone features.
        n_codes: K, channels of the code.
        dropout: Probability of zeroing a whole feature channel during training.
    """

    def __init__(self, in_dim: int, n_codes: int = 70, dropout: float = 0.1) -> None:
        super().__init__()
        if in_dim < 1 or n_codes < 1:
            raise InvalidInputError(f"in_dim and n_codes must be >= 1, got {in_dim} and {n_codes}.")
        if not 0.0 <= dropout < 1.0:
            raise InvalidInputError(f"dropout must lie in [0, 1), got {dropout}.")
        self.in_dim = in_dim
        self.n_codes = n_codes
        self.dropout = nn.Dropout2d(p=dropout)
        self.linear = nn.Conv2d(in_dim, n_codes, kernel_size=1)
        self.nonlinear = nn.Sequential(
            nn.Conv2d(in_dim, in_dim, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(in_dim, n_codes, kernel_size=1),
        )

    def forward(self, feats: Tensor) -> Tensor:
        """Maps features to codes.

        Args:
            feats: Backbone features [B, C, H, W].

        Returns:
            Code [B, K, H, W].
        """
        self._check(feats)
        # Two separate dropout calls: each branch sees its own mask, as in the reference.
        return self.linear(self.dropout(feats)) + self.nonlinear(self.dropout(feats))

    def drop_features(self, feats: Tensor) -> Tensor:
        """Applies a third, fresh dropout mask to the features that go into the loss.

        Args:
            feats: Backbone features [B, C, H, W].

        Returns:
            Features [B, C, H, W], channel-dropped in training mode, unchanged in eval mode.
        """
        self._check(feats)
        return self.dropout(feats)

    def _check(self, feats: Tensor) -> None:
        if feats.dim() != 4 or feats.shape[1] != self.in_dim:
            raise InvalidInputError(
                f"SegmentationHead expects features [B, {self.in_dim}, H, W], "
                f"got shape {tuple(feats.shape)}."
            )


def flip_averaged(code: Tensor, code_of_mirror: Tensor) -> Tensor:
    """The reference's test-time flip: (code(x) + flip(code(flip(x)))) / 2.

    Args:
        code: codes of the images [B, K, h, w].
        code_of_mirror: codes of the horizontally mirrored images [B, K, h, w].

    Returns:
        The average, [B, K, h, w], on the images' grid.
    """
    return (code + code_of_mirror.flip(-1)) / 2


class ClusterProbe(nn.Module):
    """Learned centroids in code space (spherical k-means), like the reference ClusterLookup.

    Args:
        dim: K, channels of the code.
        n_classes: Number of ground-truth classes.
        extra_clusters: Clusters added beyond n_classes.
    """

    def __init__(self, dim: int, n_classes: int, extra_clusters: int = 0) -> None:
        super().__init__()
        if dim < 1 or n_classes < 1 or extra_clusters < 0:
            raise InvalidInputError(
                f"ClusterProbe needs dim >= 1, n_classes >= 1 and extra_clusters >= 0, "
                f"got {dim}, {n_classes} and {extra_clusters}."
            )
        self.dim = dim
        self.n_classes = n_classes
        self.extra_clusters = extra_clusters
        self.clusters = nn.Parameter(torch.randn(n_classes + extra_clusters, dim))

    @property
    def n_clusters(self) -> int:
        """Number of centroids, n_classes + extra_clusters."""
        return self.clusters.shape[0]

    def similarity(self, code: Tensor) -> Tensor:
        """Cosine similarity of each position's code to each centroid.

        Args:
            code: Code [B, K, H, W]; detached here so the probe never trains the head.

        Returns:
            Similarities [B, N, H, W], N = n_clusters.
        """
        if code.dim() != 4 or code.shape[1] != self.dim:
            raise InvalidInputError(
                f"ClusterProbe expects code [B, {self.dim}, H, W], got shape {tuple(code.shape)}."
            )
        normed_clusters = F.normalize(self.clusters, dim=1)
        normed_code = F.normalize(code.detach(), dim=1)
        return torch.einsum("bchw,nc->bnhw", normed_code, normed_clusters)

    def forward(self, code: Tensor, alpha: float | None = None) -> tuple[Tensor, Tensor]:
        """Cluster loss and assignment probabilities.

        Args:
            code: Code [B, K, H, W].
            alpha: Softmax temperature on the similarities; None for hard assignment.

        Returns:
            (loss, probs): loss is the scalar -(probs * similarity).sum(1).mean(), probs
            [B, N, H, W] float32 one-hot argmax when alpha is None, else
            softmax(alpha * similarity) over N.
        """
        sim = self.similarity(code)
        if alpha is None:
            probs = F.one_hot(sim.argmax(dim=1), self.n_clusters).permute(0, 3, 1, 2)
            probs = probs.to(torch.float32)
        else:
            probs = F.softmax(sim * alpha, dim=1)
        loss = -(probs * sim).sum(1).mean()
        return loss, probs

    def log_probs(self, code: Tensor, alpha: float = 2.0) -> Tensor:
        """Log cluster probabilities used for prediction and the CRF.

        Args:
            code: Code [B, K, H, W].
            alpha: Softmax temperature on the similarities.

        Returns:
            log_softmax(alpha * similarity) over clusters, [B, N, H, W].
        """
        return F.log_softmax(self.similarity(code) * alpha, dim=1)

    def predict(self, code: Tensor) -> Tensor:
        """Hard cluster assignment.

        Args:
            code: Code [B, K, H, W].

        Returns:
            LongTensor [B, H, W] of cluster ids in [0, n_clusters).
        """
        return self.similarity(code).argmax(dim=1)


class LinearProbe(nn.Module):
    """Supervised 1x1 conv probe K -> n_classes, for linear evaluation only.

    Args:
        dim: K, channels of the code.
        n_classes: Number of ground-truth classes.
    """

    def __init__(self, dim: int, n_classes: int) -> None:
        super().__init__()
        if dim < 1 or n_classes < 1:
            raise InvalidInputError(
                f"LinearProbe needs dim >= 1 and n_classes >= 1, got {dim} and {n_classes}."
            )
        self.dim = dim
        self.n_classes = n_classes
        self.conv = nn.Conv2d(dim, n_classes, kernel_size=1)

    def forward(self, code: Tensor) -> Tensor:
        """Per-position class logits.

        Args:
            code: Code [B, K, H, W]; detached here so the probe never trains the head.

        Returns:
            Logits [B, n_classes, H, W].
        """
        if code.dim() != 4 or code.shape[1] != self.dim:
            raise InvalidInputError(
                f"LinearProbe expects code [B, {self.dim}, H, W], got shape {tuple(code.shape)}."
            )
        return self.conv(code.detach())

    def loss(self, code: Tensor, labels: Tensor, ignore_index: int = -1) -> Tensor:
        """Cross-entropy of the upsampled logits over valid labels.

        Args:
            code: Code [B, K, H, W].
            labels: Integer labels [B, H_l, W_l]; a pixel counts when its label lies in
                [0, n_classes) and differs from ignore_index.
            ignore_index: Extra label value to skip (e.g. 255).

        Returns:
            Scalar mean cross-entropy over counted pixels; a zero that still carries a
            gradient (of zeros) when no pixel counts.
        """
        if labels.dim() != 3 or labels.shape[0] != code.shape[0]:
            raise InvalidInputError(
                f"labels must be [B, H, W] with B = {code.shape[0]}, got shape {tuple(labels.shape)}."
            )
        logits = F.interpolate(
            self(code), size=labels.shape[-2:], mode="bilinear", align_corners=False
        )
        flat_logits = logits.permute(0, 2, 3, 1).reshape(-1, self.n_classes)
        flat_labels = labels.reshape(-1).long()
        valid = (flat_labels >= 0) & (flat_labels < self.n_classes) & (flat_labels != ignore_index)
        if not bool(valid.any()):
            return flat_logits.sum() * 0.0
        return F.cross_entropy(flat_logits[valid], flat_labels[valid])
