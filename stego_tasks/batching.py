"""The training loop's batch order, shared by `train` and the probe refits of `probe_fit`."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def epoch_batches(size: int, batch_size: int, seed: int, start_step: int = 0) -> Iterator[torch.Tensor]:
    """Endless batches of row indices [min(batch_size, size)], from step `start_step` on.

    Epoch-wise shuffling, as the reference's DataLoader(shuffle=True, drop_last=True).
    Each epoch's order depends on (seed, epoch) alone, so a run resumed at any step,
    even mid-epoch, draws exactly the batches the uninterrupted run would have drawn.
    """
    batch_size = min(batch_size, size)
    per_epoch = size // batch_size
    epoch, first = divmod(start_step, per_epoch)
    while True:
        order = torch.from_numpy(np.random.default_rng([seed % 2**64, epoch]).permutation(size))
        for start in range(first * batch_size, per_epoch * batch_size, batch_size):
            yield order[start : start + batch_size]
        epoch, first = epoch + 1, 0
